"""``iyclo logs -f``: a pod's or job's journal as it grows, into the caller's pipe.

The daemon writes the unit journal's newest lines (``journal.newest_lines``: Podman's
event records left out and not counted), then runs ``journalctl --follow -o json -u UNIT``
from just after the newest entry it read (``--after-cursor``, so nothing written in
between is lost or shown twice) and writes each line it prints, as ``iyclo logs`` shows
them, one JSON object a line into the pipe the caller passed. ``-u`` selects by what journald
and systemd set, never by what a client may send (``_SYSTEMD_UNIT=``, and ``UNIT=``
only from PID 1; systemd.journal-fields(7)), so a line any user logs with the unit's
name in ``UNIT=`` does not show.

It ends when the caller goes away, whichever way is seen first: the pipe's read end
closed (the kernel reports the write end as broken), the caller's connection gone, or
the caller not reading while more than ``MAX_BUFFERED`` bytes wait. ``journalctl`` is
killed and reaped then, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Sequence

import structlog

from iyclo.core.handover import Handover, close_all
from iyclo.core.journal import (
    LINE_FIELDS,
    MAX_ENTRY,
    journal_lines,
    journalctl_binary,
    json_entries,
    newest_lines,
    unit_matches,
)
from iyclo.errors import InvalidError, IycloError

log = structlog.get_logger("iyclo.follow")

MAX_BUFFERED = 1024 * 1024


class _PipeEnd(asyncio.BaseProtocol):
    """The write end of the caller's pipe: done once its reader is gone."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def follow_argv(tool: str, units: Sequence[str], cursor: str | None, since: float) -> list[str]:
    """journalctl following what comes after ``cursor``; with no entry read yet, what
    comes from ``since`` on (a second early: none of those was there to be read)."""
    start = [f"--after-cursor={cursor}"] if cursor else [f"--since=@{int(since)}"]
    return [tool, "--no-pager", "--follow", "--no-tail", "-o", "json",
            f"--output-fields={LINE_FIELDS}", *start, *unit_matches(units)]  # fmt: skip


async def follow(units: Sequence[str], lines: int, handover: Handover) -> None:
    """Follow the journal of ``units`` into the caller's pipe until the caller goes."""
    tool = journalctl_binary()
    if tool is None:
        raise IycloError("follow_logs: journalctl is not installed on this host")
    (fd,) = await handover.receive(1)
    loop = asyncio.get_running_loop()
    try:
        pipe = os.fdopen(fd, "wb", buffering=0)  # an open descriptor: nothing blocks
    except OSError as exc:
        close_all([fd])
        why = exc.strerror or exc
        raise InvalidError(f"follow_logs: cannot use the descriptor given: {why}") from None
    try:
        transport, end = await loop.connect_write_pipe(_PipeEnd, pipe)
    except ValueError:
        pipe.close()
        raise InvalidError("follow_logs: the descriptor given is not a pipe or socket") from None
    since = time.time()
    tail, cursor = await newest_lines(unit_matches(units), max(lines, 0))
    for line in tail:
        transport.write(json.dumps(line).encode() + b"\n")
    proc = await asyncio.create_subprocess_exec(
        *follow_argv(tool, units, cursor, since), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=MAX_ENTRY,
    )  # fmt: skip
    log.info("following the journal", units=list(units), pid=proc.pid)
    assert proc.stdout is not None
    waits = [
        asyncio.ensure_future(_pump(proc.stdout, transport)),
        end.closed,
        asyncio.ensure_future(handover.gone()),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        transport.close()
        log.info("stopped following the journal", units=list(units), pid=proc.pid)


async def _pump(source: asyncio.StreamReader, sink: asyncio.WriteTransport) -> None:
    """journalctl's entries to the caller, until journalctl ends or the caller lags."""
    async with contextlib.aclosing(json_entries(source)) as entries:
        async for entry in entries:
            for line in journal_lines([entry]):
                sink.write(json.dumps(line).encode() + b"\n")
            if sink.get_write_buffer_size() > MAX_BUFFERED:
                log.warning("a follower does not read its logs; dropping it")
                return
