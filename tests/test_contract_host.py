"""The wire contract and the Job objects on the real daemon in a real test host.

A run whose container exits 3 is one ``JobFinished`` with exit code 3 and systemd's
``exit-code`` on the bus (read with ``busctl monitor``, not with iyclo's own decoder), and
``iyclo events --json`` prints the same JSON whether it reads D-Bus or the JSON socket.
A job's ``io.github.iyclo1.Job`` object is on the bus from ``apply`` until ``rm``
(``busctl tree``) and its properties follow its runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.daemon_fixtures import Daemon, remove, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

BUSYBOX = "localhost/busybox:latest"
YEARLY = "*-01-01 00:00:00"  # never fires during a test


def job(name: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": name, "network": "none",
        "schedule": {"calendar": YEARLY, "accuracy": "1ms"},
        "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}],
    }  # fmt: skip


class JsonLines:
    """The JSON lines a process prints, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.items: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.items.append(json.loads(line))

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.items) if e.get("name") == name]

    def close(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate()
        self._thread.join(5)
        return err


def _settled(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The events up to the job's state change that follows its JobFinished, if in."""
    for index, event in enumerate(events):
        if event["event"] == "JobFinished":
            for end in range(index + 1, len(events)):
                if events[end]["event"] == "JobChanged":
                    return events[: end + 1]
    return None


def test_a_run_that_exits_3_reads_the_same_on_dbus_and_the_socket(daemon: Daemon) -> None:
    name = "exits3"
    monitor = JsonLines(
        subprocess.Popen(
            ["busctl", f"--address={daemon.host.system_bus_address}", "--json=short",
             "monitor", "io.github.iyclo1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    )  # fmt: skip
    clis = {
        via: JsonLines(daemon.cli_stream("events", "--json", via=via)) for via in ("socket", "dbus")
    }
    try:
        daemon.call("apply", manifest=job(name, "echo exiting-3; exit 3"))
        # Both CLIs are subscribed once each printed an event of the job (bounded: 10 rounds).
        for _ in range(10):
            if all(c.of(name) for c in clis.values()):
                break
            daemon.call("stop", name=name)
            daemon.call("start", name=name)
            time.sleep(0.5)
        assert all(c.of(name) for c in clis.values()), {v: c.items for v, c in clis.items()}
        started = daemon.call("run_job", name=name)
        seen = {
            via: wait_for(lambda c=c: _settled(c.of(name)), timeout=60, what=f"the run via {via}")
            for via, c in clis.items()
        }
        signal = wait_for(
            lambda: [m for m in monitor.items
                     if m.get("member") == "JobFinished" and m["payload"]["data"][0] == name],
            timeout=10, what="the JobFinished signal in busctl monitor",
        )[0]  # fmt: skip
    finally:
        errors = {via: c.close() for via, c in clis.items()}
        monitor.close()
        remove(daemon, name, purge_history=True)

    # On the bus, as busctl decodes it: (name, run, state, exit_code, result, duration, at).
    print(f"\nbusctl monitor: {signal['member']} {json.dumps(signal['payload'])}")
    for via, events in seen.items():
        for event in events:
            if event["event"] == "JobFinished":
                print(f"iyclo events --json via {via}: {json.dumps(event)}")
    assert signal["payload"]["type"] == "susisdd"
    bus_name, run, state, exit_code, result, duration, at = signal["payload"]["data"]
    assert (bus_name, run, state, exit_code, result) == (
        name, started["run"], "failed", 3, "exit-code"
    )  # fmt: skip
    assert duration > 0
    # `iyclo events --json`: the same JSON over either transport, event for event.
    short, long = sorted(seen.values(), key=len)
    assert short == long[len(long) - len(short) :], errors
    finished = [e for e in short if e["event"] == "JobFinished"]
    assert finished == [
        {"event": "JobFinished", "name": name, "run": started["run"], "state": "failed",
         "exitCode": 3, "result": "exit-code", "durationSec": duration, "at": at}
    ]  # fmt: skip


def _tree(daemon: Daemon) -> list[str]:
    out = daemon.host.run(["busctl", "tree", "--list", "io.github.iyclo1"]).stdout
    return out.split()


def _job_property(daemon: Daemon, path: str, prop: str) -> Any:
    out = daemon.host.run(
        ["busctl", "--json=short", "get-property", "io.github.iyclo1", path,
         "io.github.iyclo1.Job", prop]
    ).stdout  # fmt: skip
    return json.loads(out)["data"]


def test_a_job_is_a_dbus_object_from_apply_to_rm(daemon: Daemon) -> None:
    name = "tree-job"
    path = "/io/github/iyclo1/job/tree_2djob"
    assert path not in _tree(daemon)
    applied = daemon.cli("apply", "-f", "-", "--json", stdin=json.dumps(job(name, "exit 3")),
                         via="dbus")  # fmt: skip
    try:
        assert applied.returncode == 0, applied.stderr
        tree = _tree(daemon)
        print(f"\nbusctl tree --list io.github.iyclo1 after apply: {' '.join(tree)}")
        assert path in tree  # there when apply answered
        assert "/io/github/iyclo1/pod/tree_2djob" not in tree  # a job is no pod
        assert _job_property(daemon, path, "Schedule") == YEARLY
        assert _job_property(daemon, path, "State") == "scheduled"
        assert _job_property(daemon, path, "LastRun") == 0
        assert _job_property(daemon, path, "NextRun").startswith(
            f"{time.gmtime().tm_year + 1}-01-01"
        )
        daemon.call("run_job", name=name)
        wait_for(lambda: _job_property(daemon, path, "LastState") == "failed", timeout=60,
                 what="the Job object's LastState")  # fmt: skip
        assert _job_property(daemon, path, "LastExitCode") == 3
        assert _job_property(daemon, path, "LastResult") == "exit-code"
        assert _job_property(daemon, path, "LastRun") == 1
        removed = daemon.cli("rm", name, "--purge-history", via="dbus")
        assert removed.returncode == 0, removed.stderr
        tree = _tree(daemon)
        print(f"busctl tree --list io.github.iyclo1 after rm: {' '.join(tree)}")
        assert path not in tree  # gone when rm answered
    finally:
        remove(daemon, name, purge_history=True)
