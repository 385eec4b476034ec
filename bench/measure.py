"""How each figure of issue #15 is measured, each next to its baseline doing the same
work by hand in the same run. Every loop is bounded in count; nothing here asserts."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.daemon_fixtures import Daemon, pod_manifest

from iyclo_testhost import Host

Row = dict[str, str]


def row(what: str, iyclo: str, baseline: str, goal: str, note: str = "") -> Row:
    return {"what": what, "iyclo": iyclo, "baseline": baseline, "goal": goal, "note": note}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def loop_inside(host: Host, command: str, rounds: int) -> float:
    """Median seconds of one run of a shell command, timed inside the host (no nsenter
    cost in the figure); the median, so one run slowed by a neighbour does not count."""
    script = (
        f"i=0; while [ $i -lt {rounds} ]; do s=$(date +%s%N); {command} >/dev/null 2>&1; "
        f"e=$(date +%s%N); echo $((e - s)); i=$((i+1)); done"
    )
    lines = host.run(["sh", "-c", script], timeout=900).stdout.split()
    return statistics.median(int(n) for n in lines) / 1e9


def one_pod(name: str) -> dict[str, Any]:
    manifest = pod_manifest(name)
    manifest["containers"] = manifest["containers"][:1]
    manifest["containers"][0]["stopTimeout"] = "0s"
    return manifest


def timed_apply(daemon: Daemon, name: str) -> float:
    started = time.perf_counter()
    daemon.call("apply", manifest=one_pod(name))
    return time.perf_counter() - started


def make_by_hand(host: Host, pod: str) -> None:
    """What an apply of ``one_pod`` does, done by hand: pod create + create + systemd-run
    of the pod's start."""
    host.run(["podman", "pod", "create", "--name", pod])
    host.run(["podman", "create", "--pod", pod, "--name", f"{pod}-main", "--stop-timeout",
              "0", "localhost/busybox:latest", "sleep", "100000"])  # fmt: skip
    host.run(["systemd-run", f"--unit={pod}", "-p", "Type=forking", "--slice=bench.slice",
              "/usr/bin/podman", "pod", "start", pod])  # fmt: skip


def remove_by_hand(host: Host, pods: list[str]) -> None:
    for pod in pods:  # the pod first: a bare unit would wait out SIGTERM
        host.run(["podman", "pod", "rm", "-f", "-t", "0", pod], check=False)
        host.run(["systemctl", "stop", pod], check=False)


def by_hand(host: Host, rounds: int) -> float:
    """Median seconds of ``make_by_hand``."""
    times = []
    for index in range(rounds):
        started = time.perf_counter()
        make_by_hand(host, f"plain-{index}")
        times.append(time.perf_counter() - started)
    remove_by_hand(host, [f"plain-{index}" for index in range(rounds)])
    return statistics.median(times)


def by_hand_in_parallel(host: Host, count: int) -> float:
    """Wall-clock seconds of ``count`` ``make_by_hand`` at once: what Podman and systemd
    themselves allow in parallel on this machine."""
    seconds = parallel(count, lambda index: make_by_hand(host, f"parallel-{index}"))
    remove_by_hand(host, [f"parallel-{index}" for index in range(count)])
    return seconds


def parallel(count: int, work: Callable[[int], None]) -> float:
    """Wall-clock seconds for ``count`` threads each doing ``work(index)`` once."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:  # reported after the join: a bench must not hang
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def rate(clients: int, calls: int, make: Callable[[], Any], call: Callable[[Any], Any]) -> float:
    """Calls per second with ``clients`` connections at once, ``calls`` each."""
    made = [make() for _ in range(clients)]

    def work(index: int) -> None:
        for _ in range(calls):
            call(made[index])

    try:
        seconds = parallel(clients, work)
    finally:
        for client in made:
            client.close()
    return clients * calls / seconds


def rss_mib(host: Host) -> float:
    pid = host.run(["systemctl", "show", "-P", "MainPID", "iyclod.service"]).stdout.strip()
    status = host.run(["cat", f"/proc/{pid}/status"]).stdout
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return kib / 1024


def started_containers(host: Host) -> dict[str, str]:
    """Container id → when it started, for every running container."""
    out = host.run(["podman", "ps", "--format", "json"], timeout=300).stdout
    return {c["Id"]: str(c.get("StartedAt")) for c in json.loads(out or "[]")}


def restart_until_ready(daemon: Daemon) -> tuple[float, int]:
    """SIGKILL iyclod, start it again; seconds until it is ready (``Type=notify``: the
    start returns at READY=1, sent after the start-up reconcile) and how many containers
    were restarted or re-made meanwhile."""
    before = started_containers(daemon.host)
    daemon.kill()
    started = time.perf_counter()
    daemon.start()
    seconds = time.perf_counter() - started
    after = started_containers(daemon.host)
    return seconds, sum(1 for cid, when in before.items() if after.get(cid) != when)
