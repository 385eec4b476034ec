"""One operation at a time per name, and reconcile alone.

Every operation on a pod or job holds its name's lock; the live cache's observers look at
it to leave the states of an operation under way to that operation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Locks:
    def __init__(self) -> None:
        self._names: dict[str, asyncio.Lock] = {}
        self.reconcile = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock = self._names.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    def busy(self, name: str) -> bool:
        """Whether an operation on ``name`` is under way."""
        lock = self._names.get(name)
        return lock is not None and lock.locked()
