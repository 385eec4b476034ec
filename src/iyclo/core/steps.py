"""Each systemd and Podman step of the core, done once for pods and jobs alike.

A pod and a job are both one Podman pod per generation (made here before any unit
starts), their own transient slice, and transient units started and stopped here. The
rules below used to exist twice and disagreed; now they are these:

* a unit systemd does not know (``NoSuchUnit``, or ``LoadState`` ``not-found`` after a
  lookup loaded it) is absent: ``unit_state`` returns None;
* a unit is running while its ``ActiveState`` is active, activating, reloading or
  deactivating (``unit_state.RUNNING``), i.e. until systemd says inactive or failed;
* a stopped transient unit is waited for until it is unloaded (a failed one is reset so
  it can be), bounded by ``timeouts.UNIT_GONE``;
* a start that fails is explained from the unit's own journal (Podman's first error),
  and whatever the caller made for it is cleaned up before the error is raised;
* a generation's secrets are Podman secrets made with it, before its containers (which
  name them), and removed with it: with its pod, with the other generations, or by
  reconcile when the generation they carry in their labels has no pod any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import structlog

from iyclo.core import naming, timeouts
from iyclo.core.journal import start_failure_reason
from iyclo.core.plan import ContainerPlan, SecretPlan, volume_labels
from iyclo.core.secrets import (
    EnvFileSource,
    SecretReader,
    SecretSource,
    SecretValues,
    secret_sources,
)
from iyclo.core.slices import ensure_slice
from iyclo.core.unit_state import SETTLED, TRANSITIONS, is_running
from iyclo.errors import InvalidError, IycloError, NotFoundError, PodmanError, SystemdError
from iyclo.manifest.model import Job, Pod
from iyclo.manifest.policy import DEFAULT_POLICY, Policy, env_file_sources, host_problems
from iyclo.podman.client import PodmanClient
from iyclo.systemd.const import IFACE_SERVICE, IFACE_UNIT, JobResult
from iyclo.systemd.const import UnitLoadState as Load
from iyclo.systemd.manager import JobCanceledError, SystemdManager
from iyclo.systemd.properties import prop

log = structlog.get_logger("iyclo.steps")

STATE_KEYS = ("InvocationID", "ActiveState", "SubState", "StateChangeTimestamp")
"""What tells one moment of a unit from the next, for ``Steps.unit_state``."""
COHERENT_READ_TRIES = 5
SURVEY_READS = 16
"""Unit reads a survey keeps under way at once (``Steps.settled_service_states``)."""


def with_env(spec: dict[str, Any], variables: Mapping[str, str] | None) -> dict[str, Any]:
    """A container's spec with its env files' variables, the manifest's ``env`` winning
    (Podman's ``--env-file`` then ``--env`` order); the plan itself never holds them."""
    if not variables:
        return spec
    return {**spec, "environment": {**variables, **(spec.get("environment") or {})}}


def pod_of_unit(props: Mapping[str, Any] | None) -> str | None:
    """The Podman pod a pod's or job's service was made for: the last word of its
    ``ExecStopPost`` ``… podman pod stop … <pod>`` (both kinds stop their pod there)."""
    for entry in (props or {}).get("ExecStopPost") or []:
        argv = [str(word) for word in (entry[1] if len(entry) > 1 else [])]
        if ("pod", "stop") in itertools.pairwise(argv):
            return argv[-1]
    return None


@attrs.frozen
class Survey:
    """What Podman and systemd hold for every name, read once for a whole reconcile: one
    list each of pods, secrets and containers, and the service units asked for read at
    once, instead of Podman and systemd calls one record after another (at 200 pods,
    most of a restart's time went to those calls)."""

    pods: Mapping[str, Sequence[str]]
    """Owner name → its Podman pods (generations)."""
    secrets: Mapping[str, Sequence[tuple[str, str | None]]]
    """Owner name → its secrets, each with the Podman pod of its generation."""
    containers: Sequence[Mapping[str, Any]] = ()
    """Every container iyclo made, as Podman lists them."""
    services: Mapping[str, dict[str, Any] | None] = attrs.field(factory=dict)
    """Service unit → its ``settled_service_state`` (None: not loaded), for the units
    the survey was asked to read."""
    taken: float = 0.0
    """``time.time()`` when the lists were asked for (the clock of Podman's events)."""
    units_asked: float = 0.0
    """``time.monotonic()`` when the units were asked for: a systemd signal heard since
    may be newer than what ``services`` holds (``LiveState.remember_unit``)."""


class PodMaking(Protocol):
    """What both plans (``PodPlan``, ``JobPlan``) say about the Podman pod and the slice."""

    @property
    def manifest(self) -> Pod | Job: ...
    @property
    def name(self) -> str: ...
    @property
    def pod_name(self) -> str: ...
    @property
    def pod_spec(self) -> dict[str, Any]: ...
    @property
    def containers(self) -> tuple[ContainerPlan, ...]: ...
    @property
    def volumes(self) -> tuple[str, ...]: ...
    @property
    def slice(self) -> str: ...
    @property
    def slice_properties(self) -> tuple[tuple[str, Any], ...]: ...
    @property
    def secrets(self) -> tuple[SecretPlan, ...]: ...


STOP_ATTEMPTS = 3
"""Stops of a unit asked in a row when another job keeps replacing ours (see stop_job)."""


class Steps:
    def __init__(
        self,
        systemd: SystemdManager,
        podman: PodmanClient,
        policy: Policy = DEFAULT_POLICY,
        secrets: SecretReader | None = None,
    ) -> None:
        """``secrets`` reads secret values as the daemon's policy allows; without it, a
        manifest with secrets is refused."""
        self.systemd = systemd
        self.podman = podman
        self.policy = policy
        self.secrets = secrets

    # -- the host, before a start -----------------------------------------------------

    async def check_host(self, plan: PodMaking) -> None:
        """Refuse a start whose host paths are not safe *now*: a symbolic link planted
        under an allowed root since the manifest was applied would be followed by runc.

        Called before every start the core makes, before anything is changed for it; the
        units' ExecStartPre= (``plan.hostcheck_command``) covers the starts systemd makes
        on its own. The lines name the fields, as validation's do.
        """
        found = await asyncio.to_thread(host_problems, plan.manifest, self.policy)
        if found:
            raise InvalidError(found[0], found)

    # -- units ------------------------------------------------------------------------

    async def unit_state(
        self, unit: str, interface: str = IFACE_UNIT, *, listed: bool = False
    ) -> dict[str, Any] | None:
        """The Unit properties of a loaded unit and those of its type's ``interface``
        (e.g. Service, Timer), or None when systemd has no such unit. ``listed``: a
        listing has just shown it loaded, so it is not looked up first (one call less;
        unloaded since, it reads ``not-found`` and is absent all the same)."""
        if not listed:
            try:
                await self.systemd.get_unit(unit)
            except NotFoundError:
                return None
        props = await self.systemd.unit_properties(unit)
        if props.get("LoadState") == Load.NOT_FOUND:
            return None
        if interface == IFACE_UNIT:
            return props
        # Two reads, two moments: a job's service can end one run and begin the next
        # between them (systemd resets Result and ExecMain* at the start), and the
        # Service values of the new run read with the Unit values of the old one made a
        # run that exited 7 look like a success. The type's values count only when read
        # between two Unit reads that show the same state.
        typed: dict[str, Any] = {}
        for _ in range(COHERENT_READ_TRIES):
            try:
                typed = await self.systemd.unit_properties(unit, interface)
                after = await self.systemd.unit_properties(unit)
            except NotFoundError:  # unloaded in between
                return props
            same = all(after.get(key) == props.get(key) for key in STATE_KEYS)
            props = after
            if same:
                break
        else:
            log.warning("unit state kept changing while read", unit=unit)
        return {**props, **typed}

    async def service_state(self, unit: str, *, listed: bool = False) -> dict[str, Any] | None:
        return await self.unit_state(unit, IFACE_SERVICE, listed=listed)

    async def settled_service_state(
        self, unit: str, *, listed: bool = False
    ) -> dict[str, Any] | None:
        """``service_state`` once a start or stop under way has ended: a daemon killed in
        the middle of one leaves the job to systemd, and deciding on "deactivating" would
        take a pod being stopped for one that runs (found by the crash campaign)."""
        state = await self.service_state(unit, listed=listed)
        if state is not None and state.get("ActiveState") in TRANSITIONS:
            await self.systemd.wait_for_state(unit, SETTLED, timeout=timeouts.SYSTEMD_JOB)
            state = await self.service_state(unit)
        return state

    async def settled_service_states(
        self, units: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """``settled_service_state`` of each of ``units`` that could be read: one listing
        says which are loaded, and those are read ``SURVEY_READS`` at a time, so systemd
        answers one while the next is asked for (one after another, the round trips
        added up)."""
        if not units:
            return {}
        loaded = {u.name for u in await self.systemd.list_units_by_patterns([], units)}
        gate = asyncio.Semaphore(SURVEY_READS)
        states: dict[str, dict[str, Any] | None] = {u: None for u in units if u not in loaded}

        async def read(unit: str) -> None:
            async with gate:
                # One that cannot be read is left out: its record reads it, and fails, alone.
                with contextlib.suppress(IycloError):
                    states[unit] = await self.settled_service_state(unit, listed=True)

        await asyncio.gather(*(read(unit) for unit in units if unit in loaded))
        return states

    async def wait_gone(self, unit: str) -> None:
        """Until ``unit`` is unloaded; a failed one is reset first, which unloads it."""
        deadline = time.monotonic() + timeouts.UNIT_GONE
        while True:
            with contextlib.suppress(NotFoundError, SystemdError):
                await self.systemd.reset_failed_unit(unit)
            if await self.unit_state(unit) is None:
                return
            if time.monotonic() > deadline:
                raise SystemdError(
                    f"unit {unit} is still loaded {timeouts.UNIT_GONE:.0f}s after its stop"
                )
            await asyncio.sleep(timeouts.UNIT_POLL)

    async def stop(self, unit: str) -> None:
        """Stop ``unit`` if it runs, and wait until it is unloaded."""
        state = await self.unit_state(unit)
        if state is None:
            return
        if is_running(state):
            with contextlib.suppress(NotFoundError):
                await self.systemd.stop_unit(unit, timeout=timeouts.SYSTEMD_JOB)
        await self.wait_gone(unit)

    async def stop_job(self, unit: str) -> None:
        """Queue a stop of ``unit`` and wait for it, not for the unit to be unloaded.

        Asked again (at most ``STOP_ATTEMPTS`` times) when another job replaced ours: a
        job's run re-arms its timer with a restart (``overlap: skip``), and a restart queued
        while our stop waits replaces the stop (measured: "result 'canceled'").
        """
        for attempt in range(1, STOP_ATTEMPTS + 1):
            try:
                with contextlib.suppress(NotFoundError):
                    await self.systemd.stop_unit(unit, timeout=timeouts.SYSTEMD_JOB)
                return
            except JobCanceledError:
                if attempt == STOP_ATTEMPTS:
                    raise

    async def restart(self, unit: str) -> None:
        await self.systemd.restart_unit(unit, timeout=timeouts.SYSTEMD_JOB)

    async def start_transient(
        self,
        unit: str,
        properties: Sequence[tuple[str, Any]],
        aux: Sequence[tuple[str, Sequence[tuple[str, Any]]]] = (),
        *,
        clean_up: Callable[[], Awaitable[None]],
    ) -> None:
        """Start ``unit`` (and ``aux`` units in the same call); on failure, say why from
        the unit's journal, ``clean_up`` what the caller made for it, and raise."""
        for name in (unit, *(aux_name for aux_name, _ in aux)):
            await self.wait_gone(name)
        started = time.time()
        try:
            result = await self.systemd.start_transient_unit(
                unit, [prop(k, v) for k, v in properties],
                [(name, [prop(k, v) for k, v in props]) for name, props in aux],
                timeout=timeouts.SYSTEMD_JOB, check=False,
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(IycloError):
                await clean_up()
            raise
        if result is not JobResult.DONE:
            reason = await start_failure_reason(unit, since=started)
            with contextlib.suppress(IycloError):
                await clean_up()
            detail = f": {reason}" if reason else ""
            raise SystemdError(f"unit {unit} did not start ({result}){detail}")

    # -- slices and Podman pods -------------------------------------------------------

    async def ensure_slice(self, plan: PodMaking, description: str, *, update: bool) -> None:
        """The plan's own slice, with its limits if it is started or ``update``."""
        await ensure_slice(
            self.systemd, plan.slice, description, plan.slice_properties, update=update,
            wait_gone=self.wait_gone,
        )  # fmt: skip

    async def create_pod(
        self, plan: PodMaking, description: str, values: SecretValues | None = None
    ) -> list[str]:
        """Images, volumes, slice, secrets, pod and containers of one generation (created,
        not started); on failure nothing of the pod stays. ``values`` are the secrets'
        values as apply read them; without them (a pod made again) they are read now.
        Returns the volumes it made, for a caller whose later step fails to remove again
        (``remove_volumes``).

        An apply has pulled the images already (``core.pulls``, as each ``pullPolicy``
        says); here a missing one is pulled (after a reboot, a pruned image) unless its
        policy is "never", and none is pulled anew: a generation re-made by a reconcile
        keeps what it was applied with rather than what a tag names now."""
        for container in plan.containers:
            never = container.pull_policy == "never"
            await self.podman.ensure_image(container.image, "never" if never else "missing")
        made = await self._create_volumes(plan)
        try:
            await self.ensure_slice(plan, description, update=False)
            env_files = env_file_sources(plan.manifest)
            if values is None and (plan.secrets or env_files):
                values = await self._read(
                    [(s.where, s.container, s.secret) for s in plan.secrets], env_files
                )
            if plan.secrets:
                assert values is not None
                await self.podman.remove_pod(plan.pod_name)  # a crashed attempt's, using them
                await self.create_secrets(plan.secrets, values)
            env = values.env if values is not None else {}
            try:
                await self.podman.create_pod_with_containers(
                    plan.pod_name, plan.pod_spec,
                    [with_env(c.spec, env.get(c.name)) for c in plan.containers],
                )  # fmt: skip
            except BaseException:
                with contextlib.suppress(PodmanError, NotFoundError):
                    await self._remove_secrets(lambda pod, _: pod == plan.pod_name)
                raise
        except BaseException:
            with contextlib.suppress(IycloError):
                await self.remove_volumes(made)
            raise
        return made

    async def _create_volumes(self, plan: PodMaking) -> list[str]:
        """The plan's own named volumes that are missing, labelled with their owner, made
        before any container (which would make them unlabelled). One already there was
        checked at apply (``policy.volume_problem``) and is left as it is."""
        made: list[str] = []
        try:
            for name in plan.volumes:
                if await self.podman.volume_labels(name) is None:
                    await self.podman.create_volume(name, volume_labels(plan.manifest))
                    made.append(name)
        except BaseException:
            with contextlib.suppress(IycloError):
                await self.remove_volumes(made)
            raise
        return made

    async def remove_volumes(self, names: Sequence[str]) -> None:
        """Volumes an apply made and must not leave behind when it fails."""
        for name in names:
            await self.podman.remove_volume(name)

    async def ensure_pod(self, plan: PodMaking, description: str) -> None:
        """The generation's Podman pod, made again if it is missing (e.g. after a reboot)
        or lacks a container the plan names: one made before containers were named
        ``<pod>_<container>`` (``naming.CONTAINER_SEPARATOR``), which a job's new units
        would otherwise fail to ``podman start``."""
        if await self.podman.pod_exists(plan.pod_name):
            listed = await self.podman.list_containers(f"{naming.LABEL_POD}={plan.name}")
            names = {name for c in listed for name in c.get("Names") or []}
            if all(c.spec["name"] in names for c in plan.containers):
                return
        await self.create_pod(plan, description)  # a pod of that name is replaced

    async def discard_pod(self, plan: PodMaking, volumes: Sequence[str]) -> None:
        """Undo ``create_pod`` after a later step failed: the pod, then the ``volumes`` it
        made (no container uses them any more), best effort."""
        with contextlib.suppress(IycloError):
            await self.remove_pod(plan.pod_name)
        with contextlib.suppress(IycloError):
            await self.remove_volumes(volumes)

    async def remove_pod(self, pod_name: str) -> None:
        """A generation's pod (retried while Podman cleans up), then its secrets."""
        await self.podman.remove_pod(pod_name)
        await self._remove_secrets(lambda pod, _: pod == pod_name)

    async def survey(self, services: Sequence[str] = ()) -> Survey:
        """Every Podman pod, secret and container iyclo made, and the settled state of
        the service units ``services`` (``Survey``): Podman's lists and systemd's reads
        asked for at once, as neither waits on the other."""
        taken, units_asked = time.time(), time.monotonic()
        listed_pods, listed_secrets, containers, states = await asyncio.gather(
            self.podman.list_pods(naming.LABEL_POD),
            self.podman.list_secrets(naming.LABEL_POD),
            self.podman.list_containers(naming.LABEL_POD),
            self.settled_service_states(services),
        )
        pods: dict[str, list[str]] = {}
        for pod in listed_pods:
            owner = (pod.get("Labels") or {}).get(naming.LABEL_POD)
            if owner and pod.get("Name"):
                pods.setdefault(str(owner), []).append(str(pod["Name"]))
        secrets: dict[str, list[tuple[str, str | None]]] = {}
        for secret in listed_secrets:
            labels = dict(secret.get("Labels") or {})
            owner = labels.get(naming.LABEL_POD)
            if owner:
                secrets.setdefault(owner, []).append(
                    (str(secret["Name"]), naming.secret_pod(labels))
                )
        return Survey(pods, secrets, tuple(containers), states, taken, units_asked)

    async def remove_other_generations(
        self, name: str, keep: str | None, survey: Survey | None = None
    ) -> list[str]:
        """Every Podman pod of ``name`` but ``keep`` (all of them when None), and the
        secrets of those generations; what Podman holds is read from ``survey`` when
        one is given (a reconcile's), else listed for this name."""
        if survey is None:
            listed = await self.podman.list_pods(f"{naming.LABEL_POD}={name}")
            pods = [str(pod.get("Name", "")) for pod in listed]
        else:
            pods = list(survey.pods.get(name, ()))
        removed = []
        for pod_name in pods:
            if pod_name and pod_name != keep:
                await self.podman.remove_pod(pod_name)
                removed.append(pod_name)
        if survey is None:
            await self._remove_secrets(
                lambda pod, labels: labels.get(naming.LABEL_POD) == name and pod != keep
            )
        else:
            for secret, pod in survey.secrets.get(name, ()):
                if pod != keep:
                    await self.podman.remove_secret(secret)
        return removed

    # -- secrets ------------------------------------------------------------------------

    async def read_secrets(self, manifest: Pod | Job) -> SecretValues:
        """The values of ``manifest``'s secrets and env files, read as the policy allows
        (InvalidError naming the field otherwise), with their keyed digest."""
        return await self._read(secret_sources(manifest), env_file_sources(manifest))

    async def _read(
        self, sources: list[SecretSource], env_files: Sequence[EnvFileSource] = ()
    ) -> SecretValues:
        if not sources and not env_files:
            return SecretValues()
        if self.secrets is None:
            where = (sources or env_files)[0][0]
            raise InvalidError(f"{where}: this daemon reads no secrets or env files")
        return await asyncio.to_thread(self.secrets.read, sources, env_files)

    async def create_secrets(self, plans: Sequence[SecretPlan], values: SecretValues) -> None:
        """One Podman secret per plan, all or nothing; one of the same name left over from
        a crashed attempt is replaced."""
        made: list[str] = []
        try:
            for secret in plans:
                await self.podman.remove_secret(secret.name)
                value = values.values[(secret.container, str(secret.secret.name))]
                await self.podman.create_secret(secret.name, value, secret.labels)
                made.append(secret.name)
        except BaseException:
            for name in made:
                with contextlib.suppress(PodmanError, NotFoundError):
                    await self.podman.remove_secret(name)
            raise

    async def _remove_secrets(
        self, doomed: Callable[[str | None, dict[str, str]], bool]
    ) -> list[str]:
        """Remove iyclo's secrets for which ``doomed(their generation's pod, labels)``."""
        removed = []
        for secret in await self.podman.list_secrets(naming.LABEL_POD):
            labels = dict(secret.get("Labels") or {})
            if doomed(naming.secret_pod(labels), labels):
                await self.podman.remove_secret(str(secret["Name"]))
                removed.append(str(secret["Name"]))
        return removed

    async def remove_orphans(
        self,
        known: set[str],
        busy: Callable[[str], bool] = lambda _: False,
        survey: Survey | None = None,
        current: set[str] | None = None,
    ) -> list[str]:
        """Podman pods, secrets and slices iyclo made for names the store does not hold,
        and secrets of generations whose pod is gone (but not those of a name ``busy``
        with an operation, whose apply makes its secrets before its pod).

        ``survey``: the reconcile's, taken before its records were made to match: what
        they removed since is gone already (removing it again is no error), and what they
        made since belongs to a known name, so no orphan is missed by not listing again;
        ``current`` are the Podman pods the records run now, some made since the survey,
        whose secrets are not orphans."""
        survey = survey or await self.survey()
        removed: list[str] = []
        pods: set[str] = set(current or ())
        for owner, names in survey.pods.items():
            for name in names:
                if owner not in known:
                    await self.podman.remove_pod(name)
                    removed.append(name)
                else:
                    pods.add(name)
        for owner, secrets in survey.secrets.items():
            for secret, pod in secrets:
                if not busy(owner) and (owner not in known or pod not in pods):
                    await self.podman.remove_secret(secret)
                    removed.append(secret)
        patterns = [f"{naming.SLICE_PREFIX}*.slice"]
        for unit in await self.systemd.list_units_by_patterns([], patterns):
            sliced = naming.parse_slice_name(unit.name)
            if sliced is not None and sliced not in known:
                await self.stop(unit.name)
                removed.append(unit.name)
        return removed

    async def remove_units(self, units: Sequence[str]) -> None:
        """Stop and unload units of a pod or job, first to last."""
        for unit in units:
            await self.stop(unit)
