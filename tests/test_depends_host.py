"""``dependsOn`` on the real test host (issue #12): a pod starts only once the pod it
depends on passes its probe, on a start and after a simulated reboot.

The proof is Podman's own clock: the dependency's health check can pass only
``DB_DELAY`` seconds after its container started (its command makes the file the check
looks for then), so a dependent container started less than that after it did not wait
for readiness. Every wait is bounded.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest

from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, inspect, pods_of, remove, unit_show

pytestmark = [pytest.mark.host, pytest.mark.timeout(420)]

DB_DELAY = 3
"""Seconds after its start before the dependency can be healthy."""


def db(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "containers": [{
            "name": "db", "image": "localhost/busybox:latest",
            "command": ["sh", "-c", f"sleep {DB_DELAY}; touch /tmp/ok; exec sleep 1000000"],
            "tmpfs": ["/tmp"],  # empty at each start: a restart is not ready at once
            # failures before the file is made do not count: with 3 retries 1 s apart
            # the third failure fell at DB_DELAY (with 4 busy loops beside them, 2 of 4
            # such pods were unhealthy before ready; with the start period, 0 of 8)
            "healthcheck": {"command": ["test", "-e", "/tmp/ok"], "interval": "1s",
                            "timeout": "2s", "retries": 3, "startPeriod": "20s"},
            "stopTimeout": "1s",
        }],
    }  # fmt: skip


def app(name: str, needs: str, timeout: str = "30s") -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "dependsOn": [{"pod": needs, "condition": "ready", "timeout": timeout}],
        "containers": [{"name": "app", "image": "localhost/busybox:latest",
                        "command": ["sleep", "1000000"], "stopTimeout": "1s"}],
    }  # fmt: skip


def started_at(host: Host, container: str) -> datetime:
    """Podman's StartedAt (nanoseconds, cut to what datetime holds)."""
    text = inspect(host, container)["State"]["StartedAt"]
    text = re.sub(r"(\.\d{6})\d*", r"\1", text.replace("Z", "+00:00"))
    text = re.sub(r" [A-Z]+$", "", text)  # Podman 4.3 may end with the zone's name
    return datetime.fromisoformat(text)


def waited(host: Host, dependent: str, dependency: str) -> float:
    """Seconds between the dependency's container start and the dependent's."""
    return (started_at(host, dependent) - started_at(host, dependency)).total_seconds()


def test_a_pod_starts_only_once_its_dependency_is_ready(daemon: Daemon) -> None:
    host = daemon.host
    try:
        unknown = daemon.cli("apply", "-f", "-", stdin=json.dumps(app("dapp", "ddb")))
        assert unknown.returncode != 0
        assert unknown.stderr.strip().splitlines() == [
            'iyclo: error: dependsOn[0].pod: no pod named "ddb" is applied (apply it first)'
        ], unknown.stderr
        assert pods_of(host, "dapp") == []
        assert "dapp" not in {r["name"] for r in daemon.call("list")}

        assert daemon.cli("apply", "-f", "-", stdin=json.dumps(db("ddb"))).returncode == 0
        applied = daemon.cli("apply", "-f", "-", stdin=json.dumps(app("dapp", "ddb")))
        assert applied.returncode == 0, applied.stderr
        daemon.call("apply", manifest=app("dquick", "ddb", timeout="3s"))

        refused = daemon.cli("rm", "ddb")
        assert refused.returncode != 0
        assert "pod 'ddb' is needed by dapp, dquick (dependsOn)" in refused.stderr, refused.stderr

        # All stopped; the dependent's start waits while the dependency is down, and
        # goes on once it is started and its probe passed.
        for name in ("dapp", "dquick", "ddb"):
            daemon.call("stop", name=name)
        start = daemon.cli_stream("start", "dapp")
        time.sleep(2)
        assert start.poll() is None, start.communicate()
        assert unit_show(host, "iyclo-pod-dapp.service", "ActiveState")["ActiveState"] != "active"
        daemon.call("start", name="ddb")
        _, err = start.communicate(timeout=120)
        assert start.returncode == 0, err
        gap = waited(host, "iyclo-dapp-g1_app", "iyclo-ddb-g1_db")
        print(f"\ndependsOn ready: dapp started {gap:.1f}s after ddb (its probe can pass "
              f"only after {DB_DELAY}s)")  # fmt: skip
        assert gap >= DB_DELAY
        assert daemon.call("get", name="ddb")["ready"] is True

        # A dependency that does not come: the start fails after its timeout, with why,
        # and a first apply records nothing.
        daemon.call("stop", name="ddb")
        began = time.monotonic()
        failed = daemon.cli("start", "dquick")
        assert failed.returncode == 10, failed
        assert failed.stderr.strip().splitlines()[-1] == (
            "iyclo: error: dependsOn[0]: pod ddb not ready within 3s: it is stopped"
        ), failed.stderr
        assert 3 <= time.monotonic() - began < 60
        assert unit_show(host, "iyclo-pod-dquick.service", "ActiveState")[
            "ActiveState"] != "active"  # fmt: skip
        late = daemon.cli("apply", "-f", "-", stdin=json.dumps(app("dlate", "ddb", "2s")))
        assert late.returncode == 10, late
        assert "dependsOn[0]: pod ddb not ready within 2s" in late.stderr
        assert "dlate" not in {r["name"] for r in daemon.call("list")}
        assert pods_of(host, "dlate") == []
    finally:
        for name in ("dapp", "dquick", "dlate", "ddb"):
            remove(daemon, name)


def test_the_order_holds_after_a_reboot(fresh_testhost_factory: Any) -> None:
    """Power lost with both running: the start-up reconcile makes the dependency first
    and the dependent only once the dependency's probe passes."""
    host = fresh_testhost_factory()
    first = Daemon(host, ("--no-dbus",))
    first.start()
    first.call("apply", manifest=db("rdb"))
    first.call("apply", manifest=app("rapp", "rdb"))
    root = host.root
    host.shutdown()

    rebooted = fresh_testhost_factory(root=root, name=host.name)
    second = Daemon(rebooted, ("--no-dbus",))
    began = time.monotonic()
    second.start()  # ready once the start-up reconcile is done
    took = time.monotonic() - began
    states = {r["name"]: (r["state"], r["ready"]) for r in second.call("list")}
    assert states == {"rdb": ("running", True), "rapp": ("running", True)}, states
    gap = waited(rebooted, "iyclo-rapp-g1_app", "iyclo-rdb-g1_db")
    print(f"\nreboot: rdb and rapp back in {took:.1f}s, rapp started {gap:.1f}s after rdb "
          f"(its probe can pass only after {DB_DELAY}s)")  # fmt: skip
    assert gap >= DB_DELAY
    second.stop()
