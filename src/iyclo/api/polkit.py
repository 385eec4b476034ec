"""polkit's answer for callers outside the deploy group (``iyclo.core.access``).

polkit is the host's own policy for privileged D-Bus services (systemd, NetworkManager,
udisks ask it the same way): the actions iyclo declares are in
``packaging/io.github.iyclo1.policy``, and an operator grants them with rules such as::

    // /etc/polkit-1/rules.d/50-iyclo.rules
    polkit.addRule(function(action, subject) {
        if (action.id == "io.github.iyclo1.manage" && subject.user == "ops") {
            return polkit.Result.YES;
        }
    });

The daemon asks without interaction (it has no way to show a prompt), with the caller as
polkit knows it: its bus name for D-Bus calls, its pid, start time and uid for the JSON
socket (the start time keeps a recycled pid from passing for the caller). A polkit that
does not answer, or answers with an error, is a refusal naming it, never a silent grant.
"""

from __future__ import annotations

import asyncio

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from iyclo.api.dbus_caller import bus_daemon_message
from iyclo.api.peer import process_start_time
from iyclo.core.access import Caller
from iyclo.errors import AccessDeniedError

POLKIT_NAME = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
CALL_TIMEOUT = 25.0  # polkit's own rule evaluation is bounded well below this
NO_INTERACTION = 0


class Polkit:
    """``org.freedesktop.PolicyKit1.Authority`` on ``bus``."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    @classmethod
    async def on(cls, bus: MessageBus) -> Polkit | None:
        """polkit on ``bus`` if it runs there or the bus can start it, else None."""
        names: set[str] = set()
        for member in ("ListNames", "ListActivatableNames"):
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    reply = await bus.call(bus_daemon_message(member))
            except TimeoutError:
                continue
            if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
                names.update(reply.body[0])
        return cls(bus) if POLKIT_NAME in names else None

    async def allows(self, caller: Caller, action_id: str) -> bool:
        subject: tuple[str, dict[str, Variant]]
        if caller.bus_name:
            subject = ("system-bus-name", {"name": Variant("s", caller.bus_name)})
        else:
            subject = (
                "unix-process",
                {
                    "pid": Variant("u", caller.pid),
                    "start-time": Variant("t", process_start_time(caller.pid)),
                    "uid": Variant("i", caller.uid),
                },
            )
        request = Message(
            destination=POLKIT_NAME,
            path=AUTHORITY_PATH,
            interface=AUTHORITY_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[subject, action_id, {}, NO_INTERACTION, ""],
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self._bus.call(request)
        except TimeoutError:
            raise AccessDeniedError(f"polkit did not answer for {action_id}") from None
        if reply is None or reply.message_type is MessageType.ERROR:
            why = reply.body[0] if reply is not None and reply.body else "no reply"
            raise AccessDeniedError(f"polkit cannot decide {action_id}: {why}")
        authorized, _challenge, _details = reply.body[0]
        return bool(authorized)
