"""Which manifest changes are applied to the running pod, and which replace it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from iyclo.core.update import in_place_update, live_slice_properties
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


def _with_container(**resources: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["containers"][0]["resources"] = resources
    return data


def test_container_limits_change_in_place_only_where_podman_keeps_them() -> None:
    old, new = _pod(BASE), _pod(_with_container(memory="96M", cpus=0.5, pids=100))
    change = in_place_update(old, new, keeps_updates=True)
    assert change is not None
    assert change.containers == (
        ("a", {"memory": {"limit": 96 * 2**20}, "cpu": {"period": 100_000, "quota": 50_000},
               "pids": {"limit": 100}}),
    )  # fmt: skip
    assert in_place_update(old, new, keeps_updates=False) is None  # Podman 4.3 forgets


@pytest.mark.parametrize(
    "resources",
    [
        {},  # the memory limit removed: Podman's default would have to come back
        {"memory": "64M", "ulimits": {"nofile": "1024"}},  # not a live field
    ],
)
def test_other_container_changes_replace_the_pod(resources: dict[str, Any]) -> None:
    assert (
        in_place_update(_pod(BASE), _pod(_with_container(**resources)), keeps_updates=True) is None
    )


def test_a_container_change_beside_a_live_one_replaces_the_pod() -> None:
    data = _with_container(memory="96M")
    data["containers"][0]["image"] = "other"
    assert in_place_update(_pod(BASE), _pod(data), keeps_updates=True) is None
