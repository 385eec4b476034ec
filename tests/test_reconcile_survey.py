"""A reconcile asks Podman once, not once per record (issue #15): SIGKILL and restart
with 200 pods spent most of its time listing each record's pods and secrets.

Counted over the fakes, not timed (timings live in bench/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.fixtures import Core

ROOT = Path(__file__).resolve().parent.parent


def pod(name: str) -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["name"] = name
    for container in data["containers"]:
        container.pop("ports", None)
        for volume in container.get("volumes", []):
            volume["source"] = f"{name}-content"
    return data


async def _lists_during_reconcile(core: Core, pods: int) -> tuple[int, int]:
    for index in range(pods):
        await core.service.apply(pod(f"web-{index}"))
    core.podman.calls.clear()
    report = await core.service.reconcile()
    assert sorted(report.adopted) == sorted(f"web-{i}" for i in range(pods))
    return len(core.podman.calls["list_pods"]), len(core.podman.calls["list_secrets"])


async def test_podman_is_listed_as_often_for_six_records_as_for_one(core: Core) -> None:
    one = await _lists_during_reconcile(core, 1)
    six = await _lists_during_reconcile(core, 6)
    assert six == one
    assert six == (1, 1)  # the survey, which the orphans' removal reuses
