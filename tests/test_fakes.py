"""The fakes themselves: they are only worth something if they behave as documented."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from iyclo.errors import NotFoundError
from iyclo.systemd import SystemdManager, exec_command, prop
from iyclo.systemd.const import BUS_NAME, IFACE_MANAGER, IFACE_UNIT, OBJECT_PATH
from tests.fakes.dbus_session import PrivateBus
from tests.fakes.fixtures import MAX_LOOP_LAG, LoopLagMonitor
from tests.fakes.systemd import FakeSystemd

SLEEPER = [prop("ExecStart", exec_command(["sleep", "infinity"]))]


def manager_call(member: str, signature: str = "", body: list[object] | None = None) -> Message:
    return Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=IFACE_MANAGER,
        member=member,
        signature=signature,
        body=body or [],
    )


async def test_fake_really_sends_job_removed_before_the_reply(
    fake_systemd: FakeSystemd, dbus_address: str
) -> None:
    """The race test above only means something if the fake's knob works: watch the wire."""
    bus = await MessageBus(bus_address=dbus_address).connect()
    order: list[str] = []

    def record(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "JobRemoved":
            order.append("JobRemoved")
        elif msg.message_type is MessageType.METHOD_RETURN:
            order.append("reply")

    bus.add_message_handler(record)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=["type='signal',member='JobRemoved'"],
        )
    )
    fake_systemd.emit_job_removed_before_reply = True
    order.clear()
    try:
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=IFACE_MANAGER,
                member="StartTransientUnit",
                signature="ssa(sv)a(sa(sv))",
                body=["iyclo-a.service", "fail", SLEEPER, []],
            )
        )
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    assert reply.message_type is MessageType.METHOD_RETURN
    assert order == ["JobRemoved", "reply"]


async def test_loop_lag_guard_notices_a_blocked_loop() -> None:
    monitor = LoopLagMonitor()
    monitor.start()
    await asyncio.sleep(0.02)
    time.sleep(MAX_LOOP_LAG + 0.05)  # noqa: ASYNC251 - blocking on purpose

    assert await monitor.stop() >= MAX_LOOP_LAG


async def test_fake_refuses_a_second_subscribe_like_systemd(
    fake_systemd: FakeSystemd, dbus_address: str
) -> None:
    bus = await MessageBus(bus_address=dbus_address).connect()
    try:
        first = await bus.call(manager_call("Subscribe"))
        second = await bus.call(manager_call("Subscribe"))
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    assert first.message_type is MessageType.METHOD_RETURN
    assert (second.error_name, second.body) == (
        "org.freedesktop.systemd1.AlreadySubscribed",
        ["Client is already subscribed."],
    )


async def test_a_stopped_fake_frees_the_name_for_the_next(dbus_address: str) -> None:
    for _ in range(2):
        async with FakeSystemd(dbus_address) as fake:
            fake.add_unit("a.service")


def test_private_bus_cleans_up() -> None:
    bus = PrivateBus()
    address = bus.start()
    socket = Path(address.removeprefix("unix:path=").split(",")[0])
    assert socket.is_socket()

    bus.stop()
    bus.stop()

    assert not socket.parent.exists()


async def test_loop_lag_monitor_sees_no_lag_when_nothing_blocks() -> None:
    monitor = LoopLagMonitor()
    monitor.start()
    await asyncio.sleep(0.1)

    assert await monitor.stop() < MAX_LOOP_LAG


@pytest.mark.parametrize(
    ("properties", "states", "collected"),
    [  # each sequence as systemd 252 sent it (see the module doc of tests/fakes/systemd.py)
        ([], ["inactive", "active"], False),
        ([prop("Type", "exec")], ["inactive", "activating", "active"], False),
        ([prop("Type", "forking")], ["inactive", "activating", "active"], False),
        ([prop("Type", "oneshot")], ["inactive", "activating", "inactive"], True),
        (
            [prop("Type", "oneshot"), prop("RemainAfterExit", True)],
            ["inactive", "activating", "active"],
            False,
        ),
    ],
)
async def test_fake_start_sequences_follow_systemd(
    systemd_manager: SystemdManager,
    fake_systemd: FakeSystemd,
    properties: list[tuple[str, Variant]],
    states: list[str],
    collected: bool,
) -> None:
    with systemd_manager.watch_units("iyclo-") as watch:
        await systemd_manager.start_transient_unit("iyclo-a.service", [*properties, *SLEEPER])
        await systemd_manager.list_units_by_patterns([], [])  # a round trip: all signals are in
        watch.close()
        seen = [c.changed["ActiveState"] async for c in watch if c.interface == IFACE_UNIT]

    assert seen == states
    if collected:
        with pytest.raises(NotFoundError):
            await systemd_manager.get_unit("iyclo-a.service")
    else:
        await systemd_manager.get_unit("iyclo-a.service")
