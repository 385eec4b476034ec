"""CLI commands for scheduled jobs: `run`, `jobs` and `logs`."""

from __future__ import annotations

import sys
from typing import Any

import click

from iyclo.cli.formats import print_jobs_table
from iyclo.cli.output import console, json_option, out, print_json, terminal_text
from iyclo.cli.transport import daemon


@click.command(name="run")
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


@click.command(name="jobs")
@json_option
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    """List jobs with their schedule, next run, last run and its result."""
    with daemon(ctx) as client:
        rows = [row for row in client.call("list") if row.get("kind") == "Job"]
    print_json(rows) if as_json else print_jobs_table(rows)


@click.command(name="logs")
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

    A run's output is exactly its journal lines: those its unit's processes wrote during
    that run (`_SYSTEMD_UNIT=`, `_SYSTEMD_INVOCATION_ID=`), with systemd's own lines about
    it (`_PID=1`); a line anyone else logs with the run's `INVOCATION_ID=` is not one.
    Control characters are printed escaped (`\\x1b`), tabs as they are.

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
        sys.stdout.write(terminal_text(f"{prefix}{entry.get('message', '')}") + "\n")
