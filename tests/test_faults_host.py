"""iyclod under faults of what it stands on (issue #14), on the real test host.

Each test injects one fault into a host of its own (a fresh test host, so the session's
host and daemon never see it), checks that iyclod stays up, says what is wrong on every
front, answers reads and refuses changes with one line, and that it comes back by itself
once the fault is gone, with the host matching the store. Every test prints its figures
(faults injected, what was lost) so they can be quoted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from iyclo.errors import UnavailableError
from tests.campaign import problems, wait_until_matching
from tests.daemon_fixtures import ROOT, Daemon, fast, pod_manifest, unit_show, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]


def _manager_state(daemon: Daemon) -> str:
    out = daemon.host.run(
        ["busctl", "get-property", "io.github.iyclo1", "/io/github/iyclo1",
         "io.github.iyclo1.Manager", "State"], check=False, timeout=30,
    )  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else f"(busctl: {out.stderr.strip()})"


def test_the_system_bus_going_away_and_coming_back(fresh_testhost_factory: Any) -> None:
    """dbus-daemon killed, and kept down a while: iyclod loses systemd's bus and its own
    interface with it. It stays up, says why (JSON socket, `iyclo ps`), answers reads,
    refuses changes; when the bus is back it connects to systemd again, exports its
    interface again, catches up with what changed meanwhile (a pod stopped behind its
    back) and takes changes again, all without a restart."""
    host = fresh_testhost_factory()
    host.install_dbus_policy(ROOT / "dbus" / "io.github.iyclo1.conf")
    daemon = Daemon(host)
    daemon.start()
    pid = daemon.unit_property("MainPID")
    manifest = fast(pod_manifest("steady"))
    daemon.call("apply", manifest=manifest)
    assert _manager_state(daemon) == 's "ok"'

    host.run(["systemctl", "stop", "dbus.socket"])
    host.run(["systemctl", "kill", "--signal=KILL", "dbus.service"])
    started = time.monotonic()
    try:
        health = wait_for(
            lambda: (h := daemon.call("health"))["state"] == "degraded" and h,
            timeout=20, what="iyclod to notice the bus is gone",
        )  # fmt: skip
        (problem,) = health["problems"]
        assert problem.startswith("systemd: "), problem
        assert problem.endswith("; connecting again"), problem
        print(f"\nwhile the bus was down: {problem}")
        assert daemon.call("get", name="steady")["generation"] == 1  # reads answer
        changed = json.loads(json.dumps(manifest))
        changed["containers"][0]["env"]["ROLE"] = "next"
        with pytest.raises(UnavailableError, match=r"^apply: iyclod is degraded \(systemd: "):
            daemon.call("apply", manifest=changed)
        ps = daemon.cli("ps")
        assert ps.returncode == 0, ps.stderr
        assert "iyclo: warning: iyclod is degraded: systemd: " in ps.stderr
        # meanwhile the pod is stopped behind iyclod's back (systemctl uses systemd's own
        # socket, not the bus)
        host.run(["systemctl", "stop", "iyclo-pod-steady.service"])
    finally:
        host.run(["systemctl", "start", "dbus.socket", "dbus.service"])
    wait_for(lambda: daemon.call("health")["state"] == "ok", timeout=30,
             what="iyclod to be back on the bus")  # fmt: skip
    back = time.monotonic() - started
    wait_for(lambda: _manager_state(daemon) == 's "ok"', timeout=30,
             what="the D-Bus interface to be exported again")  # fmt: skip
    assert daemon.unit_property("MainPID") == pid, "iyclod was restarted"
    # the catch-up reconcile started the pod the user never stopped
    wait_for(
        lambda: unit_show(host, "iyclo-pod-steady.service", "ActiveState")["ActiveState"]
        == "active",
        timeout=60, what="the pod stopped behind iyclod's back to run again",
    )  # fmt: skip
    assert daemon.call("apply", manifest=changed)["generation"] == 2
    status = host.run(["busctl", "call", "io.github.iyclo1", "/io/github/iyclo1",
                       "io.github.iyclo1.Manager", "Get", "s", "steady"]).stdout  # fmt: skip
    assert '\\"generation\\": 2' in status or '"generation": 2' in status, status
    print(
        f"bus down and back: 1 fault, iyclod restarts 0, back in {back:.1f}s, "
        "the stopped pod running again, lost 0"
    )
    daemon.stop()


def test_a_full_state_disk(fresh_testhost_factory: Any) -> None:
    """The state directory on a small filesystem that fills up: changes are refused with
    one line before anything is touched, what is stored stays whole and readable (also
    by a daemon restarted meanwhile), and iyclod takes changes again once space is back."""
    host = fresh_testhost_factory()
    small = "/var/lib/iyclo-small"
    host.run(["mkdir", "-p", small])
    host.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", small])
    daemon = Daemon(host, ("--no-dbus",))
    daemon.start("--state-dir", small)
    daemon.call("apply", manifest=fast(pod_manifest("first")))
    stored = host.run(["sha256sum", f"{small}/state.json"]).stdout
    # leave 100 KiB: less than the 1 MiB iyclod keeps free for its records
    host.run(["sh", "-c", f"head -c $(( $(stat -f -c '%a*%S' {small}) - 102400 )) "
                          f"/dev/zero > {small}/filler"])  # fmt: skip
    wait_for(lambda: daemon.call("health")["state"] == "degraded", timeout=20,
             what="iyclod to see its disk full")  # fmt: skip
    refused = daemon.cli("apply", "-f", "-", stdin=json.dumps(fast(pod_manifest("second"))))
    assert refused.returncode == 9, refused
    assert refused.stderr.startswith(
        f"iyclo: error: apply: iyclod is degraded (state: {small} has "
    ), refused.stderr
    assert "KiB free, iyclod needs 1024 KiB to record changes" in refused.stderr
    assert refused.stderr.count("\n") <= 2, refused.stderr  # the line and its hint
    assert host.run(["podman", "pod", "exists", "iyclo-second-g1"], check=False).returncode != 0
    assert host.run(["sha256sum", f"{small}/state.json"]).stdout == stored

    daemon.kill()  # a restart on the full disk still loads what is stored
    daemon.start("--state-dir", small)
    assert [s["name"] for s in daemon.call("list")] == ["first"]
    assert daemon.call("get", name="first")["state"] == "running"

    host.run(["rm", f"{small}/filler"])
    wait_for(lambda: daemon.call("health")["state"] == "ok", timeout=20,
             what="iyclod to see space back")  # fmt: skip
    assert daemon.call("apply", manifest=fast(pod_manifest("second")))["generation"] == 1
    print(
        "\nfull state disk: changes refused 1, stored records damaged 0, lost 0, "
        "resumed after space came back"
    )
    daemon.stop()


def test_podman_restarted_in_the_middle_of_applies(fresh_testhost_factory: Any) -> None:
    """Podman's service restarted, or stopped for 1.5 s, while iyclod is making a pod's
    new generation, at a different moment each round: each apply either goes through or
    fails with one line, and either way the host ends up matching the store, the previous
    generation serving when the update failed, and nothing half-made left behind."""
    host = fresh_testhost_factory()
    daemon = Daemon(host, ("--no-dbus",))
    daemon.start()
    daemon.call("apply", manifest=fast(pod_manifest("mid")))
    outcomes: dict[str, int] = {"applied": 0, "failed": 0}
    for round_, delay in enumerate((0.0, 0.15, 0.3, 0.5, 0.8)):
        manifest = fast(pod_manifest("mid"))
        manifest["containers"][0]["env"]["ROLE"] = f"round-{round_}"
        path = host.root / "iyclo" / f"mid-{round_}.json"
        path.write_text(json.dumps(manifest))
        proc = daemon.cli_stream("apply", "-f", str(path))
        time.sleep(delay)
        if round_ % 2 == 0:
            host.run(["systemctl", "restart", "podman.service"], check=False, timeout=60)
        else:  # gone for a while: what is under way fails, and so may its clean-up
            host.run(["systemctl", "stop", "podman.socket", "podman.service"], timeout=60)
            time.sleep(1.5)
            host.run(["systemctl", "start", "podman.socket"], timeout=60)
        _, err = proc.communicate(timeout=240)
        if proc.returncode == 0:
            outcomes["applied"] += 1
        else:
            outcomes["failed"] += 1
            assert err.startswith("iyclo: error: "), err
            assert len(err.strip().splitlines()) <= 2, err  # the line and a hint
        wait_for(lambda: daemon.call("health")["state"] == "ok", timeout=60,
                 what="Podman to be back")  # fmt: skip
        wait_until_matching(host, lambda: daemon.call("list"), 30, f"round {round_}")
        (record,) = daemon.call("list")
        assert record["state"] == "running", record
    print(
        f"\nPodman restarted or stopped in 5 applies: {outcomes['applied']} went through, "
        f"{outcomes['failed']} failed with one line, half-made objects left 0"
    )
    daemon.stop()


def test_systemd_refusing_a_unit_leaves_nothing(fresh_testhost_factory: Any) -> None:
    """systemd refuses the pod's unit (its name is masked): the apply fails with one line
    naming the unit and systemd's reason; no record, Podman pod, container or slice is
    left; once the mask is gone the same apply works."""
    host = fresh_testhost_factory()
    daemon = Daemon(host, ("--no-dbus",))
    daemon.start()
    host.run(["systemctl", "mask", "iyclo-pod-refused.service"])
    refused = daemon.cli("apply", "-f", "-", stdin=json.dumps(fast(pod_manifest("refused"))))
    assert refused.returncode == 6, refused  # SystemdError
    assert refused.stderr.startswith("iyclo: error: "), refused.stderr
    # a masked name has a fragment file (/dev/null): systemd 252 and 257 say so
    assert "iyclo-pod-refused.service" in refused.stderr, refused.stderr
    assert "fragment file" in refused.stderr, refused.stderr
    assert daemon.call("list") == []
    assert problems(host, []) == []
    host.run(["systemctl", "unmask", "iyclo-pod-refused.service"])
    assert daemon.call("apply", manifest=fast(pod_manifest("refused")))["generation"] == 1
    daemon.stop()
