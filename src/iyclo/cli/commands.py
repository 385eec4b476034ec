"""CLI commands that deploy and manage pods and jobs through a running daemon."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from iyclo.cli.formats import print_generations_table, print_runs_table, print_status_table
from iyclo.cli.output import (
    console,
    fail,
    json_option,
    out,
    print_json,
    terminal_text,
)
from iyclo.cli.progress import event_line, pull_progress
from iyclo.cli.table import Table
from iyclo.cli.transport import connect, daemon
from iyclo.errors import InvalidError, NotFoundError

if TYPE_CHECKING:  # the event classes are imported by the commands that stream them
    from iyclo.contract.events import Event, HealthChanged, PodChanged, PullProgress

    Progress = PullProgress | HealthChanged | PodChanged

names_argument = click.argument("names", nargs=-1, required=True)


def _seconds(option: str, text: str) -> float:
    """A duration as the manifest spells one ("90s", "2m"), in seconds."""
    from iyclo.manifest.values import duration_seconds

    try:
        return duration_seconds(text)
    except (ValueError, InvalidError) as exc:
        fail(InvalidError(f"{option}: {exc}"))


def _read_manifest(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path) as file:  # not pathlib: its import is ~3 ms of every command's start
            return file.read()
    except OSError as exc:
        fail(InvalidError(f"{path}: {exc.strerror or exc}"))


@click.command()
@click.option("-f", "--file", "path", required=True, help="Manifest file, or - for stdin.")
@click.option(
    "--wait-timeout",
    "wait_timeout",
    metavar="DURATION",
    help='How long to wait for the pod to be ready, e.g. "90s" (default: the manifest\'s '
    "update.readyTimeout).",
)
@json_option
@click.pass_context
def apply(ctx: click.Context, path: str, wait_timeout: str | None, as_json: bool) -> None:
    """Create or update a pod or job from a manifest; waits until it runs and is ready.

    An unchanged manifest is a no-op; a changed one replaces the pod with a new
    generation, and if that fails or is not ready in time the previous one keeps running.

    Example: `iyclo apply -f examples/web.json --wait-timeout 2m`
    """
    text = _read_manifest(path)
    name = _manifest_name(text)
    params: dict[str, Any] = {"manifest": text}
    if wait_timeout is not None:
        params["wait_timeout"] = _seconds("--wait-timeout", wait_timeout)
    with daemon(ctx) as client:
        with (
            _progress(ctx, as_json, lambda e: e.name == name),
            console().status("applying…", spinner="dots"),
        ):
            result = client.call("apply", **params)
        if as_json:
            print_json(result)
            return
        verb = "configured" if result["changed"] else "unchanged"
        out().print(
            f"{result['kind'].lower()}/{result['name']} {verb} "
            f"(generation {result['generation']}, {result['state']})"
        )


@click.command()
@click.argument("name")
@click.option(
    "--to",
    "to",
    type=int,
    default=0,
    metavar="N",
    help="The generation to go back to (default: the one before the current).",
)
@json_option
@click.pass_context
def rollback(ctx: click.Context, name: str, to: int, as_json: bool) -> None:
    """Go back to an earlier generation of a pod or job, by hand.

    The stored manifest of that generation is applied again as a new generation (the
    history keeps what was undone), and waits as apply does. Generations an update rolled
    back by itself are skipped.

    Example: `iyclo rollback web`, `iyclo rollback web --to 3`
    """
    with daemon(ctx) as client:
        with (
            _progress(ctx, as_json, lambda e: e.name == name),
            console().status("rolling back…", spinner="dots"),
        ):
            result = client.call("rollback", name=name, to=to)
        if as_json:
            print_json(result)
            return
        out().print(
            f"{result['kind'].lower()}/{result['name']} rolled back "
            f"(generation {result['generation']}, {result['state']})"
        )


def _manifest_name(text: str) -> str | None:
    """The name a manifest's text gives, to pick its pull's progress; None when the text
    is no manifest (the daemon then says what is wrong with it)."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    name = document.get("name") if isinstance(document, dict) else None
    return name if isinstance(name, str) else None


def _progress(
    ctx: click.Context, quiet: bool, wanted: Callable[[Progress], bool]
) -> contextlib.AbstractContextManager[None]:
    """Pull progress on stderr while a call runs (``cli.progress``), over a connection of
    its own subscribed before the call; none with --json."""
    opts = ctx.find_root().params

    def subscribe() -> Iterator[Event]:
        return connect(opts.get("socket"), opts.get("bus") or "system", timeout=None).events()

    return contextlib.nullcontext() if quiet else pull_progress(subscribe, wanted)


@click.command()
@click.argument("target")
@json_option
@click.pass_context
def pull(ctx: click.Context, target: str, as_json: bool) -> None:
    """Pull images ahead of an apply, with Podman's progress.

    TARGET is a manifest file (its images, as each container's `pullPolicy` says: what
    `apply` would pull) or an image reference (pulled always). Registry credentials are
    Podman's: `podman login` writes them to /run/containers/0/auth.json (or the file
    `REGISTRY_AUTH_FILE` names in Podman's service), never into a manifest.

    Example: `iyclo pull examples/web.json`, `iyclo pull 127.0.0.1:5000/redis:7`
    """
    is_file = target == "-" or os.path.isfile(target)
    params = {"manifest": _read_manifest(target)} if is_file else {"image": target}
    name = _manifest_name(params["manifest"]) if is_file else ""

    from iyclo.contract.events import PullProgress

    def mine(event: Progress) -> bool:
        return (
            isinstance(event, PullProgress)
            and event.name == name
            and (is_file or event.image == target)
        )

    with daemon(ctx) as client, _progress(ctx, as_json, mine), console().status("pulling…"):
        result = client.call("pull", **params)
    if as_json:
        print_json(result)
        return
    for image in result["images"]:
        container = f"{image['container']}: " if image["container"] else ""
        out().print(f"{container}{image['image']} {image['digest'] or image['id']}",
                    highlight=False)  # fmt: skip


@click.command()
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


@click.command(name="ps")
@json_option
@click.pass_context
def ps(ctx: click.Context, as_json: bool) -> None:
    """List pods and jobs with their state. Alias: `list`.

    While iyclod is degraded (Podman or systemd missing) a warning on stderr says why:
    the states shown are then its last knowledge, not the host's."""
    with daemon(ctx) as client:
        rows = client.call("list")
        health = client.call("health")
    for problem in health["problems"]:
        sys.stderr.write(f"iyclo: warning: iyclod is degraded: {terminal_text(problem)}\n")
    print_json(rows) if as_json else print_status_table(rows)


@click.command(name="health")
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Whether iyclod has what it stands on (Podman, systemd): "ok", or "degraded" and
    why. Exit status 0 when ok, 1 when degraded (for scripts and monitoring)."""
    with daemon(ctx) as client:
        result = client.call("health")
    if as_json:
        print_json(result)
    else:
        click.echo(result["state"])
        for problem in result["problems"]:
            click.echo(f"  {terminal_text(problem)}")
    sys.exit(0 if result["state"] == "ok" else 1)


@click.command()
@click.argument("name")
@click.pass_context
def inspect(ctx: click.Context, name: str) -> None:
    """Show everything iyclo knows about a pod or job, as JSON."""
    with daemon(ctx) as client:
        status = client.call("get", name=name)
        status["manifest"] = client.call("get_manifest", name=name, generation=0)
    print_json(status)


@click.command()
@click.argument("name")
@click.option("--generations", is_flag=True, help="For a job: its manifest generations.")
@json_option
@click.pass_context
def history(ctx: click.Context, name: str, generations: bool, as_json: bool) -> None:
    """List a job's runs, or the stored generations of a pod's manifest.

    A removed job's runs stay listed unless it was removed with `--purge-history`.
    """
    with daemon(ctx) as client:
        try:
            kind = client.call("get", name=name).get("kind")
        except NotFoundError:
            kind = None  # maybe a removed job whose runs were kept
        if kind not in ("Pod", "Network") and not generations:
            runs = client.call("runs", name=name)
            print_json(runs) if as_json else print_runs_table(runs)
            return
        rows = client.call("history", name=name)
    print_json(rows) if as_json else print_generations_table(rows)


@click.command(name="rm")
@names_argument
@click.option(
    "--purge-history/--keep-history",
    default=False,
    help="For jobs: also delete the run history [default: keep, like the journal].",
)
@click.option(
    "--volumes",
    is_flag=True,
    help="Also remove the named volumes they own that nothing else mounts [default: keep].",
)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], purge_history: bool, volumes: bool) -> None:
    """Remove pods, jobs or networks: units, containers and records.

    Named volumes are kept (their data is there for the next apply) unless `--volumes`.
    A job's run history is kept (numbering continues if it comes back) unless
    `--purge-history` is given; its journal lines are journald's to keep either way.
    A network is refused while pods use it.
    """
    params: dict[str, bool] = {"purge_history": True} if purge_history else {}
    if volumes:
        params["volumes"] = True
    with daemon(ctx) as client:
        for name in names:
            with console().status(f"rm {name}…", spinner="dots"):
                client.call("remove", name=name, **params)
            out().print(f"{name}: removed")


@click.command(name="volumes")
@json_option
@click.pass_context
def volumes_(ctx: click.Context, as_json: bool) -> None:
    """List the named volumes iyclo made: owner pod, in use, mountpoint."""
    with daemon(ctx) as client:
        rows = client.call("volumes")
    if as_json:
        print_json(rows)
        return
    table = Table("NAME", "OWNER", "IN USE", "MOUNTPOINT")
    for row in rows:
        used = ", ".join(row["usedBy"]) if row["inUse"] else "no"
        table.add_row(row["name"], row["owner"] or "-", used, row["mountpoint"])
    table.print()


def _each(ctx: click.Context, names: tuple[str, ...], method: str, done: str) -> None:
    with daemon(ctx) as client:
        for name in names:
            with console().status(f"{method} {name}…", spinner="dots"):
                client.call(method, name=name)
            out().print(f"{name}: {done}")


@click.command()
@names_argument
@click.pass_context
def start(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Start stopped pods, or schedule stopped jobs again."""
    _each(ctx, names, "start", "started")


@click.command()
@names_argument
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stop pods, or jobs (timer and any run going); they stay stopped until `iyclo start`."""
    _each(ctx, names, "stop", "stopped")


@click.command()
@names_argument
@click.pass_context
def restart(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Restart pods through systemd, or a job's timer."""
    _each(ctx, names, "restart", "restarted")


@click.command()
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


@click.command()
@json_option
@click.pass_context
def events(ctx: click.Context, as_json: bool) -> None:
    """Stream pod and job events as they happen (Ctrl-C to stop).

    `--json` prints each as the JSON socket sends it, over D-Bus too.
    """
    from iyclo.contract.events import HealthChanged, PullProgress

    with daemon(ctx) as client:
        for event in client.events():
            if as_json:
                sys.stdout.write(json.dumps(event.to_json()) + "\n")
                sys.stdout.flush()
            else:
                when = time.strftime("%H:%M:%S", time.localtime(event.at))
                what = (
                    event_line(event) if isinstance(event, PullProgress | HealthChanged)
                    else f"{event.name} {event.state}"
                )  # fmt: skip
                out().print(f"{when} {event.MEMBER} {what}", highlight=False)


@click.command(
    name="daemon",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def daemon_cmd(args: tuple[str, ...]) -> None:
    """Run the daemon in the foreground (same as `iyclod`; see `iyclo daemon --help`)."""
    from iyclo.daemon import main as daemon_main

    daemon_main(list(args))
