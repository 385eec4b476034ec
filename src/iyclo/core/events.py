"""In-process publish/subscribe of what happens to pods and jobs.

The D-Bus adapter turns events into signals, the JSON socket into notifications;
both subscribe here, so each front sees the same sequence in the same order. The
event types themselves are the wire contract (``iyclo.contract.events``).
A slow subscriber loses its oldest events rather than stalling the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from iyclo.contract.events import Event, JobChanged, JobFinished, PodChanged, PullProgress

__all__ = ["Event", "EventBus", "JobChanged", "JobFinished", "PodChanged", "PullProgress"]

QUEUE_LIMIT = 1000


class EventBus:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()
        self._last_state: dict[tuple[str, str], str] = {}

    def publish(self, event: Event) -> None:
        """Send to every subscriber; a state change repeating the last state is dropped."""
        if isinstance(event, PodChanged | JobChanged):
            key = (event.MEMBER, event.name)
            if self._last_state.get(key) == event.state:
                return
            self._last_state[key] = event.state
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open (tests wait for theirs to be in place)."""
        return len(self._queues)

    def forget(self, name: str) -> None:
        for key in [k for k in self._last_state if k[1] == name]:
            del self._last_state[key]

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
