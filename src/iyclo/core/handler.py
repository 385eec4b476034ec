"""The one protocol a kind's handler (``pods.PodHandler``, ``jobs.JobHandler``,
``networks.NetworkHandler``) follows.

``Service`` holds the name's lock, looks the record up, checks the kind and calls one of
these; a handler never takes a lock of its own for the operation, and publishes the
states the operation goes through.
"""

from __future__ import annotations

from typing import Any, Protocol

from iyclo.core.kind import Kind
from iyclo.core.results import ApplyResult
from iyclo.core.steps import Survey
from iyclo.manifest.model import Manifest
from iyclo.store import Deployment


class Handler(Protocol):
    kind: Kind

    async def start_watching(self) -> None:
        """Follow what systemd and Podman do to this kind; before the first reconcile."""

    async def close(self) -> None: ...

    async def apply(
        self,
        manifest: Manifest,
        previous: Deployment | None,
        images: dict[str, Any],
        *,
        wait_timeout: float | None = None,
    ) -> ApplyResult:
        """Create or update from ``images`` (pulled already, ``core.pulls``); all-or-nothing
        (what a failed apply made is removed and the previous generation keeps, or goes
        back to, its state). ``wait_timeout``: seconds a pod's readiness is waited for
        instead of its manifest's ``update.readyTimeout``."""

    async def remove(self, record: Deployment, *, purge_history: bool) -> None: ...

    async def start(self, record: Deployment) -> str:
        """Bring it to its running state (re-creating what is missing); the state after."""

    async def stop(self, record: Deployment) -> str:
        """Stop it until started again; the state after."""

    async def restart(self, record: Deployment) -> str: ...

    async def status(self, record: Deployment) -> dict[str, Any]:
        """What ``get`` answers for it."""

    async def logs(self, record: Deployment, run: int, lines: int | None) -> dict[str, Any]: ...

    def surveyed_units(self, record: Deployment) -> tuple[str, ...]:
        """The units of ``record`` a reconcile's survey reads for it, all at once with
        every other record's (``Steps.survey``); those its ``reconcile_one`` decides on."""

    async def reconcile_one(self, record: Deployment, survey: Survey | None = None) -> str:
        """Make the host match the record: ``adopted``, ``recreated`` or ``stopped``;
        ``survey``: what Podman and systemd held when the reconcile began
        (``steps.Survey``), which a record found as it should be is decided on without
        asking either again."""

    async def remove_orphans(self, known: set[str]) -> list[str]:
        """Remove this kind's units whose name is not in ``known``; the units removed."""
