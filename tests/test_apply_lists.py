"""A first apply asks Podman for no list of pods or secrets (issue #15): at 200 pods each
list cost Podman 4 most of a second, so an apply's cost grew with the pod count. An
update still removes the generations it replaces. Counted over the fakes, not timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.fixtures import Core

ROOT = Path(__file__).resolve().parent.parent


def pod(name: str, role: str = "a") -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["name"] = name
    for container in data["containers"]:
        container.pop("ports", None)
        container.pop("volumes", None)
        container["env"] = {"ROLE": role}
    return data


async def test_a_first_apply_lists_nothing_an_update_removes_the_old(core: Core) -> None:
    await core.service.apply(pod("web"))
    assert core.podman.calls["list_pods"] == []
    assert core.podman.calls["list_secrets"] == []
    await core.service.apply(pod("web", role="b"))
    assert core.podman.calls["list_pods"] == [("io.github.iyclo.pod=web",)]
    pods = await core.podman.list_pods("io.github.iyclo.pod=web")
    assert [p["Name"] for p in pods] == ["iyclo-web-g2"]
