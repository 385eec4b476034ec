"""CLI commands that talk to a running daemon."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rich_click as click

from iyclo.cli.output import fail, print_json
from iyclo.cli.transport import Transport, connect
from iyclo.errors import InvalidError, IycloError, NotFoundError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@functools.cache
def _console(stderr: bool) -> Console:
    """Made on first use: importing rich.console costs ~20 ms the CLI need not pay up front."""
    from rich.console import Console

    return Console(stderr=stderr)


def out() -> Console:
    return _console(False)


def console() -> Console:
    return _console(True)


def make_table(*columns: str) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def escape(text: str) -> str:
    """rich markup escaping, imported on use like the rest of rich."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


@contextmanager
def daemon(ctx: click.Context) -> Iterator[Transport]:
    opts = ctx.find_root().params
    try:
        transport = connect(opts.get("socket"), opts.get("bus") or "system")
    except IycloError as exc:
        fail(exc)
    try:
        yield transport
    except InvalidError as exc:
        for line in exc.details[1:]:
            sys.stderr.write(f"iyclo: error: {line}\n")
        fail(exc)
    except IycloError as exc:
        fail(exc)
    finally:
        transport.close()


def _read_manifest(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text()
    except OSError as exc:
        fail(InvalidError(f"{path}: {exc.strerror or exc}"))


def _age(since: str) -> str:
    if not since:
        return "-"
    try:
        started = time.mktime(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return since
    seconds = max(0, int(time.time() - started))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _containers_summary(status: dict[str, Any]) -> str:
    containers = status.get("containers") or []
    running = sum(1 for c in containers if c.get("state") == "running")
    return f"{running}/{len(containers)}"


def print_status_table(rows: list[dict[str, Any]]) -> None:
    table = make_table("NAME", "KIND", "STATE", "GEN", "CONTAINERS", "RESTARTS", "UP", "UNIT")
    for row in rows:
        state = row.get("state", "")
        style = {"running": "green", "failed": "red", "missing": "red"}.get(state, "yellow")
        table.add_row(
            row.get("name", ""),
            row.get("kind", ""),
            f"[{style}]{state}[/]",
            str(row.get("generation", "")),
            _containers_summary(row),
            str(row.get("restarts", 0)),
            _age(row.get("since", "")) if state == "running" else "-",
            row.get("unit", ""),
        )
    out().print(table)


def register(cli: click.Group) -> None:
    json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

    @cli.command()
    @click.option("-f", "--file", "path", required=True, help="Manifest file, or - for stdin.")
    @json_option
    @click.pass_context
    def apply(ctx: click.Context, path: str, as_json: bool) -> None:
        """Create or update a pod or job from a manifest; waits until it runs.

        An unchanged manifest is a no-op; a changed one replaces the pod with a new
        generation, and if that fails the previous one keeps running.

        Example: `iyclo apply -f examples/web.json`
        """
        text = _read_manifest(path)
        with daemon(ctx) as client:
            with console().status("applying…", spinner="dots"):
                result = client.call("apply", manifest=text)
            if as_json:
                print_json(result)
                return
            verb = "configured" if result["changed"] else "unchanged"
            out().print(
                f"{result['kind'].lower()}/{result['name']} {verb} "
                f"(generation {result['generation']}, {result['state']})"
            )

    @cli.command()
    @click.option("-f", "--file", "path", required=True, help="Manifest file, or - for stdin.")
    @click.pass_context
    def diff(ctx: click.Context, path: str) -> None:
        """Show what `apply` would change; exits 1 when there is a difference.

        Example: `iyclo diff -f examples/web.json`
        """
        text = _read_manifest(path)
        with daemon(ctx) as client:
            result = client.call("diff", manifest=text)
        sys.stdout.write(result)
        sys.exit(1 if result else 0)

    @cli.command(name="ps")
    @json_option
    @click.pass_context
    def ps(ctx: click.Context, as_json: bool) -> None:
        """List pods and jobs with their state. Alias: `list`."""
        with daemon(ctx) as client:
            rows = client.call("list")
        print_json(rows) if as_json else print_status_table(rows)

    cli.add_command(ps, name="list")

    @cli.command()
    @click.argument("name")
    @click.pass_context
    def inspect(ctx: click.Context, name: str) -> None:
        """Show everything iyclo knows about a pod or job, as JSON."""
        with daemon(ctx) as client:
            status = client.call("get", name=name)
            status["manifest"] = client.call("get_manifest", name=name, generation=0)
        print_json(status)

    @cli.command()
    @click.argument("name")
    @click.option("--generations", is_flag=True, help="For a job: its manifest generations.")
    @json_option
    @click.pass_context
    def history(ctx: click.Context, name: str, generations: bool, as_json: bool) -> None:
        """List a job's runs, or the stored generations of a pod's manifest.

        A removed job's runs stay listed unless it was removed with `--purge-history`.
        """
        with daemon(ctx) as client:
            # -- jobs (feat/jobs): a job's history is its runs
            try:
                kind = client.call("get", name=name).get("kind")
            except NotFoundError:
                kind = None  # maybe a removed job whose runs were kept
            if kind != "Pod" and not generations:
                runs = client.call("runs", name=name)
                if as_json:
                    print_json(runs)
                else:
                    from iyclo.cli.jobs import print_runs_table

                    print_runs_table(runs)
                return
            rows = client.call("history", name=name)
        if as_json:
            print_json(rows)
            return
        table = make_table("GEN", "APPLIED", "DIGEST", "")
        for row in rows:
            mark = "current" if row["current"] else ""
            table.add_row(str(row["generation"]), row["appliedAt"], row["digest"][:12], mark)
        out().print(table)

    def simple(verb: str, method: str, help_text: str) -> None:
        @click.argument("names", nargs=-1, required=True)
        @click.pass_context
        def command(ctx: click.Context, names: tuple[str, ...]) -> None:
            with daemon(ctx) as client:
                for name in names:
                    with console().status(f"{verb} {name}…", spinner="dots"):
                        client.call(method, name=name)
                    out().print(f"{name}: {'removed' if method == 'remove' else method + 'ed'}"
                              if method != "stop" else f"{name}: stopped")  # fmt: skip

        command.__doc__ = help_text
        cli.command(name=verb)(command)

    @cli.command(name="rm")
    @click.argument("names", nargs=-1, required=True)
    @click.option(
        "--purge-history/--keep-history",
        default=False,
        help="For jobs: also delete the run history [default: keep, like the journal].",
    )
    @click.pass_context
    def rm(ctx: click.Context, names: tuple[str, ...], purge_history: bool) -> None:
        """Remove pods or jobs: units, containers and records.

        A job's run history is kept (numbering continues if it comes back) unless
        `--purge-history` is given; its journal lines are journald's to keep either way.
        """
        params = {"purge_history": True} if purge_history else {}
        with daemon(ctx) as client:
            for name in names:
                with console().status(f"rm {name}…", spinner="dots"):
                    client.call("remove", name=name, **params)
                out().print(f"{name}: removed")

    simple("start", "start", "Start stopped pods, or schedule stopped jobs again.")
    simple(
        "stop",
        "stop",
        "Stop pods, or jobs (timer and any run going); they stay stopped until `iyclo start`.",
    )
    simple("restart", "restart", "Restart pods through systemd, or a job's timer.")

    @cli.command()
    @json_option
    @click.pass_context
    def reconcile(ctx: click.Context, as_json: bool) -> None:
        """Make systemd and Podman match the stored state now."""
        with daemon(ctx) as client:
            report = client.call("reconcile")
        if as_json:
            print_json(report)
            return
        for key in ("adopted", "recreated", "removed"):
            out().print(f"{key}: {', '.join(report[key]) or '-'}")
        for item in report["failed"]:
            out().print(f"[red]failed[/]: {item['name']}: {item['error']}")

    @cli.command()
    @json_option
    @click.pass_context
    def events(ctx: click.Context, as_json: bool) -> None:
        """Stream pod and job events as they happen (Ctrl-C to stop)."""
        with daemon(ctx) as client:
            for event in client.events():
                if as_json:
                    sys.stdout.write(json.dumps(event.to_json()) + "\n")
                    sys.stdout.flush()
                else:
                    when = time.strftime("%H:%M:%S", time.localtime(event.at))
                    out().print(f"{when} {event.MEMBER} {event.name} {event.state}")


def daemon_command(cli: click.Group, run_daemon: Callable[[list[str]], None]) -> None:
    @cli.command(
        name="daemon",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def daemon_cmd(args: tuple[str, ...]) -> None:
        """Run the daemon in the foreground (same as `iyclod`; see `iyclo daemon --help`)."""
        run_daemon(list(args))
