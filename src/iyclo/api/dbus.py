"""iyclo's own D-Bus interface: a thin adapter over the service layer.

Bus name ``io.github.iyclo1``. Two kinds of object:

``/io/github/iyclo1`` — ``io.github.iyclo1.Manager``
    ``Apply(s manifest_json) -> (o path, u generation, b changed, s state)``
    ``Validate(s manifest_json) -> (as errors)``
    ``Diff(s manifest_json) -> (s diff)``
    ``Remove(s name)``
    ``Start(s name) -> (s state)``, ``Stop(s name) -> (s state)``, ``Restart(s name) -> (s state)``
    ``List() -> (a(sssuuus) pods)`` — one struct per pod:
    (name, kind, state, generation, restarts, containers_running, unit)
    ``Get(s name) -> (s status_json)``
    ``GetManifest(s name, u generation) -> (s manifest_json)`` — generation 0 is the current one
    ``History(s name) -> (s history_json)``
    ``Reconcile() -> (s report_json)``
    ``RunJob(s name) -> s run_json``
    properties ``Version`` (s), ``PodCount`` (u, emits PropertiesChanged)
    signals ``PodChanged``, ``JobChanged``, ``JobFinished``: one argument per field of the
    event type in ``iyclo.contract.events``

``/io/github/iyclo1/pod/<label>`` — ``io.github.iyclo1.Pod``, one object per pod
    properties ``Name``, ``Kind``, ``State`` (s), ``Generation`` (u), ``Unit`` (s),
    ``Restarts`` (u), ``Containers`` (a(sss): name, state, id), all emitting PropertiesChanged;
    methods ``Start() -> (s state)``, ``Stop() -> (s state)``, ``Restart() -> (s state)``,
    ``Remove()``.

``Apply``, ``Start``, ``Stop`` and ``Restart`` carry more out-arguments than a bare
acknowledgement so that a D-Bus client returns exactly what the JSON socket returns
(``changed`` and the resulting state cannot be fetched afterwards). The pod's name and
kind are in the returned object path: ``<label>`` is the name escaped with sd-bus's
bus-label rules and the path's collection (``pod``) is the kind.

The JSON-carrying methods return what the JSON socket returns, JSON-encoded the same way,
so both fronts stay one API. Every ``IycloError`` leaves as a D-Bus error of its
``dbus_name`` (for ``Invalid``, the message holds every problem, one per line); anything
else leaves as ``io.github.iyclo1.Error.Failed``. Pod objects follow the service's
``EventBus``: each event is forwarded as a signal at once, and the pod named in it is
re-read with ``Service.status`` to export, update or unexport its object — never polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, ClassVar, ParamSpec, Protocol, TypeVar

import structlog
from dbus_fast import BusType, DBusError, NameFlag, PropertyAccess, RequestNameReply
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from iyclo.contract.events import EVENT_TYPES
from iyclo.core.events import Event, EventBus, JobChanged, JobFinished, PodChanged
from iyclo.errors import (
    DBUS_ERROR_PREFIX,
    AccessDeniedError,
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
)

log = structlog.get_logger("iyclo.dbus")

BUS_NAME = "io.github.iyclo1"
MANAGER_PATH = "/io/github/iyclo1"
MANAGER_INTERFACE = "io.github.iyclo1.Manager"
POD_INTERFACE = "io.github.iyclo1.Pod"
POD_COLLECTION = "pod"
POD_PATH_PREFIX = f"{MANAGER_PATH}/{POD_COLLECTION}"
FAILED = f"{DBUS_ERROR_PREFIX}.Failed"
POLICY_FILE = "/usr/share/dbus-1/system.d/io.github.iyclo1.conf"
BUS_TIMEOUT = 10.0  # connecting and owning the name: the bus daemon answers at once or never

# D-Bus types of the replies, spelled once. ``NoReply``: dbus-fast reads a bare ``None``
# return annotation as a missing signature, so an empty reply is spelled out.
NoReply = Annotated[None, DBusSignature("")]
ApplyReply = Annotated[tuple[str, int, bool, str], DBusSignature("oubs")]
PodRow = tuple[str, str, str, int, int, int, str]
ListReply = Annotated[list[PodRow], DBusSignature("a(sssuuus)")]
StrList = Annotated[list[str], DBusSignature("as")]
ContainerRows = Annotated[list[tuple[str, str, str]], DBusSignature("a(sss)")]
# Signal arguments: one per field of the event type, in field order (iyclo.contract.events).
PodChangedArgs = Annotated[list[Any], DBusSignature(PodChanged.dbus_signature())]
JobChangedArgs = Annotated[list[Any], DBusSignature(JobChanged.dbus_signature())]
JobFinishedArgs = Annotated[list[Any], DBusSignature(JobFinished.dbus_signature())]


class JsonResult(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class ServiceApi(Protocol):
    """What this adapter needs of ``iyclo.core.service.Service`` (and what fakes provide).

    A protocol rather than an import so the adapter, its tests and mypy do not pull in
    the systemd and Podman adapters the real service is built on.
    """

    events: EventBus

    async def validate(self, manifest: str | dict[str, Any], /) -> list[str]: ...
    async def apply(self, manifest: str | dict[str, Any], /) -> JsonResult: ...
    async def diff(self, manifest: str | dict[str, Any], /) -> str: ...
    async def remove(self, name: str, /, purge_history: bool = False) -> None: ...
    async def runs(self, name: str, /) -> list[dict[str, Any]]: ...
    async def logs(
        self, name: str, run: int = 0, lines: int | None = None, /
    ) -> dict[str, Any]: ...
    async def start(self, name: str, /) -> str: ...
    async def stop(self, name: str, /) -> str: ...
    async def restart(self, name: str, /) -> str: ...
    async def status(self, name: str, /) -> dict[str, Any]: ...
    async def manifest(self, name: str, generation: int = 0, /) -> dict[str, Any]: ...
    async def history(self, name: str, /) -> list[dict[str, Any]]: ...
    async def reconcile(self) -> JsonResult: ...
    async def run_job(self, name: str, /) -> dict[str, Any]: ...
    def version(self) -> str: ...
    # Last: below it, ``list`` in this class body would name the method, not the type.
    async def list_all(self) -> list[dict[str, Any]]: ...


# -- names ------------------------------------------------------------------------------


def bus_label_escape(text: str) -> str:
    """sd-bus's ``bus_label_escape``: object path elements allow only [A-Za-z0-9_].

    Every other byte (and a leading digit, and ``_`` itself) becomes ``_xx`` in lower-case
    hex; the empty string becomes ``_``. The same rule systemd uses for unit paths, so
    ``busctl`` users already know it.
    """
    if not text:
        return "_"
    out: list[str] = []
    for index, byte in enumerate(text.encode()):
        char = chr(byte)
        if ("a" <= char <= "z") or ("A" <= char <= "Z") or (index > 0 and "0" <= char <= "9"):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def pod_path(name: str) -> str:
    return f"{POD_PATH_PREFIX}/{bus_label_escape(name)}"


# -- errors -----------------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")


def error_text(exc: IycloError) -> str:
    """The D-Bus error message: one line, or for ``Invalid`` one line per problem."""
    if not isinstance(exc, InvalidError):
        return exc.message
    details = exc.details[1:] if exc.details[:1] == [exc.message] else exc.details
    return "\n".join([exc.message, *details])


def translated(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place errors cross to D-Bus: typed errors by name, anything else as Failed.

    Applied under ``@dbus_method()``; ``functools.wraps`` keeps the signature dbus-fast
    reads the D-Bus types from.
    """

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except IycloError as exc:
            raise DBusError(exc.dbus_name, error_text(exc)) from None
        except DBusError:
            raise
        except Exception as exc:  # a bug must not take the daemon down with it
            log.exception("D-Bus method failed", method=fn.__qualname__)
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DBusError(FAILED, f"internal error: {first}") from None

    return wrapper


def _json(value: Any) -> str:
    """Encoded as the JSON socket encodes its results, so both fronts return the same."""
    return json.dumps(value, default=str)


# -- interfaces -------------------------------------------------------------------------


class _Interface(ServiceInterface):
    """Names out-arguments in the introspection data (dbus-fast leaves them unnamed)."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def introspect(self) -> intr.Interface:
        interface = super().introspect()
        for method in interface.methods:
            names = self.OUT_ARGS.get(method.name, ())
            for arg, name in zip(method.out_args, names, strict=True):
                arg.name = name
        for signal in interface.signals:
            names = self.OUT_ARGS.get(signal.name, ())
            for arg, name in zip(signal.args, names, strict=True):
                arg.name = name
        return interface


class ManagerInterface(_Interface):
    """``io.github.iyclo1.Manager``: the same operations as the JSON socket."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Apply": ("path", "generation", "changed", "state"),
        "Validate": ("errors",),
        "Diff": ("diff",),
        "Start": ("state",),
        "Stop": ("state",),
        "Restart": ("state",),
        "List": ("pods",),
        "Get": ("status_json",),
        "GetManifest": ("manifest_json",),
        "History": ("history_json",),
        "Reconcile": ("report_json",),
        "RunJob": ("run_json",),
        "Runs": ("runs_json",),
        "Logs": ("logs_json",),
        **{cls.MEMBER: cls.dbus_arg_names() for cls in EVENT_TYPES},
    }

    def __init__(self, service: ServiceApi) -> None:
        super().__init__(MANAGER_INTERFACE)
        self._service = service
        self._pod_count = 0

    def set_pod_count(self, count: int) -> None:
        if count != self._pod_count:
            self._pod_count = count
            self.emit_properties_changed({"PodCount": count})

    @dbus_method(name="Apply")
    @translated
    async def apply(self, manifest_json: DBusStr) -> ApplyReply:
        result = (await self._service.apply(manifest_json)).to_json()
        collection = str(result["kind"]).lower()
        path = f"{MANAGER_PATH}/{collection}/{bus_label_escape(result['name'])}"
        return (path, int(result["generation"]), bool(result["changed"]), str(result["state"]))

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
        return _json(await self._service.status(name))

    @dbus_method(name="GetManifest")
    @translated
    async def get_manifest(self, name: DBusStr, generation: DBusUInt32) -> DBusStr:
        return _json(await self._service.manifest(name, generation))

    @dbus_method(name="History")
    @translated
    async def history(self, name: DBusStr) -> DBusStr:
        return _json(await self._service.history(name))

    @dbus_method(name="Runs")
    @translated
    async def runs(self, name: DBusStr) -> DBusStr:
        return _json(await self._service.runs(name))

    @dbus_method(name="Logs")
    @translated
    async def logs(self, name: DBusStr, run: DBusUInt32, lines: DBusUInt32) -> DBusStr:
        return _json(await self._service.logs(name, run, lines or None))

    @dbus_method(name="Purge")
    @translated
    async def purge(self, name: DBusStr) -> NoReply:
        await self._service.remove(name, purge_history=True)

    @dbus_method(name="Reconcile")
    @translated
    async def reconcile(self) -> DBusStr:
        return _json((await self._service.reconcile()).to_json())

    @dbus_method(name="RunJob")
    @translated
    async def run_job(self, name: DBusStr) -> DBusStr:
        return _json(await self._service.run_job(name))

    @dbus_property(access=PropertyAccess.READ, name="Version")
    def version(self) -> DBusStr:
        return self._service.version()

    @dbus_property(access=PropertyAccess.READ, name="PodCount")
    def pod_count(self) -> DBusUInt32:
        return self._pod_count

    @dbus_signal(name="PodChanged")
    def pod_changed(self, event: PodChanged) -> PodChangedArgs:
        return event.dbus_args()

    @dbus_signal(name="JobChanged")
    def job_changed(self, event: JobChanged) -> JobChangedArgs:
        return event.dbus_args()

    @dbus_signal(name="JobFinished")
    def job_finished(self, event: JobFinished) -> JobFinishedArgs:
        return event.dbus_args()

    def signal(self, event: Event) -> None:
        """Emit ``event`` as the signal of its type."""
        if isinstance(event, PodChanged):
            self.pod_changed(event)
        elif isinstance(event, JobChanged):
            self.job_changed(event)
        else:
            self.job_finished(event)


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


def pod_properties(status: dict[str, Any]) -> dict[str, Any]:
    """The Pod object's property values, taken from ``Service.status``."""
    return {
        "Name": str(status["name"]),
        "Kind": str(status["kind"]),
        "State": str(status["state"]),
        "Generation": int(status["generation"]),
        "Unit": str(status.get("unit", "")),
        "Restarts": int(status.get("restarts", 0)),
        "Containers": [
            (str(c.get("name", "")), str(c.get("state", "")), str(c.get("id", "")))
            for c in status.get("containers") or []
        ],
    }


class PodInterface(_Interface):
    """``io.github.iyclo1.Pod``: one pod's state, and the operations on it."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Start": ("state",),
        "Stop": ("state",),
        "Restart": ("state",),
    }

    def __init__(self, service: ServiceApi, status: dict[str, Any]) -> None:
        super().__init__(POD_INTERFACE)
        self._service = service
        self._values = pod_properties(status)
        self.pod_name: str = self._values["Name"]

    def update(self, status: dict[str, Any]) -> None:
        """Take a fresh status; announce the properties whose value changed."""
        values = pod_properties(status)
        changed = {k: v for k, v in values.items() if self._values.get(k) != v}
        self._values = values
        if changed:
            self.emit_properties_changed(changed)

    @dbus_method(name="Start")
    @translated
    async def start(self) -> DBusStr:
        return await self._service.start(self.pod_name)

    @dbus_method(name="Stop")
    @translated
    async def stop(self) -> DBusStr:
        return await self._service.stop(self.pod_name)

    @dbus_method(name="Restart")
    @translated
    async def restart(self) -> DBusStr:
        return await self._service.restart(self.pod_name)

    @dbus_method(name="Remove")
    @translated
    async def remove(self) -> NoReply:
        await self._service.remove(self.pod_name)

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_(self) -> DBusStr:
        value: str = self._values["Name"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Kind")
    def kind(self) -> DBusStr:
        value: str = self._values["Kind"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="State")
    def state(self) -> DBusStr:
        value: str = self._values["State"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Generation")
    def generation(self) -> DBusUInt32:
        value: int = self._values["Generation"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Unit")
    def unit(self) -> DBusStr:
        value: str = self._values["Unit"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Restarts")
    def restarts(self) -> DBusUInt32:
        value: int = self._values["Restarts"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Containers")
    def containers(self) -> ContainerRows:
        value: list[tuple[str, str, str]] = self._values["Containers"]
        return value


# -- export -----------------------------------------------------------------------------


class _Exporter:
    """Owns the connection, the objects and the tasks that keep them in step with events."""

    def __init__(self, service: ServiceApi, bus: MessageBus) -> None:
        self.service = service
        self.bus = bus
        self.manager = ManagerInterface(service)
        self.pods: dict[str, PodInterface] = {}
        self._dirty: dict[str, None] = {}  # an ordered set of names to re-read
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._subscription = contextlib.ExitStack()
        self._closed = False

    async def start(self, bus_label: str) -> None:
        # Subscribe before reading the initial list: nothing published in between is lost.
        queue = self._subscription.enter_context(self.service.events.subscription())
        self.bus.export(MANAGER_PATH, self.manager)
        for status in await self.service.list_all():
            self._put(status)
        await self._request_name(bus_label)
        self._tasks = [
            asyncio.create_task(self._forward(queue), name="iyclo-dbus-forward"),
            asyncio.create_task(self._refresh_dirty(), name="iyclo-dbus-refresh"),
        ]
        # Not cancelled on close: cancelling a waiter would cancel dbus-fast's own future.
        self._watch = asyncio.create_task(
            self._watch_connection(bus_label), name="iyclo-dbus-watch"
        )
        log.info("D-Bus interface exported", bus=bus_label, name=BUS_NAME, pods=len(self.pods))

    async def _request_name(self, bus_label: str) -> None:
        try:
            async with asyncio.timeout(BUS_TIMEOUT):
                reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except TimeoutError:
            raise IycloError(f"the {bus_label} bus did not answer RequestName") from None
        except DBusError as exc:
            if exc.type == "org.freedesktop.DBus.Error.AccessDenied":
                raise AccessDeniedError(
                    f"the {bus_label} bus policy does not let this process own {BUS_NAME}: "
                    f"install dbus/io.github.iyclo1.conf as {POLICY_FILE} and run iyclod as root"
                ) from None
            raise IycloError(f"cannot own {BUS_NAME} on the {bus_label} bus: {exc.text}") from None
        except Exception as exc:  # the connection broke
            raise IycloError(f"cannot own {BUS_NAME} on the {bus_label} bus: {exc}") from None
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise ConflictError(
                f"{BUS_NAME} is already owned on the {bus_label} bus: is another iyclod running?"
            )

    def _put(self, status: dict[str, Any]) -> None:
        name = str(status["name"])
        pod = self.pods.get(name)
        if pod is not None:
            pod.update(status)
            return
        pod = PodInterface(self.service, status)
        self.pods[name] = pod
        self.bus.export(pod_path(name), pod)
        self.manager.set_pod_count(len(self.pods))

    def _drop(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            self.bus.unexport(pod_path(name), pod)
            self.manager.set_pod_count(len(self.pods))

    async def _forward(self, queue: asyncio.Queue[Event]) -> None:
        """Each event becomes a signal now; its pod object is re-read by the refresher."""
        while True:
            event = await queue.get()
            try:
                self.manager.signal(event)
                if isinstance(event, PodChanged):
                    self._dirty[event.name] = None
                    self._wake.set()
            except Exception:
                log.exception("cannot forward event", kind=event.MEMBER, name=event.name)

    async def _refresh_dirty(self) -> None:
        """Re-read pods named by events, one at a time; a burst for one pod reads it once."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                name = next(iter(self._dirty))
                del self._dirty[name]
                try:
                    self._put(await self.service.status(name))
                except NotFoundError:
                    self._drop(name)
                except IycloError as exc:
                    # Keep the last known values; the next event for this pod retries.
                    log.warning("cannot read pod state", pod=name, error=exc.message)
                except Exception:
                    log.exception("cannot refresh pod object", pod=name)

    async def _watch_connection(self, bus_label: str) -> None:
        """A bus daemon that goes away takes the interface with it: say so, loudly."""
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if not self._closed:
            log.error("lost the D-Bus connection; the interface is gone", bus=bus_label)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subscription.close()
        for name in list(self.pods):
            self._drop(name)
        self.bus.unexport(MANAGER_PATH, self.manager)
        if self.bus.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BUS_TIMEOUT):
                    await self.bus.release_name(BUS_NAME)
        self.bus.disconnect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(BUS_TIMEOUT):
                if self._watch is not None:
                    await self._watch
                else:
                    await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def export_service(
    service: ServiceApi, bus: str = "system", *, bus_address: str | None = None
) -> Callable[[], Awaitable[None]]:
    """Serve ``service`` on D-Bus until the returned ``unexport()`` is awaited.

    ``bus`` is ``"system"`` or ``"session"``; ``bus_address`` (a D-Bus address) overrides
    it, for tests and private buses. The objects are exported before the name is
    requested, so a client that sees the name can use them at once.
    """
    if bus_address is not None:
        label = bus_address
        message_bus = MessageBus(bus_address=bus_address)
    elif bus in ("system", "session"):
        label = bus
        message_bus = MessageBus(bus_type=BusType.SYSTEM if bus == "system" else BusType.SESSION)
    else:
        raise InvalidError(f'bus: "{bus}" is not "system" or "session"')
    try:
        async with asyncio.timeout(BUS_TIMEOUT):
            await message_bus.connect()
    except TimeoutError:
        message_bus.disconnect()
        raise IycloError(f"cannot connect to the {label} bus: no answer") from None
    except Exception as exc:
        raise IycloError(f"cannot connect to the {label} bus: {exc}") from None
    exporter = _Exporter(service, message_bus)
    try:
        await exporter.start(label)
    except BaseException:
        await exporter.close()
        raise
    return exporter.close
