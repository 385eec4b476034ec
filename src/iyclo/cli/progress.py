"""Progress in a terminal: the daemon's ``PullProgress`` and ``HealthChanged`` events of
the pod or job a command is for, and its ``PodChanged`` "waiting" (for a ``dependsOn``),
one line each.

A command that may pull (``apply``, ``pull``) opens a second connection to the daemon
and subscribes before it makes its call, so every step of its pull reaches it while the
call is under way, over either transport; a thread prints those of its own pull to
stderr, so stdout stays the result. One plain line per step, not redrawn bars: Podman
4.3 sends no sizes, and a line per step reads the same in a terminal and in a log.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeGuard

from iyclo.cli.output import console, escape
from iyclo.errors import IycloError

if TYPE_CHECKING:
    from iyclo.contract.events import Event, HealthChanged, PodChanged, PullProgress

    Progress = PullProgress | HealthChanged | PodChanged


def _size(count: int) -> str:
    """Bytes as Podman's own progress shows them (decimal units)."""
    if count < 1000:
        return f"{count} B"
    value, unit = float(count), "B"
    for unit in ("kB", "MB", "GB"):  # noqa: B007 - the unit the loop stops at is the one
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}"


def progress_line(event: PullProgress) -> str:
    """``IMAGE LAYER STATUS [CURRENT/TOTAL]`` for people."""
    size = ""
    if event.total:
        size = f" {_size(event.current)}/{_size(event.total)}"
    elif event.current:
        size = f" {_size(event.current)}"
    return f"{event.image} {event.layer} {event.status}{size}"


def health_line(event: HealthChanged) -> str:
    """``NAME/CONTAINER HEALTH [(ACTION)][: OUTPUT]`` for people."""
    action = f" ({event.action})" if event.action else ""
    output = f": {event.output}" if event.output else ""
    return f"{event.name}/{event.container} {event.health}{action}{output}"


def event_line(event: Progress) -> str:
    from iyclo.contract.events import HealthChanged, PullProgress

    if isinstance(event, PullProgress):
        return progress_line(event)
    if isinstance(event, HealthChanged):
        return health_line(event)
    return f"{event.name} {event.state}: {event.error}"


def is_progress(event: Event) -> TypeGuard[Progress]:
    """Whether ``event`` is one a command shows while it waits."""
    from iyclo.contract.events import HealthChanged, PodChanged, PullProgress

    if isinstance(event, PodChanged):
        return event.state == "waiting"
    return isinstance(event, PullProgress | HealthChanged)


@contextlib.contextmanager
def pull_progress(
    subscribe: Callable[[], Iterator[Event]], wanted: Callable[[Progress], bool]
) -> Iterator[None]:
    """Print the pull steps ``wanted`` picks from the events ``subscribe`` gives (it
    returns once subscribed) while the block runs; a daemon that cannot be reached a
    second time only costs the progress, never the command."""
    try:
        events = subscribe()
    except IycloError:
        yield
        return
    done = threading.Event()
    lock = threading.Lock()

    def show() -> None:
        with contextlib.suppress(Exception):  # the connection ends with the process
            for event in events:
                if is_progress(event) and wanted(event):
                    with lock:
                        if done.is_set():
                            return
                        console().print(escape(event_line(event)), highlight=False)

    # A daemon thread: it blocks reading the subscription, and ends with the command.
    threading.Thread(target=show, name="pull-progress", daemon=True).start()
    try:
        yield
    finally:
        with lock:
            done.set()
