"""Which manifest changes are applied to the running pod, and which replace it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from iyclo.core.update import live_slice_properties
from iyclo.manifest.convert import parse_manifest
from iyclo.manifest.model import Pod

UNSET = 2**64 - 1


def _pod(data: dict[str, Any]) -> Pod:
    manifest = parse_manifest(data)
    assert isinstance(manifest, Pod)
    return manifest


BASE: dict[str, Any] = {
    "apiVersion": "iyclo/v1", "kind": "Pod", "name": "p",
    "containers": [{"name": "a", "image": "i", "resources": {"memory": "64M"}}],
    "systemd": {"memoryMax": "128M", "tasksMax": 50, "protectClock": True},
}  # fmt: skip


def _changed(**systemd: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["systemd"].update(systemd)
    return data


def test_slice_limits_change_in_place() -> None:
    new = _changed(memoryMax="256M", cpuQuota="50%", ioWeight=300)
    assert live_slice_properties(_pod(BASE), _pod(new)) == (
        ("MemoryMax", 256 * 2**20), ("MemoryHigh", UNSET), ("CPUQuotaPerSecUSec", 500_000),
        ("TasksMax", 50), ("IOWeight", 300), ("CPUWeight", UNSET),
    )  # fmt: skip


def test_a_dropped_limit_is_lifted_in_place() -> None:
    new = copy.deepcopy(BASE)
    del new["systemd"]["tasksMax"]
    props = live_slice_properties(_pod(BASE), _pod(new))
    assert props is not None
    assert dict(props)["TasksMax"] == UNSET


@pytest.mark.parametrize(
    "change",
    [
        # Podman 4.3 forgets `podman update` at the container's next start: replace
        lambda d: d["containers"][0]["resources"].update(memory="128M"),
        lambda d: d["containers"][0]["resources"].update(pids=10),
        lambda d: d["systemd"].update(lockPersonality=True),  # sandboxing of the unit
        lambda d: d["containers"][0].update(image="j"),
        lambda d: d["systemd"].update(memoryMax="256M") or d.update(labels={"a": "b"}),
    ],
)
def test_anything_else_replaces_the_pod(change: Any) -> None:
    new = copy.deepcopy(BASE)
    change(new)
    assert live_slice_properties(_pod(BASE), _pod(new)) is None


def test_no_change_is_not_an_update() -> None:
    assert live_slice_properties(_pod(BASE), _pod(copy.deepcopy(BASE))) is None
