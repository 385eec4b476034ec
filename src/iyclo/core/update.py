"""Updates in place: a new manifest whose only changes are limits the running pod can take.

What can change without a restart, measured on the test host (Podman 4.3.1, systemd 252,
cgroup v1 memory/cpu/pids controllers):

* The limits of the pod's slice (``systemd.memoryMax``, ``memoryHigh``, ``cpuQuota``,
  ``tasksMax``, ``ioWeight``, ``cpuWeight``), through ``SetUnitProperties`` with
  ``runtime=True``: systemd rewrites the slice's cgroup files at once and keeps the values
  as drop-ins of the transient slice, removed with it. Every later start of the slice is
  built from the stored manifest, so the change lasts across restarts and reboots.
* A container's ``resources`` (cpus, memory, memorySwap, pids) only where Podman keeps
  them (``Features.keeps_updates``: Podman 5.1 and later, so Debian 13's 5.4): ``podman
  update`` changes the container's cgroup at once and stores the new limits, so its next
  start keeps them. Podman 4.3 (Debian 12) changes the cgroup but does not store the change
  (``podman inspect`` keeps the old values, measured) and the next start — a restart by
  systemd after a crash, a reboot — puts the old limits back; a limit that silently reverts
  is worse than a restart now, so there such a change replaces the pod like any other. So
  does removing a limit (Podman's default for it would have to come back) or any other
  change to a container.

An update in place records a new generation (history and ``diff`` see it) that keeps running
in the Podman pod of the generation it updated (``podGeneration`` in the store), so the pod's
name, containers and their IDs stay the same.
"""

from __future__ import annotations

from typing import Any

import attrs

from iyclo.core.plan import container_update_resources, slice_properties
from iyclo.manifest.model import Container, Pod

IN_PLACE = "updated in place"
"""The ``state`` an apply reports when it changed the running pod without replacing it."""

LIVE_FIELDS = ("memory_max", "memory_high", "cpu_quota", "tasks_max", "io_weight", "cpu_weight")
"""Fields of the `systemd` block that go to the pod's slice and can change on a running one."""


CONTAINER_LIVE_FIELDS = ("cpus", "memory", "memory_swap", "pids")
"""Fields of a container's `resources` that `podman update` changes on a running one."""


@attrs.frozen
class InPlace:
    """What turns the running pod into the new manifest without replacing it."""

    slice_properties: tuple[tuple[str, Any], ...]
    containers: tuple[tuple[str, dict[str, Any]], ...]
    """(container name in the manifest, `podman update` resources) for each changed one."""


def in_place_update(old: Pod, new: Pod, *, keeps_updates: bool) -> InPlace | None:
    """How to turn ``old`` into ``new`` on the running pod; None when the pod must be
    replaced (or nothing changed). ``keeps_updates``: this Podman stores `podman update`."""
    if old == new or len(old.containers) != len(new.containers):
        return None
    carried: list[Container] = []
    containers: list[tuple[str, dict[str, Any]]] = []
    for before, after in zip(old.containers, new.containers, strict=True):
        if before.resources == after.resources:
            carried.append(before)
            continue
        if not keeps_updates or not _updatable(before, after):
            return None
        carried.append(attrs.evolve(before, resources=after.resources))
        containers.append((after.name, container_update_resources(after.resources)))
    live = {name: getattr(new.systemd, name) for name in LIVE_FIELDS}
    systemd = attrs.evolve(old.systemd, **live)
    if attrs.evolve(old, containers=tuple(carried), systemd=systemd) != new:
        return None
    return InPlace(tuple(slice_properties(new.systemd)), tuple(containers))


def _updatable(before: Container, after: Container) -> bool:
    """Only the live fields differ, and none goes from set to unset."""
    fields = {name: getattr(after.resources, name) for name in CONTAINER_LIVE_FIELDS}
    if attrs.evolve(before.resources, **fields) != after.resources:
        return False
    return not any(
        getattr(before.resources, name) is not None and value is None
        for name, value in fields.items()
    )


def live_slice_properties(old: Pod, new: Pod) -> tuple[tuple[str, Any], ...] | None:
    """The slice properties that turn ``old`` into ``new`` when only the slice changes."""
    change = in_place_update(old, new, keeps_updates=False)
    return None if change is None else change.slice_properties
