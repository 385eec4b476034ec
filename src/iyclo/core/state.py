"""Live state of every pod, kept current from events instead of asked for on each read.

Podman's REST container list costs ~13 ms here, which would cap reads near 78/s, so
reads (List, Get, D-Bus properties) are answered from this cache. It is fed by
systemd's ``PropertiesChanged`` signals for iyclo units and by Podman's event
stream for iyclo-labelled containers; a periodic resync catches anything missed.

OOM kills come from the kernel log (see ``core.oom``) and are handed to ``on_oom``.

The monitor also closes a gap of pod units: systemd only watches the main
container (the unit's main PID), so when another container of a running pod dies,
the monitor restarts the pod's unit as its restart policy says.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from typing import Any

import structlog
from attrs import define, field

from iyclo.core import naming
from iyclo.core.background import Background
from iyclo.core.oom import KmsgOomWatch, OomKill
from iyclo.core.steps import Steps, Survey
from iyclo.errors import IycloError
from iyclo.systemd.const import UnitActiveState as Active
from iyclo.systemd.const import UnitLoadState as Load
from iyclo.systemd.manager import UnitChange

log = structlog.get_logger("iyclo.state")

UNIT_PROPERTIES = (
    "LoadState", "ActiveState", "SubState", "NRestarts", "MainPID", "ActiveEnterTimestamp",
    "Slice", "Result", "ExecMainStatus", "InvocationID",
)  # fmt: skip
RESYNC_INTERVAL = 30.0
OPERATION_WAIT = 1.0
"""Seconds an event's refresh waits for the operation on its pod to end (``LiveState``)."""
CONTAINER_ACTIONS = frozenset({"start", "died", "stop", "remove", "create", "restart", "init"})
HEALTH_ACTION = "health_status"
"""Podman's event for each result of a container's health check (4.3 and 5.4), carrying
its ``HealthStatus``: handed to ``on_health``, not a reason to re-list containers."""


@define
class PodState:
    """What the host says about one pod, as last seen."""

    unit: dict[str, Any] = field(factory=dict)
    containers: list[dict[str, Any]] = field(factory=list)
    unit_seen: float = 0.0
    """``time.monotonic()`` when ``unit`` was asked for: a signal heard before it is in it."""
    containers_seen: float = 0.0
    """``time.time()`` when the listing ``containers`` came from was asked for: a Podman
    event that happened before it is in them already (events carry the same clock)."""


def container_row(listed: Mapping[str, Any]) -> dict[str, Any] | None:
    """A container as iyclo reports it, from Podman's list entry (None: the infra)."""
    labels = listed.get("Labels") or {}
    if naming.LABEL_CONTAINER not in labels:
        return None  # the pod's infra container carries only the pod's labels
    return {
        "name": labels[naming.LABEL_CONTAINER],
        "generation": int(labels.get(naming.LABEL_GENERATION, 0)),
        "id": listed.get("Id", ""),
        "image": listed.get("Image", ""),
        "state": listed.get("State", ""),
        "startedAt": listed.get("StartedAt", 0),
        "exitCode": listed.get("ExitCode", 0),
        "podmanName": (listed.get("Names") or [""])[0],
        "health": health_word(str(listed.get("Status") or "")),
    }


HEALTH_WORDS = ("unhealthy", "healthy", "starting")


def health_word(status: str) -> str:
    """Podman's health status from a list entry's ``Status`` ("healthy" on 4.3, as in
    "Up 3 seconds (healthy)" elsewhere), "" for a container without a check."""
    for word in HEALTH_WORDS:  # "unhealthy" first: it holds "healthy"
        if status == word or f"({word})" in status:
            return word
    return ""


class LiveState:
    """The cache and the tasks that keep it current."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.systemd = steps.systemd
        self.podman = steps.podman
        self.pods: dict[str, PodState] = {}
        self.on_change: Callable[[str], Awaitable[None]] | None = None
        self.on_container_died: Callable[[str, dict[str, str]], Awaitable[None]] | None = None
        self.on_oom: Callable[[str, OomKill], Awaitable[None]] | None = None
        self.on_health: Callable[[str, dict[str, str], str], None] | None = None
        """(pod, the container's event attributes, its HealthStatus) for every check."""
        self.on_container_started: Callable[[str, dict[str, str]], None] | None = None
        self.idle: Callable[[str], Awaitable[None]] = _at_once
        """Until no operation holds the pod's name: the operation reads the unit and
        the containers itself when it ends, so what it caused is not read for again."""
        self._oom_watch: KmsgOomWatch | None = None
        self._background = Background()
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._remove_unit_cb: Callable[[], None] | None = None
        self._stop_events = threading.Event()

    # -- reads ------------------------------------------------------------------------

    async def unit(self, name: str, unit: str) -> dict[str, Any]:
        state = self.pods.setdefault(name, PodState())
        if not state.unit_seen:
            await self.refresh_unit(name, unit)
        return state.unit

    async def containers(self, name: str) -> list[dict[str, Any]]:
        state = self.pods.setdefault(name, PodState())
        if not state.containers_seen:
            await self.refresh_containers(name)
        return state.containers

    def forget(self, name: str) -> None:
        self.pods.pop(name, None)

    # -- refreshes --------------------------------------------------------------------

    async def refresh_unit(self, name: str, unit: str) -> None:
        asked = time.monotonic()
        self.remember_unit(name, await self.steps.service_state(unit), asked)

    def remember_unit(
        self, name: str, props: dict[str, Any] | None, asked: float | None = None
    ) -> None:
        """Keep a unit's state read just now (by a refresh, or by the reconcile that
        adopted the pod: its resync then need not read it again), ``asked`` for then; a
        state read since (a signal's refresh after a survey's read) is kept instead."""
        props = props or {"LoadState": Load.NOT_FOUND, "ActiveState": Active.INACTIVE}
        state = self.pods.setdefault(name, PodState())
        if asked is not None and state.unit_seen > asked:
            return
        state.unit = {key: props.get(key) for key in UNIT_PROPERTIES if key in props}
        state.unit["ExecStart"] = props.get("ExecStart") or []
        state.unit_seen = time.monotonic() if asked is None else asked

    async def refresh_containers(self, name: str) -> None:
        asked = time.time()
        rows = await self.podman.list_containers(f"{naming.LABEL_POD}={name}")
        state = self.pods.setdefault(name, PodState())
        state.containers = [row for r in rows if (row := container_row(r)) is not None]
        state.containers_seen = asked

    async def resync(
        self, names: dict[str, str], *, known: Set[str] = frozenset(), listed: Survey | None = None
    ) -> None:
        """Refresh every pod in `names` (pod name → unit) and drop the others; the units
        of `known` pods are kept as they are: the start-up reconcile has just read them
        settled when it adopted them, and systemd's signals keep them current since
        (reading every unit again was four more D-Bus calls per pod at every restart).
        ``listed``: a survey whose containers are still what Podman holds (the reconcile
        changed none), taken instead of listing them again; a pod an event refreshed
        since keeps what the event read."""
        for gone in set(self.pods) - set(names):
            self.pods.pop(gone, None)
        rows: Sequence[Mapping[str, Any]]
        if listed is None:
            taken = time.time()
            rows = await self.podman.list_containers(naming.LABEL_POD)
        else:
            rows, taken = listed.containers, listed.taken
        by_pod: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for container in rows:
            pod = (container.get("Labels") or {}).get(naming.LABEL_POD)
            row = container_row(container)
            if pod in by_pod and row is not None:
                by_pod[pod].append(row)
        for name, unit in names.items():
            if name not in known or not self.pods.get(name, PodState()).unit_seen:
                await self.refresh_unit(name, unit)
            state = self.pods[name]
            if state.containers_seen <= taken:
                state.containers, state.containers_seen = by_pod[name], taken

    # -- monitoring -------------------------------------------------------------------

    def start(self, units_of: Callable[[], dict[str, str]]) -> None:
        """Watch systemd and Podman; `units_of()` names the pods to keep (name → unit)."""
        self._remove_unit_cb = self.systemd.on_unit_change(self._on_unit_change)
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._podman_events, args=(loop,), name="iyclo-podman-events", daemon=True
        )
        thread.start()
        self._oom_watch = KmsgOomWatch(
            lambda kill: loop.call_soon_threadsafe(self._on_oom_kill, kill)
        )
        self._oom_watch.start()
        self._background.spawn(self._periodic_resync(units_of))

    async def close(self) -> None:
        self._stop_events.set()
        if self._oom_watch is not None:
            await asyncio.to_thread(self._oom_watch.close)
        if self._remove_unit_cb is not None:
            self._remove_unit_cb()
        await self._background.close(*self._pending.values())

    def _on_unit_change(self, change: UnitChange) -> None:
        parsed = naming.parse_unit_name(change.unit)
        if parsed is None or parsed[0] != "Pod":
            return
        name, unit, heard = parsed[1], change.unit, time.monotonic()
        self._debounce(name, lambda: self._unit_changed(name, unit, heard))

    def _debounce(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """One refresh per burst of signals: a state change emits several at once."""
        previous = self._pending.get(key)
        if previous is not None and not previous.done():
            previous.cancel()

        async def later() -> None:
            await asyncio.sleep(0.02)
            await work()

        task = asyncio.ensure_future(later())
        self._pending[key] = task

    async def _unit_changed(self, name: str, unit: str, heard: float) -> None:
        """Read the unit for a signal ``heard`` then, unless it was read since (as for
        containers: an operation reads its unit itself when it ends)."""
        await self._after_operation(name)
        if self.pods.get(name, PodState()).unit_seen >= heard:
            return
        try:
            await self.refresh_unit(name, unit)
            if self.on_change is not None:
                await self.on_change(name)
        except IycloError as exc:
            log.warning("unit refresh failed", pod=name, error=exc.message)

    def _podman_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Blocking reader of Podman's event stream, in its own thread; reconnects."""
        while not self._stop_events.is_set():
            try:
                for event in self.podman.container_events(naming.LABEL_POD):
                    if self._stop_events.is_set():
                        return
                    loop.call_soon_threadsafe(self._on_podman_event, event)
            except Exception as exc:  # a dead socket must not end monitoring for good
                log.debug("podman event stream ended", error=str(exc))
            if self._stop_events.wait(1.0):
                return

    def _on_podman_event(self, event: dict[str, Any]) -> None:
        if event.get("Type") != "container":
            return
        attributes: dict[str, str] = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get(naming.LABEL_POD)
        if not name:
            return
        if event.get("Action") == HEALTH_ACTION:
            if self.on_health is not None:
                self.on_health(name, attributes, str(event.get("HealthStatus") or ""))
            return
        if event.get("Action") not in CONTAINER_ACTIONS:
            return
        if event.get("Action") == "start" and self.on_container_started is not None:
            self.on_container_started(name, attributes)
        if event.get("Action") == "died" and self.on_container_died is not None:
            self._background.spawn(self.on_container_died(name, attributes))
        happened = float(event.get("timeNano") or time.time_ns()) / 1e9
        self._debounce(f"containers:{name}", lambda: self._containers_changed(name, happened))

    def _on_oom_kill(self, kill: OomKill) -> None:
        """Hand a kill to ``on_oom`` for the pod whose slice, or else whose cached
        containers, hold the container."""
        name = kill.pod if kill.pod in self.pods else None
        name = name or next(
            (pod for pod, state in self.pods.items()
             if any(row["id"] == kill.container_id for row in state.containers)),
            None,
        )  # fmt: skip
        if name is not None and self.on_oom is not None:
            self._background.spawn(self.on_oom(name, kill))

    async def _after_operation(self, name: str) -> None:
        """Until an operation on ``name`` ends, ``OPERATION_WAIT`` at most: what it
        reads at its end makes the refresh needless, and a long one (a readiness wait)
        does not hold what ``get`` shows back for longer."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OPERATION_WAIT):
                await self.idle(name)

    async def _containers_changed(self, name: str, happened: float) -> None:
        """List the pod's containers for an event that ``happened`` then, unless they
        were listed since: at 200 pods a listing took 100 to 250 ms of Podman's time,
        and the events of one apply (creates, inits, starts) had it listed three times
        over while the apply listed them once more at its end."""
        await self._after_operation(name)
        if self.pods.get(name, PodState()).containers_seen >= happened:
            return
        try:
            await self.refresh_containers(name)
            if self.on_change is not None:
                await self.on_change(name)
        except IycloError as exc:
            log.warning("container refresh failed", pod=name, error=exc.message)

    async def _periodic_resync(self, units_of: Callable[[], dict[str, str]]) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            try:
                await self.resync(units_of())
            except IycloError as exc:
                log.warning("resync failed", error=exc.message)


async def _at_once(name: str) -> None:
    """``LiveState.idle`` of a cache no operation shares names with."""
