"""Typed client for ``org.freedesktop.systemd1.Manager`` over one dbus-fast connection.

Why it looks like this:

* One :class:`~dbus_fast.aio.MessageBus`, one message handler, two match rules
  (``JobRemoved`` on the manager, ``PropertiesChanged`` below the unit path
  namespace) and one ``Subscribe`` at connect. No proxy objects and no
  introspection: every call is an explicit :class:`~dbus_fast.Message` with
  the signature systemd 252 introspects to, so type checkers see every
  argument and no round trip is spent on ``Introspect``.
* A job is only finished when ``JobRemoved`` names its path. systemd may send
  that signal before the method reply that tells us the path, so while a job
  call is in flight every ``JobRemoved`` nobody waits for yet is kept by job
  path and the caller looks there first once the reply arrives.
* Every wait runs under ``asyncio.timeout``; losing the connection fails every
  pending wait at once instead of leaving it to its timeout. Waiting methods
  take their own ``timeout`` (hence the ``noqa: ASYNC109``) rather than leaving
  it to the caller, because one timeout must cover both the reply and
  ``JobRemoved`` and its error must name the unit and the job still queued,
  which a bare ``TimeoutError`` from the caller's scope cannot.
* A connection that drops (the bus daemon crashed or was restarted) is made again, with
  the same handler, match rules and ``Subscribe``, retried every
  ``RECONNECT_PAUSES`` seconds for as long as the manager is open: every listener
  registered with :meth:`on_unit_change` or :meth:`on_job_removed` keeps working on the
  new connection, while waits that were pending fail at once (their signals may be lost)
  and :attr:`connected` is false in between. Whoever needs to know what was missed in the
  gap reconciles when it is back (``core.health``).
* D-Bus errors become :class:`~iyclo.errors.SystemdError` or
  :class:`~iyclo.errors.NotFoundError` in one place, :func:`_error_from_reply`,
  with one line naming what was attempted on which unit and systemd's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError

from iyclo.errors import IycloError, NotFoundError, SystemdError, SystemdUnreachableError

from .const import (
    BUS_NAME,
    DBUS_NAME,
    DBUS_PATH,
    ERROR_NO_SUCH_UNIT,
    IFACE_MANAGER,
    IFACE_PREFIX,
    IFACE_PROPERTIES,
    IFACE_UNIT,
    OBJECT_PATH,
    UNIT_PATH_PREFIX,
    JobMode,
    JobResult,
    KillWhom,
)
from .paths import unit_name_from_path, unit_object_path
from .properties import UnitProperty

_LOGGER = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT: Final = 25.0
"""Seconds to wait for a method reply; the D-Bus reference implementation's default."""

DEFAULT_JOB_TIMEOUT: Final = 30.0
"""Seconds to wait for a job (method reply plus ``JobRemoved``) unless told otherwise."""

RECONNECT_PAUSES: Final = (0.2, 0.5, 1.0, 2.0)
"""Seconds between attempts to connect again after the connection dropped; the last one
repeats. A socket-activated dbus-daemon is back within a second (measured on the test
host: killed with SIGKILL, a new one answered, with systemd on it, in under 1 s)."""

_EARLY_JOBS_MAX: Final = 1024
"""Bound on buffered ``JobRemoved`` signals nobody waited for yet (see module doc)."""

MATCH_JOB_REMOVED: Final = (
    f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',"
    f"interface='{IFACE_MANAGER}',member='JobRemoved'"
)
MATCH_UNIT_PROPERTIES: Final = (
    f"type='signal',sender='{BUS_NAME}',interface='{IFACE_PROPERTIES}',"
    f"member='PropertiesChanged',path_namespace='{UNIT_PATH_PREFIX.rstrip('/')}'"
)


class JobCanceledError(SystemdError):
    """A job another job replaced before it ran: e.g. our stop of a job's timer, replaced by
    the restart the job's own run issues to re-arm it (``overlap: skip``). Worth asking again;
    to clients it is a plain systemd error."""


class JobRemoved(NamedTuple):
    """The Manager's ``JobRemoved(u id, o job, s unit, s result)`` signal."""

    id: int
    job: str
    unit: str
    result: str


class UnitChange(NamedTuple):
    """One ``PropertiesChanged`` signal of a unit object, its path decoded to the unit name.

    ``interface`` is ``org.freedesktop.systemd1.Unit`` for ActiveState/SubState
    and e.g. ``org.freedesktop.systemd1.Service`` for MainPID/Result; values
    are unwrapped from their variants. systemd lists some properties only as
    ``invalidated`` (changed, value not sent).
    """

    unit: str
    interface: str
    changed: dict[str, Any]
    invalidated: list[str]


class UnitInfo(NamedTuple):
    """One ``a(ssssssouso)`` row of ``ListUnitsByPatterns``."""

    name: str
    description: str
    load_state: str
    active_state: str
    sub_state: str
    following: str
    path: str
    job_id: int
    job_type: str
    job_path: str


UnitChangeCallback = Callable[[UnitChange], None]
JobRemovedCallback = Callable[[JobRemoved], None]


def _error_from_reply(reply: Message, action: str) -> IycloError:
    """The one translation of a systemd D-Bus error into iyclo's error tree.

    ``action`` names what was attempted and on which unit, e.g. ``"stop unit
    iyclo-web.service"``; systemd's own text and error name follow it.
    """
    name = reply.error_name or "unknown"
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
    message = f"systemd could not {action}: {text} [{name}]"
    if name == ERROR_NO_SUCH_UNIT:
        return NotFoundError(message)
    return SystemdError(message)


def _unwrap(properties: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in properties.items()}


async def _open_bus(bus_address: str | None, limit: float) -> MessageBus:
    where = bus_address or "the system bus"
    bus = MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
    try:
        async with asyncio.timeout(limit):
            await bus.connect()
    except (TimeoutError, OSError, DBusFastError, EOFError) as err:
        _disconnect(bus)
        raise SystemdError(f"cannot connect to {where}: {err or 'timed out'}") from None
    return bus


def _disconnect(bus: MessageBus) -> None:
    with contextlib.suppress(Exception):  # a bus that never connected has nothing to close
        bus.disconnect()


class SystemdManager:
    """systemd's manager object, reached over one private D-Bus connection.

    Create it with :meth:`connect`; use ``async with`` or call :meth:`close`.
    """

    def __init__(self, bus: MessageBus, *, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        """Wrap an already connected bus; prefer :meth:`connect`, which also subscribes."""
        self._bus = bus
        self._call_timeout = call_timeout
        self._closed = False
        self._job_waiters: dict[str, list[asyncio.Future[JobRemoved]]] = {}
        self._early_jobs: OrderedDict[str, JobRemoved] = OrderedDict()
        self._job_calls_in_flight = 0
        self._state_waiters: set[asyncio.Future[str]] = set()
        self._unit_callbacks: list[UnitChangeCallback] = []
        self._job_callbacks: list[JobRemovedCallback] = []
        self._watches: set[UnitWatch] = set()
        self._disconnect_task: asyncio.Task[None] | None = None
        self._bus_address: str | None = None
        """Where to connect again after a drop; unset for a bus handed in by a caller."""
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reconnects = 0
        self.lost_reason = ""
        """Why the connection is down while it is ("" while connected)."""

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    async def connect(
        cls, bus_address: str | None = None, *, call_timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> SystemdManager:
        """Connect to the system bus (or ``bus_address``) and subscribe to systemd's signals.

        ``bus_address`` is a D-Bus address such as
        ``unix:path=/proc/<pid>/root/run/dbus/system_bus_socket`` to reach the
        system bus of another mount namespace.
        """
        bus = await _open_bus(bus_address, call_timeout)
        manager = cls(bus, call_timeout=call_timeout)
        manager._bus_address = bus_address or ""
        try:
            await manager._setup()
        except BaseException:
            await manager.close()
            raise
        return manager

    @property
    def reconnects(self) -> int:
        """How many times the connection was made again after it dropped."""
        return self._reconnects

    async def _setup(self) -> None:
        # The handler goes in before the match rules so no matched signal is missed.
        self._bus.add_message_handler(self._on_message)
        self._disconnect_task = asyncio.create_task(
            self._watch_disconnect(self._bus), name="iyclo-systemd-disconnect"
        )
        for rule in (MATCH_JOB_REMOVED, MATCH_UNIT_PROPERTIES):
            await self._call(
                "AddMatch",
                "s",
                [rule],
                action="subscribe to systemd signals",
                destination=DBUS_NAME,
                path=DBUS_PATH,
                interface=DBUS_NAME,
            )
        await self._call("Subscribe", "", [], action="subscribe to systemd's manager")

    async def close(self) -> None:
        """Disconnect; every pending job or state wait fails with ``SystemdError``."""
        if self._closed:
            return
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        self._bus.remove_message_handler(self._on_message)
        if self._bus.connected:
            self._bus.disconnect()
        if self._disconnect_task is not None:
            await self._disconnect_task
        self._fail_waiters(SystemdError("the connection to systemd was closed"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return not self._closed and self._reconnect_task is None and self._bus.connected

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        reason = "the connection to systemd was closed"
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as err:  # the bus reports why it dropped; we only relay it
            reason = f"lost the D-Bus connection to systemd: {err}"
        if bus is not self._bus or self._closed:
            return  # an attempt of _reconnect's, or close(): they fail what waits
        self._fail_waiters(SystemdError(reason))
        if self._bus_address is not None and self._reconnect_task is None:
            self.lost_reason = reason
            _LOGGER.error("%s; connecting again", reason)
            self._reconnect_task = asyncio.create_task(
                self._reconnect(), name="iyclo-systemd-again"
            )

    async def _reconnect(self) -> None:
        """Connect again until it works or the manager is closed (see the module doc)."""
        self._bus.remove_message_handler(self._on_message)
        attempt = 0
        try:
            while not self._closed:
                await asyncio.sleep(RECONNECT_PAUSES[min(attempt, len(RECONNECT_PAUSES) - 1)])
                attempt += 1
                try:
                    self._bus = await _open_bus(self._bus_address or None, self._call_timeout)
                    await self._setup()
                except (SystemdError, NotFoundError) as exc:
                    # systemd joins a new bus a moment after it starts: until then
                    # Subscribe finds nobody
                    self.lost_reason = f"{exc.message} (attempt {attempt})"
                    self._bus.remove_message_handler(self._on_message)
                    _disconnect(self._bus)
                    continue
                self._reconnects += 1
                self.lost_reason = ""
                _LOGGER.warning("connected to systemd again (attempt %d)", attempt)
                return
        finally:
            self._reconnect_task = None

    def _fail_waiters(self, error: SystemdError) -> None:
        for waiters in self._job_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._job_waiters.clear()
        for state_waiter in self._state_waiters:
            if not state_waiter.done():
                state_waiter.set_exception(error)
        for watch in list(self._watches):
            watch._end(error)

    # -- the one call path ------------------------------------------------------------

    async def _call(
        self,
        member: str,
        signature: str,
        body: list[Any],
        *,
        action: str,
        reply_signature: str = "",
        destination: str = BUS_NAME,
        path: str = OBJECT_PATH,
        interface: str = IFACE_MANAGER,
    ) -> list[Any]:
        """Send one method call and return the reply body, translating every failure."""
        if self._closed or not self._bus.connected:  # not `connected`: _reconnect calls too
            raise SystemdUnreachableError(f"systemd could not {action}: not connected to systemd")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            async with asyncio.timeout(self._call_timeout):
                reply = await self._bus.call(message)
        except TimeoutError:
            raise SystemdUnreachableError(
                f"systemd could not {action}: no reply within {self._call_timeout:g}s"
            ) from None
        except (DBusFastError, OSError, EOFError) as err:
            raise SystemdUnreachableError(
                f"systemd could not {action}: D-Bus failure: {err}"
            ) from None
        if reply is None:
            raise SystemdUnreachableError(
                f"systemd could not {action}: the D-Bus connection closed"
            )
        if reply.message_type is MessageType.ERROR:
            raise _error_from_reply(reply, action)
        if reply.signature != reply_signature:
            raise SystemdError(
                f"systemd could not {action}: reply has signature {reply.signature!r}, "
                f"expected {reply_signature!r}"
            )
        return list(reply.body)

    # -- jobs -----------------------------------------------------------------------------

    async def _run_job(
        self,
        member: str,
        signature: str,
        body: list[Any],
        *,
        action: str,
        unit: str,
        timeout: float,  # noqa: ASYNC109 (see module doc)
        check: bool,
    ) -> JobResult:
        """Queue a job and wait for its ``JobRemoved``, tolerating it arriving before the reply."""
        loop = asyncio.get_running_loop()
        job_path: str | None = None
        waiter: asyncio.Future[JobRemoved] | None = None
        self._job_calls_in_flight += 1  # from here on, unclaimed JobRemoved are kept
        try:
            try:
                async with asyncio.timeout(timeout):
                    (job_path,) = await self._call(
                        member, signature, body, action=action, reply_signature="o"
                    )
                    removed = self._early_jobs.get(job_path)
                    if removed is None:
                        waiter = loop.create_future()
                        self._job_waiters.setdefault(job_path, []).append(waiter)
                        removed = await waiter
            except TimeoutError:
                pending = f" (job {job_path} still queued)" if job_path else ""
                raise SystemdError(
                    f"systemd could not {action}: no result within the {timeout:g}s timeout"
                    f"{pending}"
                ) from None
        finally:
            self._job_calls_in_flight -= 1
            if job_path is not None and waiter is not None:
                waiters = self._job_waiters.get(job_path, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._job_waiters.pop(job_path, None)
            if not self._job_calls_in_flight:
                self._early_jobs.clear()
        try:
            result = JobResult(removed.result)
        except ValueError:
            raise SystemdError(
                f"systemd could not {action}: unknown job result {removed.result!r}"
            ) from None
        if check and result is JobResult.CANCELED:
            raise JobCanceledError(
                f"systemd could not {action}: job finished with result '{result}' "
                f"(see journalctl -u {unit})"
            )
        if check and result is not JobResult.DONE:
            raise SystemdError(
                f"systemd could not {action}: job finished with result '{result}' "
                f"(see journalctl -u {unit})"
            )
        return result

    async def start_transient_unit(
        self,
        name: str,
        properties: Sequence[UnitProperty],
        aux: Sequence[tuple[str, Sequence[UnitProperty]]] = (),
        *,
        mode: JobMode = JobMode.FAIL,
        timeout: float = DEFAULT_JOB_TIMEOUT,  # noqa: ASYNC109
        check: bool = True,
    ) -> JobResult:
        """Create and start a transient unit (plus ``aux`` units, e.g. a timer's service).

        Returns when systemd removed the start job. A result other than
        ``done`` raises ``SystemdError`` unless ``check`` is false. ``mode``
        defaults to ``fail`` so a conflicting queued job is an error, not
        silently replaced.
        """
        return await self._run_job(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            [
                name,
                JobMode(mode).value,
                list(properties),
                [(aux_name, list(aux_props)) for aux_name, aux_props in aux],
            ],
            action=f"start transient unit {name}",
            unit=name,
            timeout=timeout,
            check=check,
        )

    async def start_unit(
        self,
        name: str,
        *,
        mode: JobMode = JobMode.REPLACE,
        timeout: float = DEFAULT_JOB_TIMEOUT,  # noqa: ASYNC109
        check: bool = True,
    ) -> JobResult:
        """Start ``name`` and wait for the job (``replace`` mode, as ``systemctl start``)."""
        return await self._run_job(
            "StartUnit",
            "ss",
            [name, JobMode(mode).value],
            action=f"start unit {name}",
            unit=name,
            timeout=timeout,
            check=check,
        )

    async def enqueue_start_unit(self, name: str, *, mode: JobMode = JobMode.FAIL) -> str:
        """Queue a start job for ``name`` and return its job path without waiting for it.

        A oneshot's start job lasts as long as the work it does (a scheduled job's run
        may take hours), so a caller that only needs it to have begun watches the unit
        instead of the job. ``fail`` mode leaves a pending stop job alone; a start while
        the unit is already starting merges into that start, as systemd always does.
        """
        (job_path,) = await self._call(
            "StartUnit",
            "ss",
            [name, JobMode(mode).value],
            action=f"start unit {name}",
            reply_signature="o",
        )
        return str(job_path)

    async def stop_unit(
        self,
        name: str,
        *,
        mode: JobMode = JobMode.REPLACE,
        timeout: float = DEFAULT_JOB_TIMEOUT,  # noqa: ASYNC109
        check: bool = True,
    ) -> JobResult:
        """Stop ``name`` and wait for the job. A unit systemd has not loaded raises
        ``NotFoundError`` (transient units vanish once stopped)."""
        return await self._run_job(
            "StopUnit",
            "ss",
            [name, JobMode(mode).value],
            action=f"stop unit {name}",
            unit=name,
            timeout=timeout,
            check=check,
        )

    async def restart_unit(
        self,
        name: str,
        *,
        mode: JobMode = JobMode.REPLACE,
        timeout: float = DEFAULT_JOB_TIMEOUT,  # noqa: ASYNC109
        check: bool = True,
    ) -> JobResult:
        """Restart ``name`` (start it if it is stopped) and wait for the job."""
        return await self._run_job(
            "RestartUnit",
            "ss",
            [name, JobMode(mode).value],
            action=f"restart unit {name}",
            unit=name,
            timeout=timeout,
            check=check,
        )

    # -- plain calls ---------------------------------------------------------------------

    async def reset_failed_unit(self, name: str) -> None:
        """Clear the failed state (and restart counter) so a transient unit can be collected."""
        await self._call("ResetFailedUnit", "s", [name], action=f"reset failed unit {name}")

    async def kill_unit(self, name: str, whom: KillWhom = KillWhom.ALL, signal: int = 9) -> None:
        """Send ``signal`` (default SIGKILL) to ``whom`` of the unit's processes; no job."""
        await self._call(
            "KillUnit",
            "ssi",
            [name, KillWhom(whom).value, signal],
            action=f"kill unit {name} (signal {signal} to {KillWhom(whom).value})",
        )

    async def set_unit_properties(
        self, name: str, runtime: bool, properties: Sequence[UnitProperty]
    ) -> None:
        """Change properties of a loaded unit; ``runtime`` keeps the change until reboot only."""
        await self._call(
            "SetUnitProperties",
            "sba(sv)",
            [name, runtime, list(properties)],
            action=f"set properties of unit {name}",
        )

    async def get_unit(self, name: str) -> str:
        """Object path of a loaded unit; ``NotFoundError`` if systemd has not loaded it."""
        (path,) = await self._call(
            "GetUnit", "s", [name], action=f"get unit {name}", reply_signature="o"
        )
        return str(path)

    async def load_unit(self, name: str) -> str:
        """Object path of ``name``, loading it first (LoadState tells whether it exists)."""
        (path,) = await self._call(
            "LoadUnit", "s", [name], action=f"load unit {name}", reply_signature="o"
        )
        return str(path)

    async def unit_properties(
        self, name_or_path: str, interface: str = IFACE_UNIT
    ) -> dict[str, Any]:
        """All properties of one interface of a unit, values unwrapped from their variants.

        A name is turned into its object path locally; systemd loads the unit
        on access, so an unknown name reports ``LoadState`` ``not-found``.
        """
        if name_or_path.startswith("/"):
            path, label = name_or_path, unit_name_from_path(name_or_path) or name_or_path
        else:
            path, label = unit_object_path(name_or_path), name_or_path
        (properties,) = await self._call(
            "GetAll",
            "s",
            [interface],
            action=f"read {interface.removeprefix(IFACE_PREFIX)} properties of unit {label}",
            reply_signature="a{sv}",
            path=path,
            interface=IFACE_PROPERTIES,
        )
        return _unwrap(properties)

    async def list_units_by_patterns(
        self, states: Sequence[str], patterns: Sequence[str]
    ) -> list[UnitInfo]:
        """Loaded units matching any of ``patterns`` (globs) in any of ``states`` (empty: all)."""
        (rows,) = await self._call(
            "ListUnitsByPatterns",
            "asas",
            [list(states), list(patterns)],
            action=f"list units matching {', '.join(patterns) or '*'}",
            reply_signature="a(ssssssouso)",
        )
        return [UnitInfo(*row) for row in rows]

    # -- signals -------------------------------------------------------------------------

    def on_unit_change(self, callback: UnitChangeCallback) -> Callable[[], None]:
        """Call ``callback`` for every ``PropertiesChanged`` of a unit; returns the remover.

        Callbacks run inside the message dispatch: they must not block.
        """
        self._unit_callbacks.append(callback)
        return lambda: self._remove(self._unit_callbacks, callback)

    def on_job_removed(self, callback: JobRemovedCallback) -> Callable[[], None]:
        """Call ``callback`` for every ``JobRemoved``; returns the remover."""
        self._job_callbacks.append(callback)
        return lambda: self._remove(self._job_callbacks, callback)

    @staticmethod
    def _remove(callbacks: list[Any], callback: object) -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    def watch_units(self, prefix: str = "") -> UnitWatch:
        """Queue changes of units whose name starts with ``prefix``, from this call on.

        Use as ``with manager.watch_units("iyclo-") as watch: ... async for
        change in watch``: registering happens here, synchronously, so nothing
        that happens after this call is missed.
        """
        return UnitWatch(self, prefix)

    async def wait_for_state(
        self,
        unit: str,
        states: set[str],
        timeout: float = DEFAULT_JOB_TIMEOUT,  # noqa: ASYNC109
    ) -> str:
        """Wait until ``unit``'s ActiveState is one of ``states``; return that state.

        Registers for changes first, then reads the current state, then waits,
        so a transition between the read and the wait cannot be missed.
        """
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[str] = loop.create_future()
        last_seen = "unknown"

        def on_change(change: UnitChange) -> None:
            nonlocal last_seen
            if change.unit != unit or change.interface != IFACE_UNIT:
                return
            state = change.changed.get("ActiveState")
            if isinstance(state, str):
                last_seen = state
                if state in states and not reached.done():
                    reached.set_result(state)

        remove = self.on_unit_change(on_change)
        self._state_waiters.add(reached)
        try:
            async with asyncio.timeout(timeout):
                current = (await self.unit_properties(unit))["ActiveState"]
                if not reached.done():
                    last_seen = str(current)
                    if current in states:
                        return str(current)
                return await reached
        except TimeoutError:
            wanted = "/".join(sorted(states))
            raise SystemdError(
                f"unit {unit} did not become {wanted} within {timeout:g}s "
                f"(last ActiveState: {last_seen})"
            ) from None
        finally:
            remove()
            self._state_waiters.discard(reached)

    # -- dispatch --------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        """The one handler for every message on the connection; only signals are ours.

        It never claims a message (returns ``None``), so dbus-fast still
        routes method replies to their callers.
        """
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "JobRemoved" and msg.interface == IFACE_MANAGER:
            if msg.path == OBJECT_PATH and msg.signature == "uoss":
                self._dispatch_job_removed(JobRemoved(*msg.body))
        elif msg.member == "PropertiesChanged" and msg.interface == IFACE_PROPERTIES:
            unit = unit_name_from_path(msg.path or "")
            if unit is not None and msg.signature == "sa{sv}as":
                interface, changed, invalidated = msg.body
                if interface.startswith(IFACE_PREFIX):
                    self._dispatch_unit_change(
                        UnitChange(unit, interface, _unwrap(changed), list(invalidated))
                    )

    def _dispatch_job_removed(self, event: JobRemoved) -> None:
        for waiter in self._job_waiters.pop(event.job, ()):
            if not waiter.done():
                waiter.set_result(event)
        if self._job_calls_in_flight:
            # Kept even when someone waited: systemd hands the same path to callers
            # whose start requests merged into one job, and a caller whose reply was
            # read but who has not registered yet must still find it.
            self._early_jobs[event.job] = event
            while len(self._early_jobs) > _EARLY_JOBS_MAX:
                self._early_jobs.popitem(last=False)
        for callback in list(self._job_callbacks):
            try:
                callback(event)
            except Exception:  # one broken listener must not starve the others
                _LOGGER.exception("JobRemoved callback %r failed", callback)

    def _dispatch_unit_change(self, change: UnitChange) -> None:
        for callback in list(self._unit_callbacks):
            try:
                callback(change)
            except Exception:  # one broken listener must not starve the others
                _LOGGER.exception("unit change callback %r failed", callback)


class UnitWatch:
    """Changes of units named ``prefix*``, queued from creation until :meth:`close`.

    An async iterator; it ends when closed and raises ``SystemdError`` when
    the connection to systemd is lost.
    """

    def __init__(self, manager: SystemdManager, prefix: str) -> None:
        self._manager = manager
        self._prefix = prefix
        self._queue: asyncio.Queue[UnitChange | SystemdError | None] = asyncio.Queue()
        self._done = False
        self._remove = manager.on_unit_change(self._on_change)
        manager._watches.add(self)

    def _on_change(self, change: UnitChange) -> None:
        if change.unit.startswith(self._prefix):
            self._queue.put_nowait(change)

    def _end(self, error: SystemdError | None) -> None:
        if self._done:
            return
        self._done = True
        self._remove()
        self._manager._watches.discard(self)
        self._queue.put_nowait(error)

    def close(self) -> None:
        """Stop watching; an iteration in progress ends after the queued changes."""
        self._end(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> UnitChange:
        item = await self._queue.get()
        if isinstance(item, UnitChange):
            return item
        self._queue.put_nowait(item)  # keep the end marker for later calls
        if item is None:
            raise StopAsyncIteration
        raise item

    async def next(self, timeout: float) -> UnitChange:  # noqa: ASYNC109
        """The next change, or ``SystemdError`` if none arrives within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except TimeoutError:
            raise SystemdError(
                f"no change of a unit named {self._prefix}* within {timeout:g}s"
            ) from None
