"""Reconcile never overlaps an operation (issue #14): the race it had with apply and remove.

Against the real service over the fakes. Reconcile is held inside its first step while
other operations are started; they must wait for it, and what it decides must match the
store as it is when it acts, not as it was when it began.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fixtures import Core

ROOT = Path(__file__).resolve().parent.parent


def pod(name: str) -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["name"] = name
    for container in data["containers"]:
        container.pop("ports", None)
        for volume in container.get("volumes", []):
            volume["source"] = f"{name}-content"  # each pod's own (volumes are scoped)
    return data


async def slow_first_step(core: Core, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Reconcile's first per-record step waits until the returned event is set."""
    release = asyncio.Event()
    real = core.service.pods.reconcile_one

    async def reconcile_one(record: Any, survey: Any = None) -> str:
        await release.wait()
        return await real(record, survey)

    monkeypatch.setattr(core.service.pods, "reconcile_one", reconcile_one)
    return release


async def test_a_pod_applied_during_reconcile_is_not_taken_for_an_orphan(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await core.service.apply(pod("first"))
    release = await slow_first_step(core, monkeypatch)
    reconcile = asyncio.create_task(core.service.reconcile())
    await asyncio.sleep(0.1)  # reconcile has listed the records and waits in its first step
    apply = asyncio.create_task(core.service.apply(pod("second")))
    await asyncio.sleep(0.2)
    assert not apply.done()  # it waits for reconcile instead of racing it
    release.set()
    report = await asyncio.wait_for(reconcile, 30)
    result = await asyncio.wait_for(apply, 30)
    assert report.removed == ()
    assert result.to_json()["state"] == "running"
    assert (await core.service.status("second"))["state"] == "running"
    assert core.systemd.units["iyclo-pod-second.service"].active_state == "active"


async def test_a_pod_removed_during_reconcile_is_not_brought_back(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await core.service.apply(pod("doomed"))
    release = await slow_first_step(core, monkeypatch)
    reconcile = asyncio.create_task(core.service.reconcile())
    await asyncio.sleep(0.1)
    remove = asyncio.create_task(core.service.remove("doomed"))
    await asyncio.sleep(0.2)
    assert not remove.done()
    release.set()
    await asyncio.wait_for(reconcile, 30)
    await asyncio.wait_for(remove, 30)
    assert await core.service.list_all() == []
    unit = core.systemd.units.get("iyclo-pod-doomed.service")
    assert unit is None or unit.active_state != "active"


async def test_operations_begun_before_a_reconcile_finish_first(core: Core) -> None:
    """Reconcile waits for an apply under way: it never sees half of one."""
    core.systemd._job_delay = 0.3  # every systemd job takes a while
    apply = asyncio.create_task(core.service.apply(pod("slow")))
    await asyncio.sleep(0.05)
    report = await asyncio.wait_for(core.service.reconcile(), 30)
    assert apply.done()
    assert "slow" in report.adopted
