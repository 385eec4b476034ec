"""Pods: a Podman pod per generation, run for good by one transient service that systemd
supervises (``plan.plan_pod``), answered from the live cache (``state.LiveState``).

``Service`` calls these holding the pod's lock. systemd watches the main container (the
unit's main PID); the live cache watches the others, and a sidecar that dies restarts the
pod's unit as its restart policy says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Set
from typing import Any

import structlog

from iyclo.core import naming
from iyclo.core.events import EventBus
from iyclo.core.journal import newest_lines, unit_matches
from iyclo.core.kind import Kind
from iyclo.core.locks import Locks
from iyclo.core.oom import OomKill, oom_fields, record_kill
from iyclo.core.ordering import wait_for
from iyclo.core.plan import PodPlan, container_update_resources, plan_pod
from iyclo.core.probes import Health, HealthGuard, checked, container_health, wait_ready
from iyclo.core.pulls import images_changed
from iyclo.core.results import ApplyResult
from iyclo.core.runs import usec_iso
from iyclo.core.secrets import SecretValues
from iyclo.core.state import LiveState
from iyclo.core.steps import Steps, Survey, pod_of_unit
from iyclo.core.timeouts import SYSTEMD_JOB
from iyclo.core.unit_state import is_active, is_running
from iyclo.core.update import IN_PLACE, in_place_update
from iyclo.errors import (
    InvalidError,
    IycloError,
    NotFoundError,
    NotReadyError,
    SystemdError,
    public_message,
)
from iyclo.manifest.convert import dump_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Container, Dependency, Manifest, Pod
from iyclo.manifest.policy import UNRESTRICTED
from iyclo.manifest.values import duration_seconds
from iyclo.podman.bridges import BridgeKeeper
from iyclo.store import Deployment, Store, off_loop
from iyclo.systemd.const import UnitActiveState as Active
from iyclo.systemd.const import UnitLoadState as Load
from iyclo.systemd.properties import prop

log = structlog.get_logger("iyclo.pods")

KIND = Kind.POD
AUTO_RESTART = "auto-restart"  # the SubState of a unit waiting out RestartSec=


def _checked_names(stored: dict[str, Any]) -> set[str]:
    """The containers with a health or startup check, read from the stored JSON as it is
    (a read must not pay for structuring the whole manifest)."""
    return {
        str(c.get("name"))
        for c in stored.get("containers") or []
        if c.get("healthcheck") or c.get("startupCheck")
    }


def _port_clash(old: PodPlan, new: PodPlan) -> str:
    """A host port both generations publish ("18080/tcp"), or "": two pods cannot hold it
    at once, so a start-first update of such a pod replaces instead."""

    def published(plan: PodPlan) -> set[tuple[int, str]]:
        return {(int(p["host_port"]), str(p["protocol"]))
                for p in plan.pod_spec.get("portmappings") or []}  # fmt: skip

    both = sorted(published(old) & published(new))
    return f"{both[0][0]}/{both[0][1]}" if both else ""


def state_word(unit: dict[str, Any] | None, desired: str) -> str:
    """One word for people: running, starting, restarting, stopping, stopped, failed,
    missing."""
    if unit is None or unit.get("LoadState") == Load.NOT_FOUND:
        return "stopped" if desired == "stopped" else "missing"
    active, sub = unit.get("ActiveState", ""), unit.get("SubState", "")
    if active == Active.ACTIVE:
        return "running"
    if active == Active.ACTIVATING:
        return "restarting" if sub == AUTO_RESTART else "starting"
    if active == Active.DEACTIVATING:
        return "stopping"
    if active == Active.FAILED:
        return "failed"
    return "stopped"


class PodHandler:
    kind = KIND

    def __init__(
        self, store: Store, steps: Steps, events: EventBus, locks: Locks, live: LiveState
    ) -> None:
        self.store = store
        self.steps = steps
        self.events = events
        self.locks = locks
        self.live = live
        self.live.on_change = self._observed
        self.live.on_container_died = self._container_died
        self.live.on_oom = self._oom_killed
        self.guard = HealthGuard(locks, events, self._current_manifest, self._act_on_health,
                                 lambda pod, c: container_health(self.steps, pod, c))  # fmt: skip
        self.live.on_health = self._on_health
        self.live.on_container_started = self._on_container_started
        self.live.idle = locks.idle
        self.bridges = BridgeKeeper(steps.podman)

    # -- lifecycle --------------------------------------------------------------------

    async def start_watching(self) -> None:
        """Keep the live cache current from systemd's and Podman's events."""
        self.live.start(self.units)
        self.bridges.soon()  # pods already running (a daemon restart) have their bridges

    async def close(self) -> None:
        await self.bridges.close()
        await self.guard.close()
        await self.live.close()

    def units(self) -> dict[str, str]:
        """The pods the live cache follows: name → unit."""
        return {r.name: KIND.service(r.name) for r in self.store.list() if r.kind == KIND}

    async def resync(self, adopted: Set[str] = frozenset(), survey: Survey | None = None) -> None:
        """The live cache read again; ``adopted`` pods' units as the reconcile read them,
        and their containers as its ``survey`` listed them when it adopted every pod."""
        units = await asyncio.to_thread(self.units)
        listed = survey if survey is not None and set(units) <= adopted else None
        await self.live.resync(units, known=adopted, listed=listed)

    # -- helpers ----------------------------------------------------------------------

    def _plan(self, record: Deployment) -> PodPlan:
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Pod):
            raise InvalidError(f"{record.kind} '{record.name}' is not a pod")
        return plan_pod(
            manifest, record.generation, record.digest, pod_generation=record.pod_generation,
            policy=self.steps.policy,
        )  # fmt: skip

    def _publish(self, name: str, state: str, *, generation: int = 0, error: str = "") -> None:
        self.events.publish(KIND.changed(name, state, generation=generation, error=error))

    async def _state_word(self, record: Deployment) -> str:
        state = await self.steps.service_state(KIND.service(record.name))
        return state_word(state, record.status.get("desired", KIND.running))

    async def _refresh(self, name: str) -> None:
        """Bring the live cache up to date after an operation changed the host."""
        with contextlib.suppress(IycloError):
            await self.live.refresh_unit(name, KIND.service(name))
            await self.live.refresh_containers(name)

    def _description(self, plan: PodPlan) -> str:
        return f"iyclo pod {plan.name}: its unit and containers"

    async def _start_unit(self, plan: PodPlan) -> None:
        """Hand the pod to systemd; on failure say why, from the unit's own journal."""
        await self.steps.ensure_slice(plan, self._description(plan), update=True)
        await self.steps.start_transient(
            plan.unit, plan.unit_properties, clean_up=lambda: self.steps.stop(plan.unit)
        )

    async def _wait_for_dependencies(self, manifest: Pod) -> None:
        """Each ``dependsOn`` condition, before this pod starts (``core.ordering``)."""
        if not manifest.depends_on:
            return

        def waiting(why: str) -> None:
            log.info("waiting for a dependency", pod=manifest.name, why=why)
            self._publish(manifest.name, "waiting", error=why)

        await wait_for(manifest.depends_on, self._unmet, waiting)

    async def _unmet(self, dependency: Dependency) -> str | None:
        """Why ``dependency`` does not hold now (None: it does), from systemd and Podman
        themselves, not the live cache: a reboot's reconcile asks before the cache runs."""
        record: Deployment | None = await off_loop(self.store.find, dependency.pod)
        if record is None or record.kind != KIND:
            return "it is not applied"
        plan = self._plan(record)
        if dependency.condition == "completed":
            return await self._not_completed(plan)
        unit = await self.steps.unit_state(plan.unit)
        if unit is None:  # a stopped transient unit is gone
            stopped = record.status.get("desired") == "stopped"
            return "it is stopped" if stopped else "it is not running"
        if unit.get("ActiveState") != Active.ACTIVE:
            return f"its unit is {unit.get('ActiveState')}"
        if dependency.condition == "started":
            return None
        for container in checked(plan.manifest):
            if container.healthcheck is None:
                continue
            try:
                health = await container_health(self.steps, plan.pod_name, container.name)
            except NotFoundError:
                return f"container {container.name} was not made"
            self._heard(record.name, record.pod_generation, health)
            if health.status != "healthy":
                output = f" ({health.output})" if health.output else ""
                return f"container {container.name} is {health.status or 'not running'}{output}"
        return None

    async def _not_completed(self, plan: PodPlan) -> str | None:
        """Every container of the current generation exited, each with 0."""
        for container in plan.manifest.containers:
            try:
                attrs = await self.steps.podman.inspect_container(
                    naming.container_name(plan.pod_name, container.name)
                )
            except NotFoundError:
                return f"container {container.name} was not made"
            state = attrs.get("State") or {}
            if state.get("Running") or state.get("Status") != "exited":
                return f"container {container.name} is {state.get('Status') or 'not made'}"
            if state.get("ExitCode"):
                return f"container {container.name} exited with {state.get('ExitCode')}"
        return None

    # -- operations (the caller holds the name's lock) --------------------------------

    async def apply(
        self,
        manifest: Manifest,
        previous: Deployment | None,
        images: dict[str, Any],
        *,
        wait_timeout: float | None = None,
    ) -> ApplyResult:
        assert isinstance(manifest, Pod)
        name = manifest.name
        values = await self.steps.read_secrets(manifest)
        digest = values.rollout_digest(manifest_digest(manifest))
        new_images = previous is not None and images_changed(previous.images, images)
        if previous is not None and previous.digest == digest and not new_images:
            state = await self._ensure_running(previous)
            return ApplyResult(name, KIND.api_name, previous.generation, False, state)
        if previous is not None and not new_images:
            updated = await self._update_in_place(manifest, digest, previous, values)
            if updated is not None:
                return updated
        await self._wait_for_dependencies(manifest)  # before anything is recorded or made
        record: Deployment = await off_loop(
            self.store.apply, name, KIND.value, dump_manifest(manifest), digest, images=images
        )
        self._publish(name, "applying", generation=record.generation)
        try:
            await self._replace(manifest, record, previous, values, wait_timeout)
        except NotReadyError as exc:
            if exc.kept:  # rollback off: the new generation stands, not ready
                await off_loop(self.store.set_status, name, desired=KIND.running,
                                  envFiles=dict(values.env_digests))  # fmt: skip
                await self._refresh(name)
                self._publish(name, await self._state_word(record), generation=record.generation,
                              error=exc.message)  # fmt: skip
                raise
            if previous is None:
                await self._failed_first(name, record, exc)
                raise
            await off_loop(self.store.mark_rolled_back, name, record.generation, exc.message)
            await self._refresh(name)
            self._publish(name, await self._state_word(previous), generation=previous.generation,
                          error=exc.message)  # fmt: skip
            raise
        except BaseException as exc:
            await off_loop(self.store.drop_generation, name, record.generation)
            await self._refresh(name)
            if previous is None:
                self._publish(name, "failed", generation=record.generation,
                              error=public_message(exc))  # fmt: skip
                with contextlib.suppress(IycloError):
                    await self.steps.stop(naming.slice_name(name))
                self.events.forget(name)
            else:
                with contextlib.suppress(IycloError):
                    state = await self._state_word(previous)
                    self._publish(name, state, generation=previous.generation,
                                  error=public_message(exc))  # fmt: skip
            raise
        await off_loop(self.store.set_status, name, desired=KIND.running,
                          envFiles=dict(values.env_digests))  # fmt: skip
        await self._refresh(name)
        self._publish(name, "running", generation=record.generation)
        log.info("applied", pod=name, generation=record.generation)
        return ApplyResult(name, KIND.api_name, record.generation, True, "running")

    async def _failed_first(self, name: str, record: Deployment, exc: BaseException) -> None:
        """A first apply that failed: nothing of it stays."""
        await off_loop(self.store.drop_generation, name, record.generation)
        self._publish(name, "failed", generation=record.generation, error=public_message(exc))
        with contextlib.suppress(IycloError):
            await self.steps.stop(naming.slice_name(name))
        self.events.forget(name)
        self.guard.forget(name)

    async def _update_in_place(
        self, manifest: Pod, digest: str, previous: Deployment, values: SecretValues
    ) -> ApplyResult | None:
        """Set changed slice limits, and container limits where Podman keeps them, on the
        running pod (see ``core.update``); None when the change needs a new generation of
        the pod, or nothing runs to update. A changed secret value always does: the
        containers hold the old one."""
        old = parse_manifest(previous.manifest, UNRESTRICTED)
        if not isinstance(old, Pod):
            return None
        if previous.digest != values.rollout_digest(manifest_digest(old)):
            return None
        features = (await self.steps.podman.platform()).features
        change = in_place_update(old, manifest, keeps_updates=features.keeps_updates)
        if change is None:
            return None
        plan = self._plan(previous)
        unit = await self.steps.service_state(plan.unit)  # Slice is a Service property
        slice_ = await self.steps.unit_state(plan.slice)
        if (
            not is_active(unit)
            or unit is None
            or unit.get("Slice") != plan.slice  # a pod from before pods had their own slice
            or not is_active(slice_)
        ):
            return None
        record: Deployment = await off_loop(
            self.store.apply, manifest.name, KIND.value, dump_manifest(manifest), digest,
            pod_generation=previous.pod_generation, images=previous.images,
        )  # fmt: skip
        self._publish(manifest.name, "applying", generation=record.generation)
        # best effort on failure: the old limits back (one that was unset stays as set)
        before = {str(c.name): container_update_resources(c.resources) for c in old.containers}
        updated: list[str] = []
        try:
            await self.steps.systemd.set_unit_properties(
                plan.slice, True, [prop(key, value) for key, value in change.slice_properties]
            )
            for container, resources in change.containers:
                updated.append(container)
                await self.steps.podman.update_container(
                    naming.container_name(plan.pod_name, container), resources
                )
        except BaseException as exc:
            with contextlib.suppress(IycloError):  # a property set before the failure
                await self.steps.systemd.set_unit_properties(
                    plan.slice, True, [prop(k, v) for k, v in plan.slice_properties]
                )
            for container in updated:  # and the limits of the containers changed so far
                with contextlib.suppress(IycloError):
                    await self.steps.podman.update_container(
                        naming.container_name(plan.pod_name, container), before[container]
                    )
            await off_loop(self.store.drop_generation, manifest.name, record.generation)
            state = await self._state_word(previous)
            self._publish(manifest.name, state, generation=previous.generation,
                          error=public_message(exc))  # fmt: skip
            raise
        await self._refresh(manifest.name)
        self._publish(manifest.name, "running", generation=record.generation)
        log.info("updated in place", pod=manifest.name, generation=record.generation,
                 pod_generation=record.pod_generation)  # fmt: skip
        return ApplyResult(manifest.name, KIND.api_name, record.generation, True, IN_PLACE)

    async def _replace(
        self,
        manifest: Pod,
        record: Deployment,
        previous: Deployment | None,
        values: SecretValues,
        wait_timeout: float | None,
    ) -> None:
        """The new generation's pod, started and ready, in the old one's place.

        ``replace``: the old unit stops, the new one starts, then readiness is waited for.
        ``start-first``: the new pod starts beside the old (outside the unit), readiness is
        waited for, then the old unit stops and the unit starts on the new pod, which
        adopts it as it runs (the unit's ``podman pod start`` has nothing left to start).
        If any step fails or the new generation is not ready, the new pod (and its
        secrets and new volumes) go and the old generation runs again, or, with
        ``rollback: false``, a new generation that is merely not ready stays."""
        plan = plan_pod(manifest, record.generation, record.digest, policy=self.steps.policy)
        made = await self.steps.create_pod(plan, self._description(plan), values)
        old_plan = self._plan(previous) if previous is not None else None
        old_was_running = False
        if old_plan is not None:
            old_was_running = is_running(await self.steps.unit_state(old_plan.unit))
        beside = old_was_running and manifest.update.strategy == "start-first"
        if beside and old_plan is not None and (clash := _port_clash(old_plan, plan)):
            beside = False
            self._publish(manifest.name, "applying", generation=record.generation,
                          error=f"start-first: host port {clash} is the running generation's "
                                "too; replacing it instead")  # fmt: skip
        old_stopped = False
        try:
            if beside:
                await self.steps.podman.start_pod(plan.pod_name)
                await self._wait_ready(plan, wait_timeout)
            if old_plan is not None:
                await self.steps.stop(old_plan.unit)
                old_stopped = True
            await self._with_init_output(plan, self._start_unit(plan))
            if not beside:
                await self._wait_ready(plan, wait_timeout)
        except NotReadyError as exc:
            if not manifest.update.rollback:
                if not old_stopped and old_plan is not None:
                    await self.steps.stop(old_plan.unit)
                    await self._start_unit(plan)
                await self.steps.remove_other_generations(manifest.name, keep=plan.pod_name)
                kept = NotReadyError(f"generation {record.generation} is not ready "
                                     f"({exc.message}); rollback is off, so it stays")  # fmt: skip
                kept.kept = True
                raise kept from None
            await self._undo(plan, made, old_stopped, old_plan if old_was_running else None)
            to = f"rolled back to generation {previous.generation}" if previous else "removed"
            raise NotReadyError(
                f"generation {record.generation} is not ready ({exc.message}); {to}"
            ) from None
        except BaseException:
            await self._undo(plan, made, old_stopped, old_plan if old_was_running else None)
            raise
        if previous is not None:  # a first generation has no other (issue #15: at 200 pods
            # Podman's lists of pods and secrets cost most of an apply); what a crash left of
            # a removed one is an orphan, which the start-up reconcile removes
            await self.steps.remove_other_generations(manifest.name, keep=plan.pod_name)

    async def _with_init_output(self, plan: PodPlan, start: Awaitable[None]) -> None:
        """A start that failed because an init container did says so with that container's
        own last lines: Podman's error names only its ID and exit code."""
        try:
            await start
        except SystemdError:
            for container in plan.manifest.init_containers:
                name = naming.container_name(plan.pod_name, container.name)
                try:
                    state = (await self.steps.podman.inspect_container(name)).get("State") or {}
                    if not state.get("ExitCode"):
                        continue
                    lines = (await self.steps.podman.container_output(name)).splitlines()
                except IycloError:
                    continue
                output = " | ".join(line.strip() for line in lines[-5:] if line.strip())
                raise SystemdError(
                    f"init container {container.name} exited with code {state['ExitCode']}: "
                    f"{output or '(no output)'}"
                ) from None
            raise

    async def _undo(
        self, plan: PodPlan, made: list[str], unit_is_new: bool, old: PodPlan | None
    ) -> None:
        """The new generation gone again: its unit stopped when the unit is the new one's
        (the old unit was stopped for it; a start-first that failed before the switch left
        the old unit alone), its pod discarded; ``old``, the plan of a generation that ran,
        started again if it was stopped."""
        if unit_is_new:
            with contextlib.suppress(IycloError):
                await self.steps.stop(plan.unit)
        await self.steps.discard_pod(plan, made)
        if old is not None and unit_is_new:
            restart = old
            log.warning("apply failed; restarting previous generation", pod=plan.name)
            with contextlib.suppress(IycloError):
                await self._start_unit(restart)

    async def _wait_ready(self, plan: PodPlan, wait_timeout: float | None) -> None:
        """Readiness of the new generation, each change of a container's health an event."""
        if not checked(plan.manifest):
            return

        def progress(health: Health) -> None:
            self._heard(plan.name, plan.generation, health)

        within = wait_timeout or duration_seconds(plan.manifest.update.ready_timeout)
        self._publish(plan.name, "starting", generation=plan.generation)
        await wait_ready(self.steps, plan, within, progress, self.guard)

    def _heard(self, pod: str, generation: int, health: Health) -> None:
        """A health a wait read from Podman itself: the guard's view, and so ``status``,
        go on from it, with an event when it changed. Podman's ``health_status`` event
        for the same check can come later: a pod started on a ready dependency found that
        dependency still "starting" in ``iyclo get`` on a busy Debian 12 root."""
        last = self.guard.last(pod, health.container, generation)
        self.guard.note(pod, generation, health)
        if last is None or last.status != health.status:
            self.guard.publish(pod, health.container, health.status or "starting", generation,
                               output=health.output)  # fmt: skip

    async def _ensure_running(self, record: Deployment) -> str:
        """Nothing to do unless the pod is missing or was stopped."""
        plan = self._plan(record)
        if is_running(await self.steps.unit_state(plan.unit)):
            return "running"
        await self.steps.check_host(plan)
        await self._wait_for_dependencies(plan.manifest)
        await self.steps.ensure_pod(plan, self._description(plan))
        await self._start_unit(plan)
        await off_loop(self.store.set_status, record.name, desired=KIND.running)
        await self._refresh(record.name)
        self._publish(record.name, "running", generation=record.generation)
        return "running"

    async def remove(self, record: Deployment, *, purge_history: bool) -> None:
        """Unit, Podman pods, slice and record; a pod has no run history to keep."""
        name = record.name
        plan = self._plan(record)
        self._publish(name, "removing", generation=record.generation)
        await self.steps.stop(plan.unit)
        await self.steps.remove_other_generations(name, keep=None)
        await self.steps.stop(plan.slice)
        await off_loop(self.store.remove, name)
        self.live.forget(name)
        self._publish(name, "removed", generation=record.generation)
        self.events.forget(name)
        log.info("removed", pod=name)

    async def start(self, record: Deployment) -> str:
        return await self._ensure_running(record)

    async def stop(self, record: Deployment) -> str:
        await self.steps.stop(KIND.service(record.name))
        await off_loop(self.store.set_status, record.name, desired="stopped")
        await self._refresh(record.name)
        self._publish(record.name, "stopped", generation=record.generation)
        return "stopped"

    async def restart(self, record: Deployment) -> str:
        """Through systemd when it runs (same containers), else a start."""
        unit = KIND.service(record.name)
        if not is_running(await self.steps.unit_state(unit)):
            return await self._ensure_running(record)
        await self.steps.check_host(self._plan(record))
        self._publish(record.name, "restarting", generation=record.generation)
        await self.steps.restart(unit)
        await self._refresh(record.name)
        self._publish(record.name, "running", generation=record.generation)
        return "running"

    # -- reads --------------------------------------------------------------------------

    async def status(self, record: Deployment) -> dict[str, Any]:
        """From the live cache: no Podman call on the hot path."""
        name = record.name
        unit_name = KIND.service(name)
        unit = await self.live.unit(name, unit_name)
        kills = record.status.get("oomKills") or {}
        containers = [
            {**{k: v for k, v in c.items() if k != "generation"}, **oom_fields(c, kills)}
            for c in await self.live.containers(name)
            if c["generation"] == record.pod_generation
        ]
        desired = record.status.get("desired", KIND.running)
        checked_names = _checked_names(record.manifest)
        for row in containers:
            seen = self.guard.last(name, str(row["name"]), record.pod_generation)
            row["health"] = seen.status if seen and seen.status else row.get("health", "")
            if row["name"] in checked_names:
                row["healthOutput"] = seen.output if seen is not None else ""
        ready = all(row.get("health") == "healthy" for row in containers
                    if row["name"] in checked_names)  # fmt: skip
        state = state_word(unit, desired)
        if state == "running" and not ready:
            state = "starting"
        health_restarts = int(record.status.get("healthRestarts", 0))
        return {
            "name": name,
            "kind": KIND.api_name,
            "ready": ready and state == "running",
            "healthRestarts": health_restarts,
            "generation": record.generation,
            "digest": record.digest,
            "images": record.images,
            "appliedAt": record.applied_at.isoformat(),
            "desired": desired,
            "state": state,
            "unit": unit_name,
            "podmanPod": naming.podman_pod_name(name, record.pod_generation),
            "activeState": unit.get("ActiveState") or Active.INACTIVE,
            "subState": unit.get("SubState") or "dead",
            "restarts": int(unit.get("NRestarts") or 0)
            + int(record.status.get("podRestarts", 0))
            + health_restarts,
            "mainPid": int(unit.get("MainPID") or 0),
            "since": usec_iso(unit.get("ActiveEnterTimestamp", 0)),
            "slice": unit.get("Slice") or "",
            "containers": sorted(containers, key=lambda c: str(c["name"])),
        }

    async def logs(self, record: Deployment, run: int, lines: int | None) -> dict[str, Any]:
        """The unit's journal: a pod has no runs."""
        if run:
            raise InvalidError(f"pod '{record.name}' has no runs; leave out the run number")
        unit = KIND.service(record.name)
        entries, _ = await newest_lines(
            unit_matches([unit]), 200 if lines is None else max(lines, 0)
        )
        return {"name": record.name, "kind": KIND.api_name, "unit": unit, "entries": entries}

    # -- reconcile ----------------------------------------------------------------------

    def surveyed_units(self, record: Deployment) -> tuple[str, ...]:
        return (KIND.service(record.name),)

    async def reconcile_one(self, record: Deployment, survey: Survey | None = None) -> str:
        # A pod found running is adopted from its names alone: planning it (parsing the
        # manifest again) is for one that must be made.
        unit = KIND.service(record.name)
        pod_name = naming.podman_pod_name(record.name, record.pod_generation)
        if survey is not None and unit in survey.services:
            state, asked = survey.services[unit], survey.units_asked
        else:
            state, asked = await self.steps.settled_service_state(unit), None
        desired = record.status.get("desired", KIND.running)
        if is_running(state):
            if pod_of_unit(state) in (None, pod_name):
                self.live.remember_unit(record.name, state, asked)
                await self.steps.remove_other_generations(record.name, pod_name, survey)
                self._publish(record.name, "running", generation=record.generation)
                return "adopted"
            # The daemon died mid-update: the unit still runs an older generation.
            await self.steps.stop(unit)
        if desired == "stopped":
            self._publish(record.name, "stopped", generation=record.generation)
            return "stopped"
        plan = self._plan(record)
        await self.steps.check_host(plan)
        await self._wait_for_dependencies(plan.manifest)  # the reconcile made them first
        await self.steps.ensure_pod(plan, self._description(plan))
        await self._start_unit(plan)
        await self.steps.remove_other_generations(record.name, keep=plan.pod_name)
        self._publish(record.name, "running", generation=record.generation)
        return "recreated"

    async def remove_orphans(self, known: set[str]) -> list[str]:
        removed: list[str] = []
        for unit in await self.steps.systemd.list_units_by_patterns([], KIND.unit_patterns()):
            owner = KIND.owner_of_unit(unit.name)
            if owner is not None and owner not in known:
                await self.steps.stop(unit.name)
                removed.append(unit.name)
        return removed

    # -- health (``core.probes``) --------------------------------------------------------

    async def _current_manifest(self, name: str, generation: int) -> tuple[Pod, str] | None:
        record: Deployment | None = await off_loop(self.store.find, name)
        if record is None or record.kind != KIND or record.pod_generation != generation:
            return None
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Pod):
            return None
        return manifest, naming.podman_pod_name(name, record.pod_generation)

    def _on_health(self, name: str, attributes: dict[str, str], status: str) -> None:
        container = attributes.get(naming.LABEL_CONTAINER)
        generation = attributes.get(naming.LABEL_GENERATION, "")
        if container and generation.isdigit():
            self.guard.reported(name, container, int(generation))

    def _on_container_started(self, name: str, attributes: dict[str, str]) -> None:
        self.bridges.soon()
        container = attributes.get(naming.LABEL_CONTAINER)
        generation = attributes.get(naming.LABEL_GENERATION, "")
        if container and generation.isdigit() and not self.locks.busy(name):
            self.guard.container_started(name, container, int(generation),
                                         self.steps.podman.url)  # fmt: skip

    async def _act_on_health(self, name: str, container: Container, on_failure: str) -> str:
        """``onFailure`` for a container that turned unhealthy (or failed to start), as
        ``HealthGuard`` asks; what was done, "" when systemd is busy with the pod already."""
        async with self.locks.hold(name):
            record: Deployment | None = await off_loop(self.store.find, name)
            unit = KIND.service(name)
            if record is None or not is_active(await self.steps.unit_state(unit)):
                return ""
            log.warning("unhealthy container", pod=name, container=container.name,
                        action=on_failure)  # fmt: skip
            if on_failure == "kill":
                plan = self._plan(record)
                await self.steps.podman.kill_container(
                    naming.container_name(plan.pod_name, container.name)
                )
            elif on_failure == "stop":
                await off_loop(self.store.set_status, name, desired="stopped")
                await self.steps.stop(unit)
            else:
                self._publish(name, "restarting", generation=record.generation)
                await self.steps.check_host(self._plan(record))
                await self.steps.systemd.restart_unit(unit, timeout=SYSTEMD_JOB, check=False)
                restarts = int(record.status.get("healthRestarts", 0)) + 1
                await off_loop(self.store.set_status, name, healthRestarts=restarts)
            await self._refresh(name)
            self._publish(name, await self._state_word(record), generation=record.generation)
            return on_failure

    # -- what the live cache sees -------------------------------------------------------

    async def _observed(self, name: str) -> None:
        """systemd or Podman changed a pod behind our back: tell the fronts."""
        if self.locks.busy(name):
            return  # the operation under way publishes its own states
        record: Deployment | None = await off_loop(self.store.find, name)
        if record is None or record.kind != KIND:
            return
        unit = self.live.pods.get(name)
        if unit is None:
            return
        state = state_word(unit.unit, record.status.get("desired", KIND.running))
        self._publish(name, state, generation=record.generation)

    async def _container_died(self, name: str, attributes: dict[str, str]) -> None:
        """systemd watches the main container; a pod's other containers are ours to watch."""
        if self.locks.busy(name):
            return
        record: Deployment | None = await off_loop(self.store.find, name)
        if record is None or record.kind != KIND:
            return
        if attributes.get(naming.LABEL_GENERATION) != str(record.pod_generation):
            return
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Pod):
            return
        sidecars = {str(c.name) for c in manifest.containers[1:]}  # not main, not init
        if attributes.get(naming.LABEL_CONTAINER) not in sidecars:
            return
        policy = manifest.restart.policy
        failed = attributes.get("containerExitCode", "0") != "0"
        if policy == "no" or (policy == "on-failure" and not failed):
            return
        unit = KIND.service(name)
        async with self.locks.hold(name):
            if not is_active(await self.steps.unit_state(unit)):
                return  # stopping or restarting already: systemd is on it
            try:
                await self.steps.check_host(self._plan(record))
            except InvalidError as exc:  # the main container runs on; systemd watches it
                log.warning("container died; restart refused", pod=name, error=exc.message,
                            container=attributes.get(naming.LABEL_CONTAINER))  # fmt: skip
                return
            log.info("container died; restarting its pod", pod=name,
                     container=attributes.get(naming.LABEL_CONTAINER))  # fmt: skip
            self._publish(name, "restarting", generation=record.generation)
            await self.steps.systemd.restart_unit(unit, timeout=SYSTEMD_JOB, check=False)
            restarts = int(record.status.get("podRestarts", 0)) + 1
            await off_loop(self.store.set_status, name, podRestarts=restarts)
            await self._refresh(name)
            self._publish(name, await self._state_word(record), generation=record.generation)

    async def _oom_killed(self, name: str, kill: OomKill) -> None:
        """Count a kernel OOM kill against the container it hit, in the record's status."""
        row = next((r for r in await self.live.containers(name) if r["id"] == kill.container_id),
                   None)  # fmt: skip
        if row is None:  # killed right after it started, before its event was handled
            await self.live.refresh_containers(name)
            row = next((r for r in await self.live.containers(name)
                        if r["id"] == kill.container_id), None)  # fmt: skip
        record: Deployment | None = await off_loop(self.store.find, name)
        if row is None or record is None:
            return
        kills = record_kill(record.status.get("oomKills") or {}, row["name"], kill, time.time())
        await off_loop(self.store.set_status, name, oomKills=kills)
        log.warning("container OOM-killed", pod=name, container=row["name"], task=kill.task,
                    pid=kill.pid, limit=kill.limit)  # fmt: skip
        await self._observed(name)
