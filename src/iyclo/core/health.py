"""Whether what iyclod stands on is there: Podman's API, systemd's bus, room to write.

A dependency that goes away (``podman.socket`` restarted by an upgrade, Podman's service
hung) must not take the daemon with it, nor let it half-make what it is asked for. So the
daemon probes both every ``HEALTH_INTERVAL`` seconds; while one is missing (Podman: for
``PODMAN_FAILURES`` probes in a row) it is *degraded*: it says so with the reason on every
front (``health`` on the JSON socket, the Manager's ``State`` and ``Problems`` properties
on D-Bus, a warning in ``iyclo ps``),
keeps answering reads from its store and cache, and refuses changes at once with one
line (``UnavailableError``) instead of failing them half-way. When the dependency answers
again it reconciles by itself, so what was missed while it was away is caught up, and is
*ok* again.

The state directory is probed for free space: a change that cannot be recorded must be
refused before it touches the host, not fail half-way at its first write. Below
``STATE_RESERVE`` (or twice the state file, when that is larger: every write of the store
writes the whole file anew beside the old one) the daemon is degraded the same way, and
resumes by itself once space is freed, like the kubelet's disk-pressure threshold.

systemd is probed through the daemon's connection to its bus. A connection that drops
(the bus daemon crashed or was restarted) is made again by the systemd adapter on its own
(``SystemdManager``), its signal watches with it; until then the daemon is degraded with
the adapter's reason, and once it is back it reconciles like after any other outage,
since signals sent in the gap were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from attrs import frozen

from iyclo.core import timeouts
from iyclo.errors import IycloError, UnavailableError
from iyclo.store import STATE_FILE

log = structlog.get_logger("iyclo.health")

OK = "ok"
DEGRADED = "degraded"
PODMAN_FAILURES = 2
"""Probes of Podman that must fail in a row before the daemon says it is degraded."""
STATE_RESERVE = 1024 * 1024
"""Bytes that must stay free in the state directory for changes to be taken."""


class Pingable(Protocol):
    async def ping(self) -> None: ...


class Connected(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def lost_reason(self) -> str: ...

    @property
    def reconnects(self) -> int: ...


@frozen
class Health:
    state: str
    problems: tuple[str, ...]
    """One line per missing dependency, naming it first ("podman: cannot reach …")."""

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "problems": list(self.problems)}


Listener = Callable[[Health], None]


class Dependencies:
    """The probes, the current ``Health``, and the gate changes pass through."""

    def __init__(
        self,
        podman: Pingable,
        systemd: Connected,
        *,
        recovered: Callable[[], Awaitable[object]],
        interval: float = timeouts.HEALTH_INTERVAL,
        state_dir: Path | None = None,
    ) -> None:
        self._podman = podman
        self._state_dir = state_dir
        self._systemd = systemd
        self._recovered = recovered
        self.interval = interval
        self.threshold = PODMAN_FAILURES
        self.health = Health(OK, ())
        self._podman_failures = 0
        self._podman_problem = ""
        self._systemd_reconnects: int | None = None
        """systemd's reconnects as of the last check; unknown before the first."""
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change of health; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._watch(), name="iyclo-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def require_ok(self, what: str) -> None:
        """Refuse the change ``what`` while degraded: one line, nothing touched."""
        if self.health.state != OK:
            raise UnavailableError(
                f"{what}: iyclod is degraded ({'; '.join(self.health.problems)}); reads "
                "still work, changes wait until it is back",
                hint="`iyclo health` shows what is missing; iyclod resumes by itself",
            )

    async def check(self) -> Health:
        """Probe both dependencies once; on a change tell the listeners, and on a return
        to ok reconcile."""
        problems = []
        podman = await self._probe_podman()
        if podman:
            problems.append(podman)
        if storage := self._probe_storage():
            problems.append(storage)
        if not self._systemd.connected:
            why = self._systemd.lost_reason or "the D-Bus connection to systemd is gone"
            problems.append(f"systemd: {why}; connecting again")
        now = Health(DEGRADED if problems else OK, tuple(problems))
        before, self.health = self.health, now
        if now != before:
            if now.state == OK:
                log.info("dependencies are back", was=list(before.problems))
            else:
                log.error("degraded", problems=problems)
            for listener in self._listeners:
                listener(now)
        seen, self._systemd_reconnects = self._systemd_reconnects, self._systemd.reconnects
        reconnected = seen is not None and seen != self._systemd_reconnects
        # Back from an outage, or from a drop of systemd's bus too short for any probe to
        # see: either way signals may have been missed.
        if now.state == OK and (before.state != OK or reconnected):
            await self._catch_up()
        return now

    async def _probe_podman(self) -> str:
        """The line saying Podman is missing, once ``threshold`` probes in a row failed;
        "" while it answers, or has failed fewer times. One failure is not an outage: a
        socket-activated Podman starting up, or busy importing an image, can miss one
        ping (measured on the test host under load), as a kubelet probe can miss one."""
        try:
            async with asyncio.timeout(timeouts.HEALTH_PROBE):
                await self._podman.ping()
        except TimeoutError:
            self._podman_problem = f"podman: no answer to a ping within {timeouts.HEALTH_PROBE:g}s"
        except IycloError as exc:
            self._podman_problem = f"podman: {exc.message}"
        else:
            self._podman_failures = 0
            return ""
        self._podman_failures += 1
        return self._podman_problem if self._podman_failures >= self.threshold else ""

    def _probe_storage(self) -> str:
        """The line saying the state directory has no room for the next write, or ""."""
        if self._state_dir is None:
            return ""
        try:
            stats = os.statvfs(self._state_dir)
        except OSError as exc:
            return f"state: cannot read {self._state_dir}: {exc.strerror}"
        try:
            size = os.stat(self._state_dir / STATE_FILE).st_size
        except OSError:  # none yet: the first write is small
            size = 0
        free = stats.f_bavail * stats.f_frsize
        needed = max(STATE_RESERVE, 2 * size)
        if free >= needed:
            return ""
        return (
            f"state: {self._state_dir} has {free // 1024} KiB free, iyclod needs "
            f"{needed // 1024} KiB to record changes; free some space"
        )

    async def _catch_up(self) -> None:
        try:
            await self._recovered()
        except IycloError as exc:
            log.error("reconcile after recovery failed", error=exc.message)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a bug must not end the watch
                log.exception("health check failed")
