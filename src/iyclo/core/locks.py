"""One operation at a time per name, and reconcile alone.

Every operation on a pod or job holds its name's lock; the live cache's observers look at
it to leave the states of an operation under way to that operation.

Reconcile acts on what it reads from the store and the host as a whole (which records
there are, which units and pods have none), so it must not overlap any operation: with
only per-name locks, a reconcile that listed the records before an apply stored its new
generation would take that generation for a crashed update and restore the old one, tear
down a pod applied meanwhile as an orphan, or re-create one removed meanwhile. So
``exclusive()`` waits for the operations under way to finish and holds new ones until it
is done; operations wait for a reconcile that has begun, never the other way round, so
neither starves the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Locks:
    def __init__(self) -> None:
        self._names: dict[str, asyncio.Lock] = {}
        self._gate = asyncio.Condition()
        self._operations = 0
        self._reconciling = False

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """An operation on ``name``: alone on that name, and never during a reconcile."""
        async with self._gate:
            await self._gate.wait_for(lambda: not self._reconciling)
            self._operations += 1
        try:
            async with self.name(name):
                yield
        finally:
            async with self._gate:
                self._operations -= 1
                self._gate.notify_all()

    @contextlib.asynccontextmanager
    async def name(self, name: str) -> AsyncIterator[None]:
        """Only ``name``'s lock: for reconcile's steps, already alone."""
        lock = self._names.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Reconcile: no operation under way, none begun until it is done."""
        async with self._gate:
            await self._gate.wait_for(lambda: not self._reconciling)
            self._reconciling = True
            try:
                await self._gate.wait_for(lambda: self._operations == 0)
            except BaseException:
                self._reconciling = False
                self._gate.notify_all()
                raise
        try:
            yield
        finally:
            async with self._gate:
                self._reconciling = False
                self._gate.notify_all()

    async def idle(self, name: str) -> None:
        """Until no operation holds ``name``; at once when none does."""
        lock = self._names.get(name)
        if lock is not None and lock.locked():
            async with lock:
                pass

    def busy(self, name: str) -> bool:
        """Whether an operation on ``name`` is under way."""
        lock = self._names.get(name)
        return lock is not None and lock.locked()
