"""The one service layer every front (D-Bus, JSON socket, CLI) calls.

It owns the desired state (the store) and turns it into Podman pods supervised
by transient systemd units. Each operation on a name runs under that name's lock,
and an apply is all-or-nothing: what a failed apply made is removed and the
previous generation keeps (or goes back to) running.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from attrs import frozen

from iyclo import __version__
from iyclo.core import naming
from iyclo.core.events import EventBus, PodChanged
from iyclo.core.jobs import Jobs, journal_lines
from iyclo.core.journal import start_failure_reason, unit_entries
from iyclo.core.oom import OomKill, oom_fields, record_kill
from iyclo.core.plan import PodPlan, plan_pod
from iyclo.core.slices import ensure_slice
from iyclo.core.state import LiveState
from iyclo.core.update import IN_PLACE, live_slice_properties
from iyclo.errors import (
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
    SystemdError,
    public_message,
)
from iyclo.manifest.convert import dump_manifest, load_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Job, Pod
from iyclo.manifest.policy import DEFAULT_POLICY, UNRESTRICTED, Policy
from iyclo.podman.client import PodmanClient
from iyclo.store import Deployment, Store
from iyclo.systemd.manager import SystemdManager
from iyclo.systemd.properties import prop

log = structlog.get_logger("iyclo.service")

ACTIVE_STATES = frozenset({"active", "activating", "reloading", "deactivating"})
UNIT_GONE_TIMEOUT = 15.0
JOB_TIMEOUT = 150.0


@frozen
class ApplyResult:
    name: str
    kind: str
    generation: int
    changed: bool
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "generation": self.generation,
            "changed": self.changed,
            "state": self.state,
        }


@frozen
class ReconcileReport:
    adopted: tuple[str, ...]
    recreated: tuple[str, ...]
    removed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "adopted": list(self.adopted),
            "recreated": list(self.recreated),
            "removed": list(self.removed),
            "failed": [{"name": n, "error": e} for n, e in self.failed],
        }


class Service:
    """Pods and jobs: apply, remove, start, stop, restart, inspect, reconcile."""

    def __init__(
        self,
        store: Store,
        systemd: SystemdManager,
        podman: PodmanClient,
        *,
        policy: Policy = DEFAULT_POLICY,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.systemd = systemd
        self.podman = podman
        self.policy = policy
        self.events = events or EventBus()
        self._locks: dict[str, asyncio.Lock] = {}
        self._global = asyncio.Lock()
        self.jobs = Jobs(store, systemd, podman, self.events)  # kind Job: see core/jobs.py
        self.live = LiveState(systemd, podman)
        self.live.on_change = self._observed
        self.live.on_container_died = self._container_died
        self.live.on_oom = self._oom_killed

    async def start_monitoring(self) -> None:
        """Fill the live cache and keep it current from systemd's and Podman's events."""
        await self.live.resync(self._units())
        self.live.start(self._units)

    async def close(self) -> None:
        await self.live.close()

    def _units(self) -> dict[str, str]:
        """Pods the live cache follows (jobs keep their own run records)."""
        return {
            r.name: naming.unit_name(r.kind, r.name) for r in self.store.list() if r.kind == "pod"
        }

    # -- helpers --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    async def _store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _record(self, name: str) -> Deployment:
        record: Deployment = await self._store(self.store.get, name)
        return record

    def _plan(self, record: Deployment) -> PodPlan:
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Pod):
            raise InvalidError(f"{record.kind} '{record.name}' is not a pod")
        return plan_pod(
            manifest, record.generation, record.digest, pod_generation=record.pod_generation
        )

    async def _unit_state(self, unit: str) -> dict[str, Any] | None:
        """The unit's Unit+Service properties, or None when systemd has no such unit."""
        try:
            await self.systemd.get_unit(unit)
        except NotFoundError:
            return None
        props = await self.systemd.unit_properties(unit)
        with contextlib.suppress(IycloError):
            props.update(
                await self.systemd.unit_properties(unit, "org.freedesktop.systemd1.Service")
            )
        return props

    async def _wait_unit_gone(self, unit: str) -> None:
        """A stopped transient unit must be unloaded before one of that name starts again."""
        with contextlib.suppress(NotFoundError, SystemdError):
            await self.systemd.reset_failed_unit(unit)
        deadline = time.monotonic() + UNIT_GONE_TIMEOUT
        while time.monotonic() < deadline:
            state = await self._unit_state(unit)
            if state is None or state.get("LoadState") == "not-found":
                return
            if state.get("ActiveState") in ("failed",):
                with contextlib.suppress(NotFoundError, SystemdError):
                    await self.systemd.reset_failed_unit(unit)
            await asyncio.sleep(0.05)
        raise SystemdError(f"unit {unit} is still loaded {UNIT_GONE_TIMEOUT:.0f}s after its stop")

    async def _stop_unit(self, unit: str) -> None:
        state = await self._unit_state(unit)
        if state is None:
            return
        if state.get("ActiveState") in ACTIVE_STATES:
            with contextlib.suppress(NotFoundError):
                await self.systemd.stop_unit(unit, timeout=JOB_TIMEOUT)
        await self._wait_unit_gone(unit)

    async def _ensure_slice(self, plan: PodPlan, *, update: bool) -> None:
        """The pod's own slice, with the plan's limits if it is started or ``update``."""
        await ensure_slice(
            self.systemd, plan.slice, f"iyclo pod {plan.name}: its unit and containers",
            plan.slice_properties, update=update, wait_gone=self._wait_unit_gone,
        )  # fmt: skip

    async def _start_unit(self, plan: PodPlan) -> None:
        """Hand the pod to systemd; on failure say why, from the unit's own journal."""
        await self._ensure_slice(plan, update=True)
        await self._wait_unit_gone(plan.unit)
        properties = [prop(key, value) for key, value in plan.unit_properties]
        started = time.time()
        result = await self.systemd.start_transient_unit(
            plan.unit, properties, timeout=JOB_TIMEOUT, check=False
        )
        if result != "done":
            reason = await start_failure_reason(plan.unit, since=started)
            with contextlib.suppress(IycloError):
                await self._stop_unit(plan.unit)
            detail = f": {reason}" if reason else ""
            raise SystemdError(f"unit {plan.unit} did not start ({result}){detail}")

    async def _create_pod(self, plan: PodPlan) -> None:
        """Images, pod and containers of one generation; on failure nothing stays."""
        for container in plan.containers:
            await self.podman.ensure_image(container.image)
        await self._ensure_slice(plan, update=False)
        await self.podman.create_pod_with_containers(
            plan.pod_name, plan.pod_spec, [c.spec for c in plan.containers]
        )

    async def _remove_other_generations(self, name: str, keep: str | None) -> list[str]:
        removed = []
        for pod in await self.podman.list_pods(f"{naming.LABEL_POD}={name}"):
            pod_name = str(pod.get("Name", ""))
            if pod_name and pod_name != keep:
                await self.podman.remove_pod(pod_name)
                removed.append(pod_name)
        return removed

    def _publish(self, name: str, state: str, *, generation: int = 0, error: str = "") -> None:
        self.events.publish(PodChanged(name=name, state=state, generation=generation, error=error))

    async def _refresh(self, name: str, unit: str) -> None:
        """Bring the live cache up to date after an operation changed the host."""
        with contextlib.suppress(IycloError):
            await self.live.refresh_unit(name, unit)
            await self.live.refresh_containers(name)

    async def _observed(self, name: str) -> None:
        """systemd or Podman changed a pod behind our back: tell the fronts."""
        lock = self._locks.get(name)
        if lock is not None and lock.locked():
            return  # the operation under way publishes its own states
        record: Deployment | None = await self._store(self.store.find, name)
        if record is None or record.kind != "pod":
            return
        unit = self.live.pods.get(name)
        if unit is None:
            return
        state = _state_word(unit.unit, record.status.get("desired", "running"))
        self._publish(name, state, generation=record.generation)

    async def _container_died(self, name: str, attributes: dict[str, str]) -> None:
        """systemd watches the main container; a pod's other containers are ours to watch."""
        lock = self._locks.get(name)
        if lock is not None and lock.locked():
            return
        record: Deployment | None = await self._store(self.store.find, name)
        if record is None or record.kind != "pod":
            return
        if attributes.get(naming.LABEL_GENERATION) != str(record.pod_generation):
            return
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Pod) or attributes.get(naming.LABEL_CONTAINER) == (
            manifest.containers[0].name
        ):
            return
        policy = manifest.restart.policy
        failed = attributes.get("containerExitCode", "0") != "0"
        if policy == "no" or (policy == "on-failure" and not failed):
            return
        unit = naming.unit_name("Pod", name)
        async with self._locked(name):
            state = await self._unit_state(unit)
            if state is None or state.get("ActiveState") != "active":
                return  # stopping or restarting already: systemd is on it
            log.info("container died; restarting its pod", pod=name,
                     container=attributes.get(naming.LABEL_CONTAINER))  # fmt: skip
            self._publish(name, "restarting", generation=record.generation)
            await self.systemd.restart_unit(unit, timeout=JOB_TIMEOUT, check=False)
            restarts = int(record.status.get("podRestarts", 0)) + 1
            await self._store(self.store.set_status, name, podRestarts=restarts)
            await self._refresh(name, unit)
            self._publish(name, await self._state_word(record), generation=record.generation)

    async def _oom_killed(self, name: str, kill: OomKill) -> None:
        """Count a kernel OOM kill against the container it hit, in the record's status."""
        row = next((r for r in await self.live.containers(name) if r["id"] == kill.container_id),
                   None)  # fmt: skip
        if row is None:  # killed right after it started, before its event was handled
            await self.live.refresh_containers(name)
            row = next((r for r in await self.live.containers(name)
                        if r["id"] == kill.container_id), None)  # fmt: skip
        record: Deployment | None = await self._store(self.store.find, name)
        if row is None or record is None:
            return
        kills = record_kill(record.status.get("oomKills") or {}, row["name"], kill, time.time())
        await self._store(self.store.set_status, name, oomKills=kills)
        log.warning("container OOM-killed", pod=name, container=row["name"], task=kill.task,
                    pid=kill.pid, limit=kill.limit)  # fmt: skip
        await self._observed(name)

    # -- operations -----------------------------------------------------------------

    async def validate(self, manifest: str | dict[str, Any]) -> list[str]:
        try:
            load_manifest(manifest, self.policy)
        except InvalidError as exc:
            return exc.details
        return []

    async def apply(self, manifest_in: str | dict[str, Any]) -> ApplyResult:
        manifest = load_manifest(manifest_in, self.policy)
        if isinstance(manifest, Job):  # -- jobs (feat/jobs)
            async with self._locked(manifest.name):
                job = await self.jobs.apply(manifest)
            return ApplyResult(manifest.name, "Job", job.generation, job.changed, job.state)
        digest = manifest_digest(manifest)
        async with self._locked(manifest.name):
            previous: Deployment | None = await self._store(self.store.find, manifest.name)
            if previous is not None and previous.kind != "pod":
                raise ConflictError(
                    f"cannot apply pod '{manifest.name}': a {previous.kind} with that name exists"
                )
            if previous is not None and previous.digest == digest:
                state = await self._ensure_running(previous)
                return ApplyResult(manifest.name, "Pod", previous.generation, False, state)
            if previous is not None:
                updated = await self._update_in_place(manifest, digest, previous)
                if updated is not None:
                    return updated
            record: Deployment = await self._store(
                self.store.apply, manifest.name, "pod", dump_manifest(manifest), digest
            )
            self._publish(manifest.name, "applying", generation=record.generation)
            try:
                await self._replace(manifest, record, previous)
            except BaseException as exc:
                await self._store(self.store.drop_generation, manifest.name, record.generation)
                await self._refresh(manifest.name, naming.unit_name("Pod", manifest.name))
                state = "failed" if previous is None else await self._state_word(previous)
                self._publish(manifest.name, state, error=public_message(exc))
                if previous is None:
                    with contextlib.suppress(IycloError):
                        await self._stop_unit(naming.slice_name(manifest.name))
                    self.events.forget(manifest.name)
                raise
            await self._store(self.store.set_status, manifest.name, desired="running")
            await self._refresh(manifest.name, naming.unit_name("Pod", manifest.name))
            self._publish(manifest.name, "running", generation=record.generation)
            log.info("applied", pod=manifest.name, generation=record.generation)
            return ApplyResult(manifest.name, "Pod", record.generation, True, "running")

    async def _update_in_place(
        self, manifest: Pod, digest: str, previous: Deployment
    ) -> ApplyResult | None:
        """Set changed slice limits on the running pod (see ``core.update``); None when the
        change needs a new generation of the pod, or nothing runs to update."""
        old = parse_manifest(previous.manifest, UNRESTRICTED)
        live = live_slice_properties(old, manifest) if isinstance(old, Pod) else None
        if live is None:
            return None
        plan = self._plan(previous)
        unit = await self._unit_state(plan.unit)
        slice_ = await self._unit_state(plan.slice)
        if (
            unit is None
            or unit.get("ActiveState") != "active"
            or unit.get("Slice") != plan.slice  # a pod from before pods had their own slice
            or slice_ is None
            or slice_.get("ActiveState") != "active"
        ):
            return None
        record: Deployment = await self._store(
            self.store.apply, manifest.name, "pod", dump_manifest(manifest), digest,
            pod_generation=previous.pod_generation,
        )  # fmt: skip
        self._publish(manifest.name, "applying", generation=record.generation)
        try:
            await self.systemd.set_unit_properties(
                plan.slice, True, [prop(key, value) for key, value in live]
            )
        except BaseException as exc:
            with contextlib.suppress(IycloError):  # a property set before the failure
                await self.systemd.set_unit_properties(
                    plan.slice, True, [prop(k, v) for k, v in plan.slice_properties]
                )
            await self._store(self.store.drop_generation, manifest.name, record.generation)
            self._publish(
                manifest.name, await self._state_word(previous), error=public_message(exc)
            )
            raise
        await self._refresh(manifest.name, plan.unit)
        self._publish(manifest.name, "running", generation=record.generation)
        log.info("updated in place", pod=manifest.name, generation=record.generation,
                 pod_generation=record.pod_generation)  # fmt: skip
        return ApplyResult(manifest.name, "Pod", record.generation, True, IN_PLACE)

    async def _replace(
        self, manifest: Pod, record: Deployment, previous: Deployment | None
    ) -> None:
        plan = plan_pod(manifest, record.generation, record.digest)
        await self._create_pod(plan)
        old_plan = self._plan(previous) if previous is not None else None
        old_was_running = False
        if old_plan is not None:
            state = await self._unit_state(old_plan.unit)
            old_was_running = state is not None and state.get("ActiveState") in ACTIVE_STATES
            await self._stop_unit(old_plan.unit)
        try:
            await self._start_unit(plan)
        except BaseException:
            with contextlib.suppress(IycloError):
                await self.podman.remove_pod(plan.pod_name)
            if old_plan is not None and old_was_running:
                log.warning("apply failed; restarting previous generation", pod=manifest.name)
                with contextlib.suppress(IycloError):
                    await self._start_unit(old_plan)
            raise
        await self._remove_other_generations(manifest.name, keep=plan.pod_name)

    async def _ensure_running(self, record: Deployment) -> str:
        """An unchanged apply: nothing to do unless the pod is missing or was stopped."""
        plan = self._plan(record)
        state = await self._unit_state(plan.unit)
        if state is not None and state.get("ActiveState") in ACTIVE_STATES:
            return "running"
        if not await self.podman.pod_exists(plan.pod_name):
            await self._create_pod(plan)
        await self._start_unit(plan)
        await self._store(self.store.set_status, record.name, desired="running")
        await self._refresh(record.name, plan.unit)
        self._publish(record.name, "running", generation=record.generation)
        return "running"

    async def remove(self, name: str, purge_history: bool = False) -> None:
        """Remove a pod or job; a job's run history stays unless `purge_history`."""
        async with self._locked(name):
            record = await self._record(name)
            if record.kind == "job":  # -- jobs (feat/jobs)
                await self.jobs.remove(record, purge_history=purge_history)
                return
            plan = self._plan(record)
            self._publish(name, "removing")
            await self._stop_unit(plan.unit)
            await self._remove_other_generations(name, keep=None)
            await self._stop_unit(plan.slice)
            await self._store(self.store.remove, name)
            self.live.forget(name)
            self._publish(name, "removed")
            self.events.forget(name)
            log.info("removed", pod=name)

    async def start(self, name: str) -> str:
        async with self._locked(name):
            record = await self._record(name)
            if record.kind == "job":  # -- jobs (feat/jobs)
                return await self.jobs.start_job(record)
            return await self._ensure_running(record)

    async def stop(self, name: str) -> str:
        async with self._locked(name):
            record = await self._record(name)
            if record.kind == "job":  # -- jobs (feat/jobs)
                return await self.jobs.stop_job(record)
            await self._stop_unit(self._plan(record).unit)
            await self._store(self.store.set_status, name, desired="stopped")
            await self._refresh(name, self._plan(record).unit)
            self._publish(name, "stopped")
            return "stopped"

    async def restart(self, name: str) -> str:
        async with self._locked(name):
            record = await self._record(name)
            if record.kind == "job":  # -- jobs (feat/jobs)
                return await self.jobs.restart_job(record)
            plan = self._plan(record)
            state = await self._unit_state(plan.unit)
            if state is not None and state.get("ActiveState") in ACTIVE_STATES:
                self._publish(name, "restarting")
                await self.systemd.restart_unit(plan.unit, timeout=JOB_TIMEOUT)
                await self._refresh(name, plan.unit)
                self._publish(name, "running")
                return "running"
            return await self._ensure_running(record)

    # -- reads ----------------------------------------------------------------------

    async def _state_word(self, record: Deployment) -> str:
        state = await self._unit_state(self._plan(record).unit)
        return _state_word(state, record.status.get("desired", "running"))

    async def status(self, name: str) -> dict[str, Any]:
        """A pod's state from the live cache (no Podman call on the hot path)."""
        record = await self._record(name)
        if record.kind == "job":  # -- jobs (feat/jobs)
            return await self.jobs.status(record)
        unit_name = naming.unit_name(record.kind, name)
        unit = await self.live.unit(name, unit_name)
        kills = record.status.get("oomKills") or {}
        containers = [
            {**{k: v for k, v in c.items() if k != "generation"}, **oom_fields(c, kills)}
            for c in await self.live.containers(name)
            if c["generation"] == record.pod_generation
        ]
        desired = record.status.get("desired", "running")
        return {
            "name": name,
            "kind": record.kind.capitalize(),
            "generation": record.generation,
            "digest": record.digest,
            "appliedAt": record.applied_at.isoformat(),
            "desired": desired,
            "state": _state_word(unit, desired),
            "unit": unit_name,
            "podmanPod": naming.podman_pod_name(name, record.pod_generation),
            "activeState": unit.get("ActiveState") or "inactive",
            "subState": unit.get("SubState") or "dead",
            "restarts": int(unit.get("NRestarts") or 0) + int(record.status.get("podRestarts", 0)),
            "mainPid": int(unit.get("MainPID") or 0),
            "since": _usec_to_iso(unit.get("ActiveEnterTimestamp", 0)),
            "slice": unit.get("Slice") or "",
            "containers": sorted(containers, key=lambda c: str(c["name"])),
        }

    async def list_all(self) -> list[dict[str, Any]]:
        records: list[Deployment] = await self._store(self.store.list)
        out = []
        for record in records:
            try:
                out.append(await self.status(record.name))
            except NotFoundError:
                continue
        return out

    async def manifest(self, name: str, generation: int = 0) -> dict[str, Any]:
        if generation == 0:
            return (await self._record(name)).manifest
        result: dict[str, Any] = await self._store(self.store.manifest, name, generation)
        return result

    async def history(self, name: str) -> list[dict[str, Any]]:
        record = await self._record(name)
        generations = await self._store(self.store.history, name)
        return [
            {
                "generation": g.generation,
                "digest": g.digest,
                "appliedAt": g.applied_at.isoformat(),
                "current": g.generation == record.generation,
            }
            for g in generations
        ]

    async def diff(self, manifest_in: str | dict[str, Any]) -> str:
        """A unified diff of the stored manifest against a proposed one (empty: no change)."""
        manifest = load_manifest(manifest_in, self.policy)
        record: Deployment | None = await self._store(self.store.find, manifest.name)
        before = json.dumps(record.manifest, indent=2, sort_keys=True) if record else ""
        after = json.dumps(dump_manifest(manifest), indent=2, sort_keys=True)
        label = f"{manifest.name} (generation {record.generation})" if record else "(none)"
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=label,
            tofile=f"{manifest.name} (proposed)",
        )
        return "".join(lines)

    def version(self) -> str:
        return __version__

    # -- jobs (feat/jobs) -------------------------------------------------------------

    async def run_job(self, name: str) -> dict[str, Any]:
        """Start a run of job `name` now; ConflictError while one is going."""
        async with self._locked(name):
            record = await self._record(name)
            if record.kind != "job":
                raise InvalidError(f"{record.kind} '{name}' is not a job; only jobs can be run")
            return await self.jobs.run_now(record)

    async def runs(self, name: str) -> list[dict[str, Any]]:
        """Run history of job `name`, oldest first (kept after a remove by default)."""
        return await self.jobs.runs(name)

    async def logs(self, name: str, run: int = 0, lines: int | None = None) -> dict[str, Any]:
        """A job run's output (`run` 0: the newest), or a pod unit's journal."""
        record: Deployment | None = await self._store(self.store.find, name)
        if record is None or record.kind == "job":
            return await self.jobs.logs(name, run, lines)
        if run:
            raise InvalidError(f"pod '{name}' has no runs; leave out the run number")
        unit = self._plan(record).unit
        entries = await unit_entries([unit], lines=lines if lines is not None else 200)
        return {"name": name, "kind": "Pod", "unit": unit, "entries": journal_lines(entries)}

    # -- reconcile ------------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Make systemd and Podman match the store: adopt, re-create, remove orphans."""
        async with self._global:
            adopted: list[str] = []
            recreated: list[str] = []
            removed: list[str] = []
            failed: list[tuple[str, str]] = []
            records: list[Deployment] = await self._store(self.store.list)
            known = {r.name for r in records}
            for record in records:
                try:
                    async with self._locked(record.name):
                        outcome = await self._reconcile_one(record)
                except IycloError as exc:
                    failed.append((record.name, exc.message))
                    log.error("reconcile failed", pod=record.name, error=exc.message)
                    continue
                if outcome == "adopted":
                    adopted.append(record.name)
                elif outcome == "recreated":
                    recreated.append(record.name)
            removed.extend(await self._remove_orphans(known))
            jobs = {r.name for r in records if r.kind == "job"}  # -- jobs (feat/jobs)
            removed.extend(await self.jobs.remove_orphans(jobs))
            with contextlib.suppress(IycloError):
                await self.live.resync(self._units())
            report = ReconcileReport(
                tuple(adopted), tuple(recreated), tuple(removed), tuple(failed)
            )
            log.info("reconciled", **report.to_json())
            return report

    async def _reconcile_one(self, record: Deployment) -> str:
        if record.kind == "job":  # -- jobs (feat/jobs)
            return await self.jobs.reconcile_one(record)
        plan = self._plan(record)
        state = await self._unit_state(plan.unit)
        desired = record.status.get("desired", "running")
        if state is not None and state.get("ActiveState") in ACTIVE_STATES:
            running_pod = _pod_of_unit(state)
            if running_pod in (None, plan.pod_name):
                await self._remove_other_generations(record.name, keep=plan.pod_name)
                self._publish(record.name, "running", generation=record.generation)
                return "adopted"
            # The daemon died mid-update: the unit still runs an older generation.
            await self._stop_unit(plan.unit)
        if desired == "stopped":
            self._publish(record.name, "stopped")
            return "stopped"
        if not await self.podman.pod_exists(plan.pod_name):
            await self._create_pod(plan)
        await self._start_unit(plan)
        await self._remove_other_generations(record.name, keep=plan.pod_name)
        self._publish(record.name, "running", generation=record.generation)
        return "recreated"

    async def _remove_orphans(self, known: set[str]) -> list[str]:
        removed: list[str] = []
        for unit in await self.systemd.list_units_by_patterns([], ["iyclo-pod-*.service"]):
            parsed = naming.parse_unit_name(unit.name)
            if parsed is not None and parsed[1] not in known:
                await self._stop_unit(unit.name)
                removed.append(unit.name)
        for pod in await self.podman.list_pods(naming.LABEL_POD):
            labels = pod.get("Labels") or {}
            if labels.get(naming.LABEL_POD) not in known:
                await self.podman.remove_pod(str(pod["Name"]))
                removed.append(str(pod["Name"]))
        for unit in await self.systemd.list_units_by_patterns(
            [], [f"{naming.SLICE_PREFIX}*.slice"]
        ):
            owner = naming.parse_slice_name(unit.name)
            if owner is not None and owner not in known:
                await self._stop_unit(unit.name)
                removed.append(unit.name)
        return removed


def _pod_of_unit(state: dict[str, Any]) -> str | None:
    """The Podman pod a running unit was started for, read from its ExecStart."""
    for entry in state.get("ExecStart") or []:
        argv = entry[1] if len(entry) > 1 else []
        if len(argv) >= 4 and argv[1:3] == ["pod", "start"]:
            return str(argv[3])
    return None


def _state_word(unit: dict[str, Any] | None, desired: str) -> str:
    """One word for people: running, starting, restarting, stopping, stopped, failed."""
    if unit is None or unit.get("LoadState") == "not-found":
        return "stopped" if desired == "stopped" else "missing"
    active, sub = unit.get("ActiveState", ""), unit.get("SubState", "")
    if active == "active":
        return "running"
    if active == "activating":
        return "restarting" if sub == "auto-restart" else "starting"
    if active == "deactivating":
        return "stopping"
    if active == "failed":
        return "failed"
    return "stopped"


def _usec_to_iso(value: Any) -> str:
    try:
        usec = int(value)
    except (TypeError, ValueError):
        return ""
    if usec <= 0:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(usec / 1_000_000))


def default_state_dir() -> Path:
    return Path("/var/lib/iyclo")
