"""CLI commands for scheduled jobs: `run`, `jobs` and `logs`."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click

from iyclo.cli.formats import print_jobs_table
from iyclo.cli.output import console, fail, json_option, out, print_json, terminal_text
from iyclo.cli.transport import daemon
from iyclo.errors import InvalidError


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
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new lines as they come (Ctrl-C to stop)."
)
@json_option
@click.pass_context
def logs(
    ctx: click.Context,
    *,
    name: str,
    run_number: int,
    lines: int | None,
    timestamps: bool,
    follow: bool,
    as_json: bool,
) -> None:
    """Show the output of a job run (`--run N`, the newest by default) or a pod's log.

    A run's output is exactly its journal lines: those its unit's processes wrote during
    that run (`_SYSTEMD_UNIT=`, `_SYSTEMD_INVOCATION_ID=`), with systemd's own lines about
    it (`_PID=1`); a line anyone else logs with the run's `INVOCATION_ID=` is not one.
    Control characters are printed escaped (`\\x1b`), tabs as they are.

    With `-f`, the last lines (10, or `-n`) of a pod's or job's unit journal, every run
    of a job included, then each new one as journald gets it, until Ctrl-C; `--json`
    prints each line as an object of its own.

    Example: `iyclo logs nightly-backup --run 7`, `iyclo logs -f web`
    """
    if follow:
        if run_number:
            fail(InvalidError("logs: --follow follows the unit's journal; leave out --run"))
        _follow(ctx, name, 10 if lines is None else lines, timestamps, as_json)
        return
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
        _print_entry(entry, timestamps, as_json=False)


def _print_entry(entry: dict[str, Any], timestamps: bool, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(entry) + "\n")
        return
    prefix = f"{entry.get('at', '')} " if timestamps else ""
    sys.stdout.write(terminal_text(f"{prefix}{entry.get('message', '')}") + "\n")


def _follow(ctx: click.Context, name: str, lines: int, timestamps: bool, as_json: bool) -> None:
    """The daemon writes into a pipe of ours (``follow_logs``); a thread prints what
    comes, while the call waits. Ctrl-C ends this process, which closes the pipe and
    the connection: the daemon stops its journalctl then."""
    if lines < 0:
        fail(InvalidError("logs: --lines must be 0 or more"))
    read_end, write_end = os.pipe()
    printer = threading.Thread(target=_print_pipe, args=(read_end, timestamps, as_json),
                               daemon=True, name="iyclo-logs")  # fmt: skip
    printer.start()
    try:
        with daemon(ctx) as client:
            client.call_passing("follow_logs", [write_end], name=name, lines=lines)
    finally:
        os.close(write_end)
    printer.join(timeout=2)


def _print_pipe(fd: int, timestamps: bool, as_json: bool) -> None:
    with open(fd, "rb") as pipe:
        for raw in pipe:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            _print_entry(entry, timestamps, as_json=as_json)
            sys.stdout.flush()
