"""The Podman adapter: the podman bindings on the Podman REST socket.

The bindings are synchronous (requests over a unix socket), so every call runs in
a worker thread and the daemon's event loop never blocks on Podman. Errors from
the bindings are translated here, once, into ``PodmanError``/``NotFoundError``
with one line naming what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import podman
import podman.api
import podman.errors
import requests.exceptions

from iyclo.errors import NotFoundError, PodmanError, PodmanUnreachableError
from iyclo.podman.network import NetworkInfo
from iyclo.podman.platform import Platform
from iyclo.podman.pull import ImageRef, PullPolicy, PullStep, pull_step

DEFAULT_URL = "unix:///run/podman/podman.sock"
POD_REMOVE_RETRY_SECONDS = 10.0
PULL_SILENCE_SECONDS = 30 * 60.0
"""How long a pull may go without a line from Podman before it is given up: Podman 4.3
reports a layer when its copy begins and nothing until the next one, so a large layer
from a slow registry is minutes of silence, far beyond the client's usual timeout."""
P = ParamSpec("P")
T = TypeVar("T")


def _one_line(exc: BaseException) -> str:
    text = str(exc.explanation or exc) if isinstance(exc, podman.errors.APIError) else str(exc)
    return " ".join(text.split())


def _unreachable_cause(exc: BaseException) -> BaseException | None:
    """The connection failure the bindings wrap as "GET operation failed", if any."""
    seen: BaseException | None = exc
    while seen is not None:
        # Not OSError at large: requests' HTTPError (a plain 500) is an OSError too.
        if isinstance(
            seen, requests.exceptions.ConnectionError | ConnectionError | FileNotFoundError
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _label_matches(labels: Mapping[str, str], label: str) -> bool:
    """Whether ``labels`` carry ``label`` (``key`` or ``key=value``), as Podman's filters do."""
    key, _, value = label.partition("=")
    return key in labels and (not value or labels[key] == value)


def _json_lines(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a streamed reply, one per line, as each arrives.

    Read one HTTP chunk at a time: the bindings' ``iter_lines()`` holds lines back in a
    512-byte buffer (measured with the event stream), which would delay what a pull's
    progress or an event says until more follows.
    """
    pending = b""
    try:
        for chunk in response.raw.read_chunked(decode_content=True):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    item = json.loads(line)
                    if isinstance(item, dict):
                        yield item
    finally:
        response.close()


class PodmanClient:
    """Typed, awaitable calls for what iyclo asks of Podman."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = 120) -> None:
        self.url = url
        self._client = podman.PodmanClient(base_url=url, timeout=timeout)
        self._platform: Platform | None = None
        self._asking_platform = asyncio.Lock()

    def close(self) -> None:
        self._client.close()

    async def _call(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except podman.errors.NotFound as exc:
            raise NotFoundError(f"{what}: {_one_line(exc)}") from None
        except (requests.exceptions.ConnectionError, FileNotFoundError, ConnectionError) as exc:
            raise PodmanUnreachableError(
                f"{what}: cannot reach Podman at {self.url} ({_one_line(exc)})"
            ) from None
        except requests.exceptions.Timeout:
            raise PodmanUnreachableError(
                f"{what}: Podman at {self.url} did not answer in time"
            ) from None
        except (podman.errors.APIError, podman.errors.PodmanError) as exc:
            if cause := _unreachable_cause(exc):
                raise PodmanUnreachableError(
                    f"{what}: cannot reach Podman at {self.url} ({_one_line(cause)})"
                ) from None
            raise PodmanError(f"{what}: {_one_line(exc)}") from None

    async def ping(self) -> None:
        ok = await self._call("ping", self._client.ping)
        if not ok:
            raise PodmanError(f"Podman at {self.url} does not answer its ping")

    async def platform(self) -> Platform:
        """What this Podman is (see `iyclo.podman.platform`), asked once and remembered:
        a Podman is not swapped for another version behind a running daemon's back."""
        if self._platform is None:
            async with self._asking_platform:  # two callers at once make one info call
                if self._platform is None:
                    info: dict[str, Any] = await self._call("podman info", self._client.info)
                    self._platform = Platform.from_info(info)
        return self._platform

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("version", self._client.version)
        return result

    async def image(self, reference: str) -> ImageRef | None:
        """The local image ``reference`` names, or None when local storage has none."""

        def get() -> ImageRef | None:
            try:  # one request: asking whether it exists first was a second one
                attrs: dict[str, Any] = self._client.images.get(reference).attrs
            except podman.errors.ImageNotFound:
                return None
            return ImageRef(reference, f"sha256:{attrs['Id']}", str(attrs.get("Digest") or ""))

        return await self._call(f'image "{reference}"', get)

    async def ensure_image(
        self,
        reference: str,
        policy: PullPolicy = "missing",
        progress: Callable[[PullStep], None] | None = None,
    ) -> ImageRef:
        """The image ``reference`` names, pulled as ``policy`` says, and what it is now.

        Podman applies the policy itself (the pull endpoint's ``policy``), so "newer"
        means what it means to ``podman pull --policy newer``; only "never" is decided
        here, to say which field refused the pull. ``progress`` is called in the event
        loop for each step of Podman's pull stream. Credentials are Podman's own: its
        service reads its auth file (``/run/containers/0/auth.json`` for root, or
        ``REGISTRY_AUTH_FILE``), so none pass through iyclo.
        """
        what = f'image "{reference}"'
        if policy in ("never", "missing"):
            # A present image is used as it is, unasked of any registry: Podman 5.4's pull
            # endpoint reports "Download complete" steps even for one it has.
            found = await self.image(reference)
            if found is not None:
                return found
            if policy == "never":
                raise PodmanError(f'{what} is not present and its pullPolicy is "never"')
        loop = asyncio.get_running_loop()

        def report(step: PullStep) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, step)

        def pull() -> str:
            # tlsVerify is left out: given, it overrides registries.conf's `insecure`.
            params = {"reference": reference, "policy": policy, "compatMode": True}
            response = self._client.api.post(
                "/images/pull", params=params, stream=True, timeout=PULL_SILENCE_SECONDS
            )
            response.raise_for_status()
            error = ""
            for item in _json_lines(response):
                if item.get("error"):
                    error = str(item["error"])
                elif (step := pull_step(item)) is not None:
                    report(step)
            return error

        try:
            error = await self._call(what, pull)
        except (PodmanError, NotFoundError) as exc:
            error = exc.message.split(": ", 1)[-1]
        found = None if error else await self.image(reference)
        if error or found is None:
            error = error or "the pull reported no error but the image is still missing"
            raise PodmanError(f"{what} could not be pulled: {' '.join(error.split())}")
        return found

    async def create_pod(self, name: str, spec: Mapping[str, Any]) -> str:
        pod = await self._call(f'create pod "{name}"', self._client.pods.create, name, **spec)
        return str(pod.id)

    async def create_container(self, spec: Mapping[str, Any]) -> str:
        name = spec.get("name", "?")
        spec = dict(spec)
        image = spec.pop("image")
        init = spec.pop("init_container_type", None)
        if init is None:
            container = await self._call(
                f'create container "{name}"', self._client.containers.create, image, **spec
            )
            return str(container.id)

        def create_init() -> str:
            # The bindings know no init containers: their specgen, with the one field added.
            payload = self._client.containers._render_payload({"image": image, **spec})
            payload["init_container_type"] = init
            response = self._client.api.post(
                "/containers/create", headers={"content-type": "application/json"},
                data=podman.api.prepare_body(payload),
            )  # fmt: skip
            response.raise_for_status()
            return str(response.json()["Id"])

        return await self._call(f'create init container "{name}"', create_init)

    async def start_pod(self, name: str) -> None:
        """Start a pod outside its unit (a start-first update's new generation, before the
        unit adopts it): its init containers run first, as at any start."""
        await self._call(f'start pod "{name}"', lambda: self._client.pods.get(name).start())

    async def create_pod_with_containers(
        self, name: str, spec: Mapping[str, Any], containers: Sequence[Mapping[str, Any]]
    ) -> None:
        """A pod and its containers, all or nothing: a leftover of a crashed attempt is
        removed first, and on failure what was made here is removed again."""
        await self.remove_pod(name)
        try:
            await self.create_pod(name, spec)
            for container in containers:
                await self.create_container(container)
        except BaseException:
            with contextlib.suppress(PodmanError, NotFoundError):
                await self.remove_pod(name)
            raise

    async def pod_exists(self, name: str) -> bool:
        return bool(await self._call(f'pod "{name}"', self._client.pods.exists, name))

    async def inspect_pod(self, name: str) -> dict[str, Any]:
        pod = await self._call(f'pod "{name}"', self._client.pods.get, name)
        attrs: dict[str, Any] = pod.attrs
        return attrs

    async def remove_pod(self, name: str) -> None:
        """Remove a pod and its containers; a pod already gone is not an error.

        Retried for a moment on "busy": right after a pod stopped, Podman's own cleanup
        (conmon's exit command) may still hold a container's mounts (measured:
        "unlinkat .../userdata/shm: device or resource busy").
        """

        def remove() -> None:
            if self._client.pods.exists(name):
                self._client.pods.remove(name, force=True)

        deadline = time.monotonic() + POD_REMOVE_RETRY_SECONDS
        while True:
            try:
                await self._call(f'remove pod "{name}"', remove)
                return
            except PodmanError as exc:
                if "busy" not in exc.message or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.25)

    async def list_pods(self, label: str) -> list[dict[str, Any]]:
        """Pods carrying `label` (``key`` or ``key=value``), as Podman lists them."""

        def list_() -> list[dict[str, Any]]:
            return [p.attrs for p in self._client.pods.list(filters={"label": label})]

        return await self._call("list pods", list_)

    async def list_containers(self, label: str) -> list[dict[str, Any]]:
        def list_() -> list[dict[str, Any]]:
            found = self._client.containers.list(all=True, filters={"label": label})
            return [c.attrs for c in found]

        return await self._call("list containers", list_)

    def container_events(self, label: str) -> Iterator[dict[str, Any]]:
        """Container events of containers carrying `label`, as they happen.

        Blocking, for a thread of its own. Two measured Podman 4.3 / bindings facts shape
        it: the REST stream's ``label`` filter matches nothing, so labels are matched
        here (events carry them in ``Actor.Attributes``); and the bindings' ``events()``
        reads through ``iter_lines()``, which holds events back in a 512-byte buffer, so
        the stream is read one HTTP chunk (one event) at a time instead.
        """
        params = {"stream": True, "filters": json.dumps({"type": ["container"]})}
        response = self._client.api.get("/events", params=params, stream=True)
        response.raise_for_status()
        for event in _json_lines(response):
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            if label in attributes:
                yield event

    async def volume_labels(self, name: str) -> dict[str, str] | None:
        """The labels of the named volume ``name``, or None when there is no such volume."""

        def labels() -> dict[str, str] | None:
            if not self._client.volumes.exists(name):
                return None
            return dict(self._client.volumes.get(name).attrs.get("Labels") or {})

        return await self._call(f'volume "{name}"', labels)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """A named volume with ``labels``; one of that name already there is an error."""
        await self._call(
            f'create volume "{name}"', self._client.volumes.create, name, labels=dict(labels)
        )

    async def list_volumes(self, label: str) -> list[dict[str, Any]]:
        """Volumes carrying ``label`` (``key`` or ``key=value``): Name, Labels, Mountpoint."""

        def list_() -> list[dict[str, Any]]:
            return [v.attrs for v in self._client.volumes.list(filters={"label": label})]

        return await self._call("list volumes", list_)

    async def remove_volume(self, name: str) -> None:
        """Remove a named volume; one already gone is not an error."""

        def remove() -> None:
            if self._client.volumes.exists(name):
                self._client.volumes.remove(name)

        await self._call(f'remove volume "{name}"', remove)

    async def network(self, name: str) -> NetworkInfo | None:
        """The Podman network ``name`` as iyclo reads it, or None when there is none."""

        def get() -> NetworkInfo | None:
            response = self._client.api.get(f"/networks/{name}/json")
            if response.status_code == 404:
                return None
            response.raise_for_status()
            return NetworkInfo.from_inspect(response.json())

        return await self._call(f'network "{name}"', get)

    async def create_network(self, name: str, *, internal: bool, labels: Mapping[str, str]) -> None:
        """A bridge network with aardvark-dns (so pods reach each other by alias); one of
        that name already there is an error."""
        body = {"name": name, "driver": "bridge", "internal": internal,
                "dns_enabled": True, "labels": dict(labels)}  # fmt: skip

        def create() -> None:
            response = self._client.api.post("/networks/create", data=json.dumps(body))
            response.raise_for_status()

        await self._call(f'create network "{name}"', create)

    async def remove_network(self, name: str) -> None:
        """Remove a network; one already gone is not an error (nor is one a container
        still uses: Podman refuses that with 409, which is reported)."""

        def remove() -> None:
            response = self._client.api.delete(f"/networks/{name}")
            if response.status_code != 404:
                response.raise_for_status()

        await self._call(f'remove network "{name}"', remove)

    async def list_networks(self, label: str) -> list[NetworkInfo]:
        """Networks carrying ``label`` (``key`` or ``key=value``)."""

        def list_() -> list[NetworkInfo]:
            params = {"filters": json.dumps({"label": [label]})}
            response = self._client.api.get("/networks/json", params=params)
            response.raise_for_status()
            return [NetworkInfo.from_inspect(n) for n in response.json() or []]

        return await self._call("list networks", list_)

    async def bridge_interfaces(self) -> list[str]:
        """The host interfaces of every bridge network Podman knows (iyclo's and others',
        the default ``podman`` network's included): those that exist have containers."""

        def list_() -> list[str]:
            response = self._client.api.get("/networks/json")
            response.raise_for_status()
            return [str(n["network_interface"]) for n in response.json() or []
                    if n.get("driver") == "bridge" and n.get("network_interface")]  # fmt: skip

        return await self._call("list networks", list_)

    async def update_container(self, name: str, resources: Mapping[str, Any]) -> None:
        """Change a running container's limits (OCI LinuxResources: memory, cpu, pids).

        Only for a Podman whose `Features.keeps_updates`: older ones change the cgroup but
        forget the change at the container's next start.
        """

        def update() -> None:
            self._client.containers.get(name).update(**resources)

        await self._call(f'update container "{name}"', update)

    # -- secrets --------------------------------------------------------------------------
    # Through the REST API itself: the bindings' secrets.create drops its labels argument
    # and secrets.list ignores its filters (podman-py 5.8).

    async def create_secret(self, name: str, data: bytes, labels: Mapping[str, str]) -> None:
        """A secret with driver ``file``, and ``labels`` (libpod's ``labels`` query
        parameter, a JSON object: measured to be stored on 4.3 and 5.4).

        The body must go as application/octet-stream: sent as a form (requests' default for
        bytes is none, curl's is a form), Podman 4.3 reads it as empty and answers "secret
        data must be larger than 0". The value is in no message raised here.
        """

        def create() -> None:
            params = {"name": name, "driver": "file", "labels": json.dumps(dict(labels))}
            response = self._client.api.post(
                "/secrets/create", params=params, data=data,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            response.raise_for_status()

        await self._call(f'create secret "{name}"', create)

    async def remove_secret(self, name: str) -> None:
        """Remove a secret; one already gone is not an error."""

        def remove() -> None:
            response = self._client.api.delete(f"/secrets/{name}")
            if response.status_code != 404:
                response.raise_for_status()

        await self._call(f'remove secret "{name}"', remove)

    async def list_secrets(self, label: str) -> list[dict[str, Any]]:
        """Secrets carrying ``label`` (``key`` or ``key=value``), each as ``{"Name": ...,
        "Labels": {...}}``.

        Matched here: neither 4.3 nor 5.4 takes a ``label`` filter on secrets ("invalid
        filter", measured). Podman 4.3 lists every secret with ``"Labels": null`` (measured;
        its inspect has them), 5.4 lists the labels: ``Features.secret_labels_listed``
        decides whether each secret is inspected.
        """
        listed = (await self.platform()).features.secret_labels_listed

        def list_() -> list[dict[str, Any]]:
            response = self._client.api.get("/secrets/json")
            response.raise_for_status()
            found = []
            for item in response.json() or []:
                secret = item
                if not listed:
                    one = self._client.api.get(f"/secrets/{item['ID']}/json")
                    if one.status_code == 404:  # removed in between
                        continue
                    one.raise_for_status()
                    secret = one.json()
                spec = secret.get("Spec") or {}
                labels = spec.get("Labels") or {}
                if _label_matches(labels, label):
                    found.append({"Name": str(spec.get("Name", "")), "Labels": labels})
            return found

        return await self._call("list secrets", list_)

    async def container_output(self, name: str, lines: int = 5) -> str:
        """A container's last ``lines`` of output (stdout and stderr), as `podman logs`."""

        def logs() -> str:
            chunks = self._client.containers.get(name).logs(stdout=True, stderr=True,
                                                            tail=lines)  # fmt: skip
            data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
            return data.decode(errors="replace")

        return await self._call(f'logs of container "{name}"', logs)

    async def kill_container(self, name: str, signal: str = "SIGKILL") -> None:
        await self._call(f'kill container "{name}"',
                         lambda: self._client.containers.get(name).kill(signal))  # fmt: skip

    async def container_stats(self, names: list[str]) -> list[dict[str, Any]]:
        """Podman's one-shot stats of running containers (``CPUNano``, ``MemUsage``,
        ``MemLimit``, ``PIDs``, …), one object each, as ``podman stats --no-stream``."""
        if not names:
            return []

        def stats() -> list[dict[str, Any]]:
            response = self._client.api.get(
                "/containers/stats", params={"containers": names, "stream": False}
            )
            response.raise_for_status()
            body = response.json() or {}
            if body.get("Error"):
                raise podman.errors.APIError(str(body["Error"]))
            return list(body.get("Stats") or [])

        return await self._call("container stats", stats)

    async def inspect_container(self, name: str) -> dict[str, Any]:
        def inspect() -> dict[str, Any]:
            container = self._client.containers.get(name)
            container.reload()
            attrs: dict[str, Any] = container.attrs
            return attrs

        return await self._call(f'container "{name}"', inspect)
