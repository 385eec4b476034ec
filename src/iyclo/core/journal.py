"""Reading a unit's journal: why a start failed, and the logs users ask for.

journald is the log store systemd already keeps for every unit; ``journalctl``
is its stable interface, so iyclo reads through it rather than the file format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any

from iyclo.core import timeouts
from iyclo.core.runs import usec_iso

LINE_FIELDS = "MESSAGE,_PID,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,UNIT,PODMAN_EVENT"
"""What a shown line needs, and ``PODMAN_EVENT`` to leave Podman's event records out."""
MAX_SCANNED = 100_000
"""Entries read backward at most for the newest lines: a bound on a journal of events."""
MAX_ENTRY = 1024 * 1024
"""journalctl's longest line taken; a longer one is skipped."""

# podman's lines that follow from an earlier failure of the same start
KNOCK_ON = ("a dependency of container", "container state improper")
CONTAINER_PREFIX_RE = re.compile(r"^starting container [0-9a-f]{12,64}: ")


def journalctl_binary() -> str | None:
    return shutil.which("journalctl")


async def _journalctl(*args: str) -> str:
    tool = journalctl_binary()
    if tool is None:
        return ""
    proc = await asyncio.create_subprocess_exec(
        tool, "--no-pager", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeouts.JOURNALCTL):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ""
    return out.decode(errors="replace")


async def start_failure_reason(unit: str, *, since: float) -> str:
    """Why `unit` failed to start: the first error podman logged since `since`.

    The first one is the cause; podman's later lines are its knock-on effects
    ("container state improper", "a dependency ... failed to start").
    """
    text = await _journalctl("-u", unit, f"--since=@{since - 1:.0f}", "-o", "cat", "-n", "200")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [_tidy(line) for line in lines if line.startswith("Error:") or "level=error" in line]
    causes = [line for line in errors if not any(k in line for k in KNOCK_ON)]
    if causes or errors:
        return (causes or errors)[0]
    return lines[-1] if lines else ""


def _tidy(line: str) -> str:
    """``Error: starting container <id>: cause`` → ``cause``: one short line."""
    line = line.removeprefix("Error: ")
    return CONTAINER_PREFIX_RE.sub("", line)


def run_matches(unit: str, invocation: str) -> list[str]:
    """``journalctl`` matches for one run of ``unit``: its own lines, and systemd's about it.

    Only fields journald sets itself (``_``-prefixed: a client cannot send them) select a
    line. ``INVOCATION_ID``, ``UNIT`` and ``MESSAGE`` are a client's to send, so any local
    user can log a line carrying a real run's ID (``logger --journald``, ``systemd-cat``);
    those count only from PID 1, as ``journalctl -u`` trusts them (``_PID=1``). Lines the
    run's processes wrote carry the run's unit and invocation as journald read them from
    the sender's cgroup. See systemd.journal-fields(7).
    """
    return [
        f"_SYSTEMD_UNIT={unit}", f"_SYSTEMD_INVOCATION_ID={invocation}",
        "+", "_PID=1", f"UNIT={unit}", f"INVOCATION_ID={invocation}",
    ]  # fmt: skip


def journal_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Journal entries as ``{"at", "identifier", "message"}``; Podman's event records
    (``container init``, ``died``, …, marked ``PODMAN_EVENT``) are not output."""
    lines = []
    for entry in entries:
        if "PODMAN_EVENT" in entry:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald sends non-UTF-8 text as bytes
            message = bytes(message).decode(errors="replace")
        at = usec_iso(entry.get("__REALTIME_TIMESTAMP"))
        lines.append(
            {"at": at, "identifier": entry.get("SYSLOG_IDENTIFIER", ""), "message": message}
        )
    return lines


def take_newest(
    entries: Iterable[dict[str, Any]], count: int
) -> tuple[list[dict[str, Any]], str | None]:
    """From entries newest first: the newest ``count`` lines (``journal_lines``), oldest
    first, and the newest entry's cursor, an event's too, for a follower to go on after.

    ``journalctl -n`` counts entries, and Podman logs about a dozen event records per
    container start and stop into the unit's journal: its last 10 entries can be all
    events, hiding the output a user asked for, so the count is taken here."""
    taken: list[dict[str, Any]] = []
    cursor: str | None = None
    for entry in entries:
        if cursor is None:
            cursor = entry.get("__CURSOR")
        if len(taken) >= count:
            break
        taken.extend(journal_lines([entry]))
    return taken[::-1], cursor


async def newest_lines(
    matches: Sequence[str], count: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The newest ``count`` lines ``matches`` select, and the newest entry's cursor
    (``take_newest``), read backward (``journalctl -r``) only as far as they go.

    A journal that cannot be read (no ``journalctl``) has no lines and no cursor, as
    ``query`` treats it; one slower than ``timeouts.JOURNALCTL`` gives what came in time."""
    tool = journalctl_binary()
    if tool is None:
        return [], None
    proc = await asyncio.create_subprocess_exec(
        tool, "--no-pager", "-r", "-o", "json", f"--output-fields={LINE_FIELDS}", *matches,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, limit=MAX_ENTRY,
    )  # fmt: skip
    assert proc.stdout is not None
    read: list[dict[str, Any]] = []
    shown = 0
    try:
        async with (
            asyncio.timeout(timeouts.JOURNALCTL),
            contextlib.aclosing(json_entries(proc.stdout)) as entries,
        ):
            async for entry in entries:
                read.append(entry)
                shown += "PODMAN_EVENT" not in entry
                if shown >= count or len(read) >= MAX_SCANNED:
                    break
    except TimeoutError:
        pass  # what was read in time is shown
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    return take_newest(read, count)


async def json_entries(stream: asyncio.StreamReader) -> AsyncGenerator[dict[str, Any], None]:
    """``journalctl -o json``'s entries as they come, until it ends; a line longer than
    the stream's limit (``MAX_ENTRY``), or not JSON, is skipped."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # over the limit: the rest of that line is dropped
            continue
        if not raw:
            return
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        yield entry


def unit_matches(units: Sequence[str]) -> list[str]:
    """``journalctl`` matches for the journals of ``units`` (``-u``: see ``run_matches``)."""
    return [arg for unit in units for arg in ("-u", unit)]


async def query(*args: str) -> list[dict[str, Any]]:
    """Journal entries selected by ``journalctl`` matches and options, as JSON objects.

    An unreadable journal (no ``journalctl``, a timeout) yields no entries: callers
    treat the journal as a best-effort second account next to systemd's own state.
    """
    entries = []
    for raw in (await _journalctl("-o", "json", *args)).splitlines():
        try:
            entries.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return entries
