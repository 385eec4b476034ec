"""An in-memory stand-in for ``iyclo.core.service.Service``, for the API adapters' tests.

It has the same async methods with the same results and the same events on a real
``EventBus``, keeps pods in a dict instead of systemd and Podman, parses manifests with
the real parser (so ``Invalid`` errors are the real ones), records every call, raises
any ``IycloError`` on demand (``fail_next``) and can hold a call until the test lets it
go (``hold``), to prove a slow call does not block the bus.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from attrs import field, frozen

from iyclo import __version__
from iyclo.core.events import EventBus, JobChanged, PodChanged
from iyclo.core.service import ApplyResult, ReconcileReport
from iyclo.errors import InvalidError, NotFoundError
from iyclo.manifest.convert import dump_manifest, load_manifest, manifest_digest
from iyclo.manifest.model import Job


@frozen
class _Generation:
    generation: int
    digest: str
    manifest: dict[str, Any]
    applied_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakePod:
    def __init__(self, name: str, kind: str = "Pod") -> None:
        self.name = name
        self.kind = kind
        self.calendar = ""
        self.generations: list[_Generation] = []
        self.desired = "running"
        self.state = "missing"
        self.restarts = 0
        self.containers: list[dict[str, Any]] = []

    @property
    def current(self) -> _Generation:
        return self.generations[-1]


@frozen
class Call:
    method: str
    args: tuple[Any, ...] = field(factory=tuple)


class FakeService:
    """The service layer's async API over a dict; see the module docstring."""

    def __init__(self, *, now: Callable[[], str] = _now) -> None:
        self.now = now
        self.events = EventBus()
        self.pods: dict[str, FakePod] = {}
        self.calls: list[Call] = []
        self._failures: dict[str, BaseException] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    # -- test controls ------------------------------------------------------------------

    def fail_next(self, method: str, exc: BaseException) -> None:
        """The next call of ``method`` raises ``exc`` (after being recorded)."""
        self._failures[method] = exc

    def hold(self, method: str) -> asyncio.Event:
        """Calls of ``method`` wait until the returned event is set."""
        gate = asyncio.Event()
        self._gates[method] = gate
        return gate

    def set_state(self, name: str, state: str, *, restarts: int | None = None) -> None:
        """What systemd would report now, e.g. after a crash; publishes the change."""
        pod = self._pod(name)
        pod.state = state
        if restarts is not None:
            pod.restarts = restarts
        self.events.publish(PodChanged(name=name, state=state))

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [c.args for c in self.calls if c.method == method]

    async def _enter(self, method: str, *args: Any) -> None:
        self.calls.append(Call(method, args))
        self.entered[method].set()
        gate = self._gates.get(method)
        if gate is not None:
            await gate.wait()
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure

    def _pod(self, name: str) -> FakePod:
        pod = self.pods.get(name)
        if pod is None:
            raise NotFoundError(f"no pod or job named '{name}'")
        return pod

    def _publish(self, name: str, state: str, generation: int = 0) -> None:
        pod = self.pods.get(name)
        if pod is not None and pod.kind == "Job":
            self.events.publish(JobChanged(name=name, state=state, generation=generation))
        else:
            self.events.publish(PodChanged(name=name, state=state, generation=generation))

    # -- the Service API ----------------------------------------------------------------

    async def validate(self, manifest: str | dict[str, Any]) -> list[str]:
        await self._enter("validate", manifest)
        try:
            load_manifest(manifest)
        except InvalidError as exc:
            return exc.details
        return []

    async def apply(self, manifest_in: str | dict[str, Any]) -> ApplyResult:
        await self._enter("apply", manifest_in)
        manifest = load_manifest(manifest_in)
        if isinstance(manifest, Job):
            return self._apply_job(manifest)
        digest = manifest_digest(manifest)
        pod = self.pods.get(manifest.name)
        if pod is not None and pod.current.digest == digest:
            pod.desired, pod.state = "running", "running"
            self._publish(pod.name, "running", generation=pod.current.generation)
            return ApplyResult(pod.name, "Pod", pod.current.generation, False, "running")
        if pod is None:
            pod = self.pods[manifest.name] = FakePod(manifest.name)
        generation = pod.generations[-1].generation + 1 if pod.generations else 1
        pod.generations.append(_Generation(generation, digest, dump_manifest(manifest), self.now()))
        self._publish(pod.name, "applying", generation=generation)
        pod.desired, pod.state = "running", "running"
        pod.containers = [
            {
                "name": c.name,
                "id": f"{pod.name}-{c.name}-{generation:04d}".ljust(64, "0"),
                "image": c.image,
                "state": "running",
                "startedAt": 1_700_000_000,
                "exitCode": 0,
                "podmanName": f"iyclo-{pod.name}-g{generation}-{c.name}",
            }
            for c in manifest.containers
        ]
        self._publish(pod.name, "running", generation=generation)
        return ApplyResult(pod.name, "Pod", generation, True, "running")

    def _apply_job(self, manifest: Job) -> ApplyResult:
        """A job is a schedule here; nothing runs."""
        pod = self.pods.get(manifest.name)
        if pod is None:
            pod = self.pods[manifest.name] = FakePod(manifest.name, "Job")
        generation = len(pod.generations) + 1
        digest = manifest_digest(manifest)
        pod.generations.append(_Generation(generation, digest, dump_manifest(manifest), self.now()))
        pod.calendar = manifest.schedule.calendar
        self._publish(pod.name, "applying", generation)
        pod.desired = pod.state = "scheduled"
        self._publish(pod.name, "scheduled", generation)
        return ApplyResult(pod.name, "Job", generation, True, "scheduled")

    async def run_job(self, name: str) -> dict[str, Any]:
        """The fake holds pods only, so a known name is not a job, as the real one says."""
        await self._enter("run_job", name)
        self._pod(name)
        raise InvalidError(f"pod '{name}' is not a job")

    async def runs(self, name: str) -> list[dict[str, Any]]:
        await self._enter("runs", name)
        self._pod(name)
        return []

    async def logs(self, name: str, run: int = 0, lines: int | None = None) -> dict[str, Any]:
        await self._enter("logs", name, run, lines)
        self._pod(name)
        return {"name": name, "entries": []}

    async def remove(self, name: str, purge_history: bool = False) -> None:
        await self._enter("remove", name)
        self._pod(name)
        self._publish(name, "removing")
        del self.pods[name]
        self._publish(name, "removed")
        self.events.forget(name)

    async def start(self, name: str) -> str:
        await self._enter("start", name)
        pod = self._pod(name)
        pod.desired, pod.state = "running", "running"
        for container in pod.containers:
            container["state"] = "running"
        self._publish(name, "running", generation=pod.current.generation)
        return "running"

    async def stop(self, name: str) -> str:
        await self._enter("stop", name)
        pod = self._pod(name)
        pod.desired, pod.state = "stopped", "stopped"
        for container in pod.containers:
            container["state"] = "exited"
        self._publish(name, "stopped")
        return "stopped"

    async def restart(self, name: str) -> str:
        await self._enter("restart", name)
        pod = self._pod(name)
        self._publish(name, "restarting")
        pod.desired, pod.state = "running", "running"
        for container in pod.containers:
            container["state"] = "running"
        self._publish(name, "running")
        return "running"

    async def status(self, name: str) -> dict[str, Any]:
        await self._enter("status", name)
        pod = self._pod(name)
        current = pod.current
        if pod.kind == "Job":
            return {
                "name": name, "kind": "Job", "generation": current.generation,
                "state": pod.state, "unit": f"iyclo-job-{name}.service",
                "timer": f"iyclo-job-{name}.timer", "schedule": {"calendar": pod.calendar},
                "next": "", "lastRun": None,
            }  # fmt: skip
        running = pod.state == "running"
        return {
            "name": name,
            "kind": "Pod",
            "generation": current.generation,
            "digest": current.digest,
            "appliedAt": current.applied_at,
            "desired": pod.desired,
            "state": pod.state,
            "unit": f"iyclo-pod-{name}.service",
            "podmanPod": f"iyclo-{name}-g{current.generation}",
            "activeState": "active" if running else "inactive",
            "subState": "running" if running else "dead",
            "restarts": pod.restarts,
            "mainPid": 4242 if running else 0,
            "since": "2024-01-01T00:00:00Z" if running else "",
            "slice": "iyclo.slice",
            "containers": sorted((dict(c) for c in pod.containers), key=lambda c: c["name"]),
        }

    async def manifest(self, name: str, generation: int = 0) -> dict[str, Any]:
        await self._enter("manifest", name, generation)
        pod = self._pod(name)
        if generation == 0:
            return pod.current.manifest
        for entry in pod.generations:
            if entry.generation == generation:
                return entry.manifest
        stored = ", ".join(str(g.generation) for g in pod.generations)
        raise NotFoundError(f"pod '{name}' has no generation {generation} (stored: {stored})")

    async def history(self, name: str) -> list[dict[str, Any]]:
        await self._enter("history", name)
        pod = self._pod(name)
        return [
            {
                "generation": g.generation,
                "digest": g.digest,
                "appliedAt": g.applied_at,
                "current": g.generation == pod.current.generation,
            }
            for g in pod.generations
        ]

    async def diff(self, manifest_in: str | dict[str, Any]) -> str:
        await self._enter("diff", manifest_in)
        manifest = load_manifest(manifest_in)
        pod = self.pods.get(manifest.name)
        before = json.dumps(pod.current.manifest, indent=2, sort_keys=True) if pod else ""
        after = json.dumps(dump_manifest(manifest), indent=2, sort_keys=True)
        label = f"{manifest.name} (generation {pod.current.generation})" if pod else "(none)"
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=label,
            tofile=f"{manifest.name} (proposed)",
        )
        return "".join(lines)

    async def reconcile(self) -> ReconcileReport:
        await self._enter("reconcile")
        adopted = tuple(sorted(n for n, p in self.pods.items() if p.state == "running"))
        return ReconcileReport(adopted=adopted, recreated=(), removed=(), failed=())

    def version(self) -> str:
        self.calls.append(Call("version"))
        return __version__

    async def list_all(self) -> list[dict[str, Any]]:
        await self._enter("list")
        out = []
        for name in sorted(self.pods):
            try:
                out.append(await self.status(name))
            except NotFoundError:
                continue
        return out
