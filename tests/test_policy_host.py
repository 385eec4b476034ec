"""The policy holds at every start, and `iyclo logs` shows only what the units wrote
(issue #11): real systemd, real Podman, the real daemon, a symbolic link planted after
apply the way a container that may write under an allowed root would plant it, and a
journal line forged by uid nobody.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iyclo.errors import NotFoundError
from tests.daemon_fixtures import (
    Daemon,
    fast,
    inspect,
    pod_manifest,
    pods_of,
    remove,
    unit_show,
    wait_for,
)

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

VOLUMES = "/var/lib/iyclo/volumes"  # an allowed bind-mount root by default
BUSYBOX = "localhost/busybox:latest"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@contextlib.contextmanager
def bind_source(daemon: Daemon, name: str) -> Iterator[tuple[str, Callable[[], str]]]:
    """``VOLUMES/<name>/data`` (made here) and a function that replaces ``<name>`` by a
    link to / and returns the line that refuses it. The link is removed afterwards."""
    outside = daemon.host.root / "iyclo" / "volumes" / name
    (outside / "data").mkdir(parents=True, exist_ok=True)

    def plant() -> str:
        shutil.rmtree(outside)
        outside.symlink_to("/")
        return f'"{VOLUMES}/{name}/data" goes through the symbolic link "{VOLUMES}/{name}"'

    try:
        yield f"{VOLUMES}/{name}/data", plant
    finally:
        if outside.is_symlink():
            outside.unlink()
        else:
            shutil.rmtree(outside, ignore_errors=True)


def job(name: str, calendar: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": name, "network": "none",
        "schedule": {"calendar": calendar, "accuracy": "1ms", "overlap": "queue"},
        "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script],
                        "stopTimeout": "1s"}],
    }  # fmt: skip


def unit_journal(daemon: Daemon, unit: str) -> str:
    return daemon.host.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout


def test_a_pod_is_never_started_again_through_a_planted_link(daemon: Daemon) -> None:
    """(a) `iyclo restart` and `iyclo start` are refused in one line naming the field, and
    change nothing; (c) when its main container is killed, systemd's own restarts are
    refused by the unit's ExecStartPre=, a few times at most, and the unit ends failed."""
    host = daemon.host
    unit = "iyclo-pod-pol-pod.service"
    with bind_source(daemon, "pol-pod") as (source, plant):
        manifest = fast(pod_manifest("pol-pod"))
        manifest["restart"] = {"policy": "always", "delay": "1s", "limit": 3, "window": "5min"}
        manifest["containers"][0]["volumes"] = [{"source": source, "target": "/data"}]
        try:
            daemon.call("apply", manifest=manifest)
            assert (
                "iyclo.manifest.hostcheck" in unit_show(host, unit, "ExecStartPre")["ExecStartPre"]
            )
            before = inspect(host, "iyclo-pol-pod-g1_main")
            problem = plant()
            line = f"containers[0].volumes[0].source: refused: {problem}"

            done = daemon.cli("restart", "pol-pod")
            assert (done.returncode, done.stderr) == (2, f"iyclo: error: {line}\n")
            after = inspect(host, "iyclo-pol-pod-g1_main")
            assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
            assert after["State"]["Status"] == "running"

            host.run(["kill", "-9", str(before["State"]["Pid"])])
            failed = wait_for(
                lambda: (u := unit_show(host, unit, "ActiveState", "Result", "NRestarts"))[
                    "ActiveState"] == "failed" and u,
                timeout=90, what="systemd to give up restarting the pod",
            )  # fmt: skip
            # measured on systemd 252: "exit-code" (the refused start's), NRestarts 3
            assert failed["Result"] in ("exit-code", "start-limit-hit"), failed
            assert int(failed["NRestarts"]) <= 3, failed
            assert inspect(host, "iyclo-pol-pod-g1_main")["State"]["Status"] != "running"
            assert f"iyclo-hostcheck: {source}: refused: {problem}" in unit_journal(daemon, unit)
            wait_for(lambda: daemon.call("get", name="pol-pod")["state"] == "failed",
                     timeout=30, what="status to say failed")  # fmt: skip

            done = daemon.cli("start", "pol-pod")
            assert (done.returncode, done.stderr) == (2, f"iyclo: error: {line}\n")
            assert unit_show(host, unit, "ActiveState")["ActiveState"] == "failed"
        finally:
            remove(daemon, "pol-pod")


def test_a_timer_run_through_a_planted_link_fails_with_the_hostcheck_line(
    daemon: Daemon,
) -> None:
    """(b) systemd's timer starts runs without the daemon: ExecStartPre= refuses them."""
    with bind_source(daemon, "pol-job") as (source, plant):
        manifest = job("pol-job", "*:*:0/2", "ls /data; echo ran")
        manifest["containers"][0]["volumes"] = [{"source": source, "target": "/data"}]
        try:
            daemon.call("apply", manifest=manifest)
            problem = plant()
            failed = wait_for(
                lambda: [r for r in daemon.call("runs", name="pol-job") if r["state"] == "failed"],
                timeout=30, what="a run after the link was planted",
            )  # fmt: skip
            run = failed[0]
            own = daemon.host.run(
                ["journalctl", "--no-pager", "-o", "cat",
                 f"_SYSTEMD_INVOCATION_ID={run['invocationId']}"]
            ).stdout  # fmt: skip
            assert f"iyclo-hostcheck: {source}: refused: {problem}" in own
            assert "ran" not in own.splitlines()  # no container ran
            logs = daemon.call("logs", name="pol-job", run=run["number"])
            assert any("iyclo-hostcheck" in e["message"] for e in logs["entries"])

            done = daemon.cli("run", "pol-job")
            assert (done.returncode, done.stderr) == (
                2, f"iyclo: error: containers[0].volumes[0].source: refused: {problem}\n",
            )  # fmt: skip
        finally:
            remove(daemon, "pol-job", purge_history=True)


def test_a_line_forged_by_nobody_never_shows_and_real_ones_are_escaped(daemon: Daemon) -> None:
    """Any local user can log INVOCATION_ID=, UNIT= (and try _SYSTEMD_UNIT=, which
    journald drops): none of it selects a line for `iyclo logs`, of a job run or a pod."""
    host = daemon.host
    try:
        daemon.call("apply", manifest=job("pol-logs", "*-01-01 00:00:00",
                                          r"printf 'real \033[31mred\033[0m\tline\n'"))  # fmt: skip
        daemon.call("apply", manifest=fast(pod_manifest("pol-logs-pod")))
        run = daemon.call("run_job", name="pol-logs")
        invocation = run["invocationId"]
        wait_for(lambda: daemon.call("runs", name="pol-logs")[-1]["state"] == "succeeded",
                 timeout=30, what="the run to end")  # fmt: skip
        for unit in ("iyclo-job-pol-logs.service", "iyclo-pod-pol-logs-pod.service"):
            entry = "\n".join([
                "MESSAGE=forged \x1b[2J\x1b[31mFORGED\x1b[0m", "SYSLOG_IDENTIFIER=podman",
                f"INVOCATION_ID={invocation}", f"_SYSTEMD_INVOCATION_ID={invocation}",
                f"UNIT={unit}", f"_SYSTEMD_UNIT={unit}", f"OBJECT_SYSTEMD_UNIT={unit}",
            ]) + "\n"  # fmt: skip
            host.run([*NOBODY, "logger", "--journald"], input=entry)
        # it is in the journal, under the run's INVOCATION_ID, from uid nobody
        wait_for(
            lambda: host.run(["journalctl", "--no-pager", "-o", "cat", "_UID=65534",
                              f"INVOCATION_ID={invocation}"]).stdout.count("forged") == 2,
            timeout=20, what="the forged lines in the journal",
        )  # fmt: skip

        shown = daemon.cli("logs", "pol-logs", "--run", str(run["run"]))
        assert shown.returncode == 0, shown.stderr
        assert "forged" not in shown.stdout.lower()
        assert "\x1b" not in shown.stdout
        assert "real \\x1b[31mred\\x1b[0m\tline\n" in shown.stdout
        pod_logs = daemon.cli("logs", "pol-logs-pod")
        assert pod_logs.returncode == 0, pod_logs.stderr
        assert "forged" not in pod_logs.stdout.lower()
        for name in ("pol-logs", "pol-logs-pod"):
            entries = daemon.call("logs", name=name)["entries"]
            assert not [e for e in entries if "forged" in e["message"].lower()]
    finally:
        remove(daemon, "pol-logs", purge_history=True)
        remove(daemon, "pol-logs-pod")


def test_a_named_volume_is_its_makers_and_a_user_namespace_range_its_own(daemon: Daemon) -> None:
    """Refused at apply, in one line naming the field, with nothing made; the volume
    outlives its pod (as Docker's and Podman's do) and serves it again when it comes back."""
    host = daemon.host

    def with_volume(name: str) -> dict[str, Any]:
        manifest = fast(pod_manifest(name))
        manifest["containers"][0]["volumes"] = [{"source": "pol-data", "target": "/data"}]
        return manifest

    def refused(manifest: dict[str, Any], line: str) -> None:
        done = daemon.cli("apply", "-f", "-", stdin=json.dumps(manifest))
        assert (done.returncode, done.stderr) == (2, f"iyclo: error: {line}\n")
        assert pods_of(host, manifest["name"]) == []
        unit = f"iyclo-pod-{manifest['name']}.service"
        assert unit_show(host, unit, "LoadState")["LoadState"] == "not-found"
        with pytest.raises(NotFoundError):
            daemon.call("get", name=manifest["name"])

    userns = {"hostId": 2**31, "size": 65536}
    try:
        daemon.call("apply", manifest=with_volume("pol-vol-a"))
        labels = daemon.podman_json("volume", "inspect", "pol-data")[0]["Labels"]
        assert labels["io.github.iyclo.owner"] == "pol-vol-a"
        refused(with_volume("pol-vol-b"),
                'containers[0].volumes[0].source: refused: volume "pol-data" belongs to '
                '"pol-vol-a" and the daemon does not share it (policy.sharedVolumes)')  # fmt: skip
        remove(daemon, "pol-vol-a")
        assert host.run(["podman", "volume", "exists", "pol-data"], check=False).returncode == 0
        assert daemon.call("apply", manifest=with_volume("pol-vol-a"))["state"] == "running"

        daemon.call("apply", manifest=fast(pod_manifest("pol-ns-a", userns=userns)))
        overlapping = {"hostId": 2**31 + 1000, "size": 65536}
        refused(fast(pod_manifest("pol-ns-b", userns=overlapping)),
                'userns.hostId: refused: host IDs 2147484648-2147550183 overlap those of '
                '"pol-ns-a" (2147483648-2147549183)')  # fmt: skip
    finally:
        for name in ("pol-vol-a", "pol-vol-b", "pol-ns-a", "pol-ns-b"):
            remove(daemon, name)
        host.run(["podman", "volume", "rm", "--force", "pol-data"], check=False)
