"""Work the daemon starts and does not wait for (a health read, a reaction to an event),
held until it ends so that a shutdown can cancel and await every piece of it.

asyncio keeps only weak references to tasks: one nobody holds can be collected in the
middle of its work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, *others: asyncio.Task[Any]) -> None:
        """Cancel every task still running (and ``others``), and wait for them to end."""
        tasks = [*self._tasks, *others]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
