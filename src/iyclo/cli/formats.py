"""What the CLI's tables show: times, spans, run outcomes and the rows of each table,
in one place (``ps``, ``jobs`` and ``history`` share them)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from iyclo.cli.table import Cell, Table


def parse_iso(text: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 time as the daemon writes them
    (``2024-05-01T03:00:00Z``, ``…T03:00:00.012Z``), None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def span(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``5d``: the largest unit that fits, rounded down."""
    seconds = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def age(since: str) -> str:
    """How long ago ``since`` was (``-`` for none; the text itself if it is no time)."""
    if not since:
        return "-"
    at = parse_iso(since)
    if at is None:
        return since
    return span(max(0.0, time.time() - at))


def when(iso: str, *, future: bool) -> str:
    """``2024-05-01 03:00:00Z (in 4h)`` or ``… (2m ago)``."""
    at = parse_iso(iso) if iso else None
    if at is None:
        return "-"
    delta = at - time.time()
    relative = f"in {span(delta)}" if future else f"{span(delta)} ago"
    return f"{iso[:19].replace('T', ' ')}Z ({relative})"


def duration(run: dict[str, Any]) -> str:
    value = run.get("durationSec")
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 60 else span(value)


def outcome(run: dict[str, Any] | None) -> Cell:
    """``succeeded``, ``failed (exit 3)``, ``failed (timeout, SIGTERM)``, ``running``."""
    if not run:
        return Cell("-")
    state = str(run.get("state", ""))
    style = {"succeeded": "green", "running": "yellow"}.get(state, "red")
    if state in ("succeeded", "running"):
        return Cell(state, style)
    details = []
    result = run.get("result")
    if result and result not in ("exit-code", "success"):
        details.append(str(result))
    if run.get("signal"):
        details.append(str(run["signal"]))
    elif run.get("exitCode") not in (None, -1):
        details.append(f"exit {run['exitCode']}")
    suffix = f" ({', '.join(details)})" if details else ""
    return Cell(f"{state}{suffix}", style)


def containers_summary(status: dict[str, Any]) -> str:
    """Running of all containers; "-" for a network, which has none."""
    if status.get("kind") == "Network":
        return "-"
    containers = status.get("containers") or []
    running = sum(1 for c in containers if c.get("state") == "running")
    return f"{running}/{len(containers)}"


def readiness(status: dict[str, Any]) -> str:
    """A pod's checked containers that are healthy, of those checked, as kubectl counts
    ready containers: "-" for a job or a pod without checks."""
    if status.get("kind") != "Pod":
        return "-"
    checked = [c for c in status.get("containers") or [] if c.get("health")]
    if not checked:
        return "-"
    return f"{sum(c['health'] == 'healthy' for c in checked)}/{len(checked)}"


def print_status_table(rows: list[dict[str, Any]]) -> None:
    table = Table("NAME", "KIND", "STATE", "READY", "GEN", "CONTAINERS", "RESTARTS", "UP", "UNIT")
    for row in rows:
        state = row.get("state", "")
        style = {"running": "green", "created": "green", "failed": "red",
                 "missing": "red"}.get(state, "yellow")  # fmt: skip
        table.add_row(
            row.get("name", ""),
            row.get("kind", ""),
            Cell(state, style),
            readiness(row),
            str(row.get("generation", "")),
            containers_summary(row),
            str(row.get("restarts", 0)),
            age(row.get("since", "")) if state == "running" else "-",
            row.get("unit", ""),
        )
    table.print()


def print_generations_table(rows: list[dict[str, Any]]) -> None:
    table = Table("GEN", "APPLIED", "DIGEST", "")
    for row in rows:
        mark = "current" if row["current"] else ""
        table.add_row(str(row["generation"]), row["appliedAt"], row["digest"][:12], mark)
    table.print()


def print_runs_table(rows: list[dict[str, Any]]) -> None:
    table = Table("RUN", "STARTED", "DURATION", "RESULT", "GEN", "INVOCATION")
    for run in rows:
        table.add_row(
            str(run.get("number", "")),
            when(str(run.get("startedAt", "")), future=False),
            duration(run),
            outcome(run),
            str(run.get("generation", "")),
            str(run.get("invocationId", ""))[:12],
        )
    table.print()


def print_jobs_table(rows: list[dict[str, Any]]) -> None:
    table = Table("NAME", "SCHEDULE", "STATE", "NEXT", "LAST RUN", "RESULT", "DURATION")
    for row in rows:
        last = row.get("lastRun")
        state = row.get("state", "")
        style = {"scheduled": "green", "running": "yellow"}.get(state, "red")
        last_text = "-"
        if last:
            last_text = f"{last['number']}: {when(str(last.get('startedAt', '')), future=False)}"
        table.add_row(
            row.get("name", ""),
            str((row.get("schedule") or {}).get("calendar", "")),
            Cell(state, style),
            when(str(row.get("next", "")), future=True),
            last_text,
            outcome(last),
            duration(last) if last else "-",
        )
    table.print()
