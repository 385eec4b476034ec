"""CLI commands that operate what runs: `exec` and `stats` (`logs -f` is `logs`'s)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from iyclo.cli.output import fail, json_option
from iyclo.cli.table import Table
from iyclo.cli.transport import daemon
from iyclo.errors import InvalidError

EXEC_USAGE = "usage: iyclo exec [-i] [-t] POD [CONTAINER] -- COMMAND [ARG...]"


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode while the block runs (keys go to the command
    as typed: Ctrl-C is the command's), restored however the block ends."""
    if not enabled:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command(
    name="exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-i", "--interactive", is_flag=True, help="Keep the command's stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (this one).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def exec_(ctx: click.Context, interactive: bool, tty: bool, args: tuple[str, ...]) -> None:
    """Run a command in a running container of a pod, as `docker exec` does.

    CONTAINER is one of the pod's containers (default: its first). The command runs
    through iyclod (who may: root, the deploy group, or whom polkit grants
    `io.github.iyclo1.exec`) on this terminal's stdin, stdout and stderr; its exit code
    is this command's. Ending this command (Ctrl-C without `-t`, a kill) ends it in the
    container too. With `-t` the terminal is put in raw mode and sized at the start.

    Example: `iyclo exec -it web -- sh`, `iyclo exec web side -- cat /etc/hostname`
    """
    if "--" not in args:
        fail(InvalidError(f"exec: put the command after --; {EXEC_USAGE}"))
    split = args.index("--")
    target, command = args[:split], list(args[split + 1 :])
    if not 1 <= len(target) <= 2 or not command:
        fail(InvalidError(f"exec: {EXEC_USAGE}"))
    if tty and not os.isatty(0):
        fail(InvalidError("exec: --tty needs a terminal on stdin"))
    name, container = target[0], target[1] if len(target) > 1 else ""
    with daemon(ctx) as client, raw_terminal(0, tty):
        code = client.call_passing(
            "exec", [0, 1, 2], name=name, container=container, command=command, tty=tty,
            interactive=interactive,
        )  # fmt: skip
    sys.exit(int(code))


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}GiB"


def cpu_time(nsec: int | None) -> str:
    return "-" if nsec is None else f"{nsec / 1e9:.2f}s"


def cpu_rate(now: int | None, before: int | None, elapsed_ns: int) -> str:
    """CPU use between two samples, in percent of one CPU; "-" without two figures."""
    if now is None or before is None or elapsed_ns <= 0:
        return "-"
    return f"{max(0, now - before) * 100 / elapsed_ns:.1f}%"


def _rows(sample: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for pod in sample["pods"]:
        yield pod["name"], pod
        for container in pod["containers"]:
            yield f"  {pod['name']}/{container['name']}", container


def print_stats(sample: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """One table: each pod (its slice's figures), then its containers (Podman's)."""
    before = dict(_rows(previous)) if previous else {}
    elapsed = sample["sampledNs"] - previous["sampledNs"] if previous else 0
    table = Table("NAME", "STATE", "CPU", "CPU%", "MEM", "MEM LIMIT", "PIDS")
    for label, row in _rows(sample):
        earlier = before.get(label, {})
        tasks = row.get("tasks", row.get("pids"))
        table.add_row(
            label, str(row.get("state", "")), cpu_time(row.get("cpuNsec")),
            cpu_rate(row.get("cpuNsec"), earlier.get("cpuNsec"), elapsed),
            size(row.get("memoryBytes")), size(row.get("memoryLimit")),
            "-" if tasks is None else str(tasks),
        )  # fmt: skip
    table.print()


@click.command()
@click.argument("names", nargs=-1)
@click.option(
    "--watch/--no-stream",
    default=False,
    help="Refresh every --interval seconds (Ctrl-C to stop), or show once.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    help="With --watch: stop after this many samples (0: until Ctrl-C).",
)
@json_option
@click.pass_context
def stats(ctx: click.Context, *, names: tuple[str, ...], watch: bool, interval: float,
          count: int, as_json: bool) -> None:  # fmt: skip
    """CPU, memory and tasks of pods (default: all) and of their containers.

    A pod's figures are systemd's accounting of its slice (every process of the pod);
    a container's are Podman's. CPU is the time used so far; CPU% (with --watch) is the
    use between two samples, 100% being one CPU. `-` is a figure the host does not keep
    (cgroups v1 keeps no CPU time for a slice), never a guess. `--json`: each sample as
    the daemon sends it, one line each.

    Example: `iyclo stats web`, `iyclo stats --watch --count 5`
    """
    previous: dict[str, Any] | None = None
    taken = 0
    with daemon(ctx) as client:
        while True:
            sample = client.call("stats", names=list(names))
            taken += 1
            if as_json:
                sys.stdout.write(json.dumps(sample) + "\n")
                sys.stdout.flush()
            else:
                if watch and previous is not None and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # clear the terminal, as watch(1) does
                print_stats(sample, previous)
            if not watch or (count and taken >= count):
                return
            previous = sample
            time.sleep(interval)
