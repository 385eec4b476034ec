"""The fake systemd tells the truth about what the core's job accounting reads.

The same scenario runs against the test host's real systemd and against
``tests.fakes.systemd.FakeSystemd``, through the same adapter: a transient timer made
together with its oneshot service, one run of the service that exits 3, then the timer
stopped. What the core relies on must read the same on both: the run's properties, the
order of the signals at its end, and which units stay loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from iyclo.errors import IycloError, NotFoundError
from iyclo.systemd import SystemdManager, exec_command, prop
from iyclo.systemd.const import IFACE_SERVICE, IFACE_UNIT
from iyclo.systemd.manager import UnitChange
from iyclo_testhost import Host
from tests.fakes.systemd import FakeSystemd

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]

TIMER = "fakecheck-run.timer"
SERVICE = "fakecheck-run.service"


async def scenario(manager: SystemdManager, before_run: Callable[[], None]) -> dict[str, Any]:
    """What the core would see of one failing run; the facts compared, by name."""
    seen: list[UnitChange] = []
    remove = manager.on_unit_change(lambda c: seen.append(c) if c.unit == SERVICE else None)
    facts: dict[str, Any] = {}
    try:
        await manager.start_transient_unit(
            TIMER,
            [prop("OnCalendar", "*-01-01 00:00:00"), prop("RemainAfterElapse", True)],
            [(SERVICE, [prop("Type", "oneshot"), prop("CollectMode", "inactive-or-failed"),
                        prop("ExecStart", exec_command(["/bin/sh", "-c", "exit 3"]))])],
        )  # fmt: skip
        first = await manager.unit_properties(SERVICE)
        facts["never run: InvocationID"] = bytes(first.get("InvocationID") or b"")
        before_run()
        await manager.enqueue_start_unit(SERVICE)
        async with asyncio.timeout(30):
            while True:
                props = await manager.unit_properties(SERVICE)
                if props["ActiveState"] == "failed":
                    break
                await asyncio.sleep(0.05)
        props.update(await manager.unit_properties(SERVICE, IFACE_SERVICE))
        facts["ended"] = {k: props[k] for k in ("ActiveState", "Result", "ExecMainCode",
                                                 "ExecMainStatus")}  # fmt: skip
        facts["InvocationID bytes"] = len(bytes(props["InvocationID"]))
        facts["timestamps ordered"] = (
            0 < props["InactiveExitTimestamp"] <= props["InactiveEnterTimestamp"]
        )
        await manager.list_units_by_patterns([], [])  # a round trip: every signal is in
        ends = [i for i, c in enumerate(seen) if c.changed.get("ActiveState") == "failed"]
        facts["at the end, Service values come first"] = (
            bool(ends)
            and seen[ends[0] - 1].interface == IFACE_SERVICE
            and seen[ends[0] - 1].changed.get("ExecMainStatus") == 3
            and seen[ends[0]].interface == IFACE_UNIT
        )
        await manager.get_unit(SERVICE)  # still loaded: the timer references it
        facts["kept while the timer is loaded"] = True
        await manager.stop_unit(TIMER)
        collected = []
        for unit in (TIMER, SERVICE):
            try:
                await manager.get_unit(unit)
            except NotFoundError:
                collected.append(unit)
        facts["collected with the timer"] = collected
    finally:
        remove()
        for unit in (TIMER, SERVICE):  # gone already, as the scenario expects, or cleaned up
            with contextlib.suppress(IycloError):
                await manager.stop_unit(unit)
            with contextlib.suppress(IycloError):
                await manager.reset_failed_unit(unit)
    return facts


async def test_a_failing_run_reads_the_same_on_the_fake_and_on_systemd(
    testhost: Host, fake_systemd: FakeSystemd, systemd_manager: SystemdManager
) -> None:
    async with await SystemdManager.connect(testhost.system_bus_address) as real_manager:
        real = await scenario(real_manager, lambda: None)

    def exits_3() -> None:
        fake_systemd.units[SERVICE].exit_status = 3

    fake_systemd.oneshot_seconds = 0.2
    fake = await scenario(systemd_manager, exits_3)
    assert real == fake
    assert real["ended"] == {
        "ActiveState": "failed", "Result": "exit-code", "ExecMainCode": 1, "ExecMainStatus": 3
    }  # fmt: skip
    assert real["collected with the timer"] == [TIMER, SERVICE]
    assert real["never run: InvocationID"] == b""
