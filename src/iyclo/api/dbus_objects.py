"""The per-deployment objects: one ``io.github.iyclo1.Pod`` per pod at
``/io/github/iyclo1/pod/<label>``, one ``io.github.iyclo1.Job`` per job at
``/io/github/iyclo1/job/<label>``.

Their property values are taken from ``Service.status`` and nothing else, so an object
says what ``iyclo inspect`` says; ``update`` announces only what changed.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from dbus_fast import PropertyAccess
from dbus_fast.annotations import DBusBool, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import dbus_method, dbus_property

from iyclo.api.dbus_base import (
    JOB_INTERFACE,
    POD_INTERFACE,
    Interface,
    NoReply,
    ServiceApi,
    as_json,
    translated,
)
from iyclo.contract.events import UNKNOWN

ContainerRows = Annotated[list[tuple[str, str, str]], DBusSignature("a(sss)")]
HealthRows = Annotated[list[tuple[str, str]], DBusSignature("a(ss)")]


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
        "Ready": bool(status.get("ready", False)),
        "Health": [
            (str(c.get("name", "")), str(c.get("health", "")))
            for c in status.get("containers") or []
            if c.get("health")
        ],
        "HealthRestarts": int(status.get("healthRestarts", 0)),
    }


def job_properties(status: dict[str, Any]) -> dict[str, Any]:
    """The Job object's property values, taken from ``Service.status``. D-Bus has no
    null: a job that never ran has LastRun 0, LastExitCode -1 and empty strings."""
    last = status.get("lastRun") or {}
    exit_code = last.get("exitCode")
    return {
        "Name": str(status["name"]),
        "State": str(status["state"]),
        "Generation": int(status["generation"]),
        "Unit": str(status.get("unit", "")),
        "Timer": str(status.get("timer", "")),
        "Schedule": str((status.get("schedule") or {}).get("calendar", "")),
        "NextRun": str(status.get("next") or ""),
        "LastRun": int(last.get("number") or 0),
        "LastRunStarted": str(last.get("startedAt") or ""),
        "LastState": str(last.get("state") or ""),
        "LastResult": str(last.get("result") or ""),
        "LastExitCode": int(exit_code) if exit_code is not None else UNKNOWN,
    }


class _Deployment(Interface):
    """State taken from a status, and the operations every kind has."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Start": ("state",),
        "Stop": ("state",),
        "Restart": ("state",),
    }

    def __init__(self, interface: str, service: ServiceApi, status: dict[str, Any]) -> None:
        super().__init__(interface)
        self._service = service
        self._values = self.properties_of(status)
        self.deployment: str = self._values["Name"]

    @staticmethod
    def properties_of(status: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, status: dict[str, Any]) -> None:
        """Take a fresh status; announce the properties whose value changed."""
        values = self.properties_of(status)
        changed = {k: v for k, v in values.items() if self._values.get(k) != v}
        self._values = values
        if changed:
            self.emit_properties_changed(changed)

    @dbus_method(name="Start")
    @translated
    async def start(self) -> DBusStr:
        return await self._service.start(self.deployment)

    @dbus_method(name="Stop")
    @translated
    async def stop(self) -> DBusStr:
        return await self._service.stop(self.deployment)

    @dbus_method(name="Restart")
    @translated
    async def restart(self) -> DBusStr:
        return await self._service.restart(self.deployment)

    @dbus_method(name="Remove")
    @translated
    async def remove(self) -> NoReply:
        await self._service.remove(self.deployment)

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_(self) -> DBusStr:
        value: str = self._values["Name"]
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


class PodInterface(_Deployment):
    """``io.github.iyclo1.Pod``: one pod's state, and the operations on it."""

    def __init__(self, service: ServiceApi, status: dict[str, Any]) -> None:
        super().__init__(POD_INTERFACE, service, status)

    @staticmethod
    def properties_of(status: dict[str, Any]) -> dict[str, Any]:
        return pod_properties(status)

    @dbus_property(access=PropertyAccess.READ, name="Kind")
    def kind(self) -> DBusStr:
        value: str = self._values["Kind"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Restarts")
    def restarts(self) -> DBusUInt32:
        value: int = self._values["Restarts"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Containers")
    def containers(self) -> ContainerRows:
        value: list[tuple[str, str, str]] = self._values["Containers"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Ready")
    def ready(self) -> DBusBool:
        value: bool = self._values["Ready"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Health")
    def health(self) -> HealthRows:
        value: list[tuple[str, str]] = self._values["Health"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="HealthRestarts")
    def health_restarts(self) -> DBusUInt32:
        value: int = self._values["HealthRestarts"]
        return value


class JobInterface(_Deployment):
    """``io.github.iyclo1.Job``: one job's schedule and last run, and the operations on it."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        **_Deployment.OUT_ARGS,
        "Run": ("run_json",),
    }

    def __init__(self, service: ServiceApi, status: dict[str, Any]) -> None:
        super().__init__(JOB_INTERFACE, service, status)

    @staticmethod
    def properties_of(status: dict[str, Any]) -> dict[str, Any]:
        return job_properties(status)

    @dbus_method(name="Run")
    @translated
    async def run(self) -> DBusStr:
        return as_json(await self._service.run_job(self.deployment))

    @dbus_property(access=PropertyAccess.READ, name="Timer")
    def timer(self) -> DBusStr:
        value: str = self._values["Timer"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="Schedule")
    def schedule(self) -> DBusStr:
        value: str = self._values["Schedule"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="NextRun")
    def next_run(self) -> DBusStr:
        value: str = self._values["NextRun"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="LastRun")
    def last_run(self) -> DBusUInt32:
        value: int = self._values["LastRun"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="LastRunStarted")
    def last_run_started(self) -> DBusStr:
        value: str = self._values["LastRunStarted"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="LastState")
    def last_state(self) -> DBusStr:
        value: str = self._values["LastState"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="LastResult")
    def last_result(self) -> DBusStr:
        value: str = self._values["LastResult"]
        return value

    @dbus_property(access=PropertyAccess.READ, name="LastExitCode")
    def last_exit_code(self) -> DBusInt32:
        value: int = self._values["LastExitCode"]
        return value
