"""CLI commands for scheduled jobs: `run`, `jobs`, `logs`, and the run table of `history`."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import rich_click as click

from iyclo.cli.output import print_json
from iyclo.cli.remote import console, daemon, escape, make_table, out


def _parse(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def _span(seconds: float) -> str:
    seconds = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(iso: str, *, future: bool) -> str:
    """``2024-05-01 03:00:00Z (in 4h)`` or ``… (2m ago)``."""
    at = _parse(iso) if iso else None
    if at is None:
        return "-"
    delta = at - time.time()
    relative = f"in {_span(delta)}" if future else f"{_span(delta)} ago"
    return f"{iso[:19].replace('T', ' ')}Z ({relative})"


def _duration(run: dict[str, Any]) -> str:
    value = run.get("durationSec")
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 60 else _span(value)


def _outcome(run: dict[str, Any] | None) -> str:
    """``succeeded``, ``failed (exit 3)``, ``failed (timeout, SIGTERM)``, ``running``."""
    if not run:
        return "-"
    state = str(run.get("state", ""))
    style = {"succeeded": "green", "running": "yellow"}.get(state, "red")
    if state in ("succeeded", "running"):
        return f"[{style}]{state}[/]"
    details = []
    result = run.get("result")
    if result and result not in ("exit-code", "success"):
        details.append(str(result))
    if run.get("signal"):
        details.append(str(run["signal"]))
    elif run.get("exitCode") not in (None, -1):
        details.append(f"exit {run['exitCode']}")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"[{style}]{state}{escape(suffix)}[/]"


def print_runs_table(rows: list[dict[str, Any]]) -> None:
    table = make_table()
    for column in ("RUN", "STARTED", "DURATION", "RESULT", "GEN", "INVOCATION"):
        table.add_column(column)
    for run in rows:
        table.add_row(
            str(run.get("number", "")),
            _when(str(run.get("startedAt", "")), future=False),
            _duration(run),
            _outcome(run),
            str(run.get("generation", "")),
            str(run.get("invocationId", ""))[:12],
        )
    out().print(table)


def register(cli: click.Group) -> None:
    json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

    @cli.command(name="run")
    @click.argument("name")
    @json_option
    @click.pass_context
    def run(ctx: click.Context, name: str, as_json: bool) -> None:
        """Run a job now, outside its schedule; refused while a run of it is going.

        Returns once the run has begun; follow it with `iyclo logs NAME --run N`.

        Example: `iyclo run nightly-backup`
        """
        with daemon(ctx) as client, console().status(f"starting {name}…", spinner="dots"):
            result = client.call("run_job", name=name)
        if as_json:
            print_json(result)
            return
        number = result["run"]
        out().print(f"{name}: run {number} started (iyclo logs {name} --run {number})")

    @cli.command(name="jobs")
    @json_option
    @click.pass_context
    def jobs(ctx: click.Context, as_json: bool) -> None:
        """List jobs with their schedule, next run, last run and its result."""
        with daemon(ctx) as client:
            rows = [row for row in client.call("list") if row.get("kind") == "Job"]
        if as_json:
            print_json(rows)
            return
        table = make_table()
        for column in ("NAME", "SCHEDULE", "STATE", "NEXT", "LAST RUN", "RESULT", "DURATION"):
            table.add_column(column)
        for row in rows:
            last = row.get("lastRun")
            state = row.get("state", "")
            style = {"scheduled": "green", "running": "yellow"}.get(state, "red")
            last_text = "-"
            if last:
                last_text = (
                    f"{last['number']}: {_when(str(last.get('startedAt', '')), future=False)}"
                )
            table.add_row(
                row.get("name", ""),
                escape(str((row.get("schedule") or {}).get("calendar", ""))),
                f"[{style}]{state}[/]",
                _when(str(row.get("next", "")), future=True),
                last_text,
                _outcome(last),
                _duration(last) if last else "-",
            )
        out().print(table)

    @cli.command(name="logs")
    @click.argument("name")
    @click.option("--run", "run_number", type=int, default=0, help="Run number (jobs); newest.")
    @click.option("-n", "--lines", type=int, default=None, help="Only the last LINES lines.")
    @click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
    @json_option
    @click.pass_context
    def logs(
        ctx: click.Context,
        *,
        name: str,
        run_number: int,
        lines: int | None,
        timestamps: bool,
        as_json: bool,
    ) -> None:
        """Show the output of a job run (`--run N`, the newest by default) or a pod's log.

        A run's output is exactly its journal lines: `journalctl _SYSTEMD_INVOCATION_ID=`
        of that run, with systemd's own lines about it.

        Example: `iyclo logs nightly-backup --run 7`
        """
        params: dict[str, Any] = {"name": name}
        if run_number:
            params["run"] = run_number
        if lines is not None:
            params["lines"] = lines
        with daemon(ctx) as client:
            result = client.call("logs", **params)
        if as_json:
            print_json(result)
            return
        if not result.get("entries") and result.get("kind") == "Job":
            console().print(
                f"no journal lines for run {result.get('run')} of {name} "
                "(rotated away, or lost with a volatile journal at reboot)"
            )
        for entry in result.get("entries", []):
            prefix = f"{entry.get('at', '')} " if timestamps else ""
            sys.stdout.write(f"{prefix}{entry.get('message', '')}\n")
