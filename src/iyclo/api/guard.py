"""The service as one caller may use it: both fronts serve this, never ``Service`` bare.

Each operation asks ``Gate`` for the verb the method table gives it
(``iyclo.contract.methods``), so the JSON socket and D-Bus refuse and redact alike;
reads pass through ``iyclo.core.redact`` for callers who may not deploy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from iyclo.api.protocol import JsonResult, ServiceApi
from iyclo.contract.methods import BY_NAME
from iyclo.core.access import Caller, Gate
from iyclo.core.events import EventBus
from iyclo.core.handover import Handover
from iyclo.core.redact import redact_manifest, redact_record

Who = Callable[[], Awaitable[Caller]]
"""The caller of the call in progress: the JSON socket's peer, or the D-Bus sender."""


def fixed(caller: Caller) -> Who:
    async def who() -> Caller:
        return caller

    return who


class Guarded:
    """``ServiceApi`` for whoever ``who`` names: every call checked, every read redacted
    as due."""

    def __init__(self, service: ServiceApi, gate: Gate, who: Who) -> None:
        self._service = service
        self._gate = gate
        self._who = who

    @property
    def events(self) -> EventBus:
        return self._service.events

    async def _require(self, method: str) -> None:
        await self._gate.require(await self._who(), BY_NAME[method].access, method)

    async def _reveals(self) -> bool:
        return await self._gate.may_reveal(await self._who())

    # -- changes --------------------------------------------------------------------------

    async def apply(
        self, manifest: str | dict[str, Any], /, wait_timeout: float | None = None
    ) -> JsonResult:
        await self._require("apply")
        return await self._service.apply(manifest, wait_timeout)

    async def remove(
        self, name: str, /, purge_history: bool = False, volumes: bool = False
    ) -> None:
        await self._require("remove")
        await self._service.remove(name, purge_history=purge_history, volumes=volumes)

    async def start(self, name: str, /) -> str:
        await self._require("start")
        return await self._service.start(name)

    async def stop(self, name: str, /) -> str:
        await self._require("stop")
        return await self._service.stop(name)

    async def restart(self, name: str, /) -> str:
        await self._require("restart")
        return await self._service.restart(name)

    async def run_job(self, name: str, /) -> dict[str, Any]:
        await self._require("run_job")
        return await self._service.run_job(name)

    async def pull(self, manifest: str | dict[str, Any] = "", image: str = "", /) -> dict[str, Any]:
        await self._require("pull")
        return await self._service.pull(manifest, image)

    async def rollback(self, name: str, to: int = 0, /) -> JsonResult:
        await self._require("rollback")
        return await self._service.rollback(name, to)

    async def reconcile(self) -> JsonResult:
        await self._require("reconcile")
        return await self._service.reconcile()

    # -- reads ----------------------------------------------------------------------------

    async def validate(
        self, manifest: str | dict[str, Any], /, *, trusted: bool = True
    ) -> list[str]:
        """A caller who may not deploy gets the checks that need no look at the host."""
        return await self._service.validate(manifest, trusted=trusted and await self._reveals())

    async def diff(self, manifest: str | dict[str, Any], /, *, trusted: bool = True) -> str:
        return await self._service.diff(manifest, trusted=trusted and await self._reveals())

    async def status(self, name: str, /) -> dict[str, Any]:
        status = await self._service.status(name)
        return status if await self._reveals() else redact_record(status)

    async def manifest(self, name: str, generation: int = 0, /) -> dict[str, Any]:
        document = await self._service.manifest(name, generation)
        return document if await self._reveals() else redact_manifest(document)

    async def history(self, name: str, /) -> list[dict[str, Any]]:
        generations = await self._service.history(name)
        return generations if await self._reveals() else list(map(redact_record, generations))

    async def runs(self, name: str, /) -> list[dict[str, Any]]:
        return await self._service.runs(name)

    async def volumes(self) -> list[dict[str, Any]]:
        """Names, owners and mountpoints: nothing a manifest's reader does not see."""
        return await self._service.volumes()

    async def logs(self, name: str, run: int = 0, lines: int | None = None, /) -> dict[str, Any]:
        await self._require("logs")
        return await self._service.logs(name, run, lines)

    async def exec(
        self, name: str, container: str, command: list[str], tty: bool, interactive: bool,
        /, *, handover: Handover,
    ) -> int:  # fmt: skip
        await self._require("exec")
        return await self._service.exec(name, container, command, tty, interactive,
                                        handover=handover)  # fmt: skip

    async def follow_logs(self, name: str, lines: int = 10, /, *, handover: Handover) -> None:
        await self._require("follow_logs")
        await self._service.follow_logs(name, lines, handover=handover)

    async def stats(self, names: list[str], /) -> dict[str, Any]:
        """Figures of what runs, nothing of a manifest: open to every reader."""
        return await self._service.stats(names)

    def version(self) -> str:
        return self._service.version()

    def health(self) -> dict[str, Any]:
        return self._service.health()

    def on_health_change(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        return self._service.on_health_change(listener)

    async def list_all(self) -> list[dict[str, Any]]:
        statuses = await self._service.list_all()
        return statuses if await self._reveals() else list(map(redact_record, statuses))
