"""Who sent the D-Bus call in progress, as the bus daemon vouches for it.

dbus-fast hands an exported method its arguments, not the message, so the sender is
noted on the way in: ``note_sender`` runs as a message handler for every incoming
message, before dbus-fast dispatches it in the same call, and sets a context variable;
the method's task, created by that dispatch, starts with a copy of the context and so
keeps its own sender whatever arrives next. (``tests/test_access.py`` holds this to
dbus-fast's behaviour with concurrent callers of different uids.)

The sender's uid and pid come from ``GetConnectionCredentials``: the bus daemon read
them from the kernel when the caller connected. Unique names are never reused during a
bus's life, so a cached answer cannot belong to someone else; the cache is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.core.access import Caller
from iyclo.errors import AccessDeniedError

_SENDER: contextvars.ContextVar[str] = contextvars.ContextVar("iyclo_dbus_sender", default="")
CACHE_SIZE = 1024
BUS_CALL_TIMEOUT = 10.0


def bus_daemon_message(member: str, signature: str = "", body: list[Any] | None = None) -> Message:
    """A call to the bus daemon itself (``org.freedesktop.DBus``)."""
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature=signature,
        body=body or [],
    )


def note_sender(message: Message) -> bool:
    """A dbus-fast message handler that never handles anything: it only notes the sender."""
    if message.message_type is MessageType.METHOD_CALL:
        _SENDER.set(message.sender or "")
    return False


class BusCallers:
    """The credentials of D-Bus callers, by unique name."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._known: collections.OrderedDict[str, Caller] = collections.OrderedDict()
        bus.add_message_handler(note_sender)

    def close(self) -> None:
        self._bus.remove_message_handler(note_sender)

    async def current(self) -> Caller:
        """The caller of the D-Bus call this task serves; AccessDenied if unknowable."""
        sender = _SENDER.get()
        if not sender:
            raise AccessDeniedError("access denied: the bus did not name the sender of this call")
        known = self._known.get(sender)
        if known is not None:
            self._known.move_to_end(sender)
            return known
        caller = await self._ask(sender)
        self._known[sender] = caller
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
        return caller

    async def _ask(self, sender: str) -> Caller:
        request = bus_daemon_message("GetConnectionCredentials", "s", [sender])
        try:
            async with asyncio.timeout(BUS_CALL_TIMEOUT):
                reply = await self._bus.call(request)
        except TimeoutError:
            raise AccessDeniedError(f"access denied: the bus did not say who {sender} is") from None
        if reply is None or reply.message_type is MessageType.ERROR:
            why = reply.error_name if reply is not None else "no reply"
            raise AccessDeniedError(f"access denied: the bus cannot say who {sender} is ({why})")
        credentials = reply.body[0]
        if "UnixUserID" not in credentials:
            raise AccessDeniedError(f"access denied: the bus knows no uid for {sender}")
        pid = credentials.get("ProcessID")
        return Caller(
            uid=int(credentials["UnixUserID"].value),
            pid=int(pid.value) if pid is not None else 0,
            bus_name=sender,
        )
