"""Each systemd and Podman step of the core, done once for pods and jobs alike.

A pod and a job are both one Podman pod per generation (made here before any unit
starts), their own transient slice, and transient units started and stopped here. The
rules below used to exist twice and disagreed; now they are these:

* a unit systemd does not know (``NoSuchUnit``, or ``LoadState`` ``not-found`` after a
  lookup loaded it) is absent: ``unit_state`` returns None;
* a unit is running while its ``ActiveState`` is active, activating, reloading or
  deactivating (``unit_state.RUNNING``), i.e. until systemd says inactive or failed;
* a stopped transient unit is waited for until it is unloaded (a failed one is reset so
  it can be), bounded by ``timeouts.UNIT_GONE``;
* a start that fails is explained from the unit's own journal (Podman's first error),
  and whatever the caller made for it is cleaned up before the error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from iyclo.core import naming, timeouts
from iyclo.core.journal import start_failure_reason
from iyclo.core.plan import ContainerPlan
from iyclo.core.slices import ensure_slice
from iyclo.core.unit_state import is_running
from iyclo.errors import IycloError, NotFoundError, SystemdError
from iyclo.podman.client import PodmanClient
from iyclo.systemd.const import IFACE_SERVICE, IFACE_UNIT, JobResult
from iyclo.systemd.const import UnitLoadState as Load
from iyclo.systemd.manager import JobCanceledError, SystemdManager
from iyclo.systemd.properties import prop


def pod_of_unit(props: Mapping[str, Any] | None) -> str | None:
    """The Podman pod a pod's or job's service was made for: the last word of its
    ``ExecStopPost`` ``… podman pod stop … <pod>`` (both kinds stop their pod there)."""
    for entry in (props or {}).get("ExecStopPost") or []:
        argv = [str(word) for word in (entry[1] if len(entry) > 1 else [])]
        if ("pod", "stop") in itertools.pairwise(argv):
            return argv[-1]
    return None


class PodMaking(Protocol):
    """What both plans (``PodPlan``, ``JobPlan``) say about the Podman pod and the slice."""

    @property
    def name(self) -> str: ...
    @property
    def pod_name(self) -> str: ...
    @property
    def pod_spec(self) -> dict[str, Any]: ...
    @property
    def containers(self) -> tuple[ContainerPlan, ...]: ...
    @property
    def slice(self) -> str: ...
    @property
    def slice_properties(self) -> tuple[tuple[str, Any], ...]: ...


STOP_ATTEMPTS = 3
"""Stops of a unit asked in a row when another job keeps replacing ours (see stop_job)."""


class Steps:
    def __init__(self, systemd: SystemdManager, podman: PodmanClient) -> None:
        self.systemd = systemd
        self.podman = podman

    # -- units ------------------------------------------------------------------------

    async def unit_state(self, unit: str, interface: str = IFACE_UNIT) -> dict[str, Any] | None:
        """The Unit properties of a loaded unit and those of its type's ``interface``
        (e.g. Service, Timer), or None when systemd has no such unit."""
        try:
            await self.systemd.get_unit(unit)
        except NotFoundError:
            return None
        props = await self.systemd.unit_properties(unit)
        if props.get("LoadState") == Load.NOT_FOUND:
            return None
        if interface != IFACE_UNIT:
            with contextlib.suppress(NotFoundError):  # unloaded in between
                props.update(await self.systemd.unit_properties(unit, interface))
        return props

    async def service_state(self, unit: str) -> dict[str, Any] | None:
        return await self.unit_state(unit, IFACE_SERVICE)

    async def wait_gone(self, unit: str) -> None:
        """Until ``unit`` is unloaded; a failed one is reset first, which unloads it."""
        deadline = time.monotonic() + timeouts.UNIT_GONE
        while True:
            with contextlib.suppress(NotFoundError, SystemdError):
                await self.systemd.reset_failed_unit(unit)
            if await self.unit_state(unit) is None:
                return
            if time.monotonic() > deadline:
                raise SystemdError(
                    f"unit {unit} is still loaded {timeouts.UNIT_GONE:.0f}s after its stop"
                )
            await asyncio.sleep(timeouts.UNIT_POLL)

    async def stop(self, unit: str) -> None:
        """Stop ``unit`` if it runs, and wait until it is unloaded."""
        state = await self.unit_state(unit)
        if state is None:
            return
        if is_running(state):
            with contextlib.suppress(NotFoundError):
                await self.systemd.stop_unit(unit, timeout=timeouts.SYSTEMD_JOB)
        await self.wait_gone(unit)

    async def stop_job(self, unit: str) -> None:
        """Queue a stop of ``unit`` and wait for it, not for the unit to be unloaded.

        Asked again (at most ``STOP_ATTEMPTS`` times) when another job replaced ours: a
        job's run re-arms its timer with a restart (``overlap: skip``), and a restart queued
        while our stop waits replaces the stop (measured: "result 'canceled'").
        """
        for attempt in range(1, STOP_ATTEMPTS + 1):
            try:
                with contextlib.suppress(NotFoundError):
                    await self.systemd.stop_unit(unit, timeout=timeouts.SYSTEMD_JOB)
                return
            except JobCanceledError:
                if attempt == STOP_ATTEMPTS:
                    raise

    async def restart(self, unit: str) -> None:
        await self.systemd.restart_unit(unit, timeout=timeouts.SYSTEMD_JOB)

    async def start_transient(
        self,
        unit: str,
        properties: Sequence[tuple[str, Any]],
        aux: Sequence[tuple[str, Sequence[tuple[str, Any]]]] = (),
        *,
        clean_up: Callable[[], Awaitable[None]],
    ) -> None:
        """Start ``unit`` (and ``aux`` units in the same call); on failure, say why from
        the unit's journal, ``clean_up`` what the caller made for it, and raise."""
        for name in (unit, *(aux_name for aux_name, _ in aux)):
            await self.wait_gone(name)
        started = time.time()
        try:
            result = await self.systemd.start_transient_unit(
                unit, [prop(k, v) for k, v in properties],
                [(name, [prop(k, v) for k, v in props]) for name, props in aux],
                timeout=timeouts.SYSTEMD_JOB, check=False,
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(IycloError):
                await clean_up()
            raise
        if result is not JobResult.DONE:
            reason = await start_failure_reason(unit, since=started)
            with contextlib.suppress(IycloError):
                await clean_up()
            detail = f": {reason}" if reason else ""
            raise SystemdError(f"unit {unit} did not start ({result}){detail}")

    # -- slices and Podman pods -------------------------------------------------------

    async def ensure_slice(self, plan: PodMaking, description: str, *, update: bool) -> None:
        """The plan's own slice, with its limits if it is started or ``update``."""
        await ensure_slice(
            self.systemd, plan.slice, description, plan.slice_properties, update=update,
            wait_gone=self.wait_gone,
        )  # fmt: skip

    async def create_pod(self, plan: PodMaking, description: str) -> None:
        """Images, slice, pod and containers of one generation (created, not started);
        on failure nothing of the pod stays.

        An apply has pulled the images already (``core.pulls``, as each ``pullPolicy``
        says); here a missing one is pulled (after a reboot, a pruned image) unless its
        policy is "never", and none is pulled anew: a generation re-made by a reconcile
        keeps what it was applied with rather than what a tag names now."""
        for container in plan.containers:
            never = container.pull_policy == "never"
            await self.podman.ensure_image(container.image, "never" if never else "missing")
        await self.ensure_slice(plan, description, update=False)
        await self.podman.create_pod_with_containers(
            plan.pod_name, plan.pod_spec, [c.spec for c in plan.containers]
        )

    async def ensure_pod(self, plan: PodMaking, description: str) -> None:
        """The generation's Podman pod, made again if it is missing (e.g. after a reboot)."""
        if not await self.podman.pod_exists(plan.pod_name):
            await self.create_pod(plan, description)

    async def remove_pod(self, pod_name: str) -> None:
        await self.podman.remove_pod(pod_name)  # retries while Podman cleans up

    async def remove_other_generations(self, name: str, keep: str | None) -> list[str]:
        """Every Podman pod of ``name`` but ``keep`` (all of them when None)."""
        removed = []
        for pod in await self.podman.list_pods(f"{naming.LABEL_POD}={name}"):
            pod_name = str(pod.get("Name", ""))
            if pod_name and pod_name != keep:
                await self.podman.remove_pod(pod_name)
                removed.append(pod_name)
        return removed

    async def remove_orphans(self, known: set[str]) -> list[str]:
        """Podman pods and slices iyclo made for names the store does not hold."""
        removed: list[str] = []
        for pod in await self.podman.list_pods(naming.LABEL_POD):
            labels = pod.get("Labels") or {}
            if labels.get(naming.LABEL_POD) not in known:
                await self.podman.remove_pod(str(pod["Name"]))
                removed.append(str(pod["Name"]))
        patterns = [f"{naming.SLICE_PREFIX}*.slice"]
        for unit in await self.systemd.list_units_by_patterns([], patterns):
            owner = naming.parse_slice_name(unit.name)
            if owner is not None and owner not in known:
                await self.stop(unit.name)
                removed.append(unit.name)
        return removed

    async def remove_units(self, units: Sequence[str]) -> None:
        """Stop and unload units of a pod or job, first to last."""
        for unit in units:
            await self.stop(unit)
