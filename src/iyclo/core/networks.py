"""Networks: a Network manifest is one Podman network (netavark, aardvark-dns), named
``iyclo-<name>`` and labelled as iyclo's, that pods join by name (``Pod.networks``).

A network has no unit and nothing to start: applying it makes the Podman network,
removing it removes it. Who uses a network is read from the store (the pods whose stored
manifests name it), the same on every Podman version, so a network in use is refused
before Podman is asked, with the names of its users.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog

from iyclo.core import naming
from iyclo.core.kind import Kind
from iyclo.core.results import ApplyResult
from iyclo.core.steps import Steps, Survey
from iyclo.errors import ConflictError, InvalidError, NotFoundError
from iyclo.manifest.convert import dump_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Manifest, Network, Pod
from iyclo.manifest.policy import UNRESTRICTED
from iyclo.podman.network import NetworkInfo
from iyclo.store import Deployment, Store, off_loop

log = structlog.get_logger("iyclo.networks")

KIND = Kind.NETWORK


def attached(stored: dict[str, Any]) -> list[str]:
    """The networks a stored manifest joins, read from its JSON as stored."""
    return [str(n.get("name")) for n in stored.get("networks") or [] if isinstance(n, dict)]


def users_of(network: str, records: Iterable[Deployment]) -> list[str]:
    """The pods (and jobs) whose current manifests join ``network``, sorted."""
    return sorted(r.name for r in records if network in attached(r.manifest))


def labels_for(manifest: Network) -> dict[str, str]:
    return {naming.LABEL_POD: manifest.name, naming.LABEL_KIND: manifest.kind}


def attachment_problems(manifest: Manifest, records: dict[str, Deployment]) -> list[str]:
    """What a pod's ``networks`` name that is not there to join, path-qualified: a name
    that is not an applied Network, and published ports with only internal networks to
    publish them through (an internal network has no route to the host's ports)."""
    if not isinstance(manifest, Pod) or not manifest.networks:
        return []
    found: list[str] = []
    internal: list[bool] = []
    for i, attachment in enumerate(manifest.networks):
        record = records.get(attachment.name)
        if record is None or Kind.of(record.kind) is not KIND:
            what = "is not an applied network" if record is None else f"is a {record.kind}"
            found.append(f"networks[{i}].name: {attachment.name!r} {what}")
            continue
        internal.append(bool(record.manifest.get("internal")))
    if found or not all(internal):
        return found
    for ci, container in enumerate(manifest.containers):
        for pi, port in enumerate(container.ports):
            if port.host_port is not None:
                found.append(
                    f"containers[{ci}].ports[{pi}]: cannot be published: every network of "
                    "the pod is internal; join one that is not as well"
                )
    return found


class NetworkHandler:
    kind = KIND

    def __init__(self, store: Store, steps: Steps) -> None:
        self.store = store
        self.steps = steps

    async def start_watching(self) -> None:
        """Nothing runs, so nothing is followed."""

    async def close(self) -> None:
        """Nothing to close."""

    async def _users(self, name: str) -> list[str]:
        records: list[Deployment] = await off_loop(self.store.list)
        return users_of(name, records)

    async def _ensure(self, manifest: Network) -> NetworkInfo | None:
        """Make the Podman network when it is missing; what was there before, or None."""
        podman_name = naming.network_name(manifest.name)
        found = await self.steps.podman.network(podman_name)
        if found is None:
            await self.steps.podman.create_network(
                podman_name, internal=manifest.internal, labels=labels_for(manifest)
            )
        return found

    async def apply(
        self,
        manifest: Manifest,
        previous: Deployment | None,
        images: dict[str, Any],
        *,
        wait_timeout: float | None = None,
    ) -> ApplyResult:
        """Make the network, then record it; a changed ``internal`` re-makes it, which
        Podman allows only while no container is on it, so it is refused while a pod
        joins it (with their names)."""
        assert isinstance(manifest, Network)
        name = manifest.name
        podman_name = naming.network_name(name)
        digest = manifest_digest(manifest)
        if previous is not None and previous.digest == digest:
            await self._ensure(manifest)
            return ApplyResult(name, KIND.api_name, previous.generation, False, KIND.running)
        found = await self.steps.podman.network(podman_name)
        if found is not None and found.internal != manifest.internal:
            users = await self._users(name)
            if users:
                raise ConflictError(
                    f"network '{name}': internal cannot change while pods use it "
                    f"({', '.join(users)})",
                    hint="remove them (or take the network out of their manifests) first",
                )
            await self.steps.podman.remove_network(podman_name)
            found = None
        if found is None:
            await self.steps.podman.create_network(
                podman_name, internal=manifest.internal, labels=labels_for(manifest)
            )
        try:
            record: Deployment = await off_loop(
                self.store.apply, name, KIND.value, dump_manifest(manifest), digest
            )
        except BaseException:
            if previous is None:
                await self.steps.podman.remove_network(podman_name)
            raise
        log.info("network applied", network=name, generation=record.generation)
        return ApplyResult(name, KIND.api_name, record.generation, True, KIND.running)

    async def remove(self, record: Deployment, *, purge_history: bool) -> None:
        """Refused while a pod joins it, naming them; else the Podman network, then the
        record."""
        users = await self._users(record.name)
        if users:
            raise ConflictError(
                f"network '{record.name}' is in use by {', '.join(users)}",
                hint="remove those pods (or take the network out of their manifests) first",
            )
        await self.steps.podman.remove_network(naming.network_name(record.name))
        await off_loop(self.store.remove, record.name)
        log.info("network removed", network=record.name)

    def _not_run(self, record: Deployment, verb: str) -> InvalidError:
        return InvalidError(f"network '{record.name}' cannot be {verb}: only pods and jobs run")

    async def start(self, record: Deployment) -> str:
        raise self._not_run(record, "started")

    async def stop(self, record: Deployment) -> str:
        raise self._not_run(record, "stopped")

    async def restart(self, record: Deployment) -> str:
        raise self._not_run(record, "restarted")

    async def logs(self, record: Deployment, run: int, lines: int | None) -> dict[str, Any]:
        raise InvalidError(f"network '{record.name}' has no logs: only pods and jobs run")

    async def status(self, record: Deployment) -> dict[str, Any]:
        podman_name = naming.network_name(record.name)
        found = await self.steps.podman.network(podman_name)
        return {
            "name": record.name,
            "kind": KIND.api_name,
            "generation": record.generation,
            "digest": record.digest,
            "appliedAt": record.applied_at.isoformat(),
            "desired": KIND.running,
            "state": KIND.running if found is not None else "missing",
            "podmanNetwork": podman_name,
            "internal": bool(record.manifest.get("internal")),
            "users": await self._users(record.name),
            "unit": "",
            "containers": [],
        }

    def surveyed_units(self, record: Deployment) -> tuple[str, ...]:
        return ()

    async def reconcile_one(self, record: Deployment, survey: Survey | None = None) -> str:
        """The Podman network again when it is missing (its pods need it first)."""
        manifest = parse_manifest(record.manifest, UNRESTRICTED)
        if not isinstance(manifest, Network):
            raise InvalidError(f"{record.kind} '{record.name}' is not a network")
        return "adopted" if await self._ensure(manifest) is not None else "recreated"

    async def remove_orphans(self, known: set[str]) -> list[str]:
        """Every iyclo-labelled network without a record (after the pods' orphans went:
        Podman refuses to remove a network a container is on)."""
        removed: list[str] = []
        for network in await self.steps.podman.list_networks(
            f"{naming.LABEL_KIND}={KIND.api_name}"
        ):
            if network.labels.get(naming.LABEL_POD) not in known:
                try:
                    await self.steps.podman.remove_network(network.name)
                except NotFoundError:
                    continue
                removed.append(network.name)
        return removed
