"""A fake Podman: the calls ``iyclo.podman.client.PodmanClient`` makes, over a dict.

Pods and containers are made from the specs the core plans, with their labels, so the
core finds them again by label as it does on a real host. Containers run when systemd
runs them: the fake observes a ``FakeSystemd`` and, when a unit whose ``ExecStart``
names a Podman pod (``podman pod start P``) or its containers (``podman start --attach
P-c``) starts, runs or stops, sets their state as Podman would (running, or exited with
the unit's exit status) and sends the container event Podman sends. Every call is
recorded (``calls``); ``fail_next`` makes a call raise, ``hold`` makes it wait. Secrets are
kept with their values (``secrets``), which a container's spec names as Podman's would.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from iyclo.core import naming
from iyclo.errors import NotFoundError, PodmanError
from iyclo.podman.network import NetworkInfo
from iyclo.podman.platform import Platform
from iyclo.podman.pull import ImageRef, PullPolicy, PullStep

from .systemd import FakeSystemd, FakeUnit

INFRA = "infra"
BUSYBOX = "localhost/busybox:latest"


def _matches(labels: Mapping[str, str], label: str) -> bool:
    key, _, value = label.partition("=")
    return key in labels and (not value or labels[key] == value)


class FakePodman:
    def __init__(self, systemd: FakeSystemd | None = None) -> None:
        self.url = "unix:///fake/podman.sock"
        self.version = "4.3.1"
        self.images: dict[str, str] = {BUSYBOX: "sha256:" + "b" * 64}
        """Local storage: reference → image ID; busybox is there, as the test hosts import
        it, so a manifest of local images pulls nothing."""
        self.registry: dict[str, str] = {}
        """What a registry holds under a reference (see ``push``); pulls of a reference
        not here and not in ``missing_images`` succeed with an ID of the fake's own."""
        self.missing_images: set[str] = set()
        """References that cannot be pulled."""
        self.pods: dict[str, dict[str, Any]] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, str]] = {}
        """Named volumes and their labels."""
        self.networks: dict[str, NetworkInfo] = {}
        """Podman networks by name; a pod's spec names those it joins (``Networks``)."""
        self.secrets: dict[str, dict[str, Any]] = {}
        """Name → {"Name", "Labels", "Data"}, as the REST API keeps them (driver file)."""
        self.calls: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self._failures: dict[str, BaseException] = {}
        self.down: str | None = None
        """Set to a reason: every call fails as on a Podman whose socket is gone."""
        self._gates: dict[str, asyncio.Event] = {}
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._closed = threading.Event()
        self._ids = 0
        if systemd is not None:
            systemd.observers.append(self._unit_did)

    # -- test controls ------------------------------------------------------------------

    def fail_next(self, method: str, exc: BaseException) -> None:
        self._failures[method] = exc

    def hold(self, method: str) -> asyncio.Event:
        """Calls of ``method`` wait until the returned event is set."""
        gate = self._gates[method] = asyncio.Event()
        return gate

    def container_died(self, name: str, exit_code: int) -> None:
        """A container exited on its own, as its process would."""
        self._set(self.containers[name], "exited", exit_code)

    async def _enter(self, method: str, *args: Any) -> None:
        self.calls[method].append(args)
        self.entered[method].set()
        gate = self._gates.get(method)
        if gate is not None:
            await gate.wait()
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure
        if self.down is not None:
            raise PodmanError(f"{method}: cannot reach Podman at {self.url} ({self.down})")

    # -- what systemd does to the containers --------------------------------------------

    def _unit_did(self, unit: FakeUnit, what: str) -> None:
        variant = unit.properties.get("ExecStart")
        for _path, argv, _ignore in variant.value if variant is not None else []:
            for container in self._named_by(list(argv)):
                if what == "started":
                    self._set(container, "running", 0)
                elif what == "ran":
                    self._set(container, "exited", unit.exec_main_status)
                elif container["State"] == "running":
                    self._set(container, "exited", 0)

    def _named_by(self, argv: list[str]) -> list[dict[str, Any]]:
        if argv[1:3] == ["pod", "start"]:
            return [c for c in self.containers.values() if c["Pod"] == argv[3]]
        if argv[1:3] == ["start", "--attach"]:
            return [self.containers[argv[3]]] if argv[3] in self.containers else []
        return []

    def _set(self, container: dict[str, Any], state: str, exit_code: int) -> None:
        was = container["State"]
        container["State"], container["ExitCode"] = state, exit_code
        if state == "running":
            container["StartedAt"] = container.get("StartedAt") or 1_700_000_000
        if was != state and container["Labels"].get(naming.LABEL_CONTAINER):
            action = "start" if state == "running" else "died"
            attributes = {**container["Labels"], "name": container["Names"][0]}
            if action == "died":
                attributes["containerExitCode"] = str(exit_code)
            actor = {"ID": container["Id"], "Attributes": attributes}
            self._events.put({"Type": "container", "Action": action, "Actor": actor,
                              "timeNano": time.time_ns()})  # fmt: skip

    # -- the PodmanClient API -----------------------------------------------------------

    def close(self) -> None:
        self._closed.set()

    async def ping(self) -> None:
        await self._enter("ping")

    async def platform(self) -> Platform:
        """The Podman it plays: Debian 12's by default (``self.version`` to change it)."""
        await self._enter("platform")
        return Platform(self.version, "netavark", "runc", "systemd", "v1")

    async def update_container(self, name: str, resources: Mapping[str, Any]) -> None:
        await self._enter("update_container", name, dict(resources))
        if name not in self.containers:
            raise NotFoundError(f'update container "{name}": no such container')
        self.containers[name]["Resources"] = dict(resources)

    def push(self, reference: str) -> str:
        """The registry now has a new image under ``reference`` (``podman push`` of a
        rebuilt image): the next pull that asks the registry gets it. Its new ID."""
        self._ids += 1
        self.registry[reference] = f"sha256:{self._ids:064x}"
        return self.registry[reference]

    async def ensure_image(
        self,
        reference: str,
        policy: PullPolicy = "missing",
        progress: Callable[[PullStep], None] | None = None,
    ) -> ImageRef:
        """As Podman decides ``policy``: "missing" pulls only an image not stored,
        "always" and "newer" ask the registry (``push``) and take what it has (the same
        image when nothing was pushed), "never" refuses a missing one with iyclo's line."""
        await self._enter("ensure_image", reference, policy)
        stored = reference in self.images
        if policy == "never" and not stored:
            raise PodmanError(f'image "{reference}" is not present and its pullPolicy is "never"')
        if (policy == "missing" and stored) or policy == "never":
            return self._image_ref(reference)
        if reference in self.missing_images:
            raise PodmanError(
                f'image "{reference}" could not be pulled: initializing source '
                f"docker://{reference}: reading manifest: manifest unknown"
            )
        if progress is not None:
            for status in ("Copying blob", "Copying config"):
                progress(PullStep("0123456789ab", status))
        self.images[reference] = self.registry.get(reference) or self.images.get(
            reference, "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
        )
        return self._image_ref(reference)

    def _image_ref(self, reference: str) -> ImageRef:
        image_id = self.images[reference]
        return ImageRef(reference, image_id, f"sha256:{image_id[7:][::-1]}")

    async def create_pod_with_containers(
        self, name: str, spec: Mapping[str, Any], containers: Sequence[Mapping[str, Any]]
    ) -> None:
        await self._enter("create_pod_with_containers", name, dict(spec), list(containers))
        await self._remove(name)
        for container in containers:  # Podman 4.3 refuses a missing secret so (measured)
            named = [s["source"] for s in container.get("secrets") or []]
            for secret in [*named, *(container.get("secret_env") or {}).values()]:
                if secret not in self.secrets:
                    raise PodmanError(
                        f'create container "{container["name"]}": no secret with name or id '
                        f'"{secret}": no such secret'
                    )
        for network in spec.get("Networks") or {}:  # Podman refuses an unknown one so
            if network not in self.networks:
                raise PodmanError(f'create pod "{name}": unable to find network with name '
                                  f'or ID {network}: network not found')  # fmt: skip
        self._ids += 1
        labels = dict(spec.get("labels") or {})
        self.pods[name] = {"Name": name, "Id": f"{self._ids:064x}", "Labels": labels,
                           "Networks": sorted(spec.get("Networks") or {})}  # fmt: skip
        for container in [{"name": f"{name}-{INFRA}", "labels": labels, "image": "infra"},
                          *containers]:  # fmt: skip
            for volume in container.get("volumes") or {}:  # as Podman does: unlabelled
                self.volumes.setdefault(volume, {})
            self._ids += 1
            self.containers[container["name"]] = {
                "Id": f"{self._ids:064x}", "Names": [container["name"]], "Pod": name,
                "Image": container["image"], "Labels": dict(container["labels"]),
                "State": "created", "ExitCode": 0, "StartedAt": 0,
                "Checked": bool(container.get("healthcheck")),
            }  # fmt: skip

    async def volume_labels(self, name: str) -> dict[str, str] | None:
        await self._enter("volume_labels", name)
        labels = self.volumes.get(name)
        return None if labels is None else dict(labels)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        await self._enter("create_volume", name, dict(labels))
        if name in self.volumes:
            raise PodmanError(f'create volume "{name}": volume with name {name} already exists')
        self.volumes[name] = dict(labels)

    async def list_volumes(self, label: str) -> list[dict[str, Any]]:
        await self._enter("list_volumes", label)
        return [{"Name": name, "Labels": dict(labels), "Mountpoint": f"/fake/volumes/{name}/_data"}
                for name, labels in self.volumes.items() if _matches(labels, label)]  # fmt: skip

    async def remove_volume(self, name: str) -> None:
        await self._enter("remove_volume", name)
        self.volumes.pop(name, None)

    async def network(self, name: str) -> NetworkInfo | None:
        await self._enter("network", name)
        return self.networks.get(name)

    async def create_network(self, name: str, *, internal: bool, labels: Mapping[str, str]) -> None:
        await self._enter("create_network", name, internal, dict(labels))
        if name in self.networks:
            raise PodmanError(f'create network "{name}": network name {name} already used')
        self.networks[name] = NetworkInfo(name, internal, True, dict(labels))

    async def remove_network(self, name: str) -> None:
        await self._enter("remove_network", name)
        users = [p["Name"] for p in self.pods.values() if name in p.get("Networks", ())]
        if users:  # as Podman answers (409)
            raise PodmanError(f'remove network "{name}": "{name}" has associated containers')
        self.networks.pop(name, None)

    async def bridge_interfaces(self) -> list[str]:
        """No bridge of the fake exists on the host: nothing to pin."""
        await self._enter("bridge_interfaces")
        return []

    async def list_networks(self, label: str) -> list[NetworkInfo]:
        await self._enter("list_networks", label)
        return [n for n in self.networks.values() if _matches(n.labels, label)]

    async def pod_exists(self, name: str) -> bool:
        await self._enter("pod_exists", name)
        return name in self.pods

    async def inspect_pod(self, name: str) -> dict[str, Any]:
        await self._enter("inspect_pod", name)
        if name not in self.pods:
            raise NotFoundError(f'pod "{name}": no such pod')
        return dict(self.pods[name])

    async def remove_pod(self, name: str) -> None:
        await self._enter("remove_pod", name)
        await self._remove(name)

    async def _remove(self, name: str) -> None:
        self.pods.pop(name, None)
        for container in [c for c in self.containers.values() if c["Pod"] == name]:
            del self.containers[container["Names"][0]]

    async def list_pods(self, label: str) -> list[dict[str, Any]]:
        await self._enter("list_pods", label)
        return [dict(p) for p in self.pods.values() if _matches(p["Labels"], label)]

    async def create_secret(self, name: str, data: bytes, labels: Mapping[str, str]) -> None:
        """As Podman 4.3 and 5.4 answer (measured): a taken name and a size out of 1 to
        511999 bytes are refused. The value is not recorded in ``calls``."""
        await self._enter("create_secret", name, dict(labels))
        if name in self.secrets:
            raise PodmanError(f'create secret "{name}": {name}: secret name in use')
        if not 0 < len(data) < 512000:
            raise PodmanError(
                f'create secret "{name}": secret data must be larger than 0 and less than '
                "512000 bytes"
            )
        self.secrets[name] = {"Name": name, "Labels": dict(labels), "Data": bytes(data)}

    async def remove_secret(self, name: str) -> None:
        await self._enter("remove_secret", name)
        self.secrets.pop(name, None)

    async def list_secrets(self, label: str) -> list[dict[str, Any]]:
        await self._enter("list_secrets", label)
        return [
            {"Name": s["Name"], "Labels": dict(s["Labels"])}
            for s in self.secrets.values()
            if _matches(s["Labels"], label)
        ]

    async def list_containers(self, label: str) -> list[dict[str, Any]]:
        await self._enter("list_containers", label)
        return [dict(c) for c in self.containers.values() if _matches(c["Labels"], label)]

    async def inspect_container(self, name: str) -> dict[str, Any]:
        """As Podman's inspect has it: ``State`` an object, a running checked container
        healthy (the fake runs no checks: a check it has is taken to pass)."""
        await self._enter("inspect_container", name)
        if name not in self.containers:
            raise NotFoundError(f'container "{name}": no such container')
        c = self.containers[name]
        running = c["State"] == "running"
        state: dict[str, Any] = {
            "Status": c["State"], "Running": running,
            "ExitCode": c["ExitCode"], "StartedAt": c["StartedAt"],
        }  # fmt: skip
        if c["Checked"]:
            state["Health"] = {"Status": "healthy" if running else "", "Log": []}
        return {"Id": c["Id"], "Name": name, "Pod": c["Pod"], "Image": c["Image"],
                "Config": {"Labels": dict(c["Labels"])}, "State": state}  # fmt: skip

    async def container_stats(self, names: list[str]) -> list[dict[str, Any]]:
        await self._enter("container_stats", list(names))
        return [
            {"Name": n, "CPUNano": 1000, "MemUsage": 4096, "MemLimit": 0, "PIDs": 1}
            for n in names
            if self.containers.get(n, {}).get("State") == "running"
        ]

    def container_events(self, label: str) -> Iterator[dict[str, Any]]:
        """Blocking, like the real stream: events as they happen, until ``close``."""
        while not self._closed.is_set():
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            if label in (event.get("Actor") or {}).get("Attributes", {}):
                yield event
