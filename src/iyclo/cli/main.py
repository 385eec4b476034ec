"""The `iyclo` command.

Kept lean on purpose: it imports neither podman nor the daemon's modules, so
`iyclo ps` starts fast; it is plain click, which rich-click dresses up only when help
is shown (``iyclo.cli.start``). Commands that need the daemon import their client lazily,
and paths stay strings here (pathlib and the urllib.parse it imports are ~3 ms).
Imports go one way: this module → the command modules (``commands``, ``jobs``, ``operate``) →
``formats``, ``output``, ``transport``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from iyclo import __version__
from iyclo.cli import commands, jobs, operate
from iyclo.cli.output import die, json_option, print_json, set_debug
from iyclo.errors import InvalidError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--socket",
    envvar="IYCLO_SOCKET",
    default=None,
    help="Reach the daemon over this JSON socket instead of D-Bus [env: IYCLO_SOCKET].",
)
@click.option(
    "--bus",
    type=click.Choice(["system", "session"]),
    default="system",
    envvar="IYCLO_BUS",
    help="D-Bus bus of the daemon [env: IYCLO_BUS].",
)
@click.version_option(__version__, "--version", prog_name="iyclo")
def cli(debug: bool, socket: str | None, bus: str) -> None:
    """Deploy pods and scheduled jobs: Podman runs them, systemd supervises them.

    Examples:

        iyclo validate examples/*.json

        iyclo apply -f examples/web.json

        iyclo ps

        iyclo --socket /run/iyclo/iyclo.sock inspect web
    """
    set_debug(debug)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
def validate(files: tuple[str, ...], as_json: bool) -> None:
    """Check manifests offline and list every problem of each.

    Exits 0 when all are valid, 1 otherwise.

    Example: `iyclo validate examples/web.json examples/backup.json`
    """
    from pathlib import Path

    from iyclo.manifest.convert import parse_manifest_text

    results: list[dict[str, Any]] = []
    for path in map(Path, files):
        try:
            text = path.read_bytes()
            manifest = parse_manifest_text(text, source=str(path))
        except OSError as exc:
            results.append(
                {"file": str(path), "valid": False, "errors": [exc.strerror or str(exc)]}
            )
        except InvalidError as exc:
            results.append({"file": str(path), "valid": False, "errors": exc.details})
        else:
            results.append(
                {"file": str(path), "valid": True, "kind": manifest.kind, "name": manifest.name}
            )
    if as_json:
        print_json(results)
    else:
        for result in results:
            if result["valid"]:
                click.echo(f"{result['file']}: valid {result['kind']} '{result['name']}'")
            else:
                for error in result["errors"]:
                    line = (
                        error
                        if error.startswith(str(result["file"]))
                        else f"{result['file']}: {error}"
                    )
                    click.echo(line, err=True)
    sys.exit(0 if all(r["valid"] for r in results) else 1)


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema, generated from iyclo's own types."""
    from iyclo.manifest.schema import manifest_schema

    click.echo(json.dumps(manifest_schema(), indent=2))


@cli.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """Print the client's version and the daemon's, when one answers."""
    from iyclo.cli.transport import connect
    from iyclo.errors import IycloError

    click.echo(f"client: iyclo {__version__}")
    opts = ctx.find_root().params
    try:
        transport = connect(opts.get("socket"), opts.get("bus") or "system", timeout=5)
        try:
            click.echo(f"daemon: iyclod {transport.call('version')}")
        finally:
            transport.close()
    except IycloError as exc:
        click.echo(f"daemon: not reachable ({exc.message})")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    Example: `iyclo completion bash > /etc/bash_completion.d/iyclo`
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(cli, {}, "iyclo", "_IYCLO_COMPLETE").source())


@cli.group()
def system() -> None:
    """Install iyclod as a systemd service on this host, or remove it."""


def _system_options(prefix_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """--prefix and --dry-run, which install and uninstall share."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        command = click.option(
            "--dry-run", is_flag=True, help="Print what would be done, and do nothing."
        )(command)
        return click.option(
            "--prefix",
            type=click.Path(file_okay=False),
            default="/",
            show_default=True,
            help=prefix_help,
        )(command)

    return decorate


def _echo_steps(steps: Callable[[], list[Any]], dry_run: bool) -> None:
    from iyclo.errors import IycloError

    try:
        for step in steps():
            click.echo(("would " if dry_run else "") + step.text)
    except IycloError as exc:
        die(exc.message, code=exc.exit_code)


@system.command("install")
@_system_options("Install under this root; nothing is reloaded unless /.")
@click.option("--enable", is_flag=True, help="Also `systemctl enable --now iyclod.service`.")
def system_install(prefix: str, dry_run: bool, enable: bool) -> None:
    """Install iyclod's unit, D-Bus policy and activation file, and a sample config.

    Then `systemctl start iyclod` starts it, and so does the first D-Bus call to
    `io.github.iyclo1`. The unit runs the iyclod of this installation.

    Example: `iyclo system install --dry-run`
    """
    from pathlib import Path

    from iyclo.install import install

    _echo_steps(lambda: install(Path(prefix), dry_run=dry_run, enable=enable), dry_run)


@system.command("uninstall")
@_system_options("Remove from under this root.")
def system_uninstall(prefix: str, dry_run: bool) -> None:
    """Stop iyclod and remove what `install` wrote; the config and the state stay."""
    from pathlib import Path

    from iyclo.install import uninstall

    _echo_steps(lambda: uninstall(Path(prefix), dry_run=dry_run), dry_run)


for command in (
    commands.apply, commands.rollback, commands.pull, commands.diff, commands.ps,
    commands.inspect, commands.history,
    commands.rm, commands.start, commands.stop, commands.restart, commands.reconcile,
    commands.events, commands.health, commands.volumes_, jobs.run, jobs.jobs, jobs.logs,
    commands.daemon_cmd, operate.exec_, operate.stats,
):  # fmt: skip
    cli.add_command(command)
cli.add_command(commands.ps, name="list")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        die("interrupted", code=130)
