"""Pods end to end: real systemd, real Podman, the real daemon (issue: pods end to end).

Every assertion reads the running system back (systemctl, podman, /proc), not the
daemon's own idea of it, except where the daemon's report is what is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from iyclo.errors import NotFoundError, PodmanError, SystemdError, UnavailableError
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


def test_two_container_pod_runs_under_systemd(daemon: Daemon) -> None:
    host = daemon.host
    manifest = fast(pod_manifest("duo"))
    manifest["containers"][0]["command"] = ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    manifest["containers"][0]["ports"] = [
        {"containerPort": 8080, "hostPort": 18080, "hostIp": "127.0.0.1"}
    ]
    manifest["labels"] = {"team": "ops"}
    try:
        result = daemon.call("apply", manifest=json.dumps(manifest))
        assert result == {
            "name": "duo", "kind": "Pod", "generation": 1, "changed": True, "state": "running"
        }  # fmt: skip
        unit = unit_show(host, "iyclo-pod-duo.service", "ActiveState", "Slice", "Type", "MainPID")
        assert unit["ActiveState"] == "active"
        assert unit["Slice"] == "iyclo_duo.slice"  # its own, top-level (Podman 5.4)
        assert unit["Type"] == "forking"

        main = inspect(host, "iyclo-duo-g1_main")
        side = inspect(host, "iyclo-duo-g1_side")
        assert main["State"]["Status"] == side["State"]["Status"] == "running"
        # the unit's main PID is the main container's conmon
        assert int(unit["MainPID"]) == main["State"]["ConmonPid"]
        # one network namespace for the pod
        nets = {
            host.run(["readlink", f"/proc/{c['State']['Pid']}/ns/net"]).stdout.strip()
            for c in (main, side)
        }
        assert len(nets) == 1
        reply = host.run(
            ["podman", "exec", "iyclo-duo-g1_side", "wget", "-q", "-O", "-",
             "http://127.0.0.1:8080/hostname"]
        ).stdout  # fmt: skip
        assert reply  # the sidecar reaches the main container over the pod's loopback
        published = host.run(
            ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/hostname"]
        )
        assert published.stdout == reply
        for container in (main, side):
            labels = container["Config"]["Labels"]
            assert labels["io.github.iyclo.pod"] == "duo"
            assert labels["io.github.iyclo.generation"] == "1"
            assert len(labels["io.github.iyclo.hash"]) == 64
            assert labels["team"] == "ops"
        listed = host.run(["systemctl", "list-units", "--plain", "--no-legend", "iyclo-pod-*"])
        assert "iyclo-pod-duo.service" in listed.stdout
        slice_units = host.run(["systemctl", "show", "iyclo_duo.slice", "-p", "ActiveState"]).stdout
        assert "active" in slice_units

        status = daemon.call("get", name="duo")
        assert status["state"] == "running"
        assert [c["name"] for c in status["containers"]] == ["main", "side"]
        assert {c["id"] for c in status["containers"]} == {main["Id"], side["Id"]}

        again = daemon.call("apply", manifest=json.dumps(manifest))
        assert again["changed"] is False
        assert again["generation"] == 1
        assert (
            inspect(host, "iyclo-duo-g1_main")["State"]["StartedAt"] == main["State"]["StartedAt"]
        )
    finally:
        remove(daemon, "duo")


def test_killed_main_container_is_restarted_by_systemd(daemon: Daemon) -> None:
    host = daemon.host
    daemon.call("apply", manifest=fast(pod_manifest("phoenix")))
    try:
        before = inspect(host, "iyclo-phoenix-g1_main")
        host.run(["kill", "-9", str(before["State"]["Pid"])])

        def restarted() -> bool:
            props = unit_show(host, "iyclo-pod-phoenix.service", "NRestarts", "ActiveState")
            return props.get("NRestarts", "0") != "0" and props.get("ActiveState") == "active"

        wait_for(restarted, timeout=60, what="systemd to restart the pod")
        after = inspect(host, "iyclo-phoenix-g1_main")
        assert after["State"]["Status"] == "running"
        assert after["State"]["Pid"] != before["State"]["Pid"]
        assert after["Id"] == before["Id"]  # the same container, started again
        status = daemon.call("get", name="phoenix")
        assert status["restarts"] >= 1
        assert status["state"] == "running"
    finally:
        remove(daemon, "phoenix")


def test_update_runs_a_new_generation_and_removes_the_old(daemon: Daemon) -> None:
    host = daemon.host
    manifest = fast(pod_manifest("evolve"))
    daemon.call("apply", manifest=manifest)
    try:
        old_ids = {inspect(host, f"iyclo-evolve-g1_{c}")["Id"] for c in ("main", "side")}
        manifest["containers"][0]["env"]["ROLE"] = "updated"
        result = daemon.call("apply", manifest=manifest)
        assert result["generation"] == 2
        assert result["changed"] is True
        env = host.run(["podman", "exec", "iyclo-evolve-g2_main", "sh", "-c", "echo $ROLE"]).stdout
        assert env.strip() == "updated"
        assert pods_of(host, "evolve") == ["iyclo-evolve-g2"]
        listed = host.run(["podman", "ps", "-a", "--format", "{{.ID}}", "--no-trunc"]).stdout
        assert not old_ids & set(listed.split())
        history = daemon.call("history", name="evolve")
        assert [h["generation"] for h in history] == [1, 2]
        assert daemon.call("get_manifest", name="evolve", generation=1)["containers"][0]["env"] == {
            "ROLE": "main"
        }
        assert unit_show(host, "iyclo-pod-evolve.service", "ActiveState")["ActiveState"] == "active"
    finally:
        remove(daemon, "evolve")


def test_stop_start_restart_remove(daemon: Daemon) -> None:
    host = daemon.host
    daemon.call("apply", manifest=fast(pod_manifest("cycle")))
    unit = "iyclo-pod-cycle.service"
    try:
        assert daemon.call("stop", name="cycle") == "stopped"
        assert unit_show(host, unit, "LoadState")["LoadState"] == "not-found"
        assert inspect(host, "iyclo-cycle-g1_main")["State"]["Status"] in ("exited", "stopped")
        assert daemon.call("get", name="cycle")["state"] == "stopped"

        assert daemon.call("start", name="cycle") == "running"
        assert unit_show(host, unit, "ActiveState")["ActiveState"] == "active"
        started = inspect(host, "iyclo-cycle-g1_main")["State"]["StartedAt"]

        assert daemon.call("restart", name="cycle") == "running"
        assert unit_show(host, unit, "ActiveState")["ActiveState"] == "active"
        assert inspect(host, "iyclo-cycle-g1_main")["State"]["StartedAt"] != started

        daemon.call("remove", name="cycle")
        assert unit_show(host, unit, "LoadState")["LoadState"] == "not-found"
        assert pods_of(host, "cycle") == []
        out = host.run(["podman", "ps", "-a", "--filter", "label=io.github.iyclo.pod=cycle"])
        assert "iyclo-cycle" not in out.stdout
        with pytest.raises(NotFoundError, match="no pod or job named 'cycle'"):
            daemon.call("get", name="cycle")
    finally:
        remove(daemon, "cycle")


def test_daemon_sigkill_adopts_running_pods(daemon: Daemon) -> None:
    host = daemon.host
    daemon.call("apply", manifest=fast(pod_manifest("steady")))
    try:
        before = {c: inspect(host, f"iyclo-steady-g1_{c}") for c in ("main", "side")}
        restarts = unit_show(host, "iyclo-pod-steady.service", "NRestarts")["NRestarts"]
        daemon.kill()
        assert unit_show(host, "iyclo-pod-steady.service", "ActiveState")["ActiveState"] == "active"
        daemon.start()
        status = daemon.call("get", name="steady")
        assert status["state"] == "running"
        for name, old in before.items():
            new = inspect(host, f"iyclo-steady-g1_{name}")
            assert new["Id"] == old["Id"]
            assert new["State"]["StartedAt"] == old["State"]["StartedAt"]
            assert new["State"]["Pid"] == old["State"]["Pid"]
        assert unit_show(host, "iyclo-pod-steady.service", "NRestarts")["NRestarts"] == restarts
    finally:
        remove(daemon, "steady")


def test_missing_image_leaves_nothing_behind(daemon: Daemon) -> None:
    host = daemon.host
    manifest = fast(pod_manifest("ghost"))
    manifest["containers"][1]["image"] = "localhost/does-not-exist:1"
    with pytest.raises(PodmanError, match='image "localhost/does-not-exist:1"'):
        daemon.call("apply", manifest=manifest)
    assert pods_of(host, "ghost") == []
    assert unit_show(host, "iyclo-pod-ghost.service", "LoadState")["LoadState"] == "not-found"
    with pytest.raises(NotFoundError):
        daemon.call("get", name="ghost")


def test_failed_update_keeps_previous_generation_running(daemon: Daemon) -> None:
    host = daemon.host
    manifest = fast(pod_manifest("sturdy"))
    daemon.call("apply", manifest=manifest)
    # another pod already publishes the port the update wants
    squatter = fast(pod_manifest("squatter"))
    squatter["containers"][0]["ports"] = [
        {"containerPort": 81, "hostPort": 18099, "hostIp": "127.0.0.1"}
    ]
    daemon.call("apply", manifest=squatter)
    try:
        before = inspect(host, "iyclo-sturdy-g1_main")
        broken = json.loads(json.dumps(manifest))
        broken["containers"][0]["ports"] = [
            {"containerPort": 80, "hostPort": 18099, "hostIp": "127.0.0.1"}
        ]
        expected = re.escape("iyclo-pod-sturdy.service did not start")
        with pytest.raises(SystemdError, match=expected) as info:
            daemon.call("apply", manifest=broken)
        assert "address already in use" in str(info.value)
        # the previous generation runs again; nothing of the failed one is left
        assert daemon.call("get", name="sturdy")["generation"] == 1
        assert pods_of(host, "sturdy") == ["iyclo-sturdy-g1"]
        after = inspect(host, "iyclo-sturdy-g1_main")
        assert after["Id"] == before["Id"]
        assert after["State"]["Status"] == "running"
        assert unit_show(host, "iyclo-pod-sturdy.service", "ActiveState")["ActiveState"] == "active"
        assert [h["generation"] for h in daemon.call("history", name="sturdy")] == [1]
    finally:
        remove(daemon, "squatter")
        remove(daemon, "sturdy")


def test_dead_podman_socket_is_a_clear_error(daemon: Daemon) -> None:
    """Podman's socket and service stopped under a running daemon (issue #14): iyclod
    stays up and says it is degraded on every front, answers reads, refuses a change at
    once with one line naming Podman, changes nothing; once the socket is back it is ok
    again by itself and the same change goes through."""
    host = daemon.host
    manifest = fast(pod_manifest("orphanless"))
    daemon.call("apply", manifest=manifest)
    changed = json.loads(json.dumps(manifest))
    changed["containers"][0]["env"]["ROLE"] = "next"
    host.run(["systemctl", "stop", "podman.socket", "podman.service"])
    try:
        wait_for(lambda: daemon.call("health")["state"] == "degraded", timeout=15,
                 what="iyclod to notice Podman is gone")  # fmt: skip
        (problem,) = daemon.call("health")["problems"]
        assert problem.startswith(
            "podman: ping: cannot reach Podman at unix:///run/podman/podman.sock"
        ), problem
        with pytest.raises(UnavailableError, match=r"^apply: iyclod is degraded \(podman: "):
            daemon.call("apply", manifest=changed)
        assert daemon.call("get", name="orphanless")["generation"] == 1  # reads still work
        ps = daemon.cli("ps")
        assert ps.returncode == 0, ps.stderr
        assert "iyclo: warning: iyclod is degraded: podman: " in ps.stderr
        assert "orphanless" in ps.stdout
        assert daemon.cli("health").returncode == 1
        state = host.run(["busctl", "get-property", "io.github.iyclo1", "/io/github/iyclo1",
                          "io.github.iyclo1.Manager", "State"]).stdout  # fmt: skip
        assert state.strip() == 's "degraded"'
        refused = daemon.cli("apply", "-f", "-", stdin=json.dumps(changed))
        assert refused.returncode == 9
        assert refused.stderr.startswith("iyclo: error: apply: iyclod is degraded (podman: ")
    finally:
        host.run(["systemctl", "start", "podman.socket"])
    try:
        wait_for(lambda: daemon.call("health")["state"] == "ok", timeout=30,
                 what="iyclod to see Podman back")  # fmt: skip
        assert daemon.cli("health").returncode == 0
        assert daemon.call("get", name="orphanless")["generation"] == 1
        assert pods_of(host, "orphanless") == ["iyclo-orphanless-g1"]
        assert (
            unit_show(host, "iyclo-pod-orphanless.service", "ActiveState")["ActiveState"]
            == "active"
        )
        assert daemon.call("apply", manifest=changed)["generation"] == 2
    finally:
        remove(daemon, "orphanless")


def test_unknown_pod_operations_are_not_found(daemon: Daemon) -> None:
    for method in ("get", "remove", "start", "stop", "restart", "history"):
        with pytest.raises(NotFoundError, match="no pod or job named 'nope'"):
            daemon.call(method, name="nope")


def test_reboot_recreates_every_stored_pod(fresh_testhost_factory: Any) -> None:
    host = fresh_testhost_factory()
    first = Daemon(host, ("--no-dbus",))
    first.start()
    first.call("apply", manifest=fast(pod_manifest("survivor")))
    first.call("apply", manifest=fast(pod_manifest("sleeper")))
    first.call("stop", name="sleeper")
    root = host.root
    host.shutdown()  # the whole PID namespace dies, as at a power cut

    rebooted = fresh_testhost_factory(root=root, name=host.name)
    assert unit_show(rebooted, "iyclo-pod-survivor.service", "LoadState")["LoadState"] == (
        "not-found"
    )
    second = Daemon(rebooted, ("--no-dbus",))
    second.start()
    status = second.call("get", name="survivor")
    assert status["state"] == "running"
    assert status["generation"] == 1
    unit = unit_show(rebooted, "iyclo-pod-survivor.service", "ActiveState")
    assert unit["ActiveState"] == "active"
    assert inspect(rebooted, "iyclo-survivor-g1_main")["State"]["Status"] == "running"
    # a pod the user stopped stays stopped across the reboot
    assert second.call("get", name="sleeper")["state"] == "stopped"
    second.stop()


def test_the_web_example_serves_its_page(daemon: Daemon) -> None:
    """examples/web.json as the README deploys it: systemd's sandbox around podman, a
    read-only httpd serving what its sidecar writes into a shared volume."""
    host = daemon.host
    manifest = json.loads((Path(__file__).parent.parent / "examples" / "web.json").read_text())
    manifest = fast(manifest)
    try:
        daemon.call("apply", manifest=manifest)
        page = wait_for(
            lambda: (
                host.run(
                    ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/"], check=False
                ).stdout
            ),
            timeout=30,
            what="the web page",
        )
        assert "hello from iyclo" in page
        status = daemon.call("get", name="web")
        assert [(c["name"], c["state"]) for c in status["containers"]] == [
            ("httpd", "running"),
            ("writer", "running"),
        ]
        unit = unit_show(host, "iyclo-pod-web.service", "ProtectClock", "LockPersonality", "Slice")
        assert unit == {"ProtectClock": "yes", "LockPersonality": "yes", "Slice": "iyclo_web.slice"}
        # memoryMax bounds the pod's slice: the unit (conmon) and the containers together
        assert unit_show(host, "iyclo_web.slice", "MemoryMax") == {"MemoryMax": "268435456"}
    finally:
        remove(daemon, "web")


def test_dead_sidecar_restarts_its_pod_from_podman_events(daemon: Daemon) -> None:
    """systemd watches only the main container; Podman's event stream tells the daemon
    about the others. The bound is below the 30 s periodic resync, so only the event
    path can pass it."""
    host = daemon.host
    daemon.call("apply", manifest=fast(pod_manifest("sidekick")))
    try:
        before = inspect(host, "iyclo-sidekick-g1_side")
        host.run(["kill", "-9", str(before["State"]["Pid"])])

        def back() -> bool:
            status = daemon.call("get", name="sidekick")
            side = next(c for c in status["containers"] if c["name"] == "side")
            return status["restarts"] >= 1 and side["state"] == "running"

        wait_for(back, timeout=20, what="the pod restarted after its sidecar died")
        after = inspect(host, "iyclo-sidekick-g1_side")
        assert after["State"]["Status"] == "running"
        assert after["State"]["Pid"] != before["State"]["Pid"]
        assert after["Id"] == before["Id"]
    finally:
        remove(daemon, "sidekick")
