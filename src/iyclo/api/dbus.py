"""iyclo's own D-Bus interface: a thin adapter over the service layer.

Bus name ``io.github.iyclo1``. Three kinds of object, each described by its
introspection XML in ``dbus/`` (``tests/test_dbus_api.py`` checks them against what is
exported):

``/io/github/iyclo1`` — ``io.github.iyclo1.Manager`` (``api.dbus_manager``)
    the JSON socket's operations; properties ``Version``, ``PodCount`` and ``JobCount``;
    signals ``PodChanged``, ``JobChanged`` and ``JobFinished``, one argument per field of
    the event type in ``iyclo.contract.events``.
``/io/github/iyclo1/pod/<label>`` — ``io.github.iyclo1.Pod``, one per pod
``/io/github/iyclo1/job/<label>`` — ``io.github.iyclo1.Job``, one per job
    (``api.dbus_objects``) the deployment's state, emitting PropertiesChanged, and its
    operations.

Every ``IycloError`` leaves as a D-Bus error of its ``dbus_name`` (for ``Invalid``, the
message holds every problem, one per line); anything else leaves as
``io.github.iyclo1.Error.Failed``. Objects follow the service's ``EventBus``: each event
is forwarded as a signal at once, and the deployment named in it is re-read with
``Service.status`` to export, update or unexport its object — never polled.

A bus daemon that drops iyclod's connection (crashed, restarted) does not take the
interface away for good: ``_Front`` exports it again on a new connection as soon as the
bus is back, every object re-read from the service, the name owned again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, DBusError, Message, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from iyclo.api.dbus_base import (
    BUS_NAME,
    JOB_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    POD_INTERFACE,
    ServiceApi,
    bus_label_escape,
    job_path,
    log,
    object_path,
    pod_path,
)
from iyclo.api.dbus_caller import BusCallers
from iyclo.api.dbus_manager import ManagerInterface
from iyclo.api.dbus_objects import JobInterface, PodInterface
from iyclo.api.guard import Guarded
from iyclo.api.polkit import Polkit
from iyclo.core.access import Gate
from iyclo.core.events import Event
from iyclo.errors import AccessDeniedError, ConflictError, InvalidError, IycloError, NotFoundError
from iyclo.systemd.const import DBUS_NAME, DBUS_PATH, IFACE_PEER

__all__ = [
    "BUS_NAME",
    "JOB_INTERFACE",
    "MANAGER_INTERFACE",
    "MANAGER_PATH",
    "POD_INTERFACE",
    "ManagerInterface",
    "bus_label_escape",
    "export_service",
    "job_path",
    "pod_path",
]

POLICY_FILE = "/usr/share/dbus-1/system.d/io.github.iyclo1.conf"
BUS_TIMEOUT = 10.0  # connecting and owning the name: the bus daemon answers at once or never
PACE_EVERY = 32
"""Messages sent before a round trip to the bus daemon lets our socket drain
(``_Exporter._pace``). dbus-fast 5.2's writer takes a send that finds the kernel's
buffer full (EAGAIN) for a broken connection and drops it (python-dbus-next#153, the
code it came from): the signals of 200 objects exported in one go did that, once in a
dozen start-ups at 200 pods, and the daemon failed to start."""
EXPORT_AGAIN_PAUSES = (0.2, 0.5, 1.0, 2.0)
"""Seconds between attempts to export again after the bus dropped us; the last repeats."""

Deployment = PodInterface | JobInterface


# -- export -----------------------------------------------------------------------------


class _Exporter:
    """Owns the connection, the objects and the tasks that keep them in step with events."""

    def __init__(self, service: ServiceApi, bus: MessageBus, gate: Gate) -> None:
        self.service = service
        """The service itself, for the daemon's own reads (the objects' state)."""
        self.bus = bus
        self.callers = BusCallers(bus)
        self.guarded = Guarded(service, gate, self.callers.current)
        """The service as each caller may use it: what every exported method calls."""
        self.manager = ManagerInterface(self.guarded, self.refresh, self.callers.gone)
        self.objects: dict[str, Deployment] = {}  # by name: a name is one pod or one job
        self._dirty: dict[str, None] = {}  # an ordered set of names to re-read
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._subscription = contextlib.ExitStack()
        self._closed = False
        self._unpaced = 0
        self.disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the connection dropped by itself (not by ``close``)."""

    async def start(self, bus_label: str) -> None:
        # Subscribe before reading the initial list: nothing published in between is lost.
        queue = self._subscription.enter_context(self.service.events.subscription())
        self.bus.export(MANAGER_PATH, self.manager)
        self.manager.set_health(self.service.health())
        self._subscription.callback(self.service.on_health_change(self.manager.set_health))
        for status in await self.service.list_all():
            self._put(status, count=False)
            await self._pace()
        self._count()
        await self._request_name(bus_label)
        self._tasks = [
            asyncio.create_task(self._forward(queue), name="iyclo-dbus-forward"),
            asyncio.create_task(self._refresh_dirty(), name="iyclo-dbus-refresh"),
        ]
        # Not cancelled on close: cancelling a waiter would cancel dbus-fast's own future.
        self._watch = asyncio.create_task(
            self._watch_connection(bus_label), name="iyclo-dbus-watch"
        )
        log.info("D-Bus interface exported", bus=bus_label, name=BUS_NAME,
                 objects=len(self.objects))  # fmt: skip

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

    async def _pace(self) -> None:
        """After every ``PACE_EVERY`` messages, wait for the bus daemon to answer a ping:
        it has then read all we sent before it, and a burst never fills the socket."""
        self._unpaced += 1
        if self._unpaced >= PACE_EVERY:
            self._unpaced = 0
            await self.bus.call(Message(destination=DBUS_NAME, path=DBUS_PATH,
                                        interface=IFACE_PEER, member="Ping"))  # fmt: skip

    def _put(self, status: dict[str, Any], *, count: bool = True) -> None:
        """Export, update or (when the name changed kind) replace the object of ``status``;
        ``count``: say the new number of objects now (a start-up says it once, at the end)."""
        name, kind = str(status["name"]), str(status["kind"])
        if kind not in ("Pod", "Job"):  # a network runs nothing: no object of its own
            self._drop(name)
            return
        current = self.objects.get(name)
        wanted = PodInterface if kind == "Pod" else JobInterface
        if isinstance(current, wanted):
            current.update(status)
            return
        self._drop(name)
        made: Deployment = wanted(self.guarded, status)
        self.objects[name] = made
        self.bus.export(object_path(kind, name), made)
        if count:
            self._count()

    def _drop(self, name: str) -> None:
        gone = self.objects.pop(name, None)
        if gone is not None:
            kind = "Pod" if isinstance(gone, PodInterface) else "Job"
            self.bus.unexport(object_path(kind, name), gone)
            self._count()

    def _count(self) -> None:
        pods = sum(isinstance(o, PodInterface) for o in self.objects.values())
        self.manager.set_counts(pods, len(self.objects) - pods)

    async def refresh(self, name: str) -> None:
        """Re-read one deployment and export, update or unexport its object; on a failed
        read keep the last known values (the next event for it retries)."""
        try:
            self._put(await self.service.status(name))
        except NotFoundError:
            self._drop(name)
        except IycloError as exc:
            log.warning("cannot read state", name=name, error=exc.message)

    async def _forward(self, queue: asyncio.Queue[Event]) -> None:
        """Each event becomes a signal now; its object is re-read by the refresher."""
        while True:
            event = await queue.get()
            try:
                self.manager.signal(event)
                self._dirty[event.name] = None
                self._wake.set()
                await self._pace()
            except Exception:
                log.exception("cannot forward event", kind=event.MEMBER, name=event.name)

    async def _refresh_dirty(self) -> None:
        """Re-read deployments named by events, one at a time; a burst for one reads it once."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                name = next(iter(self._dirty))
                del self._dirty[name]
                try:
                    await self.refresh(name)
                    await self._pace()
                except Exception:
                    log.exception("cannot refresh object", name=name)

    async def _watch_connection(self, bus_label: str) -> None:
        """A bus daemon that goes away takes the interface with it until ``_Front``
        exports it again: say so, loudly."""
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if not self._closed:
            log.error("lost the D-Bus connection; exporting again", bus=bus_label)
            if not self.disconnected.done():
                self.disconnected.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subscription.close()
        for name in list(self.objects):
            self._drop(name)
        self.bus.unexport(MANAGER_PATH, self.manager)
        self.callers.close()
        if self.bus.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BUS_TIMEOUT):
                    await self.bus.release_name(BUS_NAME)
        with contextlib.suppress(Exception):  # already gone when the bus dropped us
            self.bus.disconnect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(BUS_TIMEOUT):
                if self._watch is not None:
                    await self._watch
                else:
                    await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


class _Front:
    """The interface on one bus for as long as the daemon runs: exported again on a new
    connection whenever the bus drops the current one."""

    def __init__(self, service: ServiceApi, connect: Callable[[], MessageBus], label: str,
                 gate: Gate) -> None:  # fmt: skip
        self._service = service
        self._connect = connect
        self._label = label
        self._gate = gate
        self._own_authority = gate.authority is None
        """polkit is looked up on our bus, so it must be looked up again on a new one."""
        self._exporter: _Exporter | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self.exports = 0

    async def start(self) -> None:
        self._exporter = await self._export()
        self._supervisor = asyncio.create_task(self._supervise(), name="iyclo-dbus-front")

    async def _export(self) -> _Exporter:
        bus = self._connect()
        try:
            async with asyncio.timeout(BUS_TIMEOUT):
                await bus.connect()
        except TimeoutError:
            with contextlib.suppress(Exception):
                bus.disconnect()
            raise IycloError(f"cannot connect to the {self._label} bus: no answer") from None
        except Exception as exc:
            raise IycloError(f"cannot connect to the {self._label} bus: {exc}") from None
        exporter = _Exporter(self._service, bus, self._gate)
        try:
            if self._own_authority:
                self._gate.authority = await Polkit.on(bus)
            await exporter.start(self._label)
        except BaseException:
            await exporter.close()
            raise
        self.exports += 1
        return exporter

    async def _supervise(self) -> None:
        while not self._closed and self._exporter is not None:
            await self._exporter.disconnected
            await self._exporter.close()
            self._exporter = None
            attempt = 0
            while not self._closed and self._exporter is None:
                await asyncio.sleep(EXPORT_AGAIN_PAUSES[min(attempt, len(EXPORT_AGAIN_PAUSES) - 1)])
                attempt += 1
                try:
                    self._exporter = await self._export()
                except IycloError as exc:
                    log.warning("cannot export again yet", bus=self._label, attempt=attempt,
                                error=exc.message)  # fmt: skip
            if self._exporter is not None:
                log.warning("D-Bus interface exported again", bus=self._label, attempt=attempt)

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            # waits on the exporter's own future, never on dbus-fast's: safe to cancel
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._exporter is not None:
            await self._exporter.close()


async def export_service(
    service: ServiceApi,
    bus: str = "system",
    *,
    bus_address: str | None = None,
    gate: Gate | None = None,
) -> Callable[[], Awaitable[None]]:
    """Serve ``service`` on D-Bus until the returned ``unexport()`` is awaited.

    ``bus`` is ``"system"`` or ``"session"``; ``bus_address`` (a D-Bus address) overrides
    it, for tests and private buses. The objects are exported before the name is
    requested, so a client that sees the name can use them at once. Every call is checked
    by ``gate`` (default: root and group ``iyclo``), which also gets polkit on that bus as
    its authority when polkit is there.
    """
    gate = gate or Gate()
    connect: Callable[[], MessageBus]
    if bus_address is not None:
        label = bus_address
        connect = lambda: MessageBus(bus_address=bus_address, negotiate_unix_fd=True)  # noqa: E731
    elif bus in ("system", "session"):
        label = bus
        kind = BusType.SYSTEM if bus == "system" else BusType.SESSION
        connect = lambda: MessageBus(bus_type=kind, negotiate_unix_fd=True)  # noqa: E731
    else:
        raise InvalidError(f'bus: "{bus}" is not "system" or "session"')
    front = _Front(service, connect, label, gate)
    await front.start()
    return front.close
