"""Scheduled jobs: a systemd timer runs a job's containers to completion; iyclo keeps
the history of those runs (``run_records``).

``Service`` calls these holding the job's lock. What systemd does and what the daemon
does:

* **systemd schedules and runs.** ``plan_job`` describes the units: the transient
  ``iyclo-job-<name>.timer`` activates the oneshot ``iyclo-job-<name>.service`` whose
  ``ExecStart=`` lines run the containers of the generation's Podman pod in order. No
  run, and no overlap decision, depends on the daemon being up: systemd never starts a
  second instance of a running oneshot, ``overlap: queue`` is systemd's own coalescing
  of the elapses that fell inside a run into one catch-up run, and ``overlap: skip``
  is a timer restart at the end of each run (see ``plan_job``). ``Persistent=`` keeps
  the last trigger on disk, so after a reboot the reconcile re-creates the timer and
  systemd runs a missed run once.
* **The daemon keeps the record** of each run, from systemd's signals and journal
  (``run_records.RunRecorder``); the journal also points at each run's output
  (``_SYSTEMD_INVOCATION_ID``).

A stopped job has no units: stopping the timer lets systemd collect both units (the
service is collected with it, even after a failed run, by ``CollectMode=``), so
``start`` creates them again, as for pods. Run history is bounded per job by the store
and, by default, outlives ``remove`` (``purge_history`` drops it): like the journal,
it is a record of what happened, and numbering continues if the job comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import structlog

from iyclo.core import journal, naming, timeouts
from iyclo.core.events import EventBus
from iyclo.core.kind import Kind
from iyclo.core.plan_job import JobPlan, plan_job, timer_stamp
from iyclo.core.pulls import images_changed
from iyclo.core.results import ApplyResult
from iyclo.core.run_records import RunRecorder
from iyclo.core.runs import invocation_hex, usec_iso
from iyclo.core.secrets import SecretValues
from iyclo.core.steps import Steps, Survey, pod_of_unit
from iyclo.core.unit_state import is_active, is_ended, is_running
from iyclo.errors import (
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
    SystemdError,
    public_message,
)
from iyclo.manifest.convert import dump_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Job, Manifest
from iyclo.manifest.policy import UNRESTRICTED
from iyclo.store import Deployment, Store, off_loop
from iyclo.systemd.const import IFACE_TIMER
from iyclo.systemd.const import UnitActiveState as Active
from iyclo.systemd.properties import USEC_INFINITY

log = structlog.get_logger("iyclo.jobs")

KIND = Kind.JOB
# The manifest was validated when it was applied; reading it back must not depend on
# the daemon's current policy (a stored job stays manageable if the policy tightens).
STORED_POLICY = UNRESTRICTED  # also every seccomp profile and capability


def job_manifest(record: Deployment) -> Job:
    manifest = parse_manifest(record.manifest, STORED_POLICY)
    if not isinstance(manifest, Job):
        raise InvalidError(f"{record.kind} '{record.name}' is not a job")
    return manifest


def state_word(timer: dict[str, Any] | None, service: dict[str, Any] | None, desired: str) -> str:
    """One word for people: scheduled, running, stopped, missing or failed."""
    if is_running(service):
        return "running"
    if timer is None:
        return "stopped" if desired == "stopped" else "missing"
    active = timer.get("ActiveState")
    if active == Active.ACTIVE:
        return "scheduled"
    if active == Active.FAILED:
        return "failed"
    return "stopped" if desired == "stopped" else "missing"


def _began(service: dict[str, Any], previous: str, previous_start: int) -> bool:
    """Whether the service shows a run that began after the one identified by
    ``previous`` (an invocation about to start shows its new ID with the old
    timestamps first, so a new ID alone is not enough)."""
    invocation = invocation_hex(service.get("InvocationID"))
    if not invocation or invocation == previous:
        return False
    if is_running(service):
        return True
    return is_ended(service) and int(service.get("InactiveExitTimestamp", 0)) > previous_start


class JobHandler:
    kind = KIND

    def __init__(
        self,
        store: Store,
        steps: Steps,
        events: EventBus,
        *,
        sweep_interval: float = timeouts.RUN_SWEEP_INTERVAL,
    ) -> None:
        self.store = store
        self.steps = steps
        self.events = events
        self.runs = RunRecorder(
            store, steps, events, state_of=self._state_now, changed=self._changed,
            sweep_interval=sweep_interval,
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------

    async def start_watching(self) -> None:
        await self.runs.start()

    async def close(self) -> None:
        await self.runs.close()

    # -- helpers ------------------------------------------------------------------------

    def _changed(self, name: str, state: str, generation: int = 0, error: str = "") -> None:
        self.events.publish(KIND.changed(name, state, generation=generation, error=error))

    def _plan(self, record: Deployment) -> JobPlan:
        return plan_job(
            job_manifest(record), record.generation, record.digest, policy=self.steps.policy
        )

    async def _service(self, plan: JobPlan) -> dict[str, Any] | None:
        return await self.steps.service_state(plan.service)

    async def _timer(self, plan: JobPlan) -> dict[str, Any] | None:
        return await self.steps.unit_state(plan.timer, IFACE_TIMER)

    async def _state_now(self, record: Deployment) -> str:
        plan = self._plan(record)
        desired = record.status.get("desired", KIND.running)
        return state_word(await self._timer(plan), await self._service(plan), desired)

    def _description(self, plan: JobPlan) -> str:
        return f"iyclo job {plan.name}: its runs and containers"

    async def _bring_up(self, plan: JobPlan) -> None:
        """Create the timer and its service in one call; on failure neither stays."""
        await self.steps.ensure_slice(plan, self._description(plan), update=True)
        await self.steps.start_transient(
            plan.timer, plan.timer_properties, [(plan.service, plan.service_properties)],
            clean_up=lambda: self._take_down(plan, interrupt=True),
        )  # fmt: skip

    async def _take_down(self, plan: JobPlan, *, interrupt: bool) -> None:
        """Stop the timer (no more runs); with ``interrupt`` also a run in progress, which
        is then recorded as stopped. Returns once both units are unloaded."""
        await self.steps.stop_job(plan.timer)
        service = await self._service(plan)
        if is_running(service):
            assert service is not None
            if not interrupt:
                return
            self.runs.stopping.add(invocation_hex(service.get("InvocationID")))
            await self.steps.stop_job(plan.service)
        await self.steps.wait_gone(plan.timer)
        await self.steps.wait_gone(plan.service)

    async def _refuse_while_running(self, name: str, plan: JobPlan, doing: str) -> None:
        """Refuse ``doing`` while a run is going, naming the run."""
        service = await self._service(plan)
        if is_running(service):
            assert service is not None
            number = await self.runs.number_of(name, service)
            raise ConflictError(
                f"cannot {doing} job '{name}' while run {number} is going",
                hint=f"wait for it, or stop it with `iyclo stop {name}`",
            )

    # -- operations (the caller holds the name's lock) ----------------------------------

    async def apply(
        self,
        manifest: Manifest,
        previous: Deployment | None,
        images: dict[str, Any],
        *,
        wait_timeout: float | None = None,
    ) -> ApplyResult:
        """Create or update a job; all-or-nothing, and never under a running run. A job
        has no readiness to wait for (``wait_timeout`` is a pod's): it is scheduled.

        An update replaces the pod and both units with a new generation. It is refused
        while a run is going (the unit that runs it cannot be replaced without killing
        it); if an update fails, the previous generation's timer is put back.
        """
        assert isinstance(manifest, Job)
        name = manifest.name
        values = await self.steps.read_secrets(manifest)
        digest = values.rollout_digest(manifest_digest(manifest))
        new_images = previous is not None and images_changed(previous.images, images)
        if previous is not None and previous.digest == digest and not new_images:
            state = await self._ensure_scheduled(previous)
            return ApplyResult(name, KIND.api_name, previous.generation, False, state)
        if previous is not None:
            await self._refuse_while_running(name, self._plan(previous), "update")
        record: Deployment = await off_loop(
            self.store.apply, name, KIND.value, dump_manifest(manifest), digest, images=images
        )
        self._changed(name, "applying", record.generation)
        try:
            await self._replace(manifest, record, previous, values)
        except BaseException as exc:
            if previous is None:
                # Runs kept from an earlier job of this name stay; this one made none.
                await off_loop(self.store.remove, name, purge_runs=False)
                self._changed(name, "failed", record.generation, public_message(exc))
                self.events.forget(name)
            else:
                await off_loop(self.store.drop_generation, name, record.generation)
                with contextlib.suppress(IycloError):
                    state = await self._state_now(previous)
                    self._changed(name, state, previous.generation, public_message(exc))
            raise
        await off_loop(self.store.set_status, name, desired=KIND.running,
                          envFiles=dict(values.env_digests))  # fmt: skip
        self._changed(name, "scheduled", record.generation)
        log.info("applied", job=name, generation=record.generation)
        return ApplyResult(name, KIND.api_name, record.generation, True, "scheduled")

    async def _replace(
        self,
        manifest: Job,
        record: Deployment,
        previous: Deployment | None,
        values: SecretValues,
    ) -> None:
        plan = plan_job(manifest, record.generation, record.digest, policy=self.steps.policy)
        made = await self.steps.create_pod(plan, self._description(plan), values)
        try:
            old_plan = self._plan(previous) if previous is not None else None
            old_scheduled = False
            if old_plan is not None:
                old_scheduled = is_active(await self._timer(old_plan))
                await self._take_down(old_plan, interrupt=True)
            try:
                await self._bring_up(plan)
            except BaseException:
                if old_plan is not None and old_scheduled:
                    log.warning("update failed; restoring previous timer", job=manifest.name)
                    with contextlib.suppress(IycloError):
                        await self._bring_up(old_plan)
                raise
        except BaseException:
            await self.steps.discard_pod(plan, made)
            raise
        await self.steps.remove_other_generations(manifest.name, keep=plan.pod_name)

    async def _ensure_scheduled(self, record: Deployment) -> str:
        """Unchanged apply or start: re-create what is missing, leave a live timer alone."""
        plan = self._plan(record)
        timer = await self._timer(plan)
        if not is_active(timer):
            await self._refuse_while_running(record.name, plan, "start")
            await self.steps.check_host(plan)
            if timer is not None:
                await self._take_down(plan, interrupt=False)
            await self.steps.ensure_pod(plan, self._description(plan))
            await self._bring_up(plan)
        await off_loop(self.store.set_status, record.name, desired=KIND.running)
        state = state_word(await self._timer(plan), await self._service(plan), KIND.running)
        self._changed(record.name, state, record.generation)
        return state

    async def remove(self, record: Deployment, *, purge_history: bool) -> None:
        """Timer, service (a run in progress is stopped), pods and the persistent stamp
        go; the run history stays unless ``purge_history``."""
        plan = self._plan(record)
        self._changed(record.name, "removing", record.generation)
        await self._take_down(plan, interrupt=True)
        await self.runs.settle_after_stop(record.name)
        await self.steps.remove_other_generations(record.name, keep=None)
        await self.steps.stop(plan.slice)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(timer_stamp(plan.timer))
        await off_loop(self.store.remove, record.name, purge_runs=purge_history)
        self.runs.forget(record.name)
        self._changed(record.name, "removed", record.generation)
        self.events.forget(record.name)
        log.info("removed", job=record.name, purge_history=purge_history)

    async def start(self, record: Deployment) -> str:
        return await self._ensure_scheduled(record)

    async def stop(self, record: Deployment) -> str:
        """A stopped job neither fires nor keeps running: its timer and a run in
        progress are stopped (the run is recorded as stopped)."""
        await self._take_down(self._plan(record), interrupt=True)
        await off_loop(self.store.set_status, record.name, desired="stopped")
        await self.runs.settle_after_stop(record.name)
        self._changed(record.name, "stopped", record.generation)
        return "stopped"

    async def restart(self, record: Deployment) -> str:
        """Restart the timer (its schedule starts over); a run in progress goes on."""
        plan = self._plan(record)
        if not is_active(await self._timer(plan)):
            return await self._ensure_scheduled(record)
        await self.steps.check_host(plan)
        await self.steps.restart(plan.timer)
        await off_loop(self.store.set_status, record.name, desired=KIND.running)
        state = state_word(await self._timer(plan), await self._service(plan), KIND.running)
        self._changed(record.name, state, record.generation)
        return state

    async def run_now(self, record: Deployment) -> dict[str, Any]:
        """Start a run now and return it once it has begun (not when it ends).

        Refused while a run is going, whatever ``overlap`` says: an explicit request
        should be answered, not silently merged into the current run. Should the timer
        fire in the instant between that check and the start, systemd merges the two
        and the run returned is the timer's: there is still only one.
        """
        name = record.name
        plan = self._plan(record)
        before = await self._service(plan)
        if before is None:
            raise ConflictError(
                f"job '{name}' is stopped", hint=f"start it with `iyclo start {name}`"
            )
        if is_running(before):
            number = await self.runs.number_of(name, before)
            raise ConflictError(f"job '{name}' is already running (run {number})")
        await self.steps.check_host(plan)
        previous = invocation_hex(before.get("InvocationID"))
        previous_start = int(before.get("InactiveExitTimestamp", 0))
        await self.steps.systemd.enqueue_start_unit(plan.service)
        deadline = time.monotonic() + timeouts.RUN_START
        while True:
            now = await self._service(plan)
            invocation = invocation_hex((now or {}).get("InvocationID"))
            if now is not None and _began(now, previous, previous_start):
                break
            if time.monotonic() > deadline:
                raise SystemdError(
                    f"unit {plan.service} did not start a run within {timeouts.RUN_START:.0f}s"
                )
            await asyncio.sleep(timeouts.UNIT_POLL)
        await self.runs.observe(name, now)
        run = await self.runs.find(name, invocation)
        if run is None:  # it ended before we saw it run: the journal may lag a little
            run = await self.runs.settle_until_found(name, invocation)
        if run is None:
            raise SystemdError(f"run {invocation} of job '{name}' left no record in systemd")
        log.info("run started", job=name, run=run["number"])
        return {
            "name": name,
            "run": run["number"],
            "invocationId": invocation,
            "state": run["state"],
        }

    # -- reads --------------------------------------------------------------------------

    async def status(self, record: Deployment) -> dict[str, Any]:
        plan = self._plan(record)
        manifest = job_manifest(record)
        timer = await self._timer(plan)
        service = await self._service(plan)
        stored = await self.runs.stored(record.name)
        last = max(stored, key=lambda r: int(r.get("startUsec", 0)), default=None)
        desired = record.status.get("desired", KIND.running)
        state = state_word(timer, service, desired)
        next_usec = int((timer or {}).get("NextElapseUSecRealtime", 0))
        containers = []
        for listed in await self.steps.podman.list_containers(f"{naming.LABEL_POD}={record.name}"):
            labels = listed.get("Labels") or {}
            if labels.get(naming.LABEL_GENERATION) != str(record.generation):
                continue
            if naming.LABEL_CONTAINER not in labels:
                continue  # the pod's infra container
            containers.append(
                {
                    "name": labels.get(naming.LABEL_CONTAINER, ""),
                    "id": listed.get("Id", ""),
                    "image": listed.get("Image", ""),
                    "state": listed.get("State", ""),
                    "exitCode": listed.get("ExitCode", 0),
                    "podmanName": (listed.get("Names") or [""])[0],
                }
            )
        order = [c.name for c in manifest.containers]
        containers.sort(key=lambda c: order.index(c["name"]) if c["name"] in order else 0)
        schedule = manifest.schedule
        return {
            "name": record.name,
            "kind": KIND.api_name,
            "generation": record.generation,
            "digest": record.digest,
            "images": record.images,
            "appliedAt": record.applied_at.isoformat(),
            "desired": desired,
            "state": state,
            "unit": plan.service,
            "timer": plan.timer,
            "podmanPod": plan.pod_name,
            "schedule": {
                "calendar": schedule.calendar,
                "persistent": schedule.persistent,
                "randomizedDelay": schedule.randomized_delay,
                "accuracy": schedule.accuracy,
                "timeout": schedule.timeout,
                "overlap": schedule.overlap,
            },
            "next": usec_iso(next_usec) if 0 < next_usec < USEC_INFINITY else "",
            "lastRun": last,
            "activeState": (service or {}).get("ActiveState", Active.INACTIVE),
            "subState": (service or {}).get("SubState", "dead"),
            "since": last["startedAt"] if last and state == "running" else "",
            "slice": plan.slice,
            "containers": containers,
        }

    async def run_history(self, name: str) -> list[dict[str, Any]]:
        """Stored runs, oldest first; a removed job's kept history is still readable."""
        stored = await self.runs.stored(name)
        if not stored:
            record: Deployment | None = await off_loop(self.store.find, name)
            if record is None:
                raise NotFoundError(f"no pod or job named '{name}'")
            if record.kind != KIND:
                raise InvalidError(
                    f"{record.kind} '{name}' has no runs",
                    hint=f"`iyclo history {name}` lists its generations",
                )
        return sorted(stored, key=lambda r: (int(r.get("startUsec", 0)), r["number"]))

    async def logs(self, record: Deployment, run: int, lines: int | None) -> dict[str, Any]:
        return await self.run_logs(record.name, run, lines)

    async def run_logs(self, name: str, run: int, lines: int | None) -> dict[str, Any]:
        """One run's output (the newest run when ``run`` is 0), from the journal; also
        for a removed job whose history was kept."""
        stored = await self.run_history(name)
        if run:
            chosen: dict[str, Any] = await off_loop(self.store.run, name, run)
        elif stored:
            chosen = stored[-1]
        else:
            raise NotFoundError(f"job '{name}' has not run yet")
        invocation = str(chosen.get("invocationId", ""))
        entries: list[dict[str, Any]] = []
        if invocation:
            matches = journal.run_matches(KIND.service(name), invocation)
            if lines is None:
                entries = journal.journal_lines(await journal.query(*matches))
            else:
                entries, _ = await journal.newest_lines(matches, max(lines, 0))
        return {
            "name": name,
            "kind": KIND.api_name,
            "run": chosen["number"],
            "invocationId": invocation,
            "state": chosen.get("state", ""),
            "entries": entries,
        }

    # -- reconcile ----------------------------------------------------------------------

    def surveyed_units(self, record: Deployment) -> tuple[str, ...]:
        return ()

    async def reconcile_one(self, record: Deployment, survey: Survey | None = None) -> str:
        """After a daemon restart or a reboot: settle runs, then make the units match."""
        plan = self._plan(record)
        await self.runs.settle(record.name, deep=True, final=True)
        desired = record.status.get("desired", KIND.running)
        timer = await self._timer(plan)
        if desired == "stopped":
            if timer is not None or await self._service(plan) is not None:
                await self._take_down(plan, interrupt=True)  # e.g. a crash mid-stop
                await self.runs.settle_after_stop(record.name)
            return "stopped"
        if is_active(timer):
            service = await self._service(plan)
            if pod_of_unit(service) in (None, plan.pod_name):
                await self.steps.remove_other_generations(record.name, plan.pod_name, survey)
                return "adopted"
            if is_running(service):
                log.warning("an older generation is running; replacing it later", job=record.name)
                return "adopted"
            await self._take_down(plan, interrupt=False)  # the daemon died mid-update
        await self.steps.check_host(plan)
        await self.steps.ensure_pod(plan, self._description(plan))
        await self._bring_up(plan)
        await self.steps.remove_other_generations(record.name, keep=plan.pod_name)
        return "recreated"

    async def remove_orphans(self, known: set[str]) -> list[str]:
        """Job units whose job is not in the store (removed while the daemon was down)."""
        removed = []
        for unit in await self.steps.systemd.list_units_by_patterns([], KIND.unit_patterns()):
            owner = KIND.owner_of_unit(unit.name)
            if owner is None or owner in known:
                continue
            await self.steps.stop_job(unit.name)
            with contextlib.suppress(IycloError):
                await self.steps.wait_gone(unit.name)
            if unit.name.endswith(".timer"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(timer_stamp(unit.name))
            removed.append(unit.name)
        return removed
