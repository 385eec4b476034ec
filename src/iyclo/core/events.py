"""In-process publish/subscribe of what happens to pods and jobs.

The D-Bus adapter turns events into signals, the JSON socket into notifications;
both subscribe here, so each front sees the same sequence in the same order.
A slow subscriber loses its oldest events rather than stalling the daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from attrs import frozen

QUEUE_LIMIT = 1000


@frozen
class Event:
    kind: str  # "PodChanged" | "JobFinished"
    name: str
    state: str
    data: dict[str, Any]
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "name": self.name,
            "state": self.state,
            "at": self.at,
            **self.data,
        }


class EventBus:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()
        self._last_state: dict[str, str] = {}

    def publish(self, kind: str, name: str, state: str, **data: Any) -> None:
        """Send to every subscriber; a PodChanged repeating the last state is dropped."""
        if kind == "PodChanged":
            if self._last_state.get(name) == state:
                return
            self._last_state[name] = state
        event = Event(kind, name, state, dict(data), time.time())
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def forget(self, name: str) -> None:
        self._last_state.pop(name, None)

    @contextmanager
    def subscription(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    async def stream(self) -> AsyncIterator[Event]:
        with self.subscription() as queue:
            while True:
                yield await queue.get()
