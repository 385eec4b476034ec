"""The systemd adapter against the fake systemd, over real D-Bus on a private dbus-daemon.

Every test also runs under ``loop_lag_guard``: none of these operations may
block the event loop for more than 0.2 s.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import DBusError, Variant

from iyclo.core.steps import Steps
from iyclo.errors import NotFoundError, SystemdError
from iyclo.systemd import (
    PROPERTY_SIGNATURES,
    USEC_INFINITY,
    ExecCommand,
    JobMode,
    JobRemoved,
    JobResult,
    KillWhom,
    SystemdManager,
    UnitChange,
    UnitInfo,
    exec_command,
    prop,
    unit_name_from_path,
    unit_object_path,
    unit_path_escape,
    unit_path_unescape,
    usec,
)
from iyclo.systemd.const import IFACE_SERVICE, IFACE_UNIT
from iyclo.systemd.manager import JobCanceledError
from tests.fakes.podman import FakePodman
from tests.fakes.systemd import FakeSystemd

pytestmark = pytest.mark.usefixtures("loop_lag_guard")

SLEEPER = [prop("ExecStart", exec_command(["sleep", "infinity"]))]


def pod_unit_properties(name: str) -> list[tuple[str, Variant]]:
    """What a pod unit looks like (testhost.md: forking, PIDFile, KillMode=mixed)."""
    return [
        prop("Description", f"iyclo pod {name}"),
        prop("Slice", "iyclo.slice"),
        prop("Type", "forking"),
        prop("PIDFile", f"/run/iyclo/{name}.pid"),
        prop("KillMode", "mixed"),
        prop("ExecStart", exec_command(["podman", "pod", "start", name])),
        prop(
            "ExecStop",
            exec_command(["podman", "pod", "stop", "--ignore", "--time=10", name]),
        ),
        prop("Restart", "always"),
        prop("RestartUSec", usec(2.5)),
        prop("StartLimitBurst", 5),
        prop("StartLimitIntervalUSec", usec(60)),
        prop("TimeoutStopUSec", usec(30)),
        prop("Environment", ["PODMAN_SYSTEMD_UNIT=x", "A=b c"]),
        prop("CollectMode", "inactive-or-failed"),
        prop("MemoryMax", 64 * 1024**2),
        prop("CPUQuotaPerSecUSec", 500_000),
        prop("TasksMax", 512),
        prop("IOWeight", 100),
        prop("NoNewPrivileges", True),
        prop("ProtectSystem", "strict"),
    ]


# -- StartTransientUnit -------------------------------------------------------------


async def test_start_transient_unit_sends_exact_signatures_and_waits_for_the_job(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    name = "iyclo-pod-web.service"
    result = await systemd_manager.start_transient_unit(name, pod_unit_properties(name))

    assert result is JobResult.DONE
    [(sent_name, mode, properties, aux)] = fake_systemd.calls["StartTransientUnit"]
    assert (sent_name, mode, aux) == (name, "fail", [])
    received = [(key, value.signature, value.value) for key, value in properties]
    assert received == [
        ("Description", "s", "iyclo pod iyclo-pod-web.service"),
        ("Slice", "s", "iyclo.slice"),
        ("Type", "s", "forking"),
        ("PIDFile", "s", "/run/iyclo/iyclo-pod-web.service.pid"),
        ("KillMode", "s", "mixed"),
        ("ExecStart", "a(sasb)", [("podman", ["podman", "pod", "start", name], False)]),
        (
            "ExecStop",
            "a(sasb)",
            [("podman", ["podman", "pod", "stop", "--ignore", "--time=10", name], False)],
        ),
        ("Restart", "s", "always"),
        ("RestartUSec", "t", 2_500_000),
        ("StartLimitBurst", "u", 5),
        ("StartLimitIntervalUSec", "t", 60_000_000),
        ("TimeoutStopUSec", "t", 30_000_000),
        ("Environment", "as", ["PODMAN_SYSTEMD_UNIT=x", "A=b c"]),
        ("CollectMode", "s", "inactive-or-failed"),
        ("MemoryMax", "t", 67_108_864),
        ("CPUQuotaPerSecUSec", "t", 500_000),
        ("TasksMax", "t", 512),
        ("IOWeight", "t", 100),
        ("NoNewPrivileges", "b", True),
        ("ProtectSystem", "s", "strict"),
    ]
    # The job finished, so the unit is up by the time the call returns.
    assert fake_systemd.units[name].active_state == "active"


async def test_timer_and_its_service_go_in_one_call(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    service = [
        prop("Type", "oneshot"),
        prop("ExecStart", exec_command(["/usr/bin/iyclo", "job", "run", "backup"])),
    ]
    timer = [
        prop("OnCalendar", "*:*:0/3"),
        prop("Persistent", False),
        prop("AccuracyUSec", usec(1)),
    ]

    result = await systemd_manager.start_transient_unit(
        "iyclo-job-backup.timer", timer, [("iyclo-job-backup.service", service)]
    )

    assert result is JobResult.DONE
    [(name, mode, properties, aux)] = fake_systemd.calls["StartTransientUnit"]
    assert (name, mode) == ("iyclo-job-backup.timer", "fail")
    assert [(k, v.signature, v.value) for k, v in properties] == [
        ("OnCalendar", "s", "*:*:0/3"),
        ("Persistent", "b", False),
        ("AccuracyUSec", "t", 1_000_000),
    ]
    [(aux_name, aux_properties)] = aux
    assert aux_name == "iyclo-job-backup.service"
    assert [(k, v.signature, v.value) for k, v in aux_properties] == [
        ("Type", "s", "oneshot"),
        (
            "ExecStart",
            "a(sasb)",
            [("/usr/bin/iyclo", ["/usr/bin/iyclo", "job", "run", "backup"], False)],
        ),
    ]
    assert fake_systemd.units["iyclo-job-backup.timer"].active_state == "active"
    assert fake_systemd.units["iyclo-job-backup.service"].active_state == "inactive"


async def test_failed_job_raises_naming_the_unit_and_result(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.job_result_next = "failed"

    with pytest.raises(SystemdError, match=r"iyclo-broken\.service.*'failed'") as info:
        await systemd_manager.start_transient_unit("iyclo-broken.service", SLEEPER)

    assert "\n" not in str(info.value)
    assert fake_systemd.units["iyclo-broken.service"].active_state == "failed"


async def test_check_false_returns_the_non_done_result(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.job_result_next = "dependency"

    result = await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER, check=False)

    assert result is JobResult.DEPENDENCY


async def test_unknown_job_result_is_an_error_even_unchecked(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.job_result_next = "from-the-future"

    with pytest.raises(SystemdError, match="unknown job result 'from-the-future'"):
        await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER, check=False)


async def test_job_removed_before_the_reply_is_not_lost(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.emit_job_removed_before_reply = True

    # Were the early signal dropped, this would wait for a JobRemoved that never comes.
    result = await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER, timeout=1)

    assert result is JobResult.DONE


async def test_many_concurrent_jobs_each_get_their_own_result(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.emit_job_removed_before_reply = True
    early = [
        systemd_manager.start_transient_unit(f"iyclo-early-{i}.service", SLEEPER, timeout=2)
        for i in range(10)
    ]
    first = asyncio.gather(*early)
    await asyncio.sleep(0)  # the calls are sent now, while the knob is set
    fake_systemd.emit_job_removed_before_reply = False
    late = [
        systemd_manager.start_transient_unit(f"iyclo-late-{i}.service", SLEEPER, timeout=2)
        for i in range(10)
    ]

    results = [*await first, *await asyncio.gather(*late)]

    assert results == [JobResult.DONE] * 20
    assert len(fake_systemd.calls["StartTransientUnit"]) == 20


async def test_job_removed_later_than_the_timeout_raises_naming_the_timeout(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.delay_job_removed(2)

    started = time.monotonic()
    with pytest.raises(SystemdError, match=r"iyclo-slow\.service.*0\.2s timeout.*job/") as info:
        await systemd_manager.start_transient_unit("iyclo-slow.service", SLEEPER, timeout=0.2)

    assert time.monotonic() - started < 1
    assert info.value.__suppress_context__
    # The adapter is still usable afterwards.
    fake_systemd.delay_job_removed(0)
    assert await systemd_manager.start_transient_unit("iyclo-fast.service", SLEEPER) == "done"


async def test_unit_exists_is_a_systemd_error(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    with pytest.raises(SystemdError, match=r"iyclo-a\.service.*UnitExists") as info:
        await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    assert not isinstance(info.value, NotFoundError)
    # Translated from the error reply itself: no DBusError chained behind it.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


async def test_injected_failure_surfaces_systemds_text(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.fail_next(
        "StartTransientUnit",
        DBusError("org.freedesktop.systemd1.UnitExists", "Unit iyclo-b.service exists, honest"),
    )

    with pytest.raises(SystemdError) as info:
        await systemd_manager.start_transient_unit("iyclo-b.service", SLEEPER)

    assert str(info.value) == (
        "systemd could not start transient unit iyclo-b.service: "
        "Unit iyclo-b.service exists, honest [org.freedesktop.systemd1.UnitExists]"
    )
    # Only the next call fails.
    assert await systemd_manager.start_transient_unit("iyclo-b.service", SLEEPER) == "done"


async def test_wrongly_typed_raw_property_is_refused_like_systemd_does(
    systemd_manager: SystemdManager,
) -> None:
    with pytest.raises(SystemdError, match=r"Unexpected message contents \[System\.Error\.ENXIO\]"):
        await systemd_manager.start_transient_unit(
            "iyclo-a.service", [("MemoryMax", Variant("s", "64M"))]
        )
    with pytest.raises(SystemdError, match=r"Cannot set property Bogus.*PropertyReadOnly"):
        await systemd_manager.start_transient_unit("iyclo-a.service", [("Bogus", Variant("s", ""))])


# -- other manager calls ------------------------------------------------------------


async def test_get_unit_of_unknown_unit_is_not_found(systemd_manager: SystemdManager) -> None:
    with pytest.raises(NotFoundError, match=r"iyclo-nope\.service") as info:
        await systemd_manager.get_unit("iyclo-nope.service")

    assert "NoSuchUnit" in str(info.value)
    # Translated from the error reply itself: no DBusError chained behind it.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


async def test_get_unit_returns_the_escaped_object_path(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.add_unit("podman.socket", active_state="active", sub_state="listening")

    assert await systemd_manager.get_unit("podman.socket") == (
        "/org/freedesktop/systemd1/unit/podman_2esocket"
    )


async def test_stopped_transient_unit_is_gone(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    assert await systemd_manager.stop_unit("iyclo-a.service") is JobResult.DONE

    assert fake_systemd.calls["StopUnit"] == [("iyclo-a.service", "replace")]
    with pytest.raises(NotFoundError):
        await systemd_manager.get_unit("iyclo-a.service")
    with pytest.raises(NotFoundError, match=r"stop unit iyclo-a\.service"):
        await systemd_manager.stop_unit("iyclo-a.service")


async def test_start_and_restart_of_a_unit_file_unit(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    unit = fake_systemd.add_unit("podman.socket")

    assert await systemd_manager.start_unit("podman.socket") is JobResult.DONE
    assert await systemd_manager.restart_unit("podman.socket", mode=JobMode.FAIL) == "done"

    assert fake_systemd.calls["StartUnit"] == [("podman.socket", "replace")]
    assert fake_systemd.calls["RestartUnit"] == [("podman.socket", "fail")]
    assert (unit.active_state, unit.n_restarts) == ("active", 0)  # NRestarts: automatic only
    with pytest.raises(NotFoundError, match=r"start unit iyclo-missing\.service"):
        await systemd_manager.start_unit("iyclo-missing.service")


async def test_kill_then_reset_failed(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    await systemd_manager.kill_unit("iyclo-a.service", KillWhom.MAIN, 9)
    assert fake_systemd.calls["KillUnit"] == [("iyclo-a.service", "main", 9)]
    assert fake_systemd.units["iyclo-a.service"].active_state == "failed"

    await systemd_manager.reset_failed_unit("iyclo-a.service")
    assert fake_systemd.calls["ResetFailedUnit"] == [("iyclo-a.service",)]
    with pytest.raises(NotFoundError, match=r"reset failed unit iyclo-a\.service"):
        await systemd_manager.reset_failed_unit("iyclo-a.service")


async def test_set_unit_properties(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    await systemd_manager.set_unit_properties("iyclo-a.service", True, [prop("MemoryMax", 1 << 30)])

    [(name, runtime, [(key, value)])] = fake_systemd.calls["SetUnitProperties"]
    assert (name, runtime, key, value) == (
        "iyclo-a.service",
        True,
        "MemoryMax",
        Variant("t", 1 << 30),
    )
    with pytest.raises(NotFoundError):
        await systemd_manager.set_unit_properties("iyclo-b.service", True, [])


async def test_unit_properties_by_name_path_and_interface(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    by_name = await systemd_manager.unit_properties("iyclo-a.service")
    by_path = await systemd_manager.unit_properties(unit_object_path("iyclo-a.service"))
    service = await systemd_manager.unit_properties("iyclo-a.service", IFACE_SERVICE)

    assert by_name == by_path
    assert by_name["Id"] == "iyclo-a.service"
    assert (by_name["LoadState"], by_name["ActiveState"], by_name["SubState"]) == (
        "loaded",
        "active",
        "running",
    )
    assert service["Result"] == "success"


async def test_unknown_unit_reads_as_not_found_like_systemd(
    systemd_manager: SystemdManager,
) -> None:
    assert await systemd_manager.load_unit("iyclo-x.service") == unit_object_path("iyclo-x.service")
    properties = await systemd_manager.unit_properties("iyclo-y.service")
    assert (properties["LoadState"], properties["ActiveState"]) == ("not-found", "inactive")
    with pytest.raises(SystemdError, match=r"UnknownInterface"):
        await systemd_manager.unit_properties("iyclo-y.timer", IFACE_SERVICE)


async def test_list_units_by_patterns_gives_typed_rows(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.add_unit("podman.socket", active_state="active", sub_state="listening")
    await systemd_manager.start_transient_unit(
        "iyclo-a.service", [prop("Description", "A"), *SLEEPER]
    )
    fake_systemd.job_result_next = "failed"
    await systemd_manager.start_transient_unit("iyclo-b.service", SLEEPER, check=False)

    active = await systemd_manager.list_units_by_patterns(["active"], ["iyclo-*"])
    everything = await systemd_manager.list_units_by_patterns([], [])

    assert active == [
        UnitInfo(
            name="iyclo-a.service",
            description="A",
            load_state="loaded",
            active_state="active",
            sub_state="running",
            following="",
            path="/org/freedesktop/systemd1/unit/iyclo_2da_2eservice",
            job_id=0,
            job_type="",
            job_path="/",
        )
    ]
    assert {row.name for row in everything} == {
        "podman.socket",
        "iyclo-a.service",
        "iyclo-b.service",
    }


# -- signals ------------------------------------------------------------------------


async def test_properties_changed_reaches_a_watch_with_the_decoded_unit_name(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    name = "iyclo-0pod@web-1.service"  # digit first, '@', '-', '.'
    with systemd_manager.watch_units(prefix="iyclo-") as watch:
        fake_systemd.add_unit("other.service")
        await systemd_manager.start_unit("other.service")  # not under the prefix
        await systemd_manager.start_transient_unit(name, SLEEPER)
        states = []
        while "active" not in states:
            change = await watch.next(timeout=1)
            if change.interface == IFACE_UNIT:
                assert change.unit == name
                states.append(change.changed["ActiveState"])

    assert states == ["inactive", "active"]  # what systemd 252 sends for Type=simple


async def test_on_unit_change_and_its_remover(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    seen: list[UnitChange] = []
    remove = systemd_manager.on_unit_change(seen.append)
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)
    fake_systemd.set_unit_state("iyclo-a.service", "failed", "failed", result="signal")
    await systemd_manager.wait_for_state("iyclo-a.service", {"failed"}, timeout=1)

    keys = ("ActiveState", "SubState", "Result")
    # Service-interface values come just before the Unit's, as systemd sends them.
    assert [(c.interface, {k: v for k, v in c.changed.items() if k in keys}) for c in seen] == [
        (IFACE_UNIT, {"ActiveState": "inactive", "SubState": "dead"}),
        (IFACE_SERVICE, {"Result": "success"}),
        (IFACE_UNIT, {"ActiveState": "active", "SubState": "running"}),
        (IFACE_SERVICE, {"Result": "signal"}),
        (IFACE_UNIT, {"ActiveState": "failed", "SubState": "failed"}),
    ]
    assert {c.unit for c in seen} == {"iyclo-a.service"}

    remove()
    fake_systemd.set_unit_state("iyclo-a.service", "active", "running")
    # The signal was sent before this call's reply, so it has been dispatched by now.
    await systemd_manager.unit_properties("iyclo-a.service")
    assert len(seen) == 5


async def test_on_job_removed(systemd_manager: SystemdManager, fake_systemd: FakeSystemd) -> None:
    seen: list[JobRemoved] = []
    systemd_manager.on_job_removed(seen.append)

    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    [event] = seen
    assert (event.unit, event.result) == ("iyclo-a.service", "done")
    assert event.job == f"/org/freedesktop/systemd1/job/{event.id}"


async def test_a_failing_callback_does_not_starve_the_job_waiter(
    systemd_manager: SystemdManager, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")

    systemd_manager.on_job_removed(broken)
    systemd_manager.on_unit_change(broken)

    assert (
        await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER, timeout=1) == "done"
    )
    assert "listener bug" in caplog.text


async def test_wait_for_state_sees_a_later_transition(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, fake_systemd.set_unit_state, "iyclo-a.service", "failed", "failed")

    assert await systemd_manager.wait_for_state("iyclo-a.service", {"failed", "inactive"}, 1) == (
        "failed"
    )


async def test_wait_for_state_returns_at_once_when_already_there(
    systemd_manager: SystemdManager,
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    assert await systemd_manager.wait_for_state("iyclo-a.service", {"active"}, 0.5) == "active"


async def test_wait_for_state_times_out_naming_the_last_state(
    systemd_manager: SystemdManager,
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)

    with pytest.raises(SystemdError, match=r"iyclo-a\.service did not become failed.*active"):
        await systemd_manager.wait_for_state("iyclo-a.service", {"failed"}, 0.1)


# -- connection ---------------------------------------------------------------------


async def test_close_fails_pending_waits_at_once(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    fake_systemd.delay_job_removed(5)
    job = asyncio.create_task(
        systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER, timeout=5)
    )
    await asyncio.sleep(0.05)
    with systemd_manager.watch_units() as watch:
        await systemd_manager.close()

        with pytest.raises(SystemdError, match="closed"):
            await job
        with pytest.raises(SystemdError, match="closed"):
            await watch.next(timeout=1)
    with pytest.raises(SystemdError, match="not connected"):
        await systemd_manager.get_unit("iyclo-a.service")


async def _soon(condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Whether ``condition`` holds within ``seconds`` (checked every 50 ms)."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_a_dropped_connection_is_made_again_with_its_listeners(
    fake_systemd: FakeSystemd, dbus_address: str
) -> None:
    """The bus daemon dropping iyclod (crashed, restarted) must not leave it deaf: waits
    under way fail at once, and the same listeners hear systemd on the new connection."""
    async with await SystemdManager.connect(dbus_address) as manager:
        seen: list[UnitChange] = []
        manager.on_unit_change(seen.append)
        await manager.start_transient_unit("iyclo-a.service", SLEEPER)
        waiting = asyncio.create_task(
            manager.wait_for_state("iyclo-a.service", {"failed"}, timeout=30)
        )
        await asyncio.sleep(0.05)
        manager._bus._sock.shutdown(socket.SHUT_RDWR)  # the connection drops under it

        with pytest.raises(SystemdError, match="connection"):
            await asyncio.wait_for(waiting, 5)
        assert not manager.connected
        assert await _soon(lambda: manager.connected), manager.lost_reason
        assert manager.reconnects == 1
        assert manager.lost_reason == ""
        assert fake_systemd.calls["Subscribe"] == [(), ()]

        seen.clear()
        fake_systemd.set_unit_state("iyclo-a.service", "failed", "failed", result="signal")
        await manager.wait_for_state("iyclo-a.service", {"failed"}, timeout=5)
        assert any(c.changed.get("ActiveState") == "failed" for c in seen)


async def test_a_connection_that_cannot_be_made_again_keeps_trying_until_closed(
    fake_systemd: FakeSystemd, dbus_address: str
) -> None:
    manager = await SystemdManager.connect(dbus_address)
    fake_systemd.fail_next(
        "Subscribe",
        DBusError("org.freedesktop.DBus.Error.ServiceUnknown", "systemd is not on this bus yet"),
    )
    manager._bus._sock.shutdown(socket.SHUT_RDWR)
    assert await _soon(lambda: "not on this bus yet" in manager.lost_reason)
    assert "attempt 1" in manager.lost_reason
    assert await _soon(lambda: manager.connected)  # the next attempt works
    assert manager.reconnects == 1
    await manager.close()
    assert not manager.connected


async def test_connect_to_a_dead_address_is_a_systemd_error(tmp_path: Any) -> None:
    with pytest.raises(SystemdError, match="cannot connect"):
        await SystemdManager.connect(f"unix:path={tmp_path}/nothing-here")


async def test_connect_subscribes_once_and_adds_both_matches(
    fake_systemd: FakeSystemd, dbus_address: str
) -> None:
    async with await SystemdManager.connect(dbus_address) as manager:
        assert manager.connected
        assert fake_systemd.calls["Subscribe"] == [()]
    assert not manager.connected


# -- building properties and paths (no bus) -----------------------------------------


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("nope-x.service", "nope_2dx_2eservice"),  # measured on systemd 252
        ("iyclo-t1.service", "iyclo_2dt1_2eservice"),  # measured on systemd 252
        ("0abc@1.service", "_30abc_401_2eservice"),
        ("iyclo-pod@web.service", "iyclo_2dpod_40web_2eservice"),
        ("a_b.c", "a_5fb_2ec"),
        ("9", "_39"),
        ("", "_"),
        ("ü.service", "_c3_bc_2eservice"),
    ],
)
def test_unit_path_escape_round_trips(name: str, label: str) -> None:
    assert unit_path_escape(name) == label
    assert unit_path_unescape(label) == name
    assert unit_name_from_path(unit_object_path(name)) == name


def test_unit_path_unescape_is_lenient_like_systemd() -> None:
    assert unit_path_unescape("a_zz") == "a_zz"  # not hex: literal
    assert unit_path_unescape("a_2") == "a_2"  # truncated: literal
    assert unit_path_unescape("_2D_2E") == "-."  # upper-case hex accepted
    assert unit_name_from_path("/org/freedesktop/systemd1") is None
    assert unit_name_from_path("/org/freedesktop/systemd1/unit/a/b") is None


def test_prop_takes_the_signature_from_the_table() -> None:
    assert prop("MemoryMax", USEC_INFINITY) == ("MemoryMax", Variant("t", USEC_INFINITY))
    assert prop("OnCalendar", "daily") == ("OnCalendar", Variant("s", "daily"))
    assert prop("ExecStart", exec_command(["true"], ignore_failure=True)) == (
        "ExecStart",
        Variant("a(sasb)", [ExecCommand("true", ["true"], True)]),
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TimersCalendar", [], "unknown or read-only"),
        ("Bogus", "x", "unknown or read-only"),
        ("MemoryMax", "64M", "MemoryMax"),
        ("MemoryMax", -1, "MemoryMax"),
        ("TasksMax", True, "not a bool"),
        ("Persistent", 1, "Persistent"),
        ("Environment", "A=1", "Environment"),
    ],
)
def test_prop_refuses_unknown_names_and_mistyped_values(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        prop(name, value)


def test_every_table_signature_is_a_single_complete_type() -> None:
    for name, signature in PROPERTY_SIGNATURES.items():
        Variant(signature, [] if signature.startswith("a") else _SAMPLES[signature])
        assert name.isidentifier()


_SAMPLES: dict[str, Any] = {"s": "", "b": False, "t": 0, "u": 0, "i": 0}


def test_exec_command_and_usec_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        exec_command([])
    with pytest.raises(ValueError, match="negative"):
        usec(-1)
    assert usec(0.5) == 500_000


async def test_a_canceled_job_is_its_own_error(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)
    fake_systemd.job_result_next = "canceled"
    with pytest.raises(JobCanceledError, match=r"iyclo-a\.service.*'canceled'"):
        await systemd_manager.stop_unit("iyclo-a.service")


async def test_a_stop_another_job_replaced_is_asked_again(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd
) -> None:
    """As a job's re-arming restart can replace our stop of its timer (overlap: skip)."""
    await systemd_manager.start_transient_unit("iyclo-a.service", SLEEPER)
    fake_systemd.job_result_next = "canceled"
    await Steps(systemd_manager, FakePodman()).stop_job("iyclo-a.service")
    assert [call[0] for call in fake_systemd.calls["StopUnit"]] == ["iyclo-a.service"] * 2
    assert "iyclo-a.service" not in fake_systemd.units  # stopped, and a transient unit goes


async def test_a_units_state_is_read_from_one_moment(
    systemd_manager: SystemdManager, fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's run ends with exit 7 and the next one starts between the Unit read and the
    Service read (systemd resets Result and ExecMain* then): the state returned is the
    new run's, never the old run's invocation with the new run's "success"."""
    await systemd_manager.start_transient_unit("iyclo-job-j.service", SLEEPER)
    unit = fake_systemd.units["iyclo-job-j.service"]
    unit.active_state, unit.sub_state, unit.invocation_id = "failed", "failed", b"\x0a" * 16
    unit.result, unit.exec_main_code, unit.exec_main_status = "exit-code", 1, 7
    real = systemd_manager.unit_properties
    reads: list[str] = []

    async def unit_properties(name: str, interface: str = IFACE_UNIT) -> dict[str, Any]:
        reads.append(interface)
        values = await real(name, interface)
        if interface == IFACE_SERVICE and reads.count(IFACE_SERVICE) == 1:
            # the timer fired while we read: the next run begins
            unit.active_state, unit.sub_state, unit.invocation_id = (
                "activating",
                "start",
                b"\x0b" * 16,
            )
            unit.result, unit.exec_main_code, unit.exec_main_status = "success", 0, 0
            values = await real(name, interface)
        return values

    monkeypatch.setattr(systemd_manager, "unit_properties", unit_properties)
    state = await Steps(systemd_manager, FakePodman()).service_state("iyclo-job-j.service")
    assert state is not None
    assert (state["InvocationID"], state["ActiveState"], state["Result"]) == (
        b"\x0b" * 16, "activating", "success",
    )  # fmt: skip
    assert reads == [IFACE_UNIT, IFACE_SERVICE, IFACE_UNIT, IFACE_SERVICE, IFACE_UNIT]
