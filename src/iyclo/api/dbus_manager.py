"""``io.github.iyclo1.Manager`` at ``/io/github/iyclo1``: the JSON socket's operations.

``Apply``, ``Start``, ``Stop`` and ``Restart`` carry more out-arguments than a bare
acknowledgement so that a D-Bus client returns exactly what the JSON socket returns
(``changed`` and the resulting state cannot be fetched afterwards). The deployment's name
and kind are in the returned object path: ``<label>`` is the name escaped with sd-bus's
bus-label rules and the path's collection (``pod``, ``job``) is the kind. That object is
exported (or updated) before ``Apply`` answers, and gone before ``Remove`` answers.

The JSON-carrying methods return what the JSON socket returns, JSON-encoded the same way,
so both fronts stay one API. Each member is one method of ``iyclo.contract.methods``
(``Purge`` is ``remove`` with ``purge_history``); ``tests/test_registry.py`` holds this
class, the JSON socket's handlers and the D-Bus client to that table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar

from dbus_fast import PropertyAccess
from dbus_fast.annotations import (
    DBusBool,
    DBusDouble,
    DBusInt32,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUnixFd,
)
from dbus_fast.service import dbus_method, dbus_property, dbus_signal

from iyclo.api.dbus_base import (
    MANAGER_INTERFACE,
    Interface,
    NoReply,
    ServiceApi,
    as_json,
    object_path,
    translated,
)
from iyclo.api.protocol import JsonResult
from iyclo.contract.events import (
    EVENT_TYPES,
    Event,
    HealthChanged,
    JobChanged,
    JobFinished,
    PodChanged,
    PullProgress,
)
from iyclo.contract.methods import BY_NAME, METHODS
from iyclo.core.handover import close_all
from iyclo.errors import InvalidError

ApplyReply = Annotated[tuple[str, int, bool, str], DBusSignature("oubs")]
PodRow = tuple[str, str, str, int, int, int, str]
ListReply = Annotated[list[PodRow], DBusSignature("a(sssuuus)")]
StrList = Annotated[list[str], DBusSignature("as")]
# Signal arguments: one per field of the event type, in field order (iyclo.contract.events).
PodChangedArgs = Annotated[list[Any], DBusSignature(PodChanged.dbus_signature())]
JobChangedArgs = Annotated[list[Any], DBusSignature(JobChanged.dbus_signature())]
JobFinishedArgs = Annotated[list[Any], DBusSignature(JobFinished.dbus_signature())]
PullProgressArgs = Annotated[list[Any], DBusSignature(PullProgress.dbus_signature())]
HealthChangedArgs = Annotated[list[Any], DBusSignature(HealthChanged.dbus_signature())]

Refresh = Callable[[str], Awaitable[None]]


Gone = Callable[[], Awaitable[None]]


async def _nothing(name: str) -> None:
    return None


async def _never() -> None:
    await asyncio.get_running_loop().create_future()


class _BusHandover:
    """``core.handover.Handover`` on D-Bus: the descriptors came with the call (each
    ``h`` argument); what the service did not take is closed when the call ends."""

    def __init__(self, fds: list[int | None], gone: Gone) -> None:
        self._fds = fds
        self._gone = gone

    def __enter__(self) -> _BusHandover:
        return self

    def __exit__(self, *exc: object) -> None:
        close_all([fd for fd in self._fds if fd is not None])
        self._fds = []

    async def receive(self, count: int) -> list[int]:
        given, self._fds = self._fds, []
        fds = [fd for fd in given if fd is not None]
        if len(fds) != count:
            close_all(fds)
            raise InvalidError(f"expected {count} file descriptors, the call carried {len(fds)}")
        return fds

    async def gone(self) -> None:
        await self._gone()


class ManagerInterface(Interface):
    """``io.github.iyclo1.Manager``: the same operations as the JSON socket."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        **{m.member: tuple(o.name for o in m.out) for m in METHODS if m.member},
        **{cls.MEMBER: cls.dbus_arg_names() for cls in EVENT_TYPES},
        "ApplyWithin": tuple(o.name for o in BY_NAME["apply"].out),
    }

    def __init__(
        self, service: ServiceApi, refresh: Refresh = _nothing, gone: Gone = _never
    ) -> None:
        super().__init__(MANAGER_INTERFACE)
        self._service = service
        self._refresh = refresh
        self._gone = gone
        """Returns once the sender of the call in progress has left the bus."""
        self._counts = {"PodCount": 0, "JobCount": 0}
        self._health: dict[str, Any] = {"state": "ok", "problems": []}

    def set_counts(self, pods: int, jobs: int) -> None:
        changed = {
            key: value
            for key, value in (("PodCount", pods), ("JobCount", jobs))
            if self._counts[key] != value
        }
        if changed:
            self._counts.update(changed)
            self.emit_properties_changed(changed)

    @dbus_method(name="Apply")
    @translated
    async def apply(self, manifest_json: DBusStr) -> ApplyReply:
        return await self._applied(await self._service.apply(manifest_json))

    @dbus_method(name="ApplyWithin")
    @translated
    async def apply_within(self, manifest_json: DBusStr, wait_timeout: DBusDouble) -> ApplyReply:
        return await self._applied(await self._service.apply(manifest_json, wait_timeout))

    async def _applied(self, applied: JsonResult) -> ApplyReply:
        result = applied.to_json()
        await self._refresh(str(result["name"]))
        path = object_path(str(result["kind"]), str(result["name"]))
        return (path, int(result["generation"]), bool(result["changed"]), str(result["state"]))

    @dbus_method(name="Rollback")
    @translated
    async def rollback(self, name: DBusStr, to: DBusUInt32) -> ApplyReply:
        return await self._applied(await self._service.rollback(name, to))

    def set_health(self, health: dict[str, Any]) -> None:
        """The daemon's health changed: announce ``State`` and ``Problems``."""
        changed = {}
        if health["state"] != self._health["state"]:
            changed["State"] = health["state"]
        if health["problems"] != self._health["problems"]:
            changed["Problems"] = list(health["problems"])
        self._health = health
        if changed:
            self.emit_properties_changed(changed)

    @dbus_method(name="Health")
    @translated
    async def health(self) -> DBusStr:
        return as_json(self._service.health())

    @dbus_method(name="Validate")
    @translated
    async def validate(self, manifest_json: DBusStr) -> StrList:
        return await self._service.validate(manifest_json)

    @dbus_method(name="Diff")
    @translated
    async def diff(self, manifest_json: DBusStr) -> DBusStr:
        return await self._service.diff(manifest_json)

    @dbus_method(name="Remove")
    @translated
    async def remove(self, name: DBusStr) -> NoReply:
        await self._service.remove(name)
        await self._refresh(name)

    @dbus_method(name="Start")
    @translated
    async def start(self, name: DBusStr) -> DBusStr:
        return await self._service.start(name)

    @dbus_method(name="Stop")
    @translated
    async def stop(self, name: DBusStr) -> DBusStr:
        return await self._service.stop(name)

    @dbus_method(name="Restart")
    @translated
    async def restart(self, name: DBusStr) -> DBusStr:
        return await self._service.restart(name)

    @dbus_method(name="List")
    @translated
    async def list_(self) -> ListReply:
        return [pod_row(status) for status in await self._service.list_all()]

    @dbus_method(name="Get")
    @translated
    async def get(self, name: DBusStr) -> DBusStr:
        return as_json(await self._service.status(name))

    @dbus_method(name="GetManifest")
    @translated
    async def get_manifest(self, name: DBusStr, generation: DBusUInt32) -> DBusStr:
        return as_json(await self._service.manifest(name, generation))

    @dbus_method(name="History")
    @translated
    async def history(self, name: DBusStr) -> DBusStr:
        return as_json(await self._service.history(name))

    @dbus_method(name="Runs")
    @translated
    async def runs(self, name: DBusStr) -> DBusStr:
        return as_json(await self._service.runs(name))

    @dbus_method(name="Logs")
    @translated
    async def logs(self, name: DBusStr, run: DBusUInt32, lines: DBusUInt32) -> DBusStr:
        return as_json(await self._service.logs(name, run, lines or None))

    @dbus_method(name="Purge")
    @translated
    async def purge(self, name: DBusStr) -> NoReply:
        await self._service.remove(name, purge_history=True)
        await self._refresh(name)

    @dbus_method(name="RemoveWith")
    @translated
    async def remove_with(
        self, name: DBusStr, purge_history: DBusBool, volumes: DBusBool
    ) -> NoReply:
        await self._service.remove(name, purge_history=purge_history, volumes=volumes)
        await self._refresh(name)

    @dbus_method(name="Volumes")
    @translated
    async def volumes(self) -> DBusStr:
        return as_json(await self._service.volumes())

    @dbus_method(name="Reconcile")
    @translated
    async def reconcile(self) -> DBusStr:
        return as_json((await self._service.reconcile()).to_json())

    @dbus_method(name="RunJob")
    @translated
    async def run_job(self, name: DBusStr) -> DBusStr:
        return as_json(await self._service.run_job(name))

    @dbus_method(name="Pull")
    @translated
    async def pull(self, manifest_json: DBusStr, image: DBusStr) -> DBusStr:
        return as_json(await self._service.pull(manifest_json, image))

    @dbus_method(name="Exec")
    @translated
    async def exec_(  # noqa: PLR0917 (one parameter per D-Bus argument)
                    self, name: DBusStr, container: DBusStr, command: StrList, tty: DBusBool,
                    interactive: DBusBool, stdin: DBusUnixFd, stdout: DBusUnixFd,
                    stderr: DBusUnixFd) -> DBusInt32:  # fmt: skip
        with _BusHandover([stdin, stdout, stderr], self._gone) as handover:
            return await self._service.exec(name, container, list(command), tty, interactive,
                                            handover=handover)  # fmt: skip

    @dbus_method(name="FollowLogs")
    @translated
    async def follow_logs(self, name: DBusStr, lines: DBusUInt32, out: DBusUnixFd) -> NoReply:
        with _BusHandover([out], self._gone) as handover:
            await self._service.follow_logs(name, lines, handover=handover)

    @dbus_method(name="Stats")
    @translated
    async def stats(self, names: StrList) -> DBusStr:
        return as_json(await self._service.stats(list(names)))

    @dbus_property(access=PropertyAccess.READ, name="Version")
    def version(self) -> DBusStr:
        return self._service.version()

    @dbus_property(access=PropertyAccess.READ, name="State")
    def state(self) -> DBusStr:
        """ok, or degraded while Podman or systemd is missing (``iyclo.core.health``)."""
        return str(self._health["state"])

    @dbus_property(access=PropertyAccess.READ, name="Problems")
    def problems(self) -> StrList:
        return list(self._health["problems"])

    @dbus_property(access=PropertyAccess.READ, name="PodCount")
    def pod_count(self) -> DBusUInt32:
        return self._counts["PodCount"]

    @dbus_property(access=PropertyAccess.READ, name="JobCount")
    def job_count(self) -> DBusUInt32:
        return self._counts["JobCount"]

    @dbus_signal(name="PodChanged")
    def pod_changed(self, event: PodChanged) -> PodChangedArgs:
        return event.dbus_args()

    @dbus_signal(name="JobChanged")
    def job_changed(self, event: JobChanged) -> JobChangedArgs:
        return event.dbus_args()

    @dbus_signal(name="JobFinished")
    def job_finished(self, event: JobFinished) -> JobFinishedArgs:
        return event.dbus_args()

    @dbus_signal(name="PullProgress")
    def pull_progress(self, event: PullProgress) -> PullProgressArgs:
        return event.dbus_args()

    @dbus_signal(name="HealthChanged")
    def health_changed(self, event: HealthChanged) -> HealthChangedArgs:
        return event.dbus_args()

    def signal(self, event: Event) -> None:
        """Emit ``event`` as the signal of its type."""
        if isinstance(event, PodChanged):
            self.pod_changed(event)
        elif isinstance(event, JobChanged):
            self.job_changed(event)
        elif isinstance(event, JobFinished):
            self.job_finished(event)
        elif isinstance(event, HealthChanged):
            self.health_changed(event)
        else:
            self.pull_progress(event)


def pod_row(status: dict[str, Any]) -> PodRow:
    """One ``List`` struct: (name, kind, state, generation, restarts, containers_running, unit)."""
    containers = status.get("containers") or []
    running = sum(1 for c in containers if c.get("state") == "running")
    return (
        str(status["name"]),
        str(status["kind"]),
        str(status["state"]),
        int(status["generation"]),
        int(status.get("restarts", 0)),
        running,
        str(status.get("unit", "")),
    )
