"""Operating what runs (issue #13) on the real test host: ``iyclo exec`` with and
without a terminal, ``iyclo logs -f`` and ``iyclo stats``, through the real CLI on both
fronts (the JSON socket and the host's system bus).

Every wait is bounded; the figures each test measured are printed (``-s`` shows them).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator

import pytest

from tests.daemon_fixtures import Daemon, fast, pod_manifest, remove, wait_for
from tests.nobody import NobodyPython
from tests.test_fronts_host import _as, _socat
from tests.test_jobs_host import YEARLY, job

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

POD = "ops"
FRONTS = ["socket", "dbus"]


@pytest.fixture(scope="module")
def pod(daemon: Daemon) -> Iterator[str]:
    """A running two-container pod; its main container prints a line at start."""
    manifest = fast(pod_manifest(POD))
    manifest["containers"][0]["command"] = ["sh", "-c", "echo ops-started; exec sleep 100000"]
    daemon.call("apply", manifest=manifest)
    yield POD
    remove(daemon, POD)


def _pgrep(daemon: Daemon, pattern: str) -> list[str]:
    """Processes of the test host whose command line matches ``pattern``."""
    found = daemon.host.run(["pgrep", "-a", "-f", pattern], check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("via", FRONTS)
def test_exec_passes_stdio_and_the_exit_code(daemon: Daemon, pod: str, via: str) -> None:
    started = time.monotonic()
    got = daemon.cli("exec", pod, "--", "sh", "-c", "echo out; echo err >&2; exit 7", via=via)
    took = time.monotonic() - started
    assert (got.returncode, got.stdout, got.stderr) == (7, "out\n", "err\n"), got
    # the second container by name; stdin with -i
    side = daemon.cli("exec", "-i", pod, "side", "--", "sh", "-c", "cat; hostname", via=via,
                      stdin="from stdin\n")  # fmt: skip
    assert side.returncode == 0, side
    assert side.stdout.startswith("from stdin\n"), side
    print(f"\n[{via}] exec exit 7 passed through in {took:.2f}s; stdin reached container side")


@pytest.mark.parametrize("via", FRONTS)
def test_exec_with_a_terminal(daemon: Daemon, pod: str, via: str) -> None:
    """``-it`` on a pty of the test's: the command's stdin is a terminal, what is typed
    reaches it, and its exit code comes back."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    env = {**daemon._cli_env(via), "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iyclo.cli", "exec", "-it", pod, "--", "sh"],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    typed = False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if not typed and (b"#" in output or b"$" in output):  # the shell's prompt
                os.write(master, b"tty; stty size; echo typed-$((40 + 2)); exit 5\n")
                typed = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:  # EIO: the client closed its side
                    break
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"exec -it did not end; it showed {output!r}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert code == 5, text
    assert "/dev/pts/" in text, text
    assert "typed-42" in text, text
    assert "33 111" in text, text  # the session has the size of the caller's terminal
    terminal = "/dev/pts/" + text.split("/dev/pts/")[1].split()[0]
    print(f"\n[{via}] exec -it: exit 5, the command's terminal {terminal}, 33x111 like ours")


@pytest.mark.parametrize("via", FRONTS)
def test_exec_errors_are_one_line(daemon: Daemon, pod: str, via: str) -> None:
    missing = daemon.cli("exec", "nosuchpod", "--", "true", via=via)
    assert missing.returncode == 3, missing
    assert missing.stderr.count("\n") == 1, missing
    assert "nosuchpod" in missing.stderr, missing
    container = daemon.cli("exec", pod, "nosuch", "--", "true", via=via)
    assert container.returncode == 3, container
    assert f"exec: pod '{pod}' has no container 'nosuch' (it has: main, side)" in container.stderr
    assert container.stderr.count("\n") == 1, container


_EXEC_AS = """
import sys
import termios
from iyclo.client.dbus import DBusClient
from iyclo.errors import IycloError
client = DBusClient(bus_address=sys.argv[1], timeout=10)
try:
    print("ran", client.call_passing("exec", [0, 1, 2], name=sys.argv[2], command=["true"]))
except IycloError as exc:
    print(type(exc).__name__, exc.message)
"""


def test_exec_refuses_who_may_not(daemon: Daemon, pod: str, nobody_python: NobodyPython) -> None:
    """uid nobody is refused ``exec`` on both fronts with the typed error, before any
    descriptor is asked for (the socket sends no ``fds`` notification)."""
    # nobody cannot reach the host's bus through /proc/<pid>/root: run it in the host,
    # from a copy of its code in the host's own /var/tmp (its /tmp is private)
    top = nobody_python.pythonpath.split(os.pathsep)[0]
    inside = "/var/tmp/iyclo-ops-nobody"
    shutil.rmtree(daemon.host.path(inside), ignore_errors=True)
    shutil.copytree(top, daemon.host.path(inside))
    denied = daemon.host.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", nobody_python.python,
         "-c", _EXEC_AS, "unix:path=/run/dbus/system_bus_socket", pod],
        env={"PYTHONPATH": f"{inside}{os.pathsep}{inside}/site", "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )  # fmt: skip
    shutil.rmtree(daemon.host.path(inside), ignore_errors=True)
    assert denied.stdout.startswith(
        "AccessDeniedError exec: access denied: uid 65534 (nobody) may not exec;"
    ), denied
    group = int(daemon.host.run(["stat", "-c", "%g", "/var/lib/iyclo/iyclo.sock"]).stdout)
    (reply,) = _socat(daemon, _as(65534, group),
                      {"method": "exec", "params": {"name": pod, "command": ["true"]}})  # fmt: skip
    assert reply["error"]["data"]["type"] == "AccessDenied", reply
    assert reply["error"]["message"].startswith("exec: access denied: uid 65534"), reply
    print(f"\nnobody refused on D-Bus: {denied.stdout.strip()}")
    print(f"nobody refused on the socket: {reply['error']['message']}")


@pytest.mark.parametrize("via", FRONTS)
def test_exec_ends_with_its_client(daemon: Daemon, pod: str, via: str) -> None:
    """SIGKILL to the client: the daemon sees the caller gone and kills the command in
    the container (and its podman client), nothing left running."""
    marker = f"sleep 4{FRONTS.index(via)}4{FRONTS.index(via)}"
    proc = daemon.cli_stream("exec", pod, "--", "sh", "-c", marker, via=via)
    try:
        wait_for(lambda: _pgrep(daemon, f"^{marker}$"), timeout=30, what=f"{marker} to run")
        assert _pgrep(daemon, "podman --remote --url .* exec"), "no podman exec in the daemon"
        proc.kill()
        killed = time.monotonic()
        wait_for(lambda: not _pgrep(daemon, f"^{marker}$"), timeout=20,
                 what=f"{marker} to be killed")  # fmt: skip
        took = time.monotonic() - killed
        wait_for(lambda: not _pgrep(daemon, "podman --remote --url .* exec"), timeout=20,
                 what="the daemon's podman exec to end")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    print(f"\n[{via}] client killed: its command gone from the container after {took:.2f}s")


def _journal_line(daemon: Daemon, pod: str, text: str) -> None:
    """A line written by the pod's main container (its PID 1's stdout: the journal)."""
    daemon.host.run(["podman", "exec", f"iyclo-{pod}-g1_main", "sh", "-c",
                     f"echo {text} > /proc/1/fd/1"])  # fmt: skip


def _followers(daemon: Daemon) -> list[str]:
    return _pgrep(daemon, "journalctl --no-pager --follow")


def _follow(
    daemon: Daemon, name: str, via: str, first: str, write: Callable[[str], None]
) -> tuple[float, float, int]:
    """`iyclo logs -f NAME` until it shows ``first``, then a line ``write`` makes after it
    started; Ctrl-C; the daemon's journalctl must be gone (reaped, no zombie). The lag
    of the new line, the time journalctl took to go, and the lines read."""
    before = _followers(daemon)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iyclo.cli", "logs", "-f", name, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=daemon._cli_env(via),
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[dict[str, str]] = []

    pending = bytearray()

    def read_until(text: str) -> bool:
        # Whatever the pipe holds now, read from its descriptor: a buffered readline can
        # keep lines in its buffer where select does not see them, and one line per poll
        # fell behind the journal's earlier lines on a busy host.
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        for _ in range(1000):
            ready, _, _ = select.select([fd], [], [], 0.5 if not pending and not seen else 0.05)
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending.extend(chunk)
        *lines, rest = bytes(pending).split(b"\n")
        pending[:] = rest
        seen.extend(json.loads(line) for line in lines if line.strip())
        return any(text in line.get("message", "") for line in seen)

    try:
        wait_for(lambda: len(_followers(daemon)) > len(before), timeout=30,
                 what="the daemon's journalctl --follow")  # fmt: skip

        def shown() -> list[str]:
            return [line["message"] for line in seen]

        if first:
            wait_for(lambda: read_until(first), timeout=30,
                     what=lambda: f"{name}'s earlier line among {shown()}")  # fmt: skip
        text = f"written-after-start-{time.time_ns()}"
        written = time.monotonic()
        write(text)
        wait_for(lambda: read_until(text), timeout=30,
                 what=lambda: f"the new line to follow after {shown()}")  # fmt: skip
        lag = time.monotonic() - written
        # the tail read, then journalctl from just after it: no line shown twice
        keys = [(line["at"], line["identifier"], line["message"]) for line in seen]
        assert len(keys) == len(set(keys)), shown()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)  # Ctrl-C ends it (click's "Aborted!", exit 1)
        stopped = time.monotonic()
        wait_for(lambda: _followers(daemon) == before, timeout=20,
                 what="the daemon's journalctl to be reaped")  # fmt: skip
        reaped = time.monotonic() - stopped
        zombies = daemon.host.run(["ps", "-eo", "stat=,comm="], check=False).stdout
        assert not [z for z in zombies.splitlines() if z.startswith("Z") and "journalctl" in z]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    return lag, reaped, len(seen)


@pytest.mark.parametrize("via", FRONTS)
def test_logs_follow_sees_new_lines_and_leaves_nothing(daemon: Daemon, pod: str, via: str) -> None:
    lag, reaped, lines = _follow(
        daemon, pod, via, "ops-started", lambda text: _journal_line(daemon, pod, text)
    )
    print(f"\n[{via}] logs -f: new line shown {lag:.2f}s after it was written; "
          f"journalctl gone {reaped:.2f}s after Ctrl-C ({lines} lines read)")  # fmt: skip


def test_logs_follow_a_job(daemon: Daemon) -> None:
    """A job's unit journal, followed: every run's output, a run started after the
    follower included. (Followed from a line of an earlier run, as the pod's is from its
    first line: journalctl shows what is written from the moment it has read the tail.)"""
    name = "ops-job"
    daemon.call("apply", manifest=job(name, YEARLY, "echo first-run-line"))
    try:
        daemon.call("run_job", name=name)
        wait_for(lambda: daemon.call("runs", name=name)[-1].get("state") == "succeeded",
                 timeout=30, what="the first run")  # fmt: skip

        def run(text: str) -> None:
            daemon.call("apply", manifest=job(name, YEARLY, f"echo {text}"))
            daemon.call("run_job", name=name)

        lag, reaped, lines = _follow(daemon, name, "socket", "first-run-line", run)
    finally:
        remove(daemon, name, purge_history=True)
    print(
        f"\n[socket] logs -f job: the new run's line shown {lag:.2f}s after the run was "
        f"asked for; journalctl gone {reaped:.2f}s after Ctrl-C ({lines} lines read)"
    )


@pytest.mark.parametrize("via", FRONTS)
def test_stats_on_a_running_pod(daemon: Daemon, pod: str, via: str) -> None:
    got = daemon.cli("stats", pod, "--json", via=via)
    assert got.returncode == 0, got
    sample = json.loads(got.stdout)
    (row,) = sample["pods"]
    assert (row["name"], row["slice"]) == (pod, f"iyclo_{pod}.slice")
    # systemd's account of the slice: memory and tasks on every host here; CPU where the
    # host keeps it (cgroups v1: none for a slice, shown as null, never 0)
    assert isinstance(row["memoryBytes"], int), row
    assert row["memoryBytes"] > 0, row
    assert isinstance(row["tasks"], int), row
    assert row["tasks"] >= 4, row  # 2 conmons, 2 sleeps
    assert row["cpuNsec"] is None or row["cpuNsec"] > 0, row
    assert [c["name"] for c in row["containers"]] == ["main", "side"]
    for container in row["containers"]:
        assert container["state"] == "running"
        assert container["memoryBytes"] > 0, container
        assert container["pids"] >= 1, container
        assert container["cpuNsec"] is not None, container
    table = daemon.cli("stats", via=via)
    assert table.returncode == 0, table
    assert f"{pod}/main" in table.stdout
    watched = daemon.cli("stats", pod, "--watch", "--interval", "0.5", "--count", "2",
                         "--json", via=via)  # fmt: skip
    samples = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(samples) == 2, watched
    assert samples[1]["sampledNs"] > samples[0]["sampledNs"], watched
    print(f"\n[{via}] stats {pod}: slice cpu {row['cpuNsec']} ns, memory {row['memoryBytes']} "
          f"B, tasks {row['tasks']}; containers "
          + ", ".join(f"{c['name']} cpu {c['cpuNsec']} ns mem {c['memoryBytes']} B "
                      f"pids {c['pids']}" for c in row["containers"])
          + f"\n{table.stdout}")  # fmt: skip
