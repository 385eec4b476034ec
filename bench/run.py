"""iyclo's speed and memory, side by side with plain podman and systemd-run, in one run.

Run on demand (never as test assertions):

    .venv/bin/python -m bench.run [--rounds N] [--json]

It boots a private test host, starts iyclod in it and measures, each next to its
baseline doing the same work by hand: CLI start-up, reads per second over the JSON
socket and D-Bus (against Podman's REST container list), apply-to-running latency of
a one-container pod (against podman pod create + create + systemd-run pod start), and
the daemon's resident memory with 0 and with 10 pods. Every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from tests.daemon_fixtures import Daemon, pod_manifest

from iyclo_testhost import DEFAULT_BASE, Host, boot, ensure_busybox_image

ROOT = Path(__file__).parent.parent
PY = sys.executable


def _loop_inside(host: Host, command: str, rounds: int) -> float:
    """Mean seconds per run of a shell command, timed inside the host (no nsenter cost)."""
    script = (
        f"s=$(date +%s%N); i=0; while [ $i -lt {rounds} ]; do {command} >/dev/null 2>&1; "
        f"i=$((i+1)); done; e=$(date +%s%N); echo $(( (e - s) / {rounds} ))"
    )
    nanos = int(host.run(["sh", "-c", script], timeout=600).stdout.strip())
    return nanos / 1e9


def _rate(fn: Callable[[], Any], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return rounds / (time.perf_counter() - started)


def _rss_kb(host: Host) -> int:
    pid = host.run(["systemctl", "show", "-P", "MainPID", "iyclod.service"]).stdout.strip()
    status = host.run(["cat", f"/proc/{pid}/status"]).stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _apply_latency(daemon: Daemon, rounds: int) -> float:
    times = []
    for index in range(rounds):
        manifest = pod_manifest(f"bench-{index}")
        manifest["containers"] = manifest["containers"][:1]
        manifest["containers"][0]["stopTimeout"] = "0s"
        started = time.perf_counter()
        daemon.call("apply", manifest=manifest)
        times.append(time.perf_counter() - started)
    for index in range(rounds):
        daemon.call("remove", name=f"bench-{index}")
    return statistics.median(times)


def _baseline_latency(host: Host, rounds: int) -> float:
    times = []
    for index in range(rounds):
        pod = f"plain-{index}"
        started = time.perf_counter()
        host.run(["podman", "pod", "create", "--name", pod])
        host.run(["podman", "create", "--pod", pod, "--name", f"{pod}-main", "--stop-timeout",
                  "0", "localhost/busybox:latest", "sleep", "100000"])  # fmt: skip
        host.run(["systemd-run", f"--unit={pod}", "-p", "Type=forking", "--slice=bench.slice",
                  "/usr/bin/podman", "pod", "start", pod])  # fmt: skip
        times.append(time.perf_counter() - started)
    for index in range(rounds):  # the pod first: a bare unit would wait out SIGTERM
        host.run(["podman", "pod", "rm", "-f", "-t", "0", f"plain-{index}"], check=False)
        host.run(["systemctl", "stop", f"plain-{index}"], check=False)
    return statistics.median(times)


def measure(rounds: int) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    base = Path(tempfile.mkdtemp(prefix="bench-", dir=DEFAULT_BASE))
    host = boot(base / "host", name=f"bench{int(time.time())}")
    try:
        ensure_busybox_image(host)
        host.install_dbus_policy(ROOT / "dbus" / "io.github.iyclo1.conf")
        daemon = Daemon(host)
        daemon.start()
        iyclo = f"PYTHONPATH={ROOT / 'src'} {PY} -m iyclo.cli --socket /var/lib/iyclo/iyclo.sock"
        cli_rounds = max(5, rounds // 4)
        rows.append(("CLI start-up (--version)",
                     f"{_loop_inside(host, f'{iyclo} --version', cli_rounds) * 1000:.0f} ms",
                     f"{_loop_inside(host, 'podman --version', cli_rounds) * 1000:.0f} ms",
                     "iyclo --version vs podman --version"))  # fmt: skip
        rows.append(("list (CLI, 0 pods)",
                     f"{_loop_inside(host, f'{iyclo} ps', cli_rounds) * 1000:.0f} ms",
                     f"{_loop_inside(host, 'podman ps', cli_rounds) * 1000:.0f} ms",
                     "iyclo ps vs podman ps"))  # fmt: skip
        rss_empty = _rss_kb(host)
        rows.append(("apply → running, 1 container",
                     f"{_apply_latency(daemon, rounds) * 1000:.0f} ms",
                     f"{_baseline_latency(host, rounds) * 1000:.0f} ms",
                     "median; baseline: pod create + create + systemd-run pod start"))  # fmt: skip
        for index in range(10):
            manifest = pod_manifest(f"resident-{index}")
            manifest["containers"] = manifest["containers"][:1]
            manifest["containers"][0]["stopTimeout"] = "0s"
            daemon.call("apply", manifest=manifest)
        reads = rounds * 50
        with daemon.client() as rpc, daemon.dbus() as bus:
            socket_rate = _rate(lambda: rpc.call("get", name="resident-0"), reads)
            bus_rate = _rate(lambda: bus.call("get", name="resident-0"), reads)
        import podman  # the baseline is Podman's own REST list, through the same bindings

        with podman.PodmanClient(base_url=host.podman_url) as client:
            podman_rate = _rate(lambda: client.containers.list(all=True), max(20, reads // 5))
        rows.append(("reads/s, JSON socket get", f"{socket_rate:.0f}/s",
                     f"{podman_rate:.0f}/s", "baseline: Podman REST container list"))  # fmt: skip
        rows.append(("reads/s, D-Bus Get", f"{bus_rate:.0f}/s", f"{podman_rate:.0f}/s",
                     "baseline: Podman REST container list"))  # fmt: skip
        rows.append(("daemon RSS", f"{rss_empty / 1024:.1f} MiB (0 pods)",
                     f"{_rss_kb(host) / 1024:.1f} MiB (10 pods)", "VmRSS of iyclod"))  # fmt: skip
        for index in range(10):
            daemon.call("remove", name=f"resident-{index}")
        daemon.stop()
    finally:
        host.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = measure(max(1, min(args.rounds, 100)))
    if args.json:
        print(json.dumps([dict(zip(("what", "iyclo", "baseline", "note"), r, strict=True))
                          for r in rows], indent=2))  # fmt: skip
        return
    print(f"| {'what':<30} | {'iyclo':>22} | {'baseline':>22} | note")
    print(f"|{'-' * 32}|{'-' * 24}|{'-' * 24}|------")
    for what, ours, theirs, note in rows:
        print(f"| {what:<30} | {ours:>22} | {theirs:>22} | {note}")


if __name__ == "__main__":
    main()
