"""A polkit authority on a private bus: ``CheckAuthorization`` as polkitd answers it.

It grants exactly the (uid, action) pairs it is given and records every question, with
the subject as iyclod sent it. Like polkitd it does not take the caller's word for who
the subject is: a ``system-bus-name`` is resolved with the bus daemon, a
``unix-process`` from ``/proc`` (its start time must match, or the pid was recycled).
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

from iyclo.api.dbus_caller import bus_daemon_message
from iyclo.api.peer import process_start_time
from iyclo.api.polkit import AUTHORITY_INTERFACE, AUTHORITY_PATH, POLKIT_NAME

Subject = Annotated[list[Any], DBusSignature("(sa{sv})")]
Details = Annotated[dict[str, str], DBusSignature("a{ss}")]
Result = Annotated[list[Any], DBusSignature("(bba{ss})")]


def _uid_of_process(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _Authority(ServiceInterface):
    def __init__(self, fake: FakePolkit) -> None:
        super().__init__(AUTHORITY_INTERFACE)
        self._fake = fake

    @dbus_method(name="CheckAuthorization")
    async def check_authorization(
        self,
        subject: Subject,
        action_id: Annotated[str, DBusSignature("s")],
        details: Details,
        flags: Annotated[int, DBusSignature("u")],
        cancellation_id: Annotated[str, DBusSignature("s")],
    ) -> Result:
        kind, fields = subject
        uid = await self._fake.uid_of(kind, fields)
        self._fake.asked.append((kind, uid, action_id, flags))
        granted = uid is not None and (uid, action_id) in self._fake.grants
        return [granted, False, {}]


class FakePolkit:
    """``async with FakePolkit(address, grants={(65534, "io.github.iyclo1.manage")})``."""

    def __init__(self, address: str, grants: set[tuple[int, str]]) -> None:
        self.address = address
        self.grants = grants
        self.asked: list[tuple[str, int | None, str, int]] = []
        self._bus: MessageBus | None = None

    async def __aenter__(self) -> Self:
        self._bus = await MessageBus(bus_address=self.address).connect()
        self._bus.export(AUTHORITY_PATH, _Authority(self))
        await self._bus.request_name(POLKIT_NAME)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._bus is not None
        self._bus.disconnect()

    async def uid_of(self, kind: str, fields: dict[str, Variant]) -> int | None:
        if kind == "system-bus-name":
            assert self._bus is not None
            reply = await self._bus.call(
                bus_daemon_message("GetConnectionUnixUser", "s", [fields["name"].value])
            )
            if reply is None or reply.message_type is MessageType.ERROR:
                return None
            return int(reply.body[0])
        if kind == "unix-process":
            pid = int(fields["pid"].value)
            if int(fields["start-time"].value) != process_start_time(pid):
                return None
            return _uid_of_process(pid)
        return None
