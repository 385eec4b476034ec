"""One wire contract: every event reads the same on the JSON socket and on D-Bus.

The event types of ``iyclo.contract.events`` are the only definition of what an event
holds; these tests pin their JSON spelling and run one sequence of events through both
transports (and through ``iyclo events --json`` on each), comparing the JSON event for
event, so a field spelled differently on one side fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.dbus import export_service
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.client.dbus import DBusClient
from iyclo.client.jsonrpc import JsonRpcClient
from iyclo.contract.events import (
    EVENT_TYPES,
    Event,
    HealthChanged,
    JobChanged,
    JobFinished,
    PodChanged,
    PullProgress,
    event_from_json,
    event_from_signal,
)
from iyclo.core.events import EventBus
from tests.fakes.fixtures import Core

ROOT = Path(__file__).parent.parent

SEQUENCE: list[Event] = [
    PodChanged(name="web", state="applying", generation=1, at=1714532400.125),
    PodChanged(name="web", state="running", generation=1, at=1714532401.5),
    JobChanged(name="backup", state="scheduled", generation=2, at=1714532402.0),
    JobChanged(name="backup", state="running", generation=2, at=1714532403.25),
    JobFinished(
        name="backup", run=7, state="failed", exit_code=3, result="exit-code",
        duration_sec=4.208, at=1714532407.458,
    ),
    JobFinished(
        name="backup", run=8, state="lost", exit_code=-1, result="unknown",
        duration_sec=-1.0, at=1714532409.0,
    ),
    PodChanged(name="web", state="failed", generation=2, error="unit x did not start (failed)"),
    PodChanged(name="web-é", state="removed"),
]  # fmt: skip


def test_json_spelling_is_camel_case_and_fixed() -> None:
    finished = SEQUENCE[4]
    assert finished.to_json() == {
        "event": "JobFinished", "name": "backup", "run": 7, "state": "failed", "exitCode": 3,
        "result": "exit-code", "durationSec": 4.208, "at": 1714532407.458,
    }  # fmt: skip
    assert SEQUENCE[0].to_json() == {
        "event": "PodChanged", "name": "web", "state": "applying", "generation": 1, "error": "",
        "at": 1714532400.125,
    }  # fmt: skip
    assert set(SEQUENCE[2].to_json()) == set(SEQUENCE[0].to_json())


@pytest.mark.parametrize("event", SEQUENCE, ids=lambda e: f"{e.MEMBER}-{e.state}")
def test_every_event_round_trips_through_both_encodings(event: Event) -> None:
    assert event_from_json(json.loads(json.dumps(event.to_json()))) == event
    decoded = event_from_signal(event.MEMBER, event.dbus_signature(), event.dbus_args())
    assert decoded == event


def test_signal_signatures_follow_the_fields() -> None:
    assert PodChanged.dbus_signature() == JobChanged.dbus_signature() == "ssusd"
    assert JobFinished.dbus_signature() == "susisdd"
    assert JobFinished.dbus_arg_names() == (
        "name", "run", "state", "exit_code", "result", "duration_sec", "at"
    )  # fmt: skip
    assert PullProgress.dbus_signature() == "ssssttd"
    assert HealthChanged.dbus_signature() == "sssussd"
    assert {cls.MEMBER for cls in EVENT_TYPES} == {
        "PodChanged", "JobChanged", "JobFinished", "PullProgress", "HealthChanged"
    }  # fmt: skip
    # a signal of another shape is not taken for an event
    assert event_from_signal("JobFinished", "suis", ["x", 1, 0, "success"]) is None
    with pytest.raises(ValueError, match="not an iyclo event"):
        event_from_json({"event": "Exploded", "name": "x"})


# -- both transports ----------------------------------------------------------------------


@pytest.fixture
async def fronts(
    core: Core, dbus_address: str, tmp_path: Path
) -> AsyncIterator[tuple[EventBus, Path]]:
    """The real service behind both fronts: the D-Bus interface and the JSON socket."""
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock")
    await server.start()
    unexport = await export_service(core.service, bus_address=dbus_address)
    try:
        yield core.service.events, tmp_path / "iyclo.sock"
    finally:
        await unexport()
        await server.close()


def _take(events: Iterator[Event], count: int) -> list[dict[str, Any]]:
    return [next(events).to_json() for _ in range(count)]


JOB = {
    "apiVersion": "iyclo/v1", "kind": "Job", "name": "backup", "network": "none",
    "schedule": {"calendar": "*-*-* 03:00:00"},
    "containers": [{"name": "dump", "image": "localhost/busybox:latest",
                    "command": ["sh", "-c", "exit 3"]}],
}  # fmt: skip


async def test_what_the_core_publishes_reads_the_same_on_both_transports(
    core: Core, fronts: tuple[EventBus, Path], dbus_address: str
) -> None:
    """The producers' own events, not hand-made ones: a pod's life and a job's run whose
    container exits 3, event for event on both transports."""
    bus, socket_path = fronts
    await core.service.start_watching()
    via_dbus = await asyncio.to_thread(DBusClient, bus_address=dbus_address, timeout=10)
    via_json = await asyncio.to_thread(JsonRpcClient, socket_path, timeout=10)
    count = 10
    try:
        dbus_events = await asyncio.to_thread(via_dbus.events)
        json_events = await asyncio.to_thread(via_json.events)  # subscribed when it returns
        taking_json = asyncio.ensure_future(asyncio.to_thread(_take, json_events, count))
        async with asyncio.timeout(10):
            while bus.subscribers < 2:  # noqa: ASYNC110 (nothing to wait on but the count)
                await asyncio.sleep(0.01)
        web = json.loads((ROOT / "examples" / "web.json").read_text())
        await core.service.apply(web)
        await core.service.stop("web")
        await core.service.remove("web")
        await core.service.apply(JOB)
        core.systemd.units["iyclo-job-backup.service"].exit_status = 3
        await core.service.run_job("backup")
        from_dbus = await asyncio.to_thread(_take, dbus_events, count)
        from_json = await asyncio.wait_for(taking_json, 10)
    finally:
        await asyncio.to_thread(via_dbus.close)
        await asyncio.to_thread(via_json.close)
    assert from_dbus == from_json
    finished = [e for e in from_json if e["event"] == "JobFinished"]
    assert [(e["exitCode"], e["result"], e["state"]) for e in finished] == [
        (3, "exit-code", "failed")
    ]


async def test_one_sequence_reads_the_same_on_both_transports(
    fronts: tuple[EventBus, Path], dbus_address: str
) -> None:
    bus, socket_path = fronts
    via_dbus = await asyncio.to_thread(DBusClient, bus_address=dbus_address, timeout=10)
    via_json = await asyncio.to_thread(JsonRpcClient, socket_path, timeout=10)
    try:
        dbus_events = await asyncio.to_thread(via_dbus.events)
        json_events = await asyncio.to_thread(via_json.events)  # subscribed when it returns
        taking_json = asyncio.ensure_future(asyncio.to_thread(_take, json_events, len(SEQUENCE)))
        async with asyncio.timeout(10):
            # subscribed: the exporter and the socket client
            while bus.subscribers < 2:  # noqa: ASYNC110 (nothing to wait on but the count)
                await asyncio.sleep(0.01)
        for event in SEQUENCE:
            bus.publish(event)
        from_dbus = await asyncio.to_thread(_take, dbus_events, len(SEQUENCE))
        from_json = await asyncio.wait_for(taking_json, 10)
    finally:
        await asyncio.to_thread(via_dbus.close)
        await asyncio.to_thread(via_json.close)
    expected = [e.to_json() for e in SEQUENCE]
    for index, (a, b) in enumerate(zip(from_dbus, from_json, strict=True)):
        assert a == b == expected[index], index


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "iyclo.cli", *args, "events", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


async def _lines(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> list[dict[str, Any]]:
        return [json.loads(stdout.readline()) for _ in range(count)]

    return await asyncio.wait_for(asyncio.to_thread(read), 20)


async def test_iyclo_events_json_prints_the_same_on_both_transports(
    fronts: tuple[EventBus, Path], dbus_address: str
) -> None:
    bus, socket_path = fronts
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}", "DBUS_SESSION_BUS_ADDRESS": dbus_address}
    env.pop("IYCLO_SOCKET", None)
    procs = [_cli("--bus", "session", env=env), _cli("--socket", str(socket_path), env=env)]
    try:
        # Both CLIs are subscribed once each has printed a probe (bounded: 100 probes, 10 s).
        seen = [0, 0]
        readers = [asyncio.ensure_future(_lines(p, 1)) for p in procs]
        for number in range(100):
            bus.publish(JobFinished(name="probe", run=number, state="succeeded", exit_code=0,
                                    result="success", duration_sec=0.0))  # fmt: skip
            await asyncio.wait(readers, timeout=0.1)
            if all(r.done() for r in readers):
                break
        assert all(r.done() for r in readers), [p.stderr for p in procs]
        seen = [r.result()[0]["run"] for r in readers]
        # Drain probes each saw after its first one, then the sequence, then compare.
        for event in SEQUENCE:
            bus.publish(event)
        outputs = []
        for proc, first in zip(procs, seen, strict=True):
            lines = await _lines(proc, (number - first) + len(SEQUENCE))
            outputs.append([e for e in lines if e["name"] != "probe"])
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert outputs[0] == outputs[1] == [e.to_json() for e in SEQUENCE]


def test_no_event_type_is_left_unsignalled(core: Core) -> None:
    from iyclo.api.dbus import ManagerInterface

    signals = {s.name: s.signature for s in ManagerInterface(core.service).introspect().signals}
    assert signals == {cls.MEMBER: cls.dbus_signature() for cls in EVENT_TYPES}
