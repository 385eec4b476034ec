"""Health that acts (issue #12), on the real test host: readiness, restarts when
unhealthy, updates that roll back by themselves, init containers.

Pods publish on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from iyclo.errors import NotFoundError
from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, inspect, remove, unit_show, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

OK_FILE = "/tmp/ok"


def web(
    name: str,
    version: str,
    port: int,
    *,
    healthy: bool = True,
    strategy: str = "replace",
    init: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """httpd serving ``version``; its health check passes once OK_FILE exists, which the
    command makes only when ``healthy``."""
    ready = f"touch {OK_FILE} && " if healthy else ""
    manifest: dict[str, Any] = {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "restart": {"policy": "always", "delay": "1s", "limit": 10, "window": "1min"},
        "update": {"strategy": strategy, "readyTimeout": "20s"},
        "containers": [{
            "name": "web", "image": "localhost/busybox:latest",
            "command": ["sh", "-c", f"mkdir -p /www && echo {version} > /www/index.html && "
                                    f"{ready}exec httpd -f -p 8080 -h /www"],
            "ports": [{"containerPort": 8080, "hostPort": port, "hostIp": "127.0.0.1"}],
            "healthcheck": {"command": ["sh", "-c", f"test -e {OK_FILE}"], "interval": "1s",
                            "timeout": "2s", "retries": 2},
            "stopTimeout": "1s",
        }],
    }  # fmt: skip
    if init:
        manifest["initContainers"] = init
    return manifest


def page(host: Host, port: int) -> str | None:
    """The page on the test host's 127.0.0.1:``port`` (its own network), None if none."""
    got = host.run(["timeout", "2", "busybox", "wget", "-q", "-O", "-",
                    f"http://127.0.0.1:{port}/"], check=False)  # fmt: skip
    return got.stdout.strip() if got.returncode == 0 else None


POLL_SCRIPT = """
for i in $(seq 2000); do
  [ -e /run/iyclo-poll-stop ] && break
  if page=$(timeout 2 busybox wget -q -O - http://127.0.0.1:$1/); then echo "ok $page"
  else echo fail; fi
  sleep 0.05
done
"""


class Poller:
    """GETs a port of the test host every 50 ms from inside it, each answer one line
    (bounded: 2000 tries), until stopped."""

    def __init__(self, host: Host, port: int) -> None:
        self.host, self.port = host, port
        self.lines: list[str] = []

    def __enter__(self) -> Poller:
        self.host.run(["rm", "-f", "/run/iyclo-poll-stop"])
        self._proc = subprocess.Popen(
            self.host.nsenter_argv(["sh", "-c", POLL_SCRIPT, "poll", str(self.port)]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self.host.run(["touch", "/run/iyclo-poll-stop"])
        out, _ = self._proc.communicate(timeout=30)
        self.lines = out.splitlines()

    @property
    def requests(self) -> int:
        return len(self.lines)

    @property
    def failures(self) -> int:
        return sum(line == "fail" for line in self.lines)

    @property
    def seen(self) -> set[str]:
        return {line.removeprefix("ok ") for line in self.lines if line != "fail"}


def test_a_start_first_update_that_never_gets_ready_rolls_back_without_a_gap(
    daemon: Daemon,
) -> None:
    """The new generation (v2, on another port, so it can run beside v1) never passes its
    probe: the apply fails with "rolled back", v1 served every request meanwhile, and
    generation 2 stays in the history, marked."""
    try:
        applied = daemon.cli("apply", "-f", "-", stdin=json.dumps(web("sf", "v1", 18090)))
        assert applied.returncode == 0, applied.stderr
        assert "(generation 1, running)" in applied.stdout
        status = daemon.call("get", name="sf")
        assert status["ready"] is True, json.dumps(status)
        assert page(daemon.host, 18090) == "v1"
        v2 = web("sf", "v2", 18091, healthy=False, strategy="start-first")
        with Poller(daemon.host, 18090) as poller:
            failed = daemon.cli("apply", "-f", "-", stdin=json.dumps(v2))
        print(f"\nstart-first update rolled back: {poller.requests} requests made, "
              f"failures {poller.failures}, pages seen {sorted(poller.seen)}")  # fmt: skip
        assert failed.returncode == 10, failed
        assert "generation 2 is not ready (container web is unhealthy" in failed.stderr
        assert "rolled back to generation 1" in failed.stderr
        assert "sf/web unhealthy" in failed.stderr  # the progress line, per container
        assert poller.failures == 0
        assert poller.requests > 10
        assert poller.seen == {"v1"}
        assert page(daemon.host, 18090) == "v1"
        status = daemon.call("get", name="sf")
        assert (status["generation"], status["state"], status["ready"]) == (1, "running", True)
        history = {g["generation"]: g for g in daemon.call("history", name="sf")}
        assert history[1]["current"] is True
        assert "not ready" in history[2]["rolledBack"]
        pods = daemon.podman_json("pod", "ps", "--filter", "label=io.github.iyclo.pod=sf")
        assert [p["Name"] for p in pods] == ["iyclo-sf-g1"]
    finally:
        remove(daemon, "sf")


def test_a_replace_update_that_never_gets_ready_brings_back_the_previous(
    daemon: Daemon,
) -> None:
    """``replace`` stops v1 first; a v2 that never gets ready is undone and v1 serves
    again; ``iyclo rollback`` then goes back by hand, as a new generation."""
    try:
        daemon.call("apply", manifest=web("rp", "v1", 18092))
        with pytest.raises(Exception, match="rolled back to generation 1"):
            daemon.call("apply", manifest=web("rp", "v2", 18092, healthy=False))
        assert wait_for(lambda: page(daemon.host, 18092), timeout=20) == "v1"
        assert daemon.call("get", name="rp")["generation"] == 1
        daemon.call("apply", manifest=web("rp", "v3", 18092))
        assert page(daemon.host, 18092) == "v3"
        back = daemon.cli("rollback", "rp")
        assert back.returncode == 0, back.stderr
        assert "pod/rp rolled back (generation 4, running)" in back.stdout
        assert (
            page(daemon.host, 18092) == "v1"
        )  # generation 1's manifest: 2 was rolled back, skipped
        with pytest.raises(NotFoundError, match="no generation 9"):
            daemon.call("rollback", name="rp", to=9)
    finally:
        remove(daemon, "rp")


def test_a_container_that_turns_unhealthy_is_restarted_and_counted(daemon: Daemon) -> None:
    host = daemon.host
    events = daemon.cli_stream("events", "--json")
    try:
        daemon.call("apply", manifest=web("sick", "v1", 18093))
        before = inspect(host, "iyclo-sick-g1_web")["State"]["StartedAt"]
        host.run(["podman", "exec", "iyclo-sick-g1_web", "rm", OK_FILE])
        wait_for(lambda: daemon.call("get", name="sick")["healthRestarts"] == 1, timeout=60,
                 what="iyclo to restart the unhealthy pod")  # fmt: skip
        wait_for(lambda: daemon.call("get", name="sick")["ready"], timeout=60,
                 what="the restarted pod to be healthy again")  # fmt: skip
        after = inspect(host, "iyclo-sick-g1_web")["State"]["StartedAt"]
        assert after != before
        status = daemon.call("get", name="sick")
        assert status["restarts"] >= 1
        assert status["containers"][0]["health"] == "healthy"
        restarts = host.run(["busctl", "get-property", "io.github.iyclo1",
                             "/io/github/iyclo1/pod/sick", "io.github.iyclo1.Pod",
                             "Restarts"]).stdout  # fmt: skip
        assert int(restarts.split()[1]) >= 1
        health = host.run(["busctl", "get-property", "io.github.iyclo1",
                           "/io/github/iyclo1/pod/sick", "io.github.iyclo1.Pod",
                           "HealthRestarts", "Health", "Ready"]).stdout  # fmt: skip
        assert health.split() == ["u", "1", "a(ss)", "1", '"web"', '"healthy"', "b", "true"], health
        print(f"\nunhealthy container: restarted by iyclo, healthRestarts "
              f"{status['healthRestarts']}, restarts {status['restarts']}")  # fmt: skip
    finally:
        remove(daemon, "sick")
        events.kill()
    lines = [json.loads(line) for line in events.communicate(timeout=30)[0].splitlines()]
    health = [e for e in lines if e["event"] == "HealthChanged" and e["name"] == "sick"]
    assert any(e["health"] == "unhealthy" and e["action"] == "restart" for e in health), health
    assert any(e["health"] == "healthy" for e in health), health


def test_a_failing_init_container_fails_the_apply_and_keeps_the_previous(
    daemon: Daemon,
) -> None:
    good = [{"name": "migrate", "image": "localhost/busybox:latest",
             "command": ["sh", "-c", "echo schema up to date"]}]  # fmt: skip
    failing = "echo 'migration failed: table users exists'; exit 3"
    bad = [{"name": "migrate", "image": "localhost/busybox:latest",
            "command": ["sh", "-c", failing]}]  # fmt: skip
    try:
        applied = daemon.call("apply", manifest=web("init", "v1", 18094, init=good))
        assert applied["generation"] == 1
        state = inspect(daemon.host, "iyclo-init-g1_migrate")["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0)
        failed = daemon.cli("apply", "-f", "-",
                            stdin=json.dumps(web("init", "v2", 18094, init=bad)))  # fmt: skip
        assert failed.returncode != 0, failed
        assert (
            "init container migrate exited with code 3: migration failed: table users "
            "exists" in failed.stderr
        ), failed.stderr
        assert daemon.call("get", name="init")["generation"] == 1
        assert wait_for(lambda: page(daemon.host, 18094), timeout=20) == "v1"
        print(
            f"\nfailing init container: apply exit {failed.returncode}, "
            f"{failed.stderr.strip().splitlines()[-1]!r}; generation 1 still serves 'v1'"
        )
        assert unit_show(daemon.host, "iyclo-pod-init.service", "ActiveState")[
            "ActiveState"] == "active"  # fmt: skip
    finally:
        remove(daemon, "init")
