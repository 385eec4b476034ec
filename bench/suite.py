"""One bench run: boot a private test host, start iyclod in it, take every figure of
issue #15 beside its baseline, and shut the host down."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.daemon_fixtures import Daemon

from bench.measure import (
    Row,
    by_hand,
    by_hand_in_parallel,
    loop_inside,
    ms,
    one_pod,
    parallel,
    rate,
    restart_until_ready,
    row,
    rss_mib,
    timed_apply,
)
from iyclo_testhost import DEFAULT_BASE, Host, boot, ensure_busybox_image

ROOT = Path(__file__).resolve().parent.parent
RESTARTS = 3
"""SIGKILL + restart is timed this many times (one start is one sample of a busy host)."""


def machine(host: Host) -> dict[str, Any]:
    """What the figures depend on: the README quotes them with this."""
    release = dict(
        line.split("=", 1)
        for line in host.run(["cat", "/etc/os-release"]).stdout.splitlines()
        if "=" in line
    )
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.machine())  # fmt: skip
    return {
        "debian": release.get("VERSION_ID", "").strip('"'),
        "os": release.get("PRETTY_NAME", "").strip('"'),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
        "python": platform.python_version(),
        "podman": host.run(["podman", "--version"]).stdout.split()[-1],
        "systemd": host.run(["systemctl", "--version"]).stdout.split()[1],
    }


def _fill(daemon: Daemon, start: int, stop: int) -> list[float]:
    return [timed_apply(daemon, f"pod-{index:03}") for index in range(start, stop)]


def run(pods: int, rounds: int) -> tuple[dict[str, Any], list[Row]]:
    DEFAULT_BASE.mkdir(parents=True, exist_ok=True)  # a fresh root has none yet
    base = Path(tempfile.mkdtemp(prefix="bench-", dir=DEFAULT_BASE))
    host = boot(base / "host", name=f"bench{os.getpid()}", timeout=120)
    rows: list[Row] = []
    try:
        ensure_busybox_image(host)
        host.install_dbus_policy(ROOT / "dbus" / "io.github.iyclo1.conf")
        about = machine(host)
        daemon = Daemon(host)
        daemon.start()
        iyclo = f"PYTHONPATH={ROOT / 'src'} {sys.executable} -m iyclo.cli"
        ps = f"{iyclo} --socket /var/lib/iyclo/iyclo.sock ps"
        rows.append(row("iyclo --version", ms(loop_inside(host, f"{iyclo} --version", rounds)),
                        ms(loop_inside(host, "podman --version", rounds)), "≤ 1.2x",
                        "vs podman --version"))  # fmt: skip
        rows.append(row("iyclo ps, 0 pods", ms(loop_inside(host, ps, rounds)),
                        ms(loop_inside(host, "podman ps", rounds)), "≤ 1.2x",
                        "vs podman ps"))  # fmt: skip
        rss_empty = rss_mib(host)
        hand_at_0 = by_hand(host, rounds)
        rows.append(row("apply → ready, 1 container",
                        ms(statistics.median(_fill(daemon, 0, rounds))),
                        ms(hand_at_0), "≤ 1.1x",
                        "median; by hand: pod create + create + systemd-run"))  # fmt: skip
        early = _fill(daemon, rounds, 10) if rounds < 10 else []
        late = _fill(daemon, max(rounds, 10), pods)
        first_ten = statistics.median(([] if rounds >= 10 else early) or late[:10])
        rows.append(row(f"per-pod apply at {pods} pods", ms(statistics.median(late[-10:])),
                        ms(first_ten) + " (at 10)", "≤ 1.1x",
                        "median of the last ten applies vs of the first ten"))  # fmt: skip
        rows.append(row(f"made by hand at {pods} pods", ms(by_hand(host, rounds)),
                        ms(hand_at_0) + " (at 0)", "-",
                        "how much Podman and systemd themselves slow down"))  # fmt: skip
        one = timed_apply(daemon, "solo")

        def apply_one(index: int) -> None:
            daemon.call("apply", manifest=one_pod(f"par-{index}"))

        rows.append(row("10 applies in parallel", ms(parallel(10, apply_one)),
                        ms(one) + " (one)", "≤ 3x", f"at {pods} pods, 10 clients"))  # fmt: skip
        rows.append(row("10 made by hand in parallel", ms(by_hand_in_parallel(host, 10)),
                        ms(by_hand(host, 1)) + " (one)", "-",
                        "what Podman and systemd allow at once here"))  # fmt: skip
        rows.append(row(f"iyclo ps, {pods + 11} pods", ms(loop_inside(host, ps, rounds)),
                        ms(loop_inside(host, "podman ps", rounds)), "≤ 1.0x",
                        "vs podman ps"))  # fmt: skip
        rows.extend(_reads(daemon, host, rounds))
        rows.append(row("daemon RSS", f"{rss_mib(host):.1f} MiB ({pods + 11} pods)",
                        f"{rss_empty:.1f} MiB (0 pods)", "≤ 60 MB", "VmRSS of iyclod"))  # fmt: skip
        restarts = [restart_until_ready(daemon) for _ in range(RESTARTS)]
        seconds = statistics.median(s for s, _ in restarts)
        restarted = sum(r for _, r in restarts)
        rows.append(row(f"SIGKILL + restart, {pods + 11} pods", ms(seconds),
                        f"{restarted} containers restarted", "≤ 1500 ms, 0 restarted",
                        f"until READY=1 (start-up reconcile done); median of "
                        f"{', '.join(ms(s) for s, _ in restarts)}"))  # fmt: skip
        daemon.stop()
    finally:
        host.shutdown(timeout=300)
        shutil.rmtree(base, ignore_errors=True)
    return about, rows


def _reads(daemon: Daemon, host: Host, rounds: int) -> list[Row]:
    import podman  # the baseline: Podman's own REST list, through the same bindings

    calls = 1000  # per client: a rate over fewer calls moved by half between runs
    url = host.podman_url
    podman_rate = rate(1, max(20, calls // 5), lambda: podman.PodmanClient(base_url=url),
                       lambda c: c.containers.list(all=True))  # fmt: skip
    out = []
    for clients in (1, 8):
        socket = rate(clients, calls, daemon.client, lambda c: c.call("get", name="pod-000"))
        bus = rate(clients, calls, daemon.dbus, lambda c: c.call("get", name="pod-000"))
        baseline = f"{podman_rate:.0f}/s (podman list)"
        out.append(row(f"reads/s, socket get, {clients} client(s)", f"{socket:.0f}/s",
                       baseline, "≥ 5000/s"))  # fmt: skip
        out.append(row(f"reads/s, D-Bus Get, {clients} client(s)", f"{bus:.0f}/s",
                       baseline, "≥ 2000/s"))  # fmt: skip
    return out
