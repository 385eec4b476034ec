"""A fake systemd: a real D-Bus service owning ``org.freedesktop.systemd1`` on a private bus.

It mirrors the subset of systemd 252 that iyclo uses, as introspected with
``busctl introspect org.freedesktop.systemd1 /org/freedesktop/systemd1
org.freedesktop.systemd1.Manager`` on a systemd 252 booted per
/work/shared/testhost.md (same members as ``gdbus introspect --system --dest
org.freedesktop.systemd1 --object-path /org/freedesktop/systemd1``)::

    .GetUnit                method  s                 o
    .KillUnit               method  ssi               -
    .ListUnitsByPatterns    method  asas              a(ssssssouso)
    .LoadUnit               method  s                 o
    .ResetFailedUnit        method  s                 -
    .RestartUnit            method  ss                o
    .SetUnitProperties      method  sba(sv)           -
    .StartTransientUnit     method  ssa(sv)a(sa(sv))  o
    .StartUnit              method  ss                o
    .StopUnit               method  ss                o
    .Subscribe              method  -                 -
    .JobRemoved             signal  uoss              -
    .UnitNew                signal  so                -
    .UnitRemoved            signal  so                -

Units live at ``/org/freedesktop/systemd1/unit/<bus_label_escape(name)>`` with
``org.freedesktop.systemd1.Unit`` (Id, Description, LoadState, ActiveState,
SubState, InvocationID, InactiveExitTimestamp, ActiveEnterTimestamp,
InactiveEnterTimestamp; changes are announced with
``org.freedesktop.DBus.Properties.PropertiesChanged``), for ``*.service``
``org.freedesktop.systemd1.Service`` (MainPID, Result, NRestarts, Slice, ExecMainCode,
ExecMainStatus) and for ``*.timer`` ``org.freedesktop.systemd1.Timer``
(NextElapseUSecRealtime, always 0: calendars are not evaluated).

Behaviour copied from what systemd 252 measurably does:

* error names and texts: ``NoSuchUnit`` "Unit X not loaded." (GetUnit,
  StopUnit, KillUnit, ResetFailedUnit) or "Unit X not found." (StartUnit,
  RestartUnit, SetUnitProperties); ``UnitExists`` "Unit X was already loaded
  or has a fragment file."; ``PropertyReadOnly`` "Cannot set property X, or
  unknown property."; ``InvalidArgs`` "Job mode X is invalid.";
  ``AlreadySubscribed`` "Client is already subscribed.";
* properties whose D-Bus signature differs from what systemd expects are
  refused (``System.Error.ENXIO`` "Failed to set unit properties: Unexpected
  message contents"), checked against the adapter's
  ``PROPERTY_SIGNATURES``, which was itself verified against systemd 252;
* touching the object path of an unknown unit loads it as ``not-found``
  (systemctl relies on this), as does LoadUnit;
* a new transient unit announces its ``inactive`` state; a job's state changes
  are announced before its ``JobRemoved``; a unit's Service-interface changes are
  announced just before its Unit-interface ones (what ``core.run_records`` relies on);
* every start gives the unit a new 16-byte ``InvocationID`` and stamps
  ``InactiveExitTimestamp``; a ``oneshot`` run ends with ``ExecMainCode`` 1 (exited),
  ``ExecMainStatus`` the unit's ``exit_status`` (a knob, 0 by default), ``Result``
  ``success`` (inactive) or ``exit-code`` (failed) and ``InactiveEnterTimestamp``;
* the ``aux`` units of ``StartTransientUnit`` (a timer's service) stay loaded while the
  unit that references them is, and are collected with it; a started ``Type=simple`` service
  and a timer go straight to ``active``, other services pass ``activating``
  first and a ``oneshot`` without RemainAfterExit ends ``inactive``; SIGTERM makes
  an active unit ``inactive``, SIGKILL ``failed`` (Result ``signal``); a
  manual restart does not count in NRestarts; a stopped transient unit is
  garbage-collected (GetUnit: not loaded), a failed one stays until
  ResetFailedUnit; unit ``PropertiesChanged`` are only sent once some client
  called Subscribe, ``JobRemoved`` always (systemd tracks the job's creator).

Not modelled: other unit dependencies, processes, timers firing, ``Restart=``, job
merging. ``observers`` are told of each unit start, oneshot run and stop, so a fake
Podman (``tests/fakes/podman.py``) can run and stop the containers a unit names.

Fault injection: :meth:`FakeSystemd.fail_next`, :attr:`FakeSystemd.job_result_next`,
:meth:`FakeSystemd.delay_job_removed`, :attr:`FakeSystemd.emit_job_removed_before_reply`.
Every method call is recorded in :attr:`FakeSystemd.calls` with its arguments as
received off the wire (structs arrive as lists, variants as ``Variant``).
"""

# No ``from __future__ import annotations``: dbus-fast reads the D-Bus signatures from
# the annotations at class creation, and cannot evaluate a postponed ``None`` return.
import asyncio
import fnmatch
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import DBusError, Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusInt32,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from iyclo.systemd.const import (
    BUS_NAME,
    IFACE_MANAGER,
    IFACE_SERVICE,
    IFACE_TIMER,
    IFACE_UNIT,
    JOB_PATH_PREFIX,
    OBJECT_PATH,
    UNIT_PATH_PREFIX,
    JobMode,
)
from iyclo.systemd.paths import unit_name_from_path, unit_object_path
from iyclo.systemd.properties import PROPERTY_SIGNATURES

ERR_NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
ERR_UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
ERR_ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"
ERR_PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
ERR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ERR_ENXIO = "System.Error.ENXIO"  # sd-bus's errno-named error, as systemd 252 sends it

# Wire shapes of the arguments, as dbus-fast hands them over.
PropertyList = Annotated[list[tuple[str, Variant]], DBusSignature("a(sv)")]
AuxList = Annotated[list[tuple[str, list[tuple[str, Variant]]]], DBusSignature("a(sa(sv))")]
StrList = Annotated[list[str], DBusSignature("as")]
UnitRows = Annotated[list[list[Any]], DBusSignature("a(ssssssouso)")]
JobRemovedArgs = Annotated[list[Any], DBusSignature("uoss")]
UnitPathArgs = Annotated[list[Any], DBusSignature("so")]
InvocationBytes = Annotated[bytes, DBusSignature("ay")]

_SIGNALS_THAT_EXIT_CLEANLY = frozenset({1, 2, 13, 15})  # SIGHUP SIGINT SIGPIPE SIGTERM


@dataclass
class FakeUnit:
    """One unit in the fake's table; tests may read it (``fake.units[name]``)."""

    name: str
    load_state: str = "loaded"
    active_state: str = "inactive"
    sub_state: str = "dead"
    description: str = ""
    transient: bool = False
    result: str = "success"
    main_pid: int = 0
    n_restarts: int = 0
    properties: dict[str, Variant] = field(default_factory=dict)
    """Every property set through StartTransientUnit/SetUnitProperties, as received."""
    invocation_id: bytes = b""
    inactive_exit_usec: int = 0
    active_enter_usec: int = 0
    inactive_enter_usec: int = 0
    exec_main_code: int = 0
    exec_main_status: int = 0
    exit_status: int = 0
    """What the next run of this oneshot exits with (a knob for tests)."""
    referenced_by: str | None = None
    """The unit whose ``StartTransientUnit`` made this one (a timer, for its service)."""

    @property
    def path(self) -> str:
        return unit_object_path(self.name)


class _UnitInterface(ServiceInterface):
    """``org.freedesktop.systemd1.Unit`` of one fake unit."""

    def __init__(self, unit: FakeUnit) -> None:
        super().__init__(IFACE_UNIT)
        self.unit = unit

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        return self.unit.name

    @dbus_property(access=PropertyAccess.READ)
    def Description(self) -> DBusStr:
        return self.unit.description or self.unit.name

    @dbus_property(access=PropertyAccess.READ)
    def LoadState(self) -> DBusStr:
        return self.unit.load_state

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> DBusStr:
        return self.unit.active_state

    @dbus_property(access=PropertyAccess.READ)
    def SubState(self) -> DBusStr:
        return self.unit.sub_state

    @dbus_property(access=PropertyAccess.READ)
    def InvocationID(self) -> InvocationBytes:
        return self.unit.invocation_id

    @dbus_property(access=PropertyAccess.READ)
    def InactiveExitTimestamp(self) -> DBusUInt64:
        return self.unit.inactive_exit_usec

    @dbus_property(access=PropertyAccess.READ)
    def ActiveEnterTimestamp(self) -> DBusUInt64:
        return self.unit.active_enter_usec

    @dbus_property(access=PropertyAccess.READ)
    def InactiveEnterTimestamp(self) -> DBusUInt64:
        return self.unit.inactive_enter_usec


class _ServiceInterface(ServiceInterface):
    """``org.freedesktop.systemd1.Service`` of one fake ``*.service`` unit."""

    def __init__(self, unit: FakeUnit) -> None:
        super().__init__(IFACE_SERVICE)
        self.unit = unit

    @dbus_property(access=PropertyAccess.READ)
    def MainPID(self) -> DBusUInt32:
        return self.unit.main_pid

    @dbus_property(access=PropertyAccess.READ)
    def Result(self) -> DBusStr:
        return self.unit.result

    @dbus_property(access=PropertyAccess.READ)
    def NRestarts(self) -> DBusUInt32:
        return self.unit.n_restarts

    @dbus_property(access=PropertyAccess.READ)
    def Slice(self) -> DBusStr:
        return str(_value(self.unit.properties, "Slice", "system.slice"))

    @dbus_property(access=PropertyAccess.READ)
    def ExecMainCode(self) -> DBusInt32:
        return self.unit.exec_main_code

    @dbus_property(access=PropertyAccess.READ)
    def ExecMainStatus(self) -> DBusInt32:
        return self.unit.exec_main_status


class _TimerInterface(ServiceInterface):
    """``org.freedesktop.systemd1.Timer`` of one fake ``*.timer`` unit."""

    def __init__(self, unit: FakeUnit) -> None:
        super().__init__(IFACE_TIMER)
        self.unit = unit

    @dbus_property(access=PropertyAccess.READ)
    def NextElapseUSecRealtime(self) -> DBusUInt64:
        return 0


class _ManagerInterface(ServiceInterface):
    """``org.freedesktop.systemd1.Manager``; every method records itself and defers to
    :class:`FakeSystemd`, which holds the state."""

    def __init__(self, fake: "FakeSystemd") -> None:
        super().__init__(IFACE_MANAGER)
        self._fake = fake

    @dbus_method(name="StartTransientUnit")
    def start_transient_unit(
        self, name: DBusStr, mode: DBusStr, properties: PropertyList, aux: AuxList
    ) -> DBusObjectPath:
        self._fake._record("StartTransientUnit", name, mode, properties, aux)
        return self._fake._start_transient_unit(name, mode, properties, aux)

    @dbus_method(name="StartUnit")
    def start_unit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:
        self._fake._record("StartUnit", name, mode)
        return self._fake._start_unit(name, mode, "start")

    @dbus_method(name="RestartUnit")
    def restart_unit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:
        self._fake._record("RestartUnit", name, mode)
        return self._fake._start_unit(name, mode, "restart")

    @dbus_method(name="StopUnit")
    def stop_unit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:
        self._fake._record("StopUnit", name, mode)
        return self._fake._stop_unit(name, mode)

    @dbus_method(name="ResetFailedUnit")
    def reset_failed_unit(self, name: DBusStr) -> None:
        self._fake._record("ResetFailedUnit", name)
        self._fake._reset_failed_unit(name)

    @dbus_method(name="KillUnit")
    def kill_unit(self, name: DBusStr, whom: DBusStr, signal: DBusInt32) -> None:
        self._fake._record("KillUnit", name, whom, signal)
        self._fake._kill_unit(name, whom, signal)

    @dbus_method(name="GetUnit")
    def get_unit(self, name: DBusStr) -> DBusObjectPath:
        self._fake._record("GetUnit", name)
        return self._fake._loaded(name, "not loaded").path

    @dbus_method(name="LoadUnit")
    def load_unit(self, name: DBusStr) -> DBusObjectPath:
        self._fake._record("LoadUnit", name)
        return self._fake._load(name).path

    @dbus_method(name="ListUnitsByPatterns")
    def list_units_by_patterns(self, states: StrList, patterns: StrList) -> UnitRows:
        self._fake._record("ListUnitsByPatterns", states, patterns)
        return self._fake._list_units(states, patterns)

    @dbus_method(name="Subscribe")
    def subscribe(self) -> None:
        self._fake._record("Subscribe")
        self._fake._subscribe()

    @dbus_method(name="SetUnitProperties")
    def set_unit_properties(
        self, name: DBusStr, runtime: DBusBool, properties: PropertyList
    ) -> None:
        self._fake._record("SetUnitProperties", name, runtime, properties)
        self._fake._set_unit_properties(name, properties)

    @dbus_signal(name="JobRemoved")
    def job_removed(self, job_id: int, job: str, unit: str, result: str) -> JobRemovedArgs:
        return [job_id, job, unit, result]

    @dbus_signal(name="UnitNew")
    def unit_new(self, unit: str, path: str) -> UnitPathArgs:
        return [unit, path]

    @dbus_signal(name="UnitRemoved")
    def unit_removed(self, unit: str, path: str) -> UnitPathArgs:
        return [unit, path]


class FakeSystemd:
    """The fake's state, its fault injection knobs and its D-Bus connection.

    ``fake = FakeSystemd(address); await fake.start(); ...; await fake.stop()``
    (or ``async with FakeSystemd(address) as fake``).
    """

    def __init__(self, bus_address: str) -> None:
        self.bus_address = bus_address
        self.units: dict[str, FakeUnit] = {}
        self.calls: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.job_result_next: str | None = None
        """Result of the next job only (then back to ``done``)."""
        self.emit_job_removed_before_reply = False
        """Send each job's ``JobRemoved`` before the method reply that names the job."""
        self._failures: defaultdict[str, deque[DBusError]] = defaultdict(deque)
        self._job_delay = 0.0
        self._job_id = 0
        self._subscribers: set[str] = set()
        self._current_sender = ""
        self._pending: set[asyncio.TimerHandle | asyncio.Handle] = set()
        self._interfaces: dict[str, list[ServiceInterface]] = {}
        self._bus: MessageBus | None = None
        self._manager = _ManagerInterface(self)
        self.oneshot_seconds = 0.0
        """How long a oneshot's run takes (0: it ends in the same turn of the loop)."""
        self.observers: list[Callable[[FakeUnit, str], None]] = []
        """Told ``(unit, what)`` for what = "started", "ran" (a oneshot's run ended) and
        "stopped", after the unit's state changed."""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        bus = await MessageBus(bus_address=self.bus_address).connect()
        self._bus = bus
        bus.add_message_handler(self._on_message)
        bus.export(OBJECT_PATH, self._manager)
        for unit in self.units.values():
            self._export(unit)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise RuntimeError(f"fake systemd could not own {BUS_NAME}: {reply}")

    async def stop(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        bus, self._bus = self._bus, None
        if bus is None:
            return
        if bus.connected:
            # Release explicitly so the next fake on the same bus can own the name at once.
            await bus.release_name(BUS_NAME)
            bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> "FakeSystemd":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- knobs for tests ---------------------------------------------------------------

    def fail_next(self, method: str, error: DBusError) -> None:
        """Make the next call of ``method`` (D-Bus member name) fail with ``error``."""
        self._failures[method].append(error)

    def delay_job_removed(self, seconds: float) -> None:
        """Send every following job's ``JobRemoved`` ``seconds`` late (0: as soon as possible)."""
        self._job_delay = seconds

    def add_unit(
        self,
        name: str,
        *,
        active_state: str = "inactive",
        sub_state: str = "dead",
        load_state: str = "loaded",
        transient: bool = False,
    ) -> FakeUnit:
        """Put a unit in the table, as if it came from a unit file (or was made transient)."""
        if name in self.units:
            raise ValueError(f"fake unit {name} exists already")
        unit = FakeUnit(
            name,
            load_state=load_state,
            active_state=active_state,
            sub_state=sub_state,
            transient=transient,
        )
        self.units[name] = unit
        if self._bus is not None:
            self._export(unit)
        return unit

    def set_unit_state(self, name: str, active_state: str, sub_state: str, **service: Any) -> None:
        """Change a unit's state as if its processes did something, announcing it on the bus.

        ``service`` may set Service properties too: ``result="signal"``, ``main_pid=0``.
        """
        unit = self.units[name]
        unit.active_state, unit.sub_state = active_state, sub_state
        changed_service = {}
        for key, value in service.items():
            setattr(unit, key, value)
            changed_service[_SERVICE_PROPERTY_NAMES[key]] = value
        self._announce(unit, service=changed_service)

    # -- plumbing ----------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        """Remember who is calling, and load units whose object path is touched (as systemd
        does on first access). Never claims the message."""
        if msg.message_type is not MessageType.METHOD_CALL:
            return
        self._current_sender = msg.sender or ""
        path = msg.path or ""
        if path.startswith(UNIT_PATH_PREFIX) and self._bus is not None:
            name = unit_name_from_path(path)
            if name and name not in self.units:
                self._load(name)

    def _record(self, method: str, *args: Any) -> None:
        self.calls[method].append(args)
        if self._failures[method]:
            raise self._failures[method].popleft()

    def _export(self, unit: FakeUnit) -> None:
        assert self._bus is not None
        interfaces: list[ServiceInterface] = [_UnitInterface(unit)]
        if unit.name.endswith(".service"):
            interfaces.append(_ServiceInterface(unit))
        elif unit.name.endswith(".timer"):
            interfaces.append(_TimerInterface(unit))
        for interface in interfaces:
            self._bus.export(unit.path, interface)
        self._interfaces[unit.name] = interfaces
        self._manager.unit_new(unit.name, unit.path)

    def _collect(self, unit: FakeUnit) -> None:
        """Garbage-collect a transient unit that is inactive (or failed, with that CollectMode)."""
        collect_mode = unit.properties.get("CollectMode")
        failed_too = collect_mode is not None and collect_mode.value == "inactive-or-failed"
        if not unit.transient:
            return
        if unit.referenced_by is not None and unit.referenced_by in self.units:
            return  # kept loaded by the unit that references it
        if unit.active_state == "inactive" or (failed_too and unit.active_state == "failed"):
            self.units.pop(unit.name, None)
            if self._bus is not None:
                self._bus.unexport(unit.path)
            self._interfaces.pop(unit.name, None)
            self._manager.unit_removed(unit.name, unit.path)
            for other in list(self.units.values()):
                if other.referenced_by == unit.name:
                    self._collect(other)

    def _announce(self, unit: FakeUnit, service: dict[str, Any] | None = None) -> None:
        """Service-interface values first, then the Unit's, as systemd sends them."""
        if not self._subscribers or unit.name not in self._interfaces:
            return
        unit_iface, *rest = self._interfaces[unit.name]
        if service and rest and unit.name.endswith(".service"):
            rest[0].emit_properties_changed(service)
        unit_iface.emit_properties_changed(
            {
                "ActiveState": unit.active_state,
                "SubState": unit.sub_state,
                "InvocationID": unit.invocation_id,
                "InactiveExitTimestamp": unit.inactive_exit_usec,
                "ActiveEnterTimestamp": unit.active_enter_usec,
                "InactiveEnterTimestamp": unit.inactive_enter_usec,
            }
        )

    def _tell(self, unit: FakeUnit, what: str) -> None:
        for observer in list(self.observers):
            observer(unit, what)

    def _loaded(self, name: str, missing: str) -> FakeUnit:
        unit = self.units.get(name)
        if unit is None or unit.load_state != "loaded":
            raise DBusError(ERR_NO_SUCH_UNIT, f"Unit {name} {missing}.")
        return unit

    def _load(self, name: str) -> FakeUnit:
        unit = self.units.get(name)
        if unit is None:
            unit = self.add_unit(name, load_state="not-found", transient=True)
        return unit

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in {member.value for member in JobMode}:
            raise DBusError(ERR_INVALID_ARGS, f"Job mode {mode} is invalid.")

    @staticmethod
    def _check_properties(properties: list[tuple[str, Variant]]) -> dict[str, Variant]:
        checked: dict[str, Variant] = {}
        for name, value in properties:
            expected = PROPERTY_SIGNATURES.get(name)
            if expected is None:
                raise DBusError(
                    ERR_PROPERTY_READ_ONLY, f"Cannot set property {name}, or unknown property."
                )
            if value.signature != expected:
                raise DBusError(
                    ERR_ENXIO, "Failed to set unit properties: Unexpected message contents"
                )
            checked[name] = value
        return checked

    # -- jobs --------------------------------------------------------------------------

    def _queue_job(self, unit: FakeUnit, kind: str) -> str:
        self._job_id += 1
        job_id, job_path = self._job_id, f"{JOB_PATH_PREFIX}{self._job_id}"
        result = self.job_result_next or "done"
        self.job_result_next = None
        if self.emit_job_removed_before_reply:
            # Finishing now queues the signals on the connection ahead of the reply.
            self._finish_job(job_id, job_path, unit, kind, result)
            return job_path

        def finish() -> None:
            self._pending.discard(handle)
            self._finish_job(job_id, job_path, unit, kind, result)

        loop = asyncio.get_running_loop()
        # The reply of this (synchronous) method is queued as soon as it returns, so
        # even call_soon sends JobRemoved after it, as systemd usually does.
        handle = (
            loop.call_later(self._job_delay, finish) if self._job_delay else loop.call_soon(finish)
        )
        self._pending.add(handle)
        return job_path

    def _finish_job(
        self, job_id: int, job_path: str, unit: FakeUnit, kind: str, result: str
    ) -> None:
        if kind in ("start", "restart") and result == "done" and self._runs_to_completion(unit):
            self._begin(unit)
            unit.active_state, unit.sub_state = "activating", "start"
            self._announce(unit, self._service_values(unit))
            self._tell(unit, "started")
            if not self.oneshot_seconds:
                self._end_run(job_id, job_path, unit, result)
                return

            def end() -> None:
                self._pending.discard(handle)
                self._end_run(job_id, job_path, unit, result)

            handle = asyncio.get_running_loop().call_later(self.oneshot_seconds, end)
            self._pending.add(handle)
            return
        if kind in ("start", "restart"):
            if result == "done":
                self._activate(unit)
            elif result in ("failed", "timeout"):
                unit.active_state, unit.sub_state = "failed", "failed"
                unit.result = "exit-code" if result == "failed" else "timeout"
            self._announce(unit, self._service_values(unit))
            if result == "done":
                self._tell(unit, "started")
        elif kind == "stop" and result == "done":
            unit.active_state, unit.sub_state = "deactivating", "stop-sigterm"
            self._announce(unit)
            unit.active_state, unit.sub_state = "inactive", "dead"
            unit.inactive_enter_usec = _now_usec()
            self._announce(unit)
            self._tell(unit, "stopped")
        self._manager.job_removed(job_id, job_path, unit.name, result)
        self._collect(unit)

    @staticmethod
    def _runs_to_completion(unit: FakeUnit) -> bool:
        """A oneshot without RemainAfterExit: its start job lasts as long as its run."""
        return (
            unit.name.endswith(".service")
            and _value(unit.properties, "Type", "simple") == "oneshot"
            and not _value(unit.properties, "RemainAfterExit", False)
        )

    def _begin(self, unit: FakeUnit) -> None:
        """Every start is a new invocation."""
        unit.result = "success"
        unit.invocation_id = os.urandom(16)
        unit.inactive_exit_usec = _now_usec()

    def _end_run(self, job_id: int, job_path: str, unit: FakeUnit, result: str) -> None:
        """A oneshot's process exited with the unit's ``exit_status``."""
        unit.exec_main_code, unit.exec_main_status = 1, unit.exit_status  # CLD_EXITED
        unit.inactive_enter_usec = _now_usec()
        if unit.exit_status == 0:
            unit.active_state, unit.sub_state = "inactive", "dead"
        else:
            unit.active_state, unit.sub_state, unit.result = "failed", "failed", "exit-code"
        self._announce(unit, self._service_values(unit))
        self._tell(unit, "ran")
        self._manager.job_removed(job_id, job_path, unit.name, result)
        self._collect(unit)

    def _activate(self, unit: FakeUnit) -> None:
        """The state changes of a successful start, as systemd 252 shows them: a Type=simple
        service and a timer go straight to active, other services pass through activating
        (a oneshot with RemainAfterExit ends active, exited; one without it is
        ``_runs_to_completion``)."""
        self._begin(unit)
        if not unit.name.endswith(".service"):
            sub_state = "waiting" if unit.name.endswith(".timer") else "running"
            unit.active_state, unit.sub_state = "active", sub_state
            unit.active_enter_usec = unit.inactive_exit_usec
            return
        service_type = _value(unit.properties, "Type", "simple")
        if service_type != "simple":
            unit.active_state, unit.sub_state = "activating", "start"
            self._announce(unit, self._service_values(unit))
        if service_type == "oneshot":
            unit.exec_main_code, unit.exec_main_status = 1, 0  # CLD_EXITED
            unit.active_state, unit.sub_state = "active", "exited"
        else:
            unit.active_state, unit.sub_state = "active", "running"
        unit.active_enter_usec = _now_usec()

    @staticmethod
    def _service_values(unit: FakeUnit) -> dict[str, Any]:
        return {
            "Result": unit.result,
            "ExecMainCode": unit.exec_main_code,
            "ExecMainStatus": unit.exec_main_status,
        }

    # -- method bodies -----------------------------------------------------------------

    def _start_transient_unit(
        self,
        name: str,
        mode: str,
        properties: list[tuple[str, Variant]],
        aux: list[tuple[str, list[tuple[str, Variant]]]],
    ) -> str:
        self._check_mode(mode)
        checked = self._check_properties(properties)
        aux_checked = [(aux_name, self._check_properties(props)) for aux_name, props in aux]
        for unit_name in [name, *(aux_name for aux_name, _ in aux_checked)]:
            existing = self.units.get(unit_name)
            if existing is not None and existing.load_state == "loaded":
                raise DBusError(
                    ERR_UNIT_EXISTS,
                    f"Unit {unit_name} was already loaded or has a fragment file.",
                )
        for unit_name, props in [(name, checked), *aux_checked]:
            self._drop(unit_name)
            unit = self.add_unit(unit_name, transient=True)
            unit.properties = props
            unit.description = _value(props, "Description", "")
            if unit_name != name:
                unit.referenced_by = name
            self._announce(unit)  # systemd announces a new unit's (inactive) state
        return self._queue_job(self.units[name], "start")

    def _drop(self, name: str) -> None:
        """Forget a not-found placeholder so a transient unit can take its name."""
        unit = self.units.pop(name, None)
        if unit is not None and self._bus is not None:
            self._bus.unexport(unit.path)
            self._interfaces.pop(name, None)

    def _start_unit(self, name: str, mode: str, kind: str) -> str:
        self._check_mode(mode)
        return self._queue_job(self._loaded(name, "not found"), kind)

    def _stop_unit(self, name: str, mode: str) -> str:
        self._check_mode(mode)
        return self._queue_job(self._loaded(name, "not loaded"), "stop")

    def _reset_failed_unit(self, name: str) -> None:
        unit = self._loaded(name, "not loaded")
        if unit.active_state == "failed":
            unit.active_state, unit.sub_state, unit.result = "inactive", "dead", "success"
            self._announce(unit, {"Result": unit.result})
            self._collect(unit)

    def _kill_unit(self, name: str, whom: str, signal: int) -> None:
        unit = self._loaded(name, "not loaded")
        if whom not in ("main", "control", "all"):
            raise DBusError(ERR_INVALID_ARGS, f"Invalid who argument {whom}")
        if whom == "control" or unit.active_state != "active":
            return
        if signal in _SIGNALS_THAT_EXIT_CLEANLY:
            unit.active_state, unit.sub_state = "inactive", "dead"
        else:
            unit.active_state, unit.sub_state, unit.result = "failed", "failed", "signal"
        unit.main_pid = 0
        self._announce(unit, {"Result": unit.result, "MainPID": 0})
        self._collect(unit)

    def _list_units(self, states: list[str], patterns: list[str]) -> list[list[Any]]:
        rows = []
        for unit in self.units.values():
            unit_states = {unit.load_state, unit.active_state, unit.sub_state}
            if states and not unit_states.intersection(states):
                continue
            if patterns and not any(fnmatch.fnmatchcase(unit.name, p) for p in patterns):
                continue
            rows.append(
                [
                    unit.name,
                    unit.description or unit.name,
                    unit.load_state,
                    unit.active_state,
                    unit.sub_state,
                    "",
                    unit.path,
                    0,
                    "",
                    "/",
                ]
            )
        return rows

    def _subscribe(self) -> None:
        if self._current_sender in self._subscribers:
            raise DBusError(ERR_ALREADY_SUBSCRIBED, "Client is already subscribed.")
        self._subscribers.add(self._current_sender)

    def _set_unit_properties(self, name: str, properties: list[tuple[str, Variant]]) -> None:
        unit = self._loaded(name, "not found")
        unit.properties.update(self._check_properties(properties))


def _now_usec() -> int:
    return int(time.time() * 1_000_000)


def _value(properties: dict[str, Variant], name: str, default: Any) -> Any:
    variant = properties.get(name)
    return default if variant is None else variant.value


_SERVICE_PROPERTY_NAMES = {
    "result": "Result",
    "main_pid": "MainPID",
    "n_restarts": "NRestarts",
    "exec_main_code": "ExecMainCode",
    "exec_main_status": "ExecMainStatus",
}
