"""OOM kills of containers, read from the kernel's log so that they show in status.

Why the kernel log, measured on the test host (Podman 4.3.1, conmon 2.1.6, runc, cgroup v1
memory controller): a container whose only process the kernel OOM-killed exited 137 with
``oom_kill 1`` in its memory cgroup, yet Podman's ``State.OOMKilled`` stayed false (conmon's
cgroup-v1 OOM watch did not report it), and systemd reports ``Result=oom-kill`` only on the
unified memory controller and only for a unit's own cgroup, which does not hold the
containers. The kernel, however, logs every memory-cgroup OOM kill on ``/dev/kmsg`` with the
cgroup whose limit was hit and the victim's cgroup::

    oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/iyclo_web.slice/...,
    task_memcg=/iyclo_web.slice/.../libpod-<64 hex>.scope,task=sh,pid=42,uid=0

cAdvisor, and so the kubelet, detects container OOM kills the same way. One limit: the
kernel rate-limits that summary line (10 per 5 s machine-wide), so in a storm of OOM kills
some are not seen; the container's exit status (137) still shows in status. Kills of any process
of a container count, not only of its main one; the path also says whether the container's
own limit (``resources.memory``) or the pod's slice (``systemd.memoryMax``) was hit.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from attrs import frozen

from iyclo.core import naming

log = structlog.get_logger("iyclo.oom")

KMSG = "/dev/kmsg"
_SCOPE_RE = re.compile(r"^libpod-([0-9a-f]{64})\.scope$")
_FIELD_RE = re.compile(r"(?:^|,)(oom_memcg|task_memcg|task|pid)=([^,]*)")
_KMSG_ESCAPE_RE = re.compile(r"\\x([0-9a-f]{2})")


@frozen
class OomKill:
    """One process of a container killed by the kernel's OOM killer."""

    container_id: str
    pod: str | None
    """The pod whose slice holds the container, when the cgroup path shows it."""
    task: str
    pid: int
    limit: str
    """Whose memory limit was hit: "container", "pod" (its slice), or the cgroup's name."""


def parse_kmsg_line(line: str) -> OomKill | None:
    """The OOM kill a /dev/kmsg record reports, or None for any other record.

    A record is ``PRIORITY,SEQUENCE,TIMESTAMP,FLAGS;MESSAGE``; continuation lines (which
    start with a space) and records that do not name a container's scope are not kills.
    The kernel escapes a backslash in the message as ``\\x5c``, so the slice of pod
    "a-b", ``iyclo_a\\x2db.slice``, arrives as ``iyclo_a\\x5cx2db.slice`` (measured).
    """
    _, sep, message = line.partition(";")
    if not sep or not message.startswith("oom-kill:"):
        return None
    message = _KMSG_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), message)
    fields = dict(_FIELD_RE.findall(message.removeprefix("oom-kill:")))
    task_path = [part for part in fields.get("task_memcg", "").split("/") if part]
    scopes = (m.group(1) for part in task_path if (m := _SCOPE_RE.fullmatch(part)))
    container_id = next(scopes, None)
    if container_id is None:
        return None
    pod = next((n for part in task_path if (n := naming.parse_slice_name(part))), None)
    limit_path = [part for part in fields.get("oom_memcg", "").split("/") if part]
    hit = limit_path[-1] if limit_path else ""
    if hit == f"libpod-{container_id}.scope":
        limit = "container"
    elif pod is not None and naming.parse_slice_name(hit) == pod:
        limit = "pod"
    else:
        limit = hit
    try:
        pid = int(fields.get("pid", "0"))
    except ValueError:
        pid = 0
    return OomKill(container_id, pod, fields.get("task", ""), pid, limit)


def record_kill(
    kills: Mapping[str, Any], container: str, kill: OomKill, at: float
) -> dict[str, Any]:
    """The store's ``oomKills`` status after one more kill of ``container``.

    Keyed by container name and tied to its ID: a new generation's container starts at 0.
    """
    previous = kills.get(container)
    same = isinstance(previous, Mapping) and previous.get("containerId") == kill.container_id
    count = int(previous["count"]) + 1 if same and previous is not None else 1
    entry = {"containerId": kill.container_id, "count": count, "lastAt": at,
             "task": kill.task, "limit": kill.limit}  # fmt: skip
    return {**kills, container: entry}


def oom_fields(row: Mapping[str, Any], kills: Mapping[str, Any]) -> dict[str, Any]:
    """``oomKilled`` (an OOM kill hit the container since it last started, to the second)
    and ``oomKills`` (kills of this container seen in all) for one status row."""
    info = kills.get(str(row.get("name")))
    if not isinstance(info, Mapping) or info.get("containerId") != row.get("id"):
        return {"oomKilled": False, "oomKills": 0}
    started = float(row.get("startedAt") or 0)
    return {"oomKilled": float(info["lastAt"]) >= started, "oomKills": int(info["count"])}


class KmsgOomWatch:
    """Follows the kernel log in a thread of its own and reports containers' OOM kills.

    Starts at the end of the log: kills from before the daemon started are not replayed
    (the store keeps what was seen). Without a readable /dev/kmsg (no CAP_SYSLOG, a
    container without it) it logs one warning and reports nothing.
    """

    def __init__(self, on_kill: Callable[[OomKill], object], path: str = KMSG) -> None:
        self._on_kill = on_kill
        self._path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1

    def start(self) -> bool:
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("OOM kills will not show in status", path=self._path, error=str(exc))
            return False
        with contextlib.suppress(OSError):  # not seekable: a pipe in tests
            os.lseek(self._fd, 0, os.SEEK_END)
        self._thread = threading.Thread(target=self._run, name="iyclo-kmsg", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop the thread (it wakes every 0.5 s) and close the log; blocking."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 8192)
            except (BlockingIOError, BrokenPipeError):
                continue  # EPIPE: the ring buffer overwrote records we had not read yet
            except OSError as exc:
                log.warning("cannot read the kernel log any more", error=str(exc))
                return
            if not data:
                if self._stop.wait(0.5):  # a writer closed (tests); kmsg never ends
                    return
                continue
            for line in data.decode("utf-8", "replace").splitlines():
                kill = parse_kmsg_line(line)
                if kill is not None:
                    self._on_kill(kill)
