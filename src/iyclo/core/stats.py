"""``iyclo stats``: what a pod uses, from the two accounts a host already keeps.

Per pod, systemd's cgroup accounting of the pod's own slice (``iyclo_<name>.slice``,
which holds its unit, every conmon and every container): ``CPUUsageNSec``,
``MemoryCurrent``, ``TasksCurrent`` of ``org.freedesktop.systemd1.Slice``. Per
container, Podman's stats (``CPUNano``, ``MemUsage``, ``MemLimit``, ``PIDs``).

A figure the host cannot give is ``null``, never a made-up 0: systemd answers
``2^64 - 1`` for an account it does not keep (measured on Debian 12's cgroups v1: no CPU
usage for a slice), a slice that is not loaded (a stopped pod) has none, and a container
that is not running has no Podman stats. CPU is a cumulative count of nanoseconds; a
rate needs two samples, which ``sampledNs`` (the daemon's monotonic clock) lets a
client that refreshes compute.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from iyclo.core import naming
from iyclo.core.steps import Steps
from iyclo.errors import IycloError, NotFoundError
from iyclo.store import Deployment
from iyclo.systemd.const import IFACE_SLICE

log = structlog.get_logger("iyclo.stats")

UNKNOWN = 2**64 - 1
"""systemd's "no such account" for a ``t`` property."""


def _figure(value: Any) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value == UNKNOWN:
        return None
    return value


async def slice_figures(steps: Steps, name: str) -> dict[str, Any]:
    """systemd's account of pod ``name``'s slice; every figure null when not loaded."""
    slice_ = naming.slice_name(name)
    figures: dict[str, Any] = {"slice": slice_, "cpuNsec": None, "memoryBytes": None,
                               "tasks": None}  # fmt: skip
    try:
        state = await steps.unit_state(slice_, IFACE_SLICE)
    except NotFoundError:
        return figures
    if state is None:
        return figures
    figures.update(
        cpuNsec=_figure(state.get("CPUUsageNSec")),
        memoryBytes=_figure(state.get("MemoryCurrent")),
        tasks=_figure(state.get("TasksCurrent")),
    )
    return figures


def container_figures(row: dict[str, Any] | None) -> dict[str, Any]:
    """One container's figures from Podman's stats object (None: it has none)."""
    row = row or {}

    def get(key: str) -> int | None:
        return _figure(row.get(key)) if row else None

    return {"cpuNsec": get("CPUNano"), "memoryBytes": get("MemUsage"),
            "memoryLimit": get("MemLimit"), "pids": get("PIDs")}  # fmt: skip


async def pod_stats(steps: Steps, record: Deployment, status: dict[str, Any]) -> dict[str, Any]:
    """The figures of one pod and its containers (``status``: its ``get`` answer)."""
    podman_pod = str(status.get("podmanPod") or "")
    rows = [c for c in status.get("containers") or [] if c.get("name")]
    running = {
        naming.container_name(podman_pod, str(c["name"])): str(c["name"])
        for c in rows
        if c.get("state") == "running"
    }
    by_name: dict[str, dict[str, Any]] = {}
    try:
        for stat in await steps.podman.container_stats(sorted(running)):
            by_name[running.get(str(stat.get("Name")), "")] = stat
    except IycloError as exc:  # a container stopped in between: no figures, say why
        log.info("no container stats", pod=record.name, error=exc.message)
    containers = [
        {"name": str(c["name"]), "state": str(c.get("state", "")),
         **container_figures(by_name.get(str(c["name"])))}
        for c in rows
    ]  # fmt: skip
    return {
        "name": record.name,
        "state": status.get("state", ""),
        **await slice_figures(steps, record.name),
        "containers": containers,
    }


def sampled_now() -> int:
    return time.monotonic_ns()
