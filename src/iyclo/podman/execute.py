"""Running a command in a container: ``podman --remote exec``, the one exec step.

Startup checks (``core.probes``) and ``iyclo exec`` (``core.podexec``) both run it. The
remote client speaks to the same Podman service as the bindings, and does what the
bindings cannot (attach the caller's own stdio and terminal to the exec session, resize
it to the caller's terminal at start, pass the command's exit code on as its own).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from typing import IO

Stdio = int | IO[bytes] | None


def podman_binary() -> str:
    return shutil.which("podman") or "/usr/bin/podman"


def exec_argv(
    url: str, container: str, command: Sequence[str], *, interactive: bool = False,
    tty: bool = False, env: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """The argument vector of ``podman --remote exec`` for ``command`` in ``container``;
    ``env`` entries are ``KEY=VALUE`` set for the command."""
    argv = [podman_binary(), "--remote", "--url", url, "exec"]
    if interactive:
        argv.append("--interactive")
    if tty:
        argv.append("--tty")
    for item in env:
        argv += ["--env", item]
    return [*argv, "--", container, *command]


async def start_exec(
    url: str, container: str, command: Sequence[str], *, stdin: Stdio, stdout: Stdio,
    stderr: Stdio, interactive: bool = False, tty: bool = False, env: Sequence[str] = (),
) -> asyncio.subprocess.Process:  # fmt: skip
    """``podman --remote exec`` started with the given stdio (descriptors, or
    ``asyncio.subprocess.PIPE``/``DEVNULL``/``STDOUT``); the caller waits for it."""
    return await asyncio.create_subprocess_exec(
        *exec_argv(url, container, command, interactive=interactive, tty=tty, env=env),
        stdin=stdin, stdout=stdout, stderr=stderr,
    )  # fmt: skip
