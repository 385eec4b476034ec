"""The record of a job's runs, kept from systemd's two accounts of each invocation.

It watches ``PropertiesChanged`` of job services: a new ``InvocationID`` going
*activating* opens a run, the same invocation going *inactive*/*failed* closes it with
``Result``, the ``ExecMain*`` exit status and the ``Inactive*Timestamp`` pair, and
publishes ``JobFinished``. Signals coalesce (a run that fails at once may never be seen
*activating*; a daemon that was down saw nothing), so runs are also settled from
systemd's journal, where every message systemd logs about a unit carries that
invocation's ID: on every reconcile, every ``RUN_SWEEP_INTERVAL`` seconds, and whenever a
signal shows an end it cannot place. What a run record holds is derived in ``runs``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from iyclo.contract.events import UNKNOWN, JobFinished
from iyclo.core import journal, timeouts
from iyclo.core.events import EventBus
from iyclo.core.kind import Kind
from iyclo.core.runs import (
    RunEnd,
    end_from_properties,
    finished,
    invocation_hex,
    lost,
    runs_from_journal,
    started,
)
from iyclo.core.steps import Steps
from iyclo.core.unit_state import is_ended, is_running
from iyclo.errors import IycloError
from iyclo.store import Deployment, Store, off_loop
from iyclo.systemd.const import IFACE_UNIT
from iyclo.systemd.manager import UnitChange

log = structlog.get_logger("iyclo.runs")

KIND = Kind.JOB
JOURNAL_LIMIT = 2000

StateOf = Callable[[Deployment], Awaitable[str]]
Changed = Callable[[str, str, int], None]


def unaccounted(service: dict[str, Any] | None, stored: list[dict[str, Any]]) -> bool:
    """Whether the service shows runs the store has not settled: a stored run still
    open that is not the service's live invocation, or a run that began after the
    newest stored one without being recorded."""
    current = invocation_hex((service or {}).get("InvocationID"))
    live = is_running(service)
    for run in stored:
        if run.get("state") == "running" and not (live and run.get("invocationId") == current):
            return True
    if service is None or not current or current in {r.get("invocationId") for r in stored}:
        return False
    newest = max((int(r.get("startUsec", 0)) for r in stored), default=0)
    return int(service.get("InactiveExitTimestamp", 0)) > newest


def stale(props: dict[str, Any] | None, stored: list[dict[str, Any]]) -> bool:
    """Whether ``props`` show a run's InvocationID with the previous run's timestamps.

    systemd gives a service its next InvocationID a moment before that run's own
    values: read then, the new id comes with the last run's ``InactiveExitTimestamp``,
    ``InactiveEnterTimestamp`` and ``Result``, and recorded that run's start, end and
    "success" as the new run's (measured on systemd 252 with a 2 s calendar after a
    daemon restart: a run that exited 7 was stored as succeeded). One unit runs one
    invocation at a time, so a run starts after every other stored run started (starts,
    not ends: a start from the journal is when journald got the "Starting" line, never
    before the unit's own timestamp; an end from the journal may come late). Such values
    are left for the next signal, the sweep or the journal to settle.
    """
    if props is None:
        return False
    invocation = invocation_hex(props.get("InvocationID"))
    start = int(props.get("InactiveExitTimestamp") or 0)
    starts = [int(r.get("startUsec") or 0) for r in stored if r.get("invocationId") != invocation]
    return bool(starts) and start <= max(starts)


def end_shown(props: dict[str, Any] | None) -> RunEnd | None:
    """The end of the current invocation that ``props`` show, or None.

    An ended state counts only with the moment it was entered: a unit that has not
    ended since it was made reads ``InactiveEnterTimestamp`` 0, and its inactive state
    then is from before its first run, no run's end. (Taken for one, the first run
    would be stored as finished with no end time; CI once showed such a run, its cause
    not pinned down, so no path can record one.)"""
    if not is_ended(props):
        return None
    assert props is not None
    end = end_from_properties(props)
    return end if end.end_usec > 0 else None


class RunRecorder:
    """Opens and closes run records; publishes ``JobFinished`` and the job's state after."""

    def __init__(
        self,
        store: Store,
        steps: Steps,
        events: EventBus,
        *,
        state_of: StateOf,
        changed: Changed,
        sweep_interval: float = timeouts.RUN_SWEEP_INTERVAL,
    ) -> None:
        self.store = store
        self.steps = steps
        self.events = events
        self.state_of = state_of
        self.changed = changed
        self.sweep_interval = sweep_interval
        self.stopping: set[str] = set()
        """Invocations the daemon is stopping: their end is recorded as ``stopped``."""
        self._lock = asyncio.Lock()
        self._signal_props: dict[str, dict[str, Any]] = {}
        self._observations: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._remove_callback: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Watch job services and settle runs periodically. Before the first reconcile,
        so that nothing that happens after it is missed."""
        self._observations = asyncio.Queue()
        self._remove_callback = self.steps.systemd.on_unit_change(self._on_unit_change)
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

    def forget(self, name: str) -> None:
        self._signal_props.pop(KIND.service(name), None)

    # -- reads --------------------------------------------------------------------------

    async def stored(self, name: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = await off_loop(self.store.runs, name)
        return runs

    async def find(self, name: str, invocation: str) -> dict[str, Any] | None:
        for run in await self.stored(name):
            if run.get("invocationId") == invocation:
                return run
        return None

    async def number_of(self, name: str, service: dict[str, Any]) -> str:
        """The number of the service's current run, recording it first if need be."""
        await self.observe(name, service)
        run = await self.find(name, invocation_hex(service.get("InvocationID")))
        return str(run["number"]) if run else "?"

    # -- signals ------------------------------------------------------------------------

    def _on_unit_change(self, change: UnitChange) -> None:
        """Runs inside D-Bus dispatch: merge the values, queue a snapshot, never block.

        systemd sends a service's Service-interface values just before its Unit-interface
        ones, so the merged snapshot taken on an ActiveState change is coherent, and it
        is the state at that moment even if the next run has begun by the time it is
        processed.
        """
        name = KIND.owner_of_unit(change.unit)
        if name is None or change.unit != KIND.service(name):
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
                await self.observe(name, props)
            except IycloError as exc:
                log.warning("run accounting failed", job=name, error=exc.message)
            except Exception:  # a bug must not end run accounting for every job
                log.exception("run accounting failed", job=name)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                records: list[Deployment] = await off_loop(self.store.list)
                for record in records:
                    if record.kind == KIND:
                        await self.settle(record.name)
            except IycloError as exc:
                log.warning("run sweep failed", error=exc.message)
            except Exception:
                log.exception("run sweep failed")

    # -- accounting ---------------------------------------------------------------------

    async def observe(self, name: str, props: dict[str, Any] | None) -> None:
        """Account one view of a job's service (a signal snapshot or a fresh read)."""
        async with self._lock:
            await self._observe_locked(name, props)

    async def _observe_locked(self, name: str, props: dict[str, Any] | None) -> None:
        if props is None:
            return
        invocation = invocation_hex(props.get("InvocationID"))
        if not invocation:
            return
        stored = await self.stored(name)
        if stale(props, stored):
            return  # the previous run's values under the next run's id: not this run's
        run = {r.get("invocationId"): r for r in stored}.get(invocation)
        if is_running(props):
            if run is None:
                # Runs this daemon did not see (it was down, or they were too quick) may
                # have begun before this one, and earlier runs still open ended unseen:
                # the journal first, so run numbers follow the order the runs ran in.
                await self._settle_locked(name, deep=True)
                if await self.find(name, invocation) is not None:
                    return
                await self._record_start(name, invocation, int(props["InactiveExitTimestamp"]))
            return
        end = end_shown(props)
        if end is None:
            return
        if run is not None and run.get("state") == "running":
            await self._record_end(name, run, end)
        elif run is None and end.end_usec > max(
            (int(r.get("endUsec") or 0) for r in stored), default=0
        ):
            # An end we cannot place: a run too quick to be seen activating, or the
            # daemon was away. (A service about to start shows its new InvocationID
            # with the previous run's timestamps first; those match a stored end.)
            await self._settle_locked(name, deep=True)

    async def settle_after_stop(self, name: str) -> None:
        """Close the run a stop interrupted. Its end reaches the signal queue or the
        journal a moment after the stop job: give it that moment, then settle for good."""
        for _ in range(timeouts.JOURNAL_SETTLE_TRIES):
            await self.settle(name, deep=True)
            if not any(r.get("state") == "running" for r in await self.stored(name)):
                return
            await asyncio.sleep(timeouts.JOURNAL_SETTLE_PAUSE)
        await self.settle(name, deep=True, final=True)

    async def settle_until_found(self, name: str, invocation: str) -> dict[str, Any] | None:
        """The run of ``invocation``, read again from the journal while it lags a little."""
        for _ in range(timeouts.JOURNAL_SETTLE_TRIES):
            await self.settle(name, deep=True)
            run = await self.find(name, invocation)
            if run is not None:
                return run
            await asyncio.sleep(timeouts.JOURNAL_SETTLE_PAUSE)
        return None

    async def settle(self, name: str, *, deep: bool | None = None, final: bool = False) -> None:
        async with self._lock:
            await self._settle_locked(name, deep=deep, final=final)

    async def _settle_locked(self, name: str, *, deep: bool | None, final: bool = False) -> None:
        """Bring stored runs in line with systemd: the current invocation from the unit's
        properties, earlier ones from the journal (``deep``; None: only when the unit
        shows something the store cannot place). ``final`` (reconcile) marks runs
        neither can account for as lost."""
        record: Deployment | None = await off_loop(self.store.find, name)
        if record is None or record.kind != KIND:
            return
        service = await self.steps.service_state(KIND.service(name))
        current = invocation_hex((service or {}).get("InvocationID"))
        stored = await self.stored(name)
        if deep is None:
            deep = unaccounted(service, stored)
        if deep:
            await self._settle_from_journal(record, stored, service)
            stored = await self.stored(name)
        for run in stored:
            if run.get("state") != "running":
                continue
            invocation = str(run.get("invocationId", ""))
            if service is not None and invocation == current:
                end = end_shown(service)
                if end is not None and not stale(service, stored):
                    await self._record_end(name, run, end)
                continue
            if final:
                end = lost(invocation, int(run.get("startUsec", 0)))
                await self._record_end(name, run, end)
        known = {r.get("invocationId") for r in stored}
        if (
            service is not None
            and current
            and is_running(service)
            and current not in known
            and not stale(service, stored)
        ):
            await self._record_start(name, current, int(service["InactiveExitTimestamp"]))

    async def _settle_from_journal(
        self, record: Deployment, stored: list[dict[str, Any]], service: dict[str, Any] | None
    ) -> None:
        """Close runs whose end systemd logged, and add runs the daemon never saw.

        An invocation seen before the job was first applied is an earlier job's of the
        same name: the run a purging remove interrupted is logged a moment before the
        name is applied again, and was taken for a run of the new job."""
        created = record.created_at.timestamp()
        newest = max((int(r.get("startUsec", 0)) for r in stored), default=0)
        since = max(newest / 1_000_000, created) - 1  # --since takes whole seconds
        floor = int(created * 1_000_000)
        unit = KIND.service(record.name)
        entries = await journal.query(
            "_PID=1", f"UNIT={unit}", f"--since=@{since:.0f}", "-n", str(JOURNAL_LIMIT)
        )
        current = invocation_hex((service or {}).get("InvocationID"))
        by_id = {r.get("invocationId"): r for r in stored}
        for seen in runs_from_journal(entries):
            if seen.start_usec < floor:
                continue
            run = by_id.get(seen.invocation_id)
            if run is None:
                if seen.end is not None:
                    number = await self._record_start(
                        record.name, seen.invocation_id, seen.start_usec
                    )
                    run = {"number": number, "invocationId": seen.invocation_id}
                    await self._record_end(record.name, run, seen.end)
                elif (
                    seen.invocation_id == current
                    and is_running(service)
                    and not stale(service, stored)
                ):
                    assert service is not None
                    await self._record_start(
                        record.name, current, int(service["InactiveExitTimestamp"])
                    )
            elif run.get("state") == "running" and seen.end is not None:
                await self._record_end(record.name, run, seen.end)

    async def _record_start(self, name: str, invocation: str, start_usec: int) -> int:
        record: Deployment = await off_loop(self.store.get, name)
        entry = started(invocation, start_usec or int(time.time() * 1_000_000), record.generation)
        number: int = await off_loop(self.store.add_run, name, entry)
        log.info("run started", job=name, run=number, invocation=invocation)
        self.changed(name, "running", record.generation)
        return number

    async def _record_end(self, name: str, run: dict[str, Any], end: RunEnd) -> None:
        invocation = str(run.get("invocationId", ""))
        stopped = invocation in self.stopping
        self.stopping.discard(invocation)
        fields = finished(end, stopped=stopped)
        if end.end_usec:
            fields["endUsec"] = end.end_usec
        await off_loop(self.store.update_run, name, run["number"], **fields)
        log.info("run finished", job=name, run=run["number"], **fields)
        duration = fields["durationSec"]
        self.events.publish(
            JobFinished(
                name=name,
                run=run["number"],
                state=fields["state"],
                exit_code=fields["exitCode"],
                result=fields["result"],
                duration_sec=UNKNOWN if duration is None else duration,
            )
        )
        record: Deployment | None = await off_loop(self.store.find, name)
        if record is not None and record.kind == KIND:
            try:
                self.changed(name, await self.state_of(record), record.generation)
            except IycloError as exc:
                log.warning("cannot read the job's state", job=name, error=exc.message)
