"""Health that acts: readiness, startup checks, and what is done about an unhealthy
container (issue #12).

Podman runs each container's ``healthcheck`` itself, on Podman 4.3 and 5.4 alike (a
transient timer per container) and reports every result: ``State.Health`` in inspect,
a ``health_status`` event per check (measured on 4.3: ``HealthStatus`` starting,
healthy, unhealthy). What a pod under systemd needs on top of that, iyclo does the same
way on both versions, because neither version's own answer fits a unit systemd
supervises:

* **Readiness.** A pod is ready once every container with a check is healthy (and its
  startup check passed); ``apply`` waits for it (``wait_ready``) and an update that
  never gets ready is rolled back (``pods``). Podman 5's ``sdnotify=healthy`` would say
  the same to systemd, but iyclo's pod unit is ``Type=forking`` on the main container's
  conmon, and 4.3 has no such mode: the daemon decides, from Podman's own reports.
* **Startup checks** are run by the daemon, through Podman (``podman exec`` over its
  API socket), once after each start, before the health check counts. Podman 5's own
  startup healthcheck restarts the container by itself when it fails, behind the back of
  systemd, which supervises the main container's conmon.
* **On unhealthy**, ``HealthGuard`` restarts the pod's unit through systemd (under the
  pod's start limit; counted as ``healthRestarts``), kills the container (the restart
  policy decides what follows), stops the pod, or only reports it. Podman 5's
  ``--health-on-failure=restart`` restarts the container outside systemd, and 4.3 has
  no such option.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from attrs import frozen

from iyclo.contract.events import HealthChanged
from iyclo.core import naming
from iyclo.core.background import Background
from iyclo.core.events import EventBus
from iyclo.core.locks import Locks
from iyclo.core.plan import PodPlan
from iyclo.core.steps import Steps
from iyclo.errors import IycloError, NotReadyError
from iyclo.manifest.model import Container, Pod, StartupCheck
from iyclo.manifest.values import duration_seconds
from iyclo.podman.execute import start_exec

log = structlog.get_logger("iyclo.probes")

OUTPUT_MAX = 300
POLL = 0.5
"""Seconds between two reads of the containers' health while waiting for readiness."""


def checked(manifest: Pod) -> list[Container]:
    """The containers readiness waits for: those with a health or a startup check."""
    return [c for c in manifest.containers if c.healthcheck or c.startup_check]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= OUTPUT_MAX else text[: OUTPUT_MAX - 1] + "…"


@frozen
class Health:
    """One container's health as Podman last reported it."""

    container: str
    status: str
    """starting, healthy, unhealthy; "" when Podman has no result (no check, not running)."""
    output: str
    """The last check's output, or its exit code when it printed nothing."""


async def container_health(steps: Steps, podman_pod: str, container: str) -> Health:
    attrs = await steps.podman.inspect_container(naming.container_name(podman_pod, container))
    state = attrs.get("State") or {}
    health = state.get("Health") or state.get("Healthcheck") or {}
    log_ = health.get("Log") or []
    last = log_[-1] if log_ else {}
    output = _short(str(last.get("Output") or ""))
    if not output and last:
        output = f"exit code {last.get('ExitCode')}"
    status = str(health.get("Status") or "") if state.get("Running") else ""
    return Health(container, status, output)


async def run_startup_check(
    podman_url: str, podman_name: str, check: StartupCheck, deadline: float
) -> str | None:
    """Run ``check`` in the container until it passes (None) or fails ``retries`` times
    or runs out of time (its last output)."""
    last = "it never ran"
    for _ in range(max(1, check.retries)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"not started in time ({last})"
        code, output = await _exec(
            podman_url, podman_name, check.command,
            min(duration_seconds(check.timeout), remaining),
        )  # fmt: skip
        if code == 0:
            return None
        last = output or f"exit code {code}"
        await asyncio.sleep(min(duration_seconds(check.interval), max(0.0, remaining)))
    return last


async def _exec(
    url: str, container: str, command: tuple[str, ...], limit: float
) -> tuple[int, str]:
    proc = await start_exec(
        url, container, command, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, f"timed out after {limit:g}s"
    return proc.returncode or 0, _short(out.decode(errors="replace"))


Progress = Callable[[Health], None]


async def wait_ready(
    steps: Steps, plan: PodPlan, within: float, progress: Progress, guard: HealthGuard | None
) -> None:
    """Until every checked container of ``plan`` passed its startup check and is healthy;
    ``NotReadyError`` naming the container and the check's last output when one fails, or
    is not there within ``within`` seconds. ``progress`` hears each change."""
    deadline = time.monotonic() + within
    containers = checked(plan.manifest)
    if not containers:
        return
    for container in containers:
        if container.startup_check is None:
            continue
        podman_name = naming.container_name(plan.pod_name, container.name)
        failed = await run_startup_check(
            steps.podman.url, podman_name, container.startup_check, deadline
        )
        if failed is not None:
            progress(Health(container.name, "failed-start", failed))
            raise NotReadyError(f"container {container.name}: startup check failed: {failed}")
        progress(Health(container.name, "started", ""))
        if guard is not None:
            guard.started(plan.name, container.name)
    seen: dict[str, str] = {}
    while True:
        waiting: list[Health] = []
        for container in containers:
            if container.healthcheck is None:
                continue
            health = await container_health(steps, plan.pod_name, container.name)
            if seen.get(health.container) != health.status:
                seen[health.container] = health.status
                progress(health)
            if health.status == "unhealthy":
                raise NotReadyError(f"container {health.container} is unhealthy: {health.output}")
            if health.status != "healthy":
                waiting.append(health)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            first = waiting[0]
            why = first.output or first.status or "not running"
            raise NotReadyError(
                f"container {first.container} not healthy within {within:g}s: {why}"
            )
        await asyncio.sleep(POLL)


Act = Callable[[str, Container, str], Awaitable[str]]
"""(pod, container, onFailure) → what was done: the pod handler's action."""
Inspect = Callable[[str, str], Awaitable[Health]]
"""(Podman pod, container) → its health as Podman holds it now."""


class HealthGuard:
    """Acts on Podman's health reports of running pods, as each container's ``onFailure``
    says; skips a pod while an operation holds it (an apply decides by itself then)."""

    def __init__(self, locks: Locks, events: EventBus, manifest_of: ManifestOf, act: Act,
                 inspect: Inspect) -> None:  # fmt: skip
        self._locks = locks
        self._events = events
        self._manifest_of = manifest_of
        self._act = act
        self._inspect = inspect
        self._checking: set[tuple[str, str]] = set()
        self._seen: dict[tuple[str, str], tuple[int, Health]] = {}
        """(pod, container) → the generation and the health last read of it. The
        generation matters: a start-first update's new container has the old one's name,
        and what it reported must not stand for the old one after a rollback."""
        self._started: set[tuple[str, str]] = set()
        """(pod, container) whose startup check passed since the container last started."""
        self._background = Background()

    def started(self, pod: str, container: str) -> None:
        self._started.add((pod, container))

    def note(self, pod: str, generation: int, health: Health) -> None:
        """What a wait for readiness read: the guard's view starts from it."""
        if health.status in ("starting", "healthy", "unhealthy"):
            self._seen[(pod, health.container)] = (generation, health)

    def last(self, pod: str, container: str, generation: int) -> Health | None:
        """The health last read of ``generation``'s container, if any was."""
        seen = self._seen.get((pod, container))
        return seen[1] if seen is not None and seen[0] == generation else None

    def forget(self, pod: str) -> None:
        for key in [k for k in self._seen if k[0] == pod]:
            del self._seen[key]
        self._started = {k for k in self._started if k[0] != pod}

    def container_started(self, pod: str, container: str, generation: int,
                          podman_url: str) -> None:  # fmt: skip
        """A checked container (re)started outside an operation: run its startup check."""
        self._started.discard((pod, container))
        self._seen.pop((pod, container), None)
        self._background.spawn(self._startup(pod, container, generation, podman_url))

    def reported(self, pod: str, container: str, generation: int) -> None:
        """Podman's ``health_status`` event for one container of a pod's generation: a
        check ran. Its status is read back from Podman rather than taken from the event
        (on 4.3 the event's ``HealthStatus`` lags a check behind, measured: "starting"
        twice, then "unhealthy", for retries 2); one read at a time per container."""
        key = (pod, container)
        if key in self._checking:
            return
        self._checking.add(key)
        self._background.spawn(self._changed(pod, container, generation))

    async def close(self) -> None:
        await self._background.close()

    def publish(self, pod: str, container: str, health: str, generation: int, *,
                 action: str = "", output: str = "") -> None:  # fmt: skip
        self._events.publish(HealthChanged(name=pod, container=container, health=health,
                                           generation=generation, action=action,
                                           output=output))  # fmt: skip

    async def _startup(self, pod: str, container: str, generation: int, url: str) -> None:
        found = await self._manifest_of(pod, generation)
        if found is None or self._locks.busy(pod):
            return
        manifest, podman_pod = found
        spec = next((c for c in manifest.containers if c.name == container), None)
        if spec is None or spec.startup_check is None:
            return
        name = naming.container_name(podman_pod, container)
        deadline = (
            time.monotonic()
            + duration_seconds(spec.startup_check.interval) * (spec.startup_check.retries + 1)
            + duration_seconds(spec.startup_check.timeout) * spec.startup_check.retries
        )
        failed = await run_startup_check(url, name, spec.startup_check, deadline)
        if failed is None:
            self.started(pod, container)
            self.publish(pod, container, "started", generation)
            return
        action = await self._do(pod, spec, spec.startup_check.on_failure)
        self.publish(pod, container, "failed-start", generation, action=action, output=failed)

    async def _changed(self, pod: str, container: str, generation: int) -> None:
        key = (pod, container)
        try:
            found = await self._manifest_of(pod, generation)
            if found is None:
                return
            spec = next((c for c in found[0].containers if c.name == container), None)
            if spec is None or spec.healthcheck is None:
                return
            try:
                health = await self._inspect(found[1], container)
            except IycloError:
                return  # gone meanwhile: its removal is someone else's event
        finally:
            self._checking.discard(key)
        status = health.status
        last = self.last(pod, container, generation)
        before = last.status if last is not None else None
        self._seen[key] = (generation, health)
        if before == status or not status:
            return
        action, output = "", health.output if status == "unhealthy" else ""
        waiting_to_start = spec.startup_check is not None and key not in self._started
        if status == "unhealthy" and not waiting_to_start and not self._locks.busy(pod):
            action = await self._do(pod, spec, spec.healthcheck.on_failure)
        self.publish(pod, container, status, generation, action=action, output=output)

    async def _do(self, pod: str, spec: Container, on_failure: str) -> str:
        if on_failure == "none":
            return ""
        try:
            return await self._act(pod, spec, on_failure)
        except IycloError as exc:
            log.error("cannot act on an unhealthy container", pod=pod, container=spec.name,
                      action=on_failure, error=exc.message)  # fmt: skip
            return ""


ManifestOf = Callable[[str, int], Awaitable[tuple[Pod, str] | None]]
"""(pod, generation) → its manifest and Podman pod name, when that generation is the
pod's current one (a report from an older generation's container is not acted on)."""
