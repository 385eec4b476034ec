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
import contextlib
import contextvars
from typing import Any

from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.api.dbus_base import MANAGER_INTERFACE, MANAGER_PATH
from iyclo.contract.methods import METHODS
from iyclo.core.access import Caller
from iyclo.core.handover import close_all
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


FD_CALLS: dict[str, str] = {m.member: m.dbus_in for m in METHODS if m.fds}
"""The Manager members that take file descriptors, with their signatures."""


def note_sender(message: Message) -> bool:
    """A dbus-fast message handler that notes the sender, and handles only a message
    carrying file descriptors where none are taken: they are closed (dbus-fast hands
    descriptors to a method and leaves them open, so any caller could otherwise fill
    the daemon's table) and such a call is refused before anything dispatches it."""
    if message.message_type not in (MessageType.METHOD_CALL, MessageType.SIGNAL):
        return False  # a reply to a call of ours: its caller takes what it carries
    addressed = _fd_call(message)
    if (message.unix_fds or addressed) and not (addressed and _fds_fit(message)):
        close_all(message.unix_fds)
        message.unix_fds.clear()
        if message.message_type is MessageType.METHOD_CALL:
            raise DBusError(
                "org.freedesktop.DBus.Error.InvalidArgs",
                f"file descriptors are taken only by {', '.join(sorted(FD_CALLS))} of "
                f"{MANAGER_INTERFACE}, one for each of their h arguments, in order",
            )
        return True
    if message.message_type is MessageType.METHOD_CALL:
        _SENDER.set(message.sender or "")
    return False


def _fd_call(message: Message) -> bool:
    return (
        message.message_type is MessageType.METHOD_CALL
        and message.path == MANAGER_PATH
        and message.interface == MANAGER_INTERFACE
        and str(message.member) in FD_CALLS
    )


def _fds_fit(message: Message) -> bool:
    """The call's signature is the member's and its ``h`` arguments are the indices
    0, 1, … of as many descriptors: dbus-fast would otherwise hand a method the bare
    index (a call without descriptors) or one descriptor twice."""
    signature = FD_CALLS[str(message.member)]
    count = signature.count("h")
    return (
        message.signature == signature
        and len(message.unix_fds) == count
        and list(message.body[len(message.body) - count :]) == list(range(count))
    )


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

    async def gone(self) -> None:
        """Return once the sender of the call this task serves has left the bus (its
        unique name lost its owner: the process ended or closed its connection)."""
        sender = _SENDER.get()
        if not sender:
            return
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            if (
                message.message_type is MessageType.SIGNAL
                and message.member == "NameOwnerChanged"
                and message.sender == "org.freedesktop.DBus"
                and message.body[:1] == [sender]
                and not message.body[2]
                and not left.done()
            ):
                left.set_result(None)

        rule = (
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{sender}'"
        )
        self._bus.add_message_handler(on_message)
        try:
            await self._bus.call(bus_daemon_message("AddMatch", "s", [rule]))
            # Subscribed first, then asked: a caller gone in between is not missed.
            reply = await self._bus.call(bus_daemon_message("NameHasOwner", "s", [sender]))
            if reply is not None and reply.message_type is MessageType.METHOD_RETURN \
                    and not reply.body[0]:  # fmt: skip
                return
            await left
        finally:
            self._bus.remove_message_handler(on_message)
            if self._bus.connected:
                with contextlib.suppress(Exception):
                    self._bus.send(bus_daemon_message("RemoveMatch", "s", [rule]))

    async def _ask(self, sender: str) -> Caller:
        request = bus_daemon_message("GetConnectionCredentials", "s", [sender])
        try:
            async with asyncio.timeout(BUS_CALL_TIMEOUT):
                reply = await self._bus.call(request)
        except TimeoutError:
            raise AccessDeniedError(f"access denied: the bus did not say who {sender} is") from None
        if reply is not None:
            # dbus 1.16 adds ProcessFD (a pidfd) for a connection passing descriptors
            close_all(reply.unix_fds)
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
