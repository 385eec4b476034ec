"""pytest fixtures for the private bus, the fake systemd and an event-loop watchdog.

Load with ``pytest_plugins = ["tests.fakes.fixtures"]`` in the root conftest.

* ``dbus_address`` (session): address of a private ``dbus-daemon``.
* ``fake_systemd``: a fresh :class:`FakeSystemd` owning ``org.freedesktop.systemd1``
  on that bus for one test.
* ``systemd_manager``: a :class:`SystemdManager` connected to that fake.
* ``core``: the real ``Service`` on a real store in a temporary directory, over that
  fake systemd and a ``FakePodman`` that runs containers when the fake runs their units.
* ``loop_lag_guard``: fails the test if the event loop stalled longer than
  ``MAX_LOOP_LAG`` seconds at any point while it ran (blocking I/O in a
  coroutine would show up here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.core.service import Service
from iyclo.manifest.policy import DEFAULT_POLICY, Policy
from iyclo.store import Store
from iyclo.systemd import SystemdManager

from .dbus_session import PrivateBus
from .podman import FakePodman
from .systemd import FakeSystemd

MAX_LOOP_LAG = 0.2
"""Seconds the event loop may go without running a ready callback."""


class LoopLagMonitor:
    """Measures how late a ticker task wakes up: the longest the loop was blocked."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.max_lag = 0.0
        self._tick_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="loop-lag-monitor")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._tick_started = loop.time()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, loop.time() - self._tick_started - self.interval)

    async def stop(self) -> float:
        """Stop ticking and return the largest lag seen, in seconds."""
        if self._task is not None:
            # A tick overdue right now (the loop was blocked just before) counts too.
            overdue = asyncio.get_running_loop().time() - self._tick_started - self.interval
            self.max_lag = max(self.max_lag, overdue)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.max_lag


@pytest.fixture(scope="session")
def dbus_address() -> Iterator[str]:
    with PrivateBus() as bus:
        yield bus.address


@pytest_asyncio.fixture
async def fake_systemd(dbus_address: str) -> AsyncIterator[FakeSystemd]:
    async with FakeSystemd(dbus_address) as fake:
        yield fake


@pytest_asyncio.fixture
async def systemd_manager(
    fake_systemd: FakeSystemd, dbus_address: str
) -> AsyncIterator[SystemdManager]:
    async with await SystemdManager.connect(dbus_address) as manager:
        yield manager


@dataclass
class Core:
    """The one service implementation, and the fakes of the host it runs on."""

    service: Service
    systemd: FakeSystemd
    podman: FakePodman
    store: Store


def fail_once(monkeypatch: pytest.MonkeyPatch, core: Core, error: BaseException) -> None:
    """The next read of a record raises ``error``: a bug deep inside the real service."""
    real = core.store.get

    def get(name: str) -> Any:
        monkeypatch.setattr(core.store, "get", real)
        raise error

    monkeypatch.setattr(core.store, "get", get)


@pytest.fixture
def policy() -> Policy:
    """The daemon's policy for ``core``: a test module overrides this fixture to change it."""
    return DEFAULT_POLICY


@pytest_asyncio.fixture
async def core(
    fake_systemd: FakeSystemd, systemd_manager: SystemdManager, tmp_path: Path, policy: Policy
) -> AsyncIterator[Core]:
    fake_systemd.oneshot_seconds = 0.3  # long enough for `run_job` to see a run going
    podman = FakePodman(fake_systemd)
    store = Store.open(tmp_path / "state")
    service = Service(store, systemd_manager, podman, policy=policy)  # type: ignore[arg-type]
    try:
        yield Core(service, fake_systemd, podman, store)
    finally:
        await service.close()
        podman.close()
        store.close()


@pytest_asyncio.fixture
async def socket_path(core: Core, tmp_path: Path) -> AsyncIterator[Path]:
    """``core``'s service on a JSON socket, as iyclod serves it."""
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock")
    await server.start()
    try:
        yield tmp_path / "iyclo.sock"
    finally:
        await server.close()


@pytest_asyncio.fixture
async def loop_lag_guard() -> AsyncIterator[LoopLagMonitor]:
    monitor = LoopLagMonitor()
    monitor.start()
    yield monitor
    lag = await monitor.stop()
    assert lag < MAX_LOOP_LAG, f"the event loop was blocked for {lag:.3f}s (limit {MAX_LOOP_LAG}s)"
