"""Degraded, not down (issue #14): a Podman that goes away, and comes back.

The real service over the fakes, with the fake Podman made unreachable: the daemon says
why on both fronts, answers reads, refuses changes at once with one typed line and
nothing touched, and when Podman answers again it reconciles by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.dbus import export_service
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.client.dbus import DBusClient
from iyclo.client.jsonrpc import JsonRpcClient
from iyclo.core.access import Gate
from iyclo.core.service import Service
from iyclo.errors import StoreError, UnavailableError
from iyclo.store import Store
from iyclo.systemd import SystemdManager
from tests.fakes.dbus_session import PrivateBus
from tests.fakes.fixtures import Core
from tests.fakes.podman import FakePodman
from tests.fakes.systemd import FakeSystemd

ROOT = Path(__file__).resolve().parent.parent
GONE = "[Errno 2] No such file or directory"


def pod(name: str) -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["name"] = name
    for container in data["containers"]:
        for volume in container.get("volumes", []):
            volume["source"] = f"{name}-content"  # each pod's own (volumes are scoped)
    return data


@pytest.fixture
async def watched(core: Core) -> AsyncIterator[Core]:
    core.service.dependencies.interval = 0.05
    await core.service.dependencies.start()
    try:
        yield core
    finally:
        await core.service.dependencies.close()


async def test_a_missing_podman_degrades_and_its_return_recovers(watched: Core) -> None:
    core = watched
    service = core.service
    await service.apply(pod("web"))
    seen: list[dict[str, Any]] = []
    service.on_health_change(seen.append)

    core.podman.down = GONE
    health = await service.dependencies.check()
    assert health.state == "ok"  # one failed probe is not an outage
    health = await service.dependencies.check()
    assert health.state == "degraded"
    (problem,) = health.problems
    assert problem.startswith("podman: ping: cannot reach Podman at unix:///fake/podman.sock")
    assert service.health() == {"state": "degraded", "problems": [problem]}
    assert seen == [service.health()]
    # reads are answered from the store and the cache
    assert (await service.status("web"))["name"] == "web"
    assert [s["name"] for s in await service.list_all()] == ["web"]
    # every change is refused at once, naming what is missing, and touches nothing
    calls_before = {k: len(v) for k, v in core.podman.calls.items() if k != "ping"}
    for verb, call in (
        ("apply", service.apply(pod("other"))), ("stop", service.stop("web")),
        ("remove", service.remove("web")), ("restart", service.restart("web")),
        ("reconcile", service.reconcile()),
    ):  # fmt: skip
        with pytest.raises(UnavailableError) as refused:
            await call
        assert refused.value.message.startswith(f"{verb}: iyclod is degraded (podman: ")
        assert "\n" not in refused.value.message
    assert {k: len(v) for k, v in core.podman.calls.items() if k != "ping"} == calls_before
    assert [s["name"] for s in await service.list_all()] == ["web"]
    # a broken manifest is still named as such: validation needs no Podman
    broken = pod("broken")
    broken["name"] = "Bad Name"
    assert await service.validate(broken)

    core.podman.down = None
    reconciles = len(core.podman.calls["list_pods"])
    health = await service.dependencies.check()
    assert health.state == "ok"
    assert seen[-1] == {"state": "ok", "problems": []}
    assert len(core.podman.calls["list_pods"]) > reconciles  # it reconciled by itself
    assert (await service.apply(pod("other"))).to_json()["state"] == "running"


async def test_both_fronts_report_it_and_refuse_typed(watched: Core, tmp_path: Path) -> None:
    core = watched
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock", gate=Gate("iyclo-none"))
    await server.start()
    with PrivateBus() as bus:
        unexport = await export_service(core.service, bus_address=bus.address)
        try:
            core.podman.down = GONE
            for _ in range(core.service.dependencies.threshold):
                await core.service.dependencies.check()
            socket_client = JsonRpcClient(tmp_path / "iyclo.sock", timeout=30)
            dbus_client = await asyncio.to_thread(DBusClient, bus_address=bus.address, timeout=30)
            try:
                for client in (socket_client, dbus_client):
                    health = await asyncio.to_thread(client.call, "health")
                    assert health["state"] == "degraded"
                    assert health["problems"][0].startswith("podman: ")
                    with pytest.raises(UnavailableError, match=r"^apply: iyclod is degraded"):
                        await asyncio.to_thread(
                            client.call, "apply", manifest=json.dumps(pod("web"))
                        )
                    assert await asyncio.to_thread(client.call, "list") == []
            finally:
                socket_client.close()
                await asyncio.to_thread(dbus_client.close)
            # busctl sees the Manager's properties say it too
            proc = await asyncio.create_subprocess_exec(
                "busctl", f"--address={bus.address}", "--json=short", "get-property",
                "io.github.iyclo1", "/io/github/iyclo1", "io.github.iyclo1.Manager",
                "State", "Problems", stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            state, problems = (json.loads(line)["data"] for line in out.decode().splitlines())
            assert state == "degraded"
            assert problems == health["problems"]
        finally:
            await unexport()
            await server.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs), to be filled."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill ``mount`` until at most ``leave`` bytes are free; the file to delete again."""
    filler = mount / "filler"
    stats = os.statvfs(mount)
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


async def test_a_full_state_disk_refuses_changes_first_and_resumes(
    small_disk: Path, fake_systemd: FakeSystemd, systemd_manager: SystemdManager
) -> None:
    """Full disk (issue #14): a change is refused before it touches anything, with one line
    naming the directory; what is stored stays readable and whole; freeing space is
    enough for changes to be taken again."""
    podman = FakePodman(fake_systemd)
    store = Store.open(small_disk / "state")
    service = Service(store, systemd_manager, podman)  # type: ignore[arg-type]
    try:
        await service.apply(pod("web"))
        before = (small_disk / "state" / "state.json").read_bytes()
        filler = fill(small_disk, leave=64 * 1024)
        health = await service.dependencies.check()
        assert health.state == "degraded"
        (problem,) = health.problems
        assert problem.startswith(f"state: {small_disk / 'state'} has "), problem
        assert problem.endswith("KiB free, iyclod needs 1024 KiB to record changes; "
                                "free some space")  # fmt: skip
        with pytest.raises(UnavailableError, match=r"^apply: iyclod is degraded \(state: "):
            await service.apply(pod("db"))
        assert [s["name"] for s in await service.list_all()] == ["web"]
        assert (small_disk / "state" / "state.json").read_bytes() == before
        assert not [name for name in podman.pods if "db" in name]

        filler.unlink()
        assert (await service.dependencies.check()).state == "ok"
        assert (await service.apply(pod("db"))).generation == 1
    finally:
        await service.close()
        podman.close()
        store.close()


def test_a_write_that_finds_no_space_leaves_the_old_file(small_disk: Path) -> None:
    """The backstop below the probe: a write that runs out of space mid-way is one line,
    and the file on disk is still the last good one (the store writes beside it)."""
    with Store.open(small_disk / "state") as store:
        store.apply("web", "pod", {"name": "web"}, "sha256:1")
        before = (small_disk / "state" / "state.json").read_bytes()
        fill(small_disk, leave=0)
        with pytest.raises(StoreError, match=r"cannot write .*state\.json: No space left"):
            store.apply("web", "pod", {"name": "web", "big": "x" * 200_000}, "sha256:2")
        assert (small_disk / "state" / "state.json").read_bytes() == before
        assert [g.generation for g in store.history("web")] == [1]
        assert not list((small_disk / "state").glob(".state.json.*.tmp"))


def test_ps_counts_ready_containers_as_kubectl_does() -> None:
    from iyclo.cli.formats import readiness

    pod = {"kind": "Pod", "containers": [
        {"name": "web", "health": "healthy"}, {"name": "db", "health": "starting"},
        {"name": "sidecar", "health": ""}]}  # fmt: skip
    assert readiness(pod) == "1/2"
    assert readiness({"kind": "Pod", "containers": [{"name": "a", "health": ""}]}) == "-"
    assert readiness({"kind": "Job", "containers": []}) == "-"
