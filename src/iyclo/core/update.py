"""Updates in place: a new manifest whose only changes are limits the running pod can take.

What can change without a restart, measured on the test host (Podman 4.3.1, systemd 252,
cgroup v1 memory/cpu/pids controllers):

* The limits of the pod's slice (``systemd.memoryMax``, ``memoryHigh``, ``cpuQuota``,
  ``tasksMax``, ``ioWeight``, ``cpuWeight``), through ``SetUnitProperties`` with
  ``runtime=True``: systemd rewrites the slice's cgroup files at once and keeps the values
  as drop-ins of the transient slice, removed with it. Every later start of the slice is
  built from the stored manifest, so the change lasts across restarts and reboots.
* Not a container's ``resources`` (cpus, memory, memorySwap, pids): ``podman update`` and
  its REST endpoint change the container's cgroup, but Podman 4.3 does not store the change
  (``podman inspect`` keeps the old values) and the container's next start — a restart by
  systemd after a crash, a reboot — puts the old limits back. Podman keeps updates only from
  5.1 on, and only with its SQLite database. A limit that silently reverts is worse than a
  restart now, so such a change replaces the pod like any other.

An update in place records a new generation (history and ``diff`` see it) that keeps running
in the Podman pod of the generation it updated (``podGeneration`` in the store), so the pod's
name, containers and their IDs stay the same.
"""

from __future__ import annotations

from typing import Any

import attrs

from iyclo.core.plan import slice_properties
from iyclo.manifest.model import Pod

IN_PLACE = "updated in place"
"""The ``state`` an apply reports when it changed the running pod without replacing it."""

LIVE_FIELDS = ("memory_max", "memory_high", "cpu_quota", "tasks_max", "io_weight", "cpu_weight")
"""Fields of the `systemd` block that go to the pod's slice and can change on a running one."""


def live_slice_properties(old: Pod, new: Pod) -> tuple[tuple[str, Any], ...] | None:
    """The slice properties that turn ``old`` into ``new`` on the running pod.

    None when the two differ in anything else (the pod must be replaced), or not at all.
    """
    if old == new:
        return None
    carried = {name: getattr(new.systemd, name) for name in LIVE_FIELDS}
    if attrs.evolve(old, systemd=attrs.evolve(old.systemd, **carried)) != new:
        return None
    return tuple(slice_properties(new.systemd))
