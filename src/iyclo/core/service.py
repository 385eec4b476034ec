"""The one service layer every front (D-Bus, JSON socket, CLI) calls.

It owns the desired state (the store) and what is common to every kind: one operation
at a time per name (``locks``), the dispatch to the kind's handler (``pods.PodHandler``,
``jobs.JobHandler``, one protocol: ``handler.Handler``), the kind-conflict check, the
events, the reads that are the same for both (manifests, generations, diffs) and the
reconcile loop. What a kind does to systemd and Podman is its handler's; each step of
that is done once, in ``steps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from iyclo import __version__
from iyclo.core import follow, naming, podexec, stats, timeouts
from iyclo.core.events import EventBus
from iyclo.core.handler import Handler
from iyclo.core.handover import Handover
from iyclo.core.health import OK, Dependencies
from iyclo.core.jobs import JobHandler
from iyclo.core.kind import Kind
from iyclo.core.locks import Locks
from iyclo.core.networks import NetworkHandler, attachment_problems
from iyclo.core.ordering import needs_of, refuse_graph, refuse_if_needed, start_order
from iyclo.core.pods import PodHandler
from iyclo.core.pulls import pull_image, pull_images
from iyclo.core.redact import redact_manifest
from iyclo.core.results import ApplyResult, ReconcileReport
from iyclo.core.secrets import SecretReader
from iyclo.core.state import LiveState
from iyclo.core.steps import Steps, Survey
from iyclo.core.volumes import listing, mounted, remove_owned
from iyclo.errors import (
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
    PodmanUnreachableError,
    StoreError,
    SystemdUnreachableError,
)
from iyclo.manifest.convert import dump_manifest, load_manifest_async, structure
from iyclo.manifest.model import Job, Manifest, Network, Pod, UserNamespace
from iyclo.manifest.policy import (
    DEFAULT_POLICY,
    Policy,
    env_file_sources,
    userns_conflict,
    volume_claims,
    volume_problem,
)
from iyclo.podman.client import PodmanClient
from iyclo.store import Deployment, Store, off_loop
from iyclo.systemd.manager import SystemdManager

__all__ = ["ApplyResult", "ReconcileReport", "Service", "default_state_dir"]

log = structlog.get_logger("iyclo.service")

TIDY_ATTEMPTS = 150
"""Checks (``HEALTH_INTERVAL`` apart: 5 minutes) for a tidy-up reconcile to get through."""


class Service:
    """Pods and jobs: apply, remove, start, stop, restart, inspect, run, reconcile."""

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
        self.policy = policy
        self.events = events or EventBus()
        self.locks = Locks()
        self.claims = asyncio.Lock()
        """Held from the check of what a manifest claims on the host beyond its name (a
        user-namespace range, named volumes) until its record is stored and its volumes
        are made: two applies under different names could otherwise both find a range or
        a volume free and both take it."""
        self.steps = Steps(systemd, podman, policy, SecretReader(policy, store.state_dir))
        self.pods = PodHandler(store, self.steps, self.events, self.locks, LiveState(self.steps))
        self.jobs = JobHandler(store, self.steps, self.events)
        self.networks = NetworkHandler(store, self.steps)
        self._handlers: dict[Kind, Handler] = {
            Kind.POD: self.pods,
            Kind.JOB: self.jobs,
            Kind.NETWORK: self.networks,
        }
        self._tidy: asyncio.Task[None] | None = None
        self.dependencies = Dependencies(
            podman, systemd, recovered=self.reconcile, state_dir=store.state_dir
        )

    async def start_watching(self) -> None:
        """Follow systemd and Podman (job runs, the pods' live cache). Call before the first
        reconcile, so that nothing that happens after it is missed."""
        for handler in self._handlers.values():
            await handler.start_watching()

    async def close(self) -> None:
        if self._tidy is not None:
            self._tidy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tidy
        for handler in self._handlers.values():
            with contextlib.suppress(IycloError):
                await handler.close()

    # -- dispatch -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _operation(self, name: str, verb: str) -> AsyncIterator[None]:
        """A change to ``name``: its lock held, and refused while a dependency is down
        (checked once the lock is ours, so a change that waited sees the health now).

        A change that a dependency failed in the middle of (Podman restarted, systemd's
        bus gone) may not have been able to undo what it made either: the undo needs the
        same Podman. So once the dependencies answer again, a reconcile tidies up
        (found by ``tests/test_faults_host.py``: a pod of a failed update left beside
        the running one)."""
        async with self.locks.hold(name):
            self.dependencies.require_ok(verb)
            try:
                yield
            except (PodmanUnreachableError, SystemdUnreachableError, StoreError) as exc:
                self._reconcile_soon(f"{verb} {name}: {exc.message}")
                raise

    def _reconcile_soon(self, why: str) -> None:
        """One reconcile in the background once every dependency answers; bounded."""
        if self._tidy is not None and not self._tidy.done():
            return
        self._tidy = asyncio.create_task(self._tidy_up(why), name="iyclo-tidy-up")

    async def _tidy_up(self, why: str) -> None:
        log.warning("a change failed half-way; reconciling once dependencies answer", why=why)
        for _ in range(TIDY_ATTEMPTS):
            await asyncio.sleep(timeouts.HEALTH_INTERVAL)
            if self.dependencies.health.state != OK:
                continue
            try:
                await self.reconcile()
            except IycloError as exc:
                log.warning("tidy-up reconcile failed; trying again", error=exc.message)
                continue
            return
        log.error("gave up tidying up after a failed change; run `iyclo reconcile`", why=why)

    async def _record(self, name: str) -> Deployment:
        record: Deployment = await off_loop(self.store.get, name)
        return record

    async def _find(self, name: str) -> Deployment | None:
        record: Deployment | None = await off_loop(self.store.find, name)
        return record

    async def _graph(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """name → (kind, stored manifest) of every record: what ``dependsOn`` is checked
        against (``core.ordering``)."""
        records: list[Deployment] = await off_loop(self.store.list)
        return {r.name: (r.kind, r.manifest) for r in records}

    def _handler(self, record: Deployment) -> Handler:
        return self._handlers[Kind.of(record.kind)]

    # -- operations -----------------------------------------------------------------------

    async def validate(self, manifest: str | dict[str, Any], *, trusted: bool = True) -> list[str]:
        """Every problem of a manifest; ``trusted`` (the caller may deploy): its host paths
        and secret sources looked at on this host too."""
        try:
            parsed = await load_manifest_async(manifest, self.policy, on_host=trusted)
        except InvalidError as exc:
            return exc.details
        return await self._attachment_problems(parsed)

    async def _attachment_problems(self, manifest: Manifest) -> list[str]:
        """The networks a pod joins, against the networks applied (``core.networks``)."""
        if not isinstance(manifest, Pod) or not manifest.networks:
            return []
        records: list[Deployment] = await off_loop(self.store.list)
        return attachment_problems(manifest, {r.name: r for r in records})

    async def apply(
        self, manifest_in: str | dict[str, Any], wait_timeout: float | None = None
    ) -> ApplyResult:
        """``wait_timeout``: seconds a pod's readiness is waited for (``iyclo apply
        --wait-timeout``), instead of its manifest's ``update.readyTimeout``."""
        if wait_timeout is not None and not 0 < wait_timeout <= 86400:
            raise InvalidError(f"wait_timeout: {wait_timeout:g} is not in (0, 86400] seconds")
        manifest = await load_manifest_async(manifest_in, self.policy)
        kind = Kind.of_manifest(manifest)
        async with self._operation(manifest.name, "apply"):
            previous = await self._find(manifest.name)
            if previous is not None and Kind.of(previous.kind) is not kind:
                raise ConflictError(
                    f"cannot apply {kind} '{manifest.name}': a {previous.kind} with that name "
                    "exists",
                    hint=f"remove it first with `iyclo rm {manifest.name}`",
                )
            if not isinstance(manifest, Network) and manifest.depends_on:
                refuse_graph(manifest, await self._graph())
            # Before anything is recorded or stopped: a pull that fails changes nothing.
            images = await pull_images(self.steps.podman, self.events, manifest)
            if isinstance(manifest, Network) or (
                manifest.userns is None
                and not volume_claims(manifest, self.policy)
                and not (isinstance(manifest, Pod) and manifest.networks)
            ):
                return await self._handlers[kind].apply(
                    manifest, previous, images, wait_timeout=wait_timeout
                )
            async with self.claims:
                found = await self._attachment_problems(manifest)
                if found:
                    raise InvalidError(found[0], found)
                await self._refuse_claimed(manifest, previous)
                return await self._handlers[kind].apply(
                    manifest, previous, images, wait_timeout=wait_timeout
                )

    async def rollback(self, name: str, to: int = 0) -> ApplyResult:
        """Go back by hand: generation ``to`` (0: the one before the current, skipping
        those rolled back) applied again as a new generation, as ``kubectl rollout undo``
        does, so the history keeps what was undone."""
        generations = await off_loop(self.store.history, name)
        record = await self._record(name)
        if to == 0:
            earlier = [g.generation for g in generations
                       if g.generation < record.generation and not g.rolled_back]  # fmt: skip
            if not earlier:
                raise NotFoundError(
                    f"{record.kind} '{name}' has no generation before {record.generation} "
                    "to go back to"
                )
            to = earlier[-1]
        stored: dict[str, Any] = await off_loop(self.store.manifest, name, to)
        return await self.apply(stored)

    async def _refuse_claimed(self, manifest: Pod | Job, previous: Deployment | None) -> None:
        """Refuse what is another's: a user-namespace range another pod's or job's overlaps
        (two pods mapped onto one host ID are one user on the host), a named volume
        another made (``policy.volume_problem``). Validation alone cannot know the others.
        The manifest's own record is left out, so an update keeps its range, and so are
        the volumes its stored generation mounts already (made before volumes had owners)."""
        found: list[str] = []
        if manifest.userns is not None:
            records: list[Deployment] = await off_loop(self.store.list)
            others = {r.name: _userns_of(r) for r in records if r.name != manifest.name}
            line = userns_conflict(manifest.userns, others)
            if line is not None:
                found.append(line)
        already = mounted(previous.manifest) if previous is not None else set()
        for claim in volume_claims(manifest, self.policy):
            if claim.name in already:
                continue
            labels = await self.steps.podman.volume_labels(claim.name)
            problem = volume_problem(claim, manifest.name, labels)
            if problem is not None:
                found.append(problem)
        if found:
            raise InvalidError(found[0], found)

    async def pull(self, manifest_in: str | dict[str, Any] = "", image: str = "") -> dict[str, Any]:
        """Pull a manifest's images as its containers' ``pullPolicy`` says (what an apply
        would pull, without applying), or one ``image`` always; progress goes to the
        event stream as ``PullProgress``. Holds no lock: Podman serialises pulls of one
        image itself, and nothing deployed changes."""
        if bool(manifest_in) == bool(image):
            raise InvalidError("pull: give either a manifest or an image, not both or neither")
        self.dependencies.require_ok("pull")
        if image:
            if image != image.strip() or any(c.isspace() for c in image):
                raise InvalidError(f'pull: "{image}" is not an image reference')
            ref = await pull_image(self.steps.podman, self.events, "", image, "always")
            return {"name": "", "images": [{"container": "", **ref.to_json()}]}
        manifest = await load_manifest_async(manifest_in, self.policy)
        images = await pull_images(self.steps.podman, self.events, manifest)
        return {
            "name": manifest.name,
            "images": [{"container": name, **ref} for name, ref in images.items()],
        }

    async def remove(self, name: str, purge_history: bool = False, volumes: bool = False) -> None:
        """Remove a pod, job or network; a job's run history stays unless
        ``purge_history``, the named volumes it owns unless ``volumes``."""
        async with self._operation(name, "remove"):
            record = await self._record(name)
            if Kind.of(record.kind) is Kind.POD:
                refuse_if_needed(name, await self._graph())
            if Kind.of(record.kind) is Kind.NETWORK:
                async with self.claims:  # no pod takes it up while it goes
                    await self.networks.remove(record, purge_history=purge_history)
                return
            if not volumes:
                await self._handler(record).remove(record, purge_history=purge_history)
                return
            async with self.claims:  # no apply takes one up while they go
                await self._handler(record).remove(record, purge_history=purge_history)
                records: list[Deployment] = await off_loop(self.store.list)
                gone = await remove_owned(self.steps.podman, name, records)
            log.info("volumes removed", name=name, volumes=gone)

    async def volumes(self) -> list[dict[str, Any]]:
        """The named volumes iyclo made: name, owner, in use (by whom), mountpoint."""
        records: list[Deployment] = await off_loop(self.store.list)
        return await listing(self.steps.podman, records)

    async def start(self, name: str) -> str:
        async with self._operation(name, "start"):
            record = await self._record(name)
            return await self._handler(record).start(record)

    async def stop(self, name: str) -> str:
        async with self._operation(name, "stop"):
            record = await self._record(name)
            return await self._handler(record).stop(record)

    async def restart(self, name: str) -> str:
        async with self._operation(name, "restart"):
            record = await self._record(name)
            return await self._handler(record).restart(record)

    async def run_job(self, name: str) -> dict[str, Any]:
        """Start a run of job `name` now; ConflictError while one is going."""
        async with self._operation(name, "run_job"):
            record = await self._record(name)
            if Kind.of(record.kind) is not Kind.JOB:
                raise InvalidError(f"{record.kind} '{name}' is not a job; only jobs can be run")
            return await self.jobs.run_now(record)

    # -- reads ----------------------------------------------------------------------------

    async def status(self, name: str) -> dict[str, Any]:
        record = await self._record(name)
        return await self._handler(record).status(record)

    async def list_all(self) -> list[dict[str, Any]]:
        records: list[Deployment] = await off_loop(self.store.list)
        out = []
        for record in records:
            try:
                out.append(await self._handler(record).status(record))
            except NotFoundError:
                continue
        return out

    async def runs(self, name: str) -> list[dict[str, Any]]:
        """Run history of job `name`, oldest first (kept after a remove by default)."""
        return await self.jobs.run_history(name)

    async def logs(self, name: str, run: int = 0, lines: int | None = None) -> dict[str, Any]:
        """A job run's output (`run` 0: the newest), or a pod unit's journal."""
        record = await self._find(name)
        if record is None:  # a removed job whose run history was kept
            return await self.jobs.run_logs(name, run, lines)
        return await self._handler(record).logs(record, run, lines)

    # -- operating what runs --------------------------------------------------------------

    async def exec(self, name: str, container: str, command: list[str], tty: bool,
                   interactive: bool, *, handover: Handover) -> int:  # fmt: skip
        """Run ``command`` in a running container of pod ``name`` on the caller's stdio
        (``core.podexec``); its exit code. No lock: it changes nothing iyclo records."""
        record = await self._record(name)
        return await podexec.exec_in_pod(
            self.steps.podman, record, container, command, tty=tty, interactive=interactive,
            handover=handover,
        )  # fmt: skip

    async def follow_logs(self, name: str, lines: int = 10, *, handover: Handover) -> None:
        """A pod's or job's journal as it grows, into the caller's pipe (``core.follow``),
        until the caller goes away."""
        record = await self._record(name)
        await follow.follow([Kind.of(record.kind).service(name)], lines, handover)

    async def stats(self, names: list[str]) -> dict[str, Any]:
        """CPU, memory and tasks of pods ``names`` (none: every pod) and their containers
        (``core.stats``)."""
        if not all(isinstance(n, str) for n in names):
            raise InvalidError("stats: names must be strings")
        sampled = stats.sampled_now()
        if names:
            records = [await self._record(n) for n in dict.fromkeys(names)]
        else:
            records = await off_loop(self.store.list)
        pods = []
        for record in records:
            if Kind.of(record.kind) is not Kind.POD:
                if names:
                    raise InvalidError(f"stats: {record.kind.lower()} '{record.name}' is not "
                                       "a pod; stats are per pod")  # fmt: skip
                continue
            status = await self.pods.status(record)
            pods.append(await stats.pod_stats(self.steps, record, status))
        return {"sampledNs": sampled, "pods": pods}

    async def manifest(self, name: str, generation: int = 0) -> dict[str, Any]:
        if generation == 0:
            return (await self._record(name)).manifest
        result: dict[str, Any] = await off_loop(self.store.manifest, name, generation)
        return result

    async def history(self, name: str) -> list[dict[str, Any]]:
        record = await self._record(name)
        generations = await off_loop(self.store.history, name)
        return [
            {
                "generation": g.generation,
                "digest": g.digest,
                "images": g.images,
                "appliedAt": g.applied_at.isoformat(),
                "current": g.generation == record.generation,
                **({"rolledBack": g.rolled_back} if g.rolled_back else {}),
            }
            for g in generations
        ]

    async def diff(self, manifest_in: str | dict[str, Any], *, trusted: bool = True) -> str:
        """A unified diff of the stored manifest against a proposed one (empty: no change).
        Not ``trusted`` (the caller may not deploy): both sides with their ``env`` values
        hidden (``core.redact``), so it learns which keys differ, never a stored value, and
        nothing is looked at on the host."""
        manifest = await load_manifest_async(manifest_in, self.policy, on_host=trusted)
        record = await self._find(manifest.name)
        proposed = dump_manifest(manifest)
        stored = record.manifest if record else None
        if not trusted:
            proposed, stored = redact_manifest(proposed), stored and redact_manifest(stored)
        before = json.dumps(stored, indent=2, sort_keys=True) if stored else ""
        after = json.dumps(proposed, indent=2, sort_keys=True)
        label = f"{manifest.name} (generation {record.generation})" if record else "(none)"
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=label,
            tofile=f"{manifest.name} (proposed)",
        )
        changed = await self._env_files_changed(manifest, record) if trusted else []
        return "".join(lines) + "".join(f"{line}\n" for line in changed)

    async def _env_files_changed(self, manifest: Manifest, record: Deployment | None) -> list[str]:
        """``containers[0].envFiles[0]: PATH (changed)`` for each env file whose contents
        differ from what the current generation was applied with (its keyed digest, in
        the record's status): the manifest names only the path, so its diff cannot show it."""
        if record is None or isinstance(manifest, Network):
            return []
        stored: dict[str, str] = record.status.get("envFiles") or {}
        values = await self.steps.read_secrets(manifest)
        paths = {where: path for where, _, path in env_file_sources(manifest)}
        return [
            f"{where}: {paths[where]} (changed)"
            for where, digest in values.env_digests.items()
            if where in stored and stored[where] != digest
        ]

    def version(self) -> str:
        return __version__

    def health(self) -> dict[str, Any]:
        """ok, or degraded with one line per missing dependency (``core.health``)."""
        return self.dependencies.health.to_json()

    def on_health_change(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        return self.dependencies.on_change(lambda health: listener(health.to_json()))

    # -- reconcile ------------------------------------------------------------------------

    async def survey(self, records: Sequence[Deployment] | None = None) -> Survey:
        """What Podman and systemd hold for every record (``Steps.survey``), for a
        ``reconcile``: the daemon's start-up takes it while it asks Podman what it is."""
        if records is None:
            records = await off_loop(self.store.list)
        return await self.steps.survey(
            [unit for r in records for unit in self._handler(r).surveyed_units(r)]
        )

    async def reconcile(
        self,
        progress: Callable[[int, int], None] | None = None,
        survey: Survey | None = None,
    ) -> ReconcileReport:
        """Make systemd and Podman match the store: adopt, re-create, remove orphans.
        ``progress(done, total)`` hears of each record done (the daemon's start-up tells
        systemd, so a reboot's re-making of many pods is not taken for a hung start).
        ``survey``: one taken just before, while nothing else could change the host
        (the start-up's, before it serves anyone); else one is taken here."""
        self.dependencies.require_ok("reconcile")
        async with self.locks.exclusive():
            outcomes: dict[str, list[str]] = {"adopted": [], "recreated": [], "stopped": []}
            failed: list[tuple[str, str]] = []
            records: list[Deployment] = await off_loop(self.store.list)
            survey = survey or await self.survey(records)
            # What a pod depends on first: its start waits for it (``core.ordering``).
            by_name = {r.name: r for r in records}
            order = start_order(by_name, {r.name: needs_of(r.manifest) for r in records})
            # Networks before everything: a pod's Podman pod cannot be made without them.
            records = sorted((by_name[name] for name in order),
                             key=lambda r: Kind.of(r.kind) is not Kind.NETWORK)  # fmt: skip
            for done, record in enumerate(records, 1):
                try:
                    async with self.locks.name(record.name):
                        outcome = await self._handler(record).reconcile_one(record, survey)
                except IycloError as exc:
                    failed.append((record.name, exc.message))
                    log.error("reconcile failed", name=record.name, error=exc.message)
                    continue
                finally:
                    if progress is not None:
                        progress(done, len(records))
                outcomes[outcome].append(record.name)
            removed: list[str] = []
            for kind, handler in self._handlers.items():
                if kind is not Kind.NETWORK:
                    known = {r.name for r in records if Kind.of(r.kind) is kind}
                    removed.extend(await handler.remove_orphans(known))
            current = {naming.podman_pod_name(r.name, r.pod_generation) for r in records}
            removed.extend(
                await self.steps.remove_orphans(
                    {r.name for r in records}, self.locks.busy, survey, current
                )
            )
            # Last: Podman refuses to remove a network an orphan pod is still on.
            removed.extend(await self.networks.remove_orphans(
                {r.name for r in records if Kind.of(r.kind) is Kind.NETWORK}
            ))  # fmt: skip
            with contextlib.suppress(IycloError):
                await self.pods.resync(adopted=set(outcomes["adopted"]), survey=survey)
            report = ReconcileReport(
                tuple(outcomes["adopted"]), tuple(outcomes["recreated"]), tuple(removed),
                tuple(failed),
            )  # fmt: skip
            log.info("reconciled", **report.to_json())
            return report


def _userns_of(record: Deployment) -> UserNamespace | None:
    """A stored manifest's ``userns``, read without re-validating the whole manifest."""
    raw = record.manifest.get("userns")
    if not isinstance(raw, dict):
        return None
    try:
        return structure(raw, UserNamespace)
    except InvalidError:  # stored before it was validated as it is now: claims nothing
        return None


def default_state_dir() -> Path:
    return Path("/var/lib/iyclo")
