"""Scheduled jobs: a systemd timer runs a job's containers to completion; iyclo keeps
the history of those runs.

``Service`` delegates every operation on a ``Job`` here, holding the name's lock.

What systemd does and what the daemon does:

* **systemd schedules and runs.** ``plan_job`` describes the units: the transient
  ``iyclo-job-<name>.timer`` activates the oneshot ``iyclo-job-<name>.service`` whose
  ``ExecStart=`` lines run the containers of the generation's Podman pod in order. No
  run, and no overlap decision, depends on the daemon being up: systemd never starts a
  second instance of a running oneshot, ``overlap: queue`` is systemd's own coalescing
  of the elapses that fell inside a run into one catch-up run, and ``overlap: skip``
  is a timer restart at the end of each run (see ``plan_job``). ``Persistent=`` keeps
  the last trigger on disk, so after a reboot the reconcile re-creates the timer and
  systemd runs a missed run once.
* **The daemon keeps the record.** It watches ``PropertiesChanged`` of job services: a
  new ``InvocationID`` going *activating* opens a run, the same invocation going
  *inactive*/*failed* closes it with ``Result``, the ``ExecMain*`` exit status and the
  ``Inactive*Timestamp`` pair, and publishes ``JobFinished``. Signals coalesce (a run
  that fails at once may never be seen *activating*; a daemon that was down saw
  nothing), so runs are also settled from systemd's journal, where every message
  systemd logs about a unit carries that invocation's ID: on every reconcile, every
  ``SWEEP_INTERVAL`` seconds, and whenever a signal shows an end it cannot place. The
  journal also points at each run's output (``_SYSTEMD_INVOCATION_ID``).

A stopped job has no units: stopping the timer lets systemd collect both units (the
service is collected with it, even after a failed run, by ``CollectMode=``), so
``start`` creates them again, as for pods. Run history is bounded per job by the store
and, by default, outlives ``remove`` (``purge_history`` drops it): like the journal,
it is a record of what happened, and numbering continues if the job comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import structlog
from attrs import frozen

from iyclo.core import journal, naming
from iyclo.core.events import EventBus
from iyclo.core.journal import start_failure_reason
from iyclo.core.plan_job import JobPlan, plan_job, timer_stamp
from iyclo.core.runs import (
    RunEnd,
    end_from_properties,
    finished,
    invocation_hex,
    is_ended,
    is_running,
    lost,
    runs_from_journal,
    started,
    usec_iso,
)
from iyclo.core.slices import ensure_slice
from iyclo.errors import (
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
    SystemdError,
)
from iyclo.manifest.convert import dump_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Job
from iyclo.manifest.policy import UNRESTRICTED
from iyclo.podman.client import PodmanClient
from iyclo.store import Deployment, Store
from iyclo.systemd.const import IFACE_SERVICE, IFACE_TIMER, IFACE_UNIT
from iyclo.systemd.manager import SystemdManager, UnitChange
from iyclo.systemd.properties import USEC_INFINITY, prop

log = structlog.get_logger("iyclo.jobs")

UNIT_GONE_TIMEOUT = 15.0
JOB_TIMEOUT = 150.0
RUN_START_TIMEOUT = 30.0
SWEEP_INTERVAL = 30.0
JOURNAL_SETTLE_TRIES = 20
JOURNAL_SETTLE_PAUSE = 0.1
JOURNAL_LIMIT = 2000
SERVICE_PREFIX = "iyclo-job-"
# The manifest was validated when it was applied; reading it back must not depend on
# the daemon's current policy (a stored job stays manageable if the policy tightens).
STORED_POLICY = UNRESTRICTED  # also every seccomp profile and capability


@frozen
class JobApplied:
    generation: int
    changed: bool
    state: str


def job_manifest(record: Deployment) -> Job:
    manifest = parse_manifest(record.manifest, STORED_POLICY)
    if not isinstance(manifest, Job):
        raise InvalidError(f"{record.kind} '{record.name}' is not a job")
    return manifest


def plan_of(record: Deployment) -> JobPlan:
    return plan_job(job_manifest(record), record.generation, record.digest)


def job_of_unit(unit: str) -> str | None:
    """The job name of an ``iyclo-job-<name>.service``, else None."""
    parsed = naming.parse_unit_name(unit)
    if parsed is None or parsed[0] != "Job" or not unit.endswith(".service"):
        return None
    return parsed[1]


def state_word(timer: dict[str, Any] | None, service: dict[str, Any] | None, desired: str) -> str:
    """One word for people: scheduled, running, stopped, missing or failed."""
    if service is not None and is_running(service):
        return "running"
    if timer is None:
        return "stopped" if desired == "stopped" else "missing"
    active = timer.get("ActiveState")
    if active == "active":
        return "scheduled"
    if active == "failed":
        return "failed"
    return "stopped" if desired == "stopped" else "missing"


def journal_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Journal entries as ``{"at", "identifier", "message"}``; Podman's event records
    (``container init``, ``died``, …, marked ``PODMAN_EVENT``) are not output."""
    lines = []
    for entry in entries:
        if "PODMAN_EVENT" in entry:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald sends non-UTF-8 text as bytes
            message = bytes(message).decode(errors="replace")
        try:
            at = usec_iso(int(entry.get("__REALTIME_TIMESTAMP", 0)))
        except (TypeError, ValueError):
            at = ""
        lines.append(
            {"at": at, "identifier": entry.get("SYSLOG_IDENTIFIER", ""), "message": message}
        )
    return lines


def _pod_of_service(props: dict[str, Any] | None) -> str | None:
    """The Podman pod a job service was created for: the last word of its ExecStopPost
    ``… podman pod stop … <pod>``."""
    for entry in (props or {}).get("ExecStopPost") or []:
        argv = [str(word) for word in (entry[1] if len(entry) > 1 else [])]
        if ("pod", "stop") in itertools.pairwise(argv):
            return argv[-1]
    return None


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


def _unaccounted(service: dict[str, Any] | None, stored: list[dict[str, Any]]) -> bool:
    """Whether the service shows runs the store has not settled: a stored run still
    open that is not the service's live invocation, or a run that began after the
    newest stored one without being recorded."""
    current = invocation_hex((service or {}).get("InvocationID"))
    live = service is not None and is_running(service)
    for run in stored:
        if run.get("state") == "running" and not (live and run.get("invocationId") == current):
            return True
    if service is None or not current or current in {r.get("invocationId") for r in stored}:
        return False
    newest = max((int(r.get("startUsec", 0)) for r in stored), default=0)
    return int(service.get("InactiveExitTimestamp", 0)) > newest


class Jobs:
    """Apply, remove, start, stop, run now, inspect and reconcile jobs; record their runs."""

    def __init__(
        self,
        store: Store,
        systemd: SystemdManager,
        podman: PodmanClient,
        events: EventBus,
        *,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.store = store
        self.systemd = systemd
        self.podman = podman
        self.events = events
        self.sweep_interval = sweep_interval
        self._settle_lock = asyncio.Lock()
        self._signal_props: dict[str, dict[str, Any]] = {}
        self._observations: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._remove_callback: Callable[[], None] | None = None
        self._stopping: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Watch job services and settle runs periodically. Call before the first
        reconcile, so that nothing that happens after it is missed."""
        self._observations = asyncio.Queue()
        self._remove_callback = self.systemd.on_unit_change(self._on_unit_change)
        self._tasks = [
            asyncio.create_task(self._consume(), name="iyclo-job-runs"),
            asyncio.create_task(self._sweep_forever(), name="iyclo-job-sweep"),
        ]

    async def close(self) -> None:
        if self._remove_callback is not None:
            self._remove_callback()
            self._remove_callback = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- helpers: store, units, pods ------------------------------------------------------

    async def _store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _runs(self, name: str) -> list[dict[str, Any]]:
        stored: list[dict[str, Any]] = await self._store(self.store.runs, name)
        return stored

    async def _props(self, unit: str, interface: str) -> dict[str, Any] | None:
        """Unit + ``interface`` properties of a loaded unit, or None when systemd has none."""
        try:
            await self.systemd.get_unit(unit)
        except NotFoundError:
            return None
        props = await self.systemd.unit_properties(unit)
        if props.get("LoadState") == "not-found":
            return None
        with contextlib.suppress(NotFoundError):
            props.update(await self.systemd.unit_properties(unit, interface))
        return props

    async def _service(self, plan: JobPlan) -> dict[str, Any] | None:
        return await self._props(plan.service, IFACE_SERVICE)

    async def _timer(self, plan: JobPlan) -> dict[str, Any] | None:
        return await self._props(plan.timer, IFACE_TIMER)

    async def _wait_gone(self, unit: str) -> None:
        """A unit must be unloaded before a transient one of that name can be created."""
        deadline = time.monotonic() + UNIT_GONE_TIMEOUT
        while True:
            with contextlib.suppress(NotFoundError, SystemdError):
                await self.systemd.reset_failed_unit(unit)
            if await self._props(unit, IFACE_UNIT) is None:
                return
            if time.monotonic() > deadline:
                raise SystemdError(
                    f"unit {unit} is still loaded {UNIT_GONE_TIMEOUT:.0f}s after its stop"
                )
            await asyncio.sleep(0.05)

    async def _stop(self, unit: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.systemd.stop_unit(unit, timeout=JOB_TIMEOUT)

    async def _ensure_slice(self, plan: JobPlan) -> None:
        """The job's own slice, with the plan's limits (set again if it exists already)."""
        await ensure_slice(
            self.systemd, plan.slice, f"iyclo job {plan.name}: its runs and containers",
            plan.slice_properties, update=True, wait_gone=self._wait_gone,
        )  # fmt: skip

    async def _create_pod(self, plan: JobPlan) -> None:
        """Images, pod and containers of one generation (created, not started); on
        failure nothing of it stays."""
        for container in plan.containers:
            await self.podman.ensure_image(container.image)
        await self._ensure_slice(plan)
        await self.podman.create_pod_with_containers(
            plan.pod_name, plan.pod_spec, [c.spec for c in plan.containers]
        )

    async def _remove_pods(self, name: str, keep: str | None) -> None:
        for pod in await self.podman.list_pods(f"{naming.LABEL_POD}={name}"):
            pod_name = str(pod.get("Name", ""))
            if pod_name and pod_name != keep:
                await self.podman.remove_pod(pod_name)  # retries while Podman cleans up

    async def _bring_up(self, plan: JobPlan) -> None:
        """Create the timer and its service in one call; on failure neither stays."""
        await self._ensure_slice(plan)
        await self._wait_gone(plan.timer)
        await self._wait_gone(plan.service)
        timer_props = [prop(key, value) for key, value in plan.timer_properties]
        service_props = [prop(key, value) for key, value in plan.service_properties]
        started = time.time()
        try:
            result = await self.systemd.start_transient_unit(
                plan.timer, timer_props, [(plan.service, service_props)],
                timeout=JOB_TIMEOUT, check=False,
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(IycloError):
                await self._take_down(plan, interrupt=True)
            raise
        if result != "done":
            reason = await start_failure_reason(plan.timer, since=started)
            with contextlib.suppress(IycloError):
                await self._take_down(plan, interrupt=True)
            detail = f": {reason}" if reason else ""
            raise SystemdError(f"unit {plan.timer} did not start ({result}){detail}")

    async def _take_down(self, plan: JobPlan, *, interrupt: bool) -> None:
        """Stop the timer (no more runs); with ``interrupt`` also a run in progress, which
        is then recorded as stopped. Returns once both units are unloaded."""
        await self._stop(plan.timer)
        service = await self._service(plan)
        if service is not None and is_running(service):
            if not interrupt:
                return
            invocation = invocation_hex(service.get("InvocationID"))
            self._stopping.add(invocation)
            await self._stop(plan.service)
        await self._wait_gone(plan.timer)
        await self._wait_gone(plan.service)

    async def _running_conflict(self, name: str, plan: JobPlan, doing: str) -> None:
        """Refuse ``doing`` while a run is going, naming the run."""
        service = await self._service(plan)
        if service is not None and is_running(service):
            number = await self._run_number(name, service)
            raise ConflictError(
                f"cannot {doing} job '{name}' while run {number} is going; "
                f"wait for it or stop it with `iyclo stop {name}`"
            )

    # -- operations (the caller holds the name's lock) ------------------------------------

    async def apply(self, manifest: Job) -> JobApplied:
        """Create or update a job; all-or-nothing, and never under a running run.

        An update replaces the pod and both units with a new generation. It is refused
        while a run is going (the unit that runs it cannot be replaced without killing
        it); if an update fails, the previous generation's timer is put back.
        """
        name = manifest.name
        digest = manifest_digest(manifest)
        previous: Deployment | None = await self._store(self.store.find, name)
        if previous is not None and previous.kind != "job":
            raise ConflictError(
                f"cannot apply job '{name}': a {previous.kind} with that name exists"
            )
        if previous is not None and previous.digest == digest:
            state = await self._ensure_scheduled(previous)
            return JobApplied(previous.generation, False, state)
        if previous is not None:
            await self._running_conflict(name, plan_of(previous), "update")
        record: Deployment = await self._store(
            self.store.apply, name, "job", dump_manifest(manifest), digest
        )
        try:
            await self._replace(manifest, record, previous)
        except BaseException:
            if previous is None:
                # Runs kept from an earlier job of this name stay; this one made none.
                await self._store(self.store.remove, name, purge_runs=False)
            else:
                await self._store(self.store.drop_generation, name, record.generation)
            raise
        await self._store(self.store.set_status, name, desired="scheduled")
        log.info("applied", job=name, generation=record.generation)
        return JobApplied(record.generation, True, "scheduled")

    async def _replace(
        self, manifest: Job, record: Deployment, previous: Deployment | None
    ) -> None:
        plan = plan_job(manifest, record.generation, record.digest)
        await self._create_pod(plan)
        try:
            old_plan = plan_of(previous) if previous is not None else None
            old_scheduled = False
            if old_plan is not None:
                timer = await self._timer(old_plan)
                old_scheduled = timer is not None and timer.get("ActiveState") == "active"
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
            with contextlib.suppress(IycloError):
                await self.podman.remove_pod(plan.pod_name)
            raise
        await self._remove_pods(manifest.name, keep=plan.pod_name)

    async def _ensure_scheduled(self, record: Deployment) -> str:
        """Unchanged apply or start: re-create what is missing, leave a live timer alone."""
        plan = plan_of(record)
        timer = await self._timer(plan)
        if timer is None or timer.get("ActiveState") != "active":
            await self._running_conflict(record.name, plan, "start")
            if timer is not None:
                await self._take_down(plan, interrupt=False)
            if not await self.podman.pod_exists(plan.pod_name):
                await self._create_pod(plan)
            await self._bring_up(plan)
        await self._store(self.store.set_status, record.name, desired="scheduled")
        return state_word(await self._timer(plan), await self._service(plan), "scheduled")

    async def remove(self, record: Deployment, *, purge_history: bool) -> None:
        """Timer, service (a run in progress is stopped), pods and the persistent stamp
        go; the run history stays unless ``purge_history``."""
        plan = plan_of(record)
        await self._take_down(plan, interrupt=True)
        await self._settle_after_stop(record.name)
        await self._remove_pods(record.name, keep=None)
        await self._stop(plan.slice)
        await self._wait_gone(plan.slice)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(timer_stamp(plan.timer))
        await self._store(self.store.remove, record.name, purge_runs=purge_history)
        self._signal_props.pop(plan.service, None)
        log.info("removed", job=record.name, purge_history=purge_history)

    async def start_job(self, record: Deployment) -> str:
        return await self._ensure_scheduled(record)

    async def stop_job(self, record: Deployment) -> str:
        """A stopped job neither fires nor keeps running: its timer and a run in
        progress are stopped (the run is recorded as stopped)."""
        plan = plan_of(record)
        await self._take_down(plan, interrupt=True)
        await self._store(self.store.set_status, record.name, desired="stopped")
        await self._settle_after_stop(record.name)
        return "stopped"

    async def restart_job(self, record: Deployment) -> str:
        """Restart the timer (its schedule starts over); a run in progress goes on."""
        plan = plan_of(record)
        timer = await self._timer(plan)
        if timer is not None and timer.get("ActiveState") == "active":
            await self.systemd.restart_unit(plan.timer, timeout=JOB_TIMEOUT)
            await self._store(self.store.set_status, record.name, desired="scheduled")
            return state_word(await self._timer(plan), await self._service(plan), "scheduled")
        return await self._ensure_scheduled(record)

    async def run_now(self, record: Deployment) -> dict[str, Any]:
        """Start a run now and return it once it has begun (not when it ends).

        Refused while a run is going, whatever ``overlap`` says: an explicit request
        should be answered, not silently merged into the current run. Should the timer
        fire in the instant between that check and the start, systemd merges the two
        and the run returned is the timer's: there is still only one.
        """
        name = record.name
        plan = plan_of(record)
        before = await self._service(plan)
        if before is None:
            raise ConflictError(f"job '{name}' is stopped; start it with `iyclo start {name}`")
        if is_running(before):
            number = await self._run_number(name, before)
            raise ConflictError(f"job '{name}' is already running (run {number})")
        previous = invocation_hex(before.get("InvocationID"))
        previous_start = int(before.get("InactiveExitTimestamp", 0))
        await self.systemd.enqueue_start_unit(plan.service)
        deadline = time.monotonic() + RUN_START_TIMEOUT
        while True:
            now = await self._service(plan)
            invocation = invocation_hex((now or {}).get("InvocationID"))
            if now is not None and _began(now, previous, previous_start):
                break
            if time.monotonic() > deadline:
                raise SystemdError(
                    f"unit {plan.service} did not start a run within {RUN_START_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(0.05)
        await self._observe(name, now)
        run = await self._find_run(name, invocation)
        if run is None:  # it ended before we saw it run: the journal may lag a little
            for _ in range(JOURNAL_SETTLE_TRIES):
                await self._settle(name, deep=True)
                run = await self._find_run(name, invocation)
                if run is not None:
                    break
                await asyncio.sleep(JOURNAL_SETTLE_PAUSE)
        if run is None:
            raise SystemdError(f"run {invocation} of job '{name}' left no record in systemd")
        log.info("run started", job=name, run=run["number"])
        return {
            "name": name,
            "run": run["number"],
            "invocationId": invocation,
            "state": run["state"],
        }

    # -- reads ---------------------------------------------------------------------------

    async def status(self, record: Deployment) -> dict[str, Any]:
        plan = plan_of(record)
        manifest = job_manifest(record)
        timer = await self._timer(plan)
        service = await self._service(plan)
        stored = await self._runs(record.name)
        last = max(stored, key=lambda r: int(r.get("startUsec", 0)), default=None)
        desired = record.status.get("desired", "scheduled")
        state = state_word(timer, service, desired)
        next_usec = int((timer or {}).get("NextElapseUSecRealtime", 0))
        containers = []
        for listed in await self.podman.list_containers(f"{naming.LABEL_POD}={record.name}"):
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
            "kind": "Job",
            "generation": record.generation,
            "digest": record.digest,
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
            "activeState": (service or {}).get("ActiveState", "inactive"),
            "subState": (service or {}).get("SubState", "dead"),
            "since": last["startedAt"] if last and state == "running" else "",
            "slice": plan.slice,
            "containers": containers,
        }

    async def runs(self, name: str) -> list[dict[str, Any]]:
        """Stored runs, oldest first; a removed job's kept history is still readable."""
        stored = await self._runs(name)
        if not stored:
            record: Deployment | None = await self._store(self.store.find, name)
            if record is None:
                raise NotFoundError(f"no pod or job named '{name}'")
            if record.kind != "job":
                raise InvalidError(
                    f"{record.kind} '{name}' has no runs; `iyclo history {name}` lists its "
                    "generations"
                )
        return sorted(stored, key=lambda r: (int(r.get("startUsec", 0)), r["number"]))

    async def logs(self, name: str, run: int = 0, lines: int | None = None) -> dict[str, Any]:
        """One run's output (the newest run when ``run`` is 0), from the journal."""
        stored = await self.runs(name)
        if run:
            chosen: dict[str, Any] = await self._store(self.store.run, name, run)
        elif stored:
            chosen = stored[-1]
        else:
            raise NotFoundError(f"job '{name}' has not run yet")
        invocation = str(chosen.get("invocationId", ""))
        entries = []
        if invocation:
            args = [f"_SYSTEMD_INVOCATION_ID={invocation}", "+", f"INVOCATION_ID={invocation}"]
            if lines is not None:
                args += ["-n", str(max(lines, 0) * 4 + 40)]  # Podman's events are dropped below
            entries = journal_lines(await journal.query(*args))
        if lines is not None:
            entries = entries[-lines:] if lines > 0 else []
        return {
            "name": name,
            "kind": "Job",
            "run": chosen["number"],
            "invocationId": invocation,
            "state": chosen.get("state", ""),
            "entries": entries,
        }

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile_one(self, record: Deployment) -> str:
        """After a daemon restart or a reboot: settle runs, then make the units match."""
        plan = plan_of(record)
        await self._settle(record.name, deep=True, final=True)
        desired = record.status.get("desired", "scheduled")
        timer = await self._timer(plan)
        if desired == "stopped":
            if timer is not None or await self._service(plan) is not None:
                await self._take_down(plan, interrupt=True)  # e.g. a crash mid-stop
                await self._settle_after_stop(record.name)
            return "stopped"
        if timer is not None and timer.get("ActiveState") == "active":
            service = await self._service(plan)
            if _pod_of_service(service) in (None, plan.pod_name):
                await self._remove_pods(record.name, keep=plan.pod_name)
                return "adopted"
            if service is not None and is_running(service):
                log.warning("an older generation is running; replacing it later", job=record.name)
                return "adopted"
            await self._take_down(plan, interrupt=False)  # the daemon died mid-update
        if not await self.podman.pod_exists(plan.pod_name):
            await self._create_pod(plan)
        await self._bring_up(plan)
        await self._remove_pods(record.name, keep=plan.pod_name)
        return "recreated"

    async def remove_orphans(self, known_jobs: set[str]) -> list[str]:
        """Job units whose job is not in the store (removed while the daemon was down)."""
        removed = []
        for unit in await self.systemd.list_units_by_patterns(
            [], [f"{SERVICE_PREFIX}*.timer", f"{SERVICE_PREFIX}*.service"]
        ):
            parsed = naming.parse_unit_name(unit.name)
            if parsed is None or parsed[0] != "Job" or parsed[1] in known_jobs:
                continue
            await self._stop(unit.name)
            with contextlib.suppress(IycloError):
                await self._wait_gone(unit.name)
            if unit.name.endswith(".timer"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(timer_stamp(unit.name))
            removed.append(unit.name)
        return removed

    # -- run accounting -------------------------------------------------------------------

    def _on_unit_change(self, change: UnitChange) -> None:
        """Runs inside D-Bus dispatch: merge the values, queue a snapshot, never block.

        systemd sends a service's Service-interface values just before its Unit-interface
        ones, so the merged snapshot taken on an ActiveState change is coherent, and it
        is the state at that moment even if the next run has begun by the time it is
        processed.
        """
        name = job_of_unit(change.unit)
        if name is None:
            return
        merged = self._signal_props.setdefault(change.unit, {})
        merged.update(change.changed)
        if (
            change.interface == IFACE_UNIT
            and "ActiveState" in change.changed
            and self._observations is not None
        ):
            self._observations.put_nowait((name, dict(merged)))

    async def _consume(self) -> None:
        assert self._observations is not None
        while True:
            name, props = await self._observations.get()
            try:
                await self._observe(name, props)
            except IycloError as exc:
                log.warning("run accounting failed", job=name, error=exc.message)
            except Exception:  # a bug must not end run accounting for every job
                log.exception("run accounting failed", job=name)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                records: list[Deployment] = await self._store(self.store.list)
                for record in records:
                    if record.kind == "job":
                        await self._settle(record.name)
            except IycloError as exc:
                log.warning("run sweep failed", error=exc.message)
            except Exception:
                log.exception("run sweep failed")

    async def _observe(self, name: str, props: dict[str, Any] | None) -> None:
        """Account one view of a job's service (a signal snapshot or a fresh read)."""
        async with self._settle_lock:
            await self._observe_locked(name, props)

    async def _observe_locked(self, name: str, props: dict[str, Any] | None) -> None:
        if props is None:
            return
        invocation = invocation_hex(props.get("InvocationID"))
        if not invocation:
            return
        stored = await self._runs(name)
        by_id = {r.get("invocationId"): r for r in stored}
        run = by_id.get(invocation)
        if is_running(props):
            if run is None:
                # Earlier runs still open ended unseen: let the journal close them.
                if any(r.get("state") == "running" for r in stored):
                    await self._settle_locked(name, deep=True)
                    if await self._find_run(name, invocation) is not None:
                        return
                await self._record_start(name, invocation, int(props["InactiveExitTimestamp"]))
            return
        if not is_ended(props):
            return
        if run is not None and run.get("state") == "running":
            await self._record_end(name, run, end_from_properties(props))
        elif run is None and int(props.get("InactiveEnterTimestamp", 0)) > max(
            (int(r.get("endUsec") or 0) for r in stored), default=0
        ):
            # An end we cannot place: a run too quick to be seen activating, or the
            # daemon was away. (A service about to start shows its new InvocationID
            # with the previous run's timestamps first; those match a stored end.)
            await self._settle_locked(name, deep=True)

    async def _settle_after_stop(self, name: str) -> None:
        """Close the run a stop interrupted. Its end reaches the signal queue or the
        journal a moment after the stop job: give it that moment, then settle for good."""
        for _ in range(JOURNAL_SETTLE_TRIES):
            await self._settle(name, deep=True)
            if not any(r.get("state") == "running" for r in await self._runs(name)):
                return
            await asyncio.sleep(JOURNAL_SETTLE_PAUSE)
        await self._settle(name, deep=True, final=True)

    async def _settle(self, name: str, *, deep: bool | None = None, final: bool = False) -> None:
        async with self._settle_lock:
            await self._settle_locked(name, deep=deep, final=final)

    async def _settle_locked(self, name: str, *, deep: bool | None, final: bool = False) -> None:
        """Bring stored runs in line with systemd: the current invocation from the unit's
        properties, earlier ones from the journal (``deep``; None: only when the unit
        shows something the store cannot place). ``final`` (reconcile) marks runs
        neither can account for as lost."""
        record: Deployment | None = await self._store(self.store.find, name)
        if record is None or record.kind != "job":
            return
        service = await self._props(naming.unit_name("Job", name), IFACE_SERVICE)
        current = invocation_hex((service or {}).get("InvocationID"))
        stored = await self._runs(name)
        if deep is None:
            deep = _unaccounted(service, stored)
        if deep:
            await self._settle_from_journal(record, stored, service)
            stored = await self._runs(name)
        for run in stored:
            if run.get("state") != "running":
                continue
            invocation = str(run.get("invocationId", ""))
            if service is not None and invocation == current:
                if is_ended(service):
                    await self._record_end(name, run, end_from_properties(service))
                continue
            if final:
                end = lost(invocation, int(run.get("startUsec", 0)))
                await self._record_end(name, run, end)
        known = {r.get("invocationId") for r in stored}
        if service is not None and current and is_running(service) and current not in known:
            await self._record_start(name, current, int(service["InactiveExitTimestamp"]))

    async def _settle_from_journal(
        self, record: Deployment, stored: list[dict[str, Any]], service: dict[str, Any] | None
    ) -> None:
        """Close runs whose end systemd logged, and add runs the daemon never saw."""
        newest = max((int(r.get("startUsec", 0)) for r in stored), default=0)
        if newest:
            since = newest / 1_000_000 - 1
        else:
            history = await self._store(self.store.history, record.name)
            since = history[0].applied_at.timestamp() - 1
        unit = naming.unit_name("Job", record.name)
        entries = await journal.query(
            "_PID=1", f"UNIT={unit}", f"--since=@{since:.0f}", "-n", str(JOURNAL_LIMIT)
        )
        current = invocation_hex((service or {}).get("InvocationID"))
        by_id = {r.get("invocationId"): r for r in stored}
        for seen in runs_from_journal(entries):
            run = by_id.get(seen.invocation_id)
            if run is None:
                if seen.end is not None:
                    number = await self._record_start(
                        record.name, seen.invocation_id, seen.start_usec
                    )
                    run = {"number": number, "invocationId": seen.invocation_id}
                    await self._record_end(record.name, run, seen.end)
                elif seen.invocation_id == current and service and is_running(service):
                    await self._record_start(
                        record.name, current, int(service["InactiveExitTimestamp"])
                    )
            elif run.get("state") == "running" and seen.end is not None:
                await self._record_end(record.name, run, seen.end)

    async def _record_start(self, name: str, invocation: str, start_usec: int) -> int:
        record: Deployment = await self._store(self.store.get, name)
        entry = started(invocation, start_usec or int(time.time() * 1_000_000), record.generation)
        number: int = await self._store(self.store.add_run, name, entry)
        log.info("run started", job=name, run=number, invocation=invocation)
        return number

    async def _record_end(self, name: str, run: dict[str, Any], end: RunEnd) -> None:
        invocation = str(run.get("invocationId", ""))
        stopped = invocation in self._stopping
        self._stopping.discard(invocation)
        fields = finished(end, stopped=stopped)
        if end.end_usec:
            fields["endUsec"] = end.end_usec
        await self._store(self.store.update_run, name, run["number"], **fields)
        log.info("run finished", job=name, run=run["number"], **fields)
        self.events.publish(
            "JobFinished",
            name,
            fields["state"],
            run=run["number"],
            exitCode=fields["exitCode"],
            result=fields["result"],
            durationSec=fields["durationSec"],
        )

    async def _find_run(self, name: str, invocation: str) -> dict[str, Any] | None:
        for run in await self._runs(name):
            if run.get("invocationId") == invocation:
                return run
        return None

    async def _run_number(self, name: str, service: dict[str, Any]) -> str:
        """The number of the service's current run, recording it first if need be."""
        await self._observe(name, service)
        run = await self._find_run(name, invocation_hex(service.get("InvocationID")))
        return str(run["number"]) if run else "?"
