"""``iyclo exec``: a command in a running container of a pod, on the caller's own stdio.

The daemon runs ``podman --remote exec`` (``podman.execute``, the step startup checks
use too) with the caller's descriptors as its stdin, stdout and stderr, so a terminal
the caller passed is the exec session's terminal (``--tty``: Podman sizes the session
to it and sets it raw) and the command's exit code is the answer.

A caller that goes away (killed, Ctrl-C, its connection closed) must not leave its
command running in the container, and ending ``podman --remote exec`` does not end the
exec session: Podman's conmon keeps the process. So every command is marked with a
random token in its environment (``IYCLO_EXEC=<token>``, inherited by its children),
and the daemon kills every process of the container's PID namespace that carries it.
A command that clears its own environment escapes the mark; it still ends with the
container.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Sequence
from typing import Any

import structlog

from iyclo.core import naming
from iyclo.core.handover import Handover, close_all
from iyclo.core.kind import Kind
from iyclo.errors import ConflictError, InvalidError, NotFoundError
from iyclo.podman.client import PodmanClient
from iyclo.podman.execute import start_exec
from iyclo.store import Deployment

log = structlog.get_logger("iyclo.exec")

MARK = "IYCLO_EXEC"
STOP_WAIT = 5.0
"""Seconds for ``podman --remote exec`` to end once its command was killed."""


def container_of(record: Deployment, container: str) -> tuple[str, str]:
    """(the manifest's container name, its Podman name) for ``exec`` in pod ``record``;
    "" is the pod's first container. One-line typed errors for what is not there."""
    if Kind.of(record.kind) is not Kind.POD:
        raise InvalidError(
            f"exec: {record.kind.lower()} '{record.name}' is not a pod; exec runs in a "
            "pod's containers"
        )
    names = [str(c.get("name")) for c in record.manifest.get("containers") or []]
    chosen = container or (names[0] if names else "")
    if chosen not in names:
        raise NotFoundError(
            f"exec: pod '{record.name}' has no container '{chosen}' (it has: {', '.join(names)})"
        )
    podman_pod = naming.podman_pod_name(record.name, record.pod_generation)
    return chosen, naming.container_name(podman_pod, chosen)


async def exec_in_pod(
    podman: PodmanClient, record: Deployment, container: str, command: Sequence[str], *,
    tty: bool, interactive: bool, handover: Handover,
) -> int:  # fmt: skip
    """Run ``command`` in ``container`` of pod ``record``; its exit code (as a shell
    gives it: 128 + N for a signal N)."""
    if not command or not command[0]:
        raise InvalidError("exec: give the command to run")
    if not all(isinstance(word, str) and "\0" not in word for word in command):
        raise InvalidError("exec: the command must be strings without NUL characters")
    chosen, podman_name = container_of(record, container)
    what = f"container {chosen} of pod '{record.name}'"
    pid = await _running_pid(podman, podman_name, what)
    stdin, stdout, stderr = fds = await handover.receive(3)
    token = secrets.token_hex(16)
    try:
        proc = await start_exec(
            podman.url, podman_name, command, stdin=stdin, stdout=stdout, stderr=stderr,
            interactive=interactive, tty=tty, env=[f"{MARK}={token}"],
        )  # fmt: skip
    finally:
        close_all(fds)  # the child has its own copies
    log.info("exec started", pod=record.name, container=chosen, pid=proc.pid, tty=tty)
    ended = asyncio.ensure_future(proc.wait())
    left = asyncio.ensure_future(handover.gone())
    try:
        await asyncio.wait({ended, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not ended.done():
            await _end(proc, pid, token, record.name, chosen)
        ended.cancel()
    code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return 128 - code if code < 0 else code


async def _running_pid(podman: PodmanClient, podman_name: str, what: str) -> int:
    try:
        attrs: dict[str, Any] = await podman.inspect_container(podman_name)
    except NotFoundError:
        raise ConflictError(f"exec: {what} is not running (no such container now)") from None
    state = attrs.get("State") or {}
    pid = int(state.get("Pid") or 0)
    if not state.get("Running") or pid <= 0:
        raise ConflictError(f"exec: {what} is not running ({state.get('Status') or 'stopped'})")
    return pid


async def _end(
    proc: asyncio.subprocess.Process, pid: int, token: str, pod: str, container: str
) -> None:
    """The caller went away (or the daemon stops): kill the marked command in the
    container, then the podman client, and reap it."""
    killed = await asyncio.to_thread(kill_marked, pid, token)
    log.info("exec caller gone; killed its command", pod=pod, container=container,
             processes=len(killed))  # fmt: skip
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_WAIT):
            await proc.wait()
            return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def marked(container_pid: int, token: str) -> list[int]:
    """Processes in the PID namespace of ``container_pid`` whose environment carries
    ``IYCLO_EXEC=<token>``."""
    try:
        namespace = os.readlink(f"/proc/{container_pid}/ns/pid")
    except OSError:
        return []
    mark = f"{MARK}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if mark in environ.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue  # gone meanwhile
    return found


def kill_marked(container_pid: int, token: str) -> list[int]:
    killed = marked(container_pid, token)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed
