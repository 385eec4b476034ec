"""One service, three fronts: D-Bus, the JSON socket and the CLI agree on every method,
every typed error and the order of events, against one real daemon on the test host."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from iyclo.contract.events import PodChanged
from iyclo.errors import (
    InvalidError,
    IycloError,
    NotFoundError,
    PodmanError,
    SystemdError,
)
from iyclo.manifest.convert import dump_manifest, parse_manifest
from tests.daemon_fixtures import Daemon, fast, pod_manifest, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]


def stable(status: Any) -> Any:
    """A status without the fields that may tick between two reads."""
    if isinstance(status, list):
        return [stable(s) for s in status]
    if isinstance(status, dict):
        return {k: v for k, v in status.items() if k not in ("since",)}
    return status


def test_every_method_agrees_on_every_front(daemon: Daemon) -> None:
    text = json.dumps(fast(pod_manifest("fronts")))
    with daemon.client() as rpc, daemon.dbus() as bus:
        applied = bus.call("apply", manifest=text)
        assert applied == {
            "name": "fronts", "kind": "Pod", "generation": 1, "changed": True, "state": "running"
        }  # fmt: skip
        assert rpc.call("apply", manifest=text) == {**applied, "changed": False}
        cli = daemon.cli("apply", "-f", "-", "--json", stdin=text)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == {**applied, "changed": False}
        try:
            calls: list[tuple[str, dict[str, Any]]] = [
                ("version", {}),
                ("get", {"name": "fronts"}),
                ("list", {}),
                ("history", {"name": "fronts"}),
                ("get_manifest", {"name": "fronts", "generation": 0}),
                ("get_manifest", {"name": "fronts", "generation": 1}),
                ("diff", {"manifest": text}),
                ("validate", {"manifest": text}),
                ("validate", {"manifest": '{"kind": "Pod"}'}),
            ]
            for method, params in calls:
                assert stable(rpc.call(method, **params)) == stable(bus.call(method, **params)), (
                    method
                )
            status = rpc.call("get", name="fronts")
            assert status["state"] == "running"

            for via in ("socket", "dbus"):
                ps = daemon.cli("ps", "--json", via=via)
                assert ps.returncode == 0, ps.stderr
                assert stable(json.loads(ps.stdout)) == stable(rpc.call("list"))
                inspect = daemon.cli("inspect", "fronts", via=via)
                canonical = dump_manifest(parse_manifest(json.loads(text)))
                assert json.loads(inspect.stdout)["manifest"] == canonical
                history = daemon.cli("history", "fronts", "--json", via=via)
                assert json.loads(history.stdout) == rpc.call("history", name="fronts")
                diff = daemon.cli("diff", "-f", "-", stdin=text, via=via)
                assert (diff.returncode, diff.stdout) == (0, "")
                table = daemon.cli("ps", via=via)
                assert "fronts" in table.stdout
                assert "running" in table.stdout

            assert bus.call("stop", name="fronts") == "stopped"
            assert rpc.call("get", name="fronts")["state"] == "stopped"
            assert rpc.call("start", name="fronts") == "running"
            restart = daemon.cli("restart", "fronts", via="dbus")
            assert restart.returncode == 0, restart.stderr
            assert bus.call("get", name="fronts")["state"] == "running"
            report = bus.call("reconcile")
            assert "fronts" in report["adopted"]
            assert rpc.call("reconcile")["adopted"] == report["adopted"]
        finally:
            removed = daemon.cli("rm", "fronts", via="dbus")
        assert removed.returncode == 0, removed.stderr
        with pytest.raises(NotFoundError):
            rpc.call("get", name="fronts")


def _broken_port_pair(daemon: Daemon) -> dict[str, Any]:
    holder = fast(pod_manifest("holder"))
    holder["containers"][0]["ports"] = [
        {"containerPort": 80, "hostPort": 18111, "hostIp": "127.0.0.1"}
    ]
    daemon.call("apply", manifest=holder)
    clash = fast(pod_manifest("clash"))
    clash["containers"][0]["ports"] = [
        {"containerPort": 81, "hostPort": 18111, "hostIp": "127.0.0.1"}
    ]
    return clash


CASES: list[tuple[str, type[IycloError], int, str]] = [
    ("not-found", NotFoundError, 3, "no pod or job named 'nope'"),
    ("invalid", InvalidError, 2, 'name: "Bad Name" is not a valid name'),
    ("podman", PodmanError, 5, 'image "localhost/missing:1" could not be pulled'),
    ("systemd", SystemdError, 6, "address already in use"),
]


def test_every_error_reaches_every_front_typed(daemon: Daemon) -> None:
    bad_name = fast(pod_manifest("x"))
    bad_name["name"] = "Bad Name"
    no_image = fast(pod_manifest("imageless"))
    no_image["containers"][0]["image"] = "localhost/missing:1"
    clash = _broken_port_pair(daemon)
    requests: dict[str, tuple[str, dict[str, Any], list[str]]] = {
        "not-found": ("get", {"name": "nope"}, ["inspect", "nope"]),
        "invalid": ("apply", {"manifest": json.dumps(bad_name)}, ["apply", "-f", "-"]),
        "podman": ("apply", {"manifest": json.dumps(no_image)}, ["apply", "-f", "-"]),
        "systemd": ("apply", {"manifest": json.dumps(clash)}, ["apply", "-f", "-"]),
    }
    try:
        with daemon.dbus() as bus:
            for case, error_type, exit_code, text in CASES:
                method, params, argv = requests[case]
                for client in (daemon, bus):  # the daemon's call: one socket connection each
                    with pytest.raises(error_type, match=text.replace("(", r"\(")):
                        client.call(method, **params)
                stdin = params.get("manifest")
                for via in ("socket", "dbus"):
                    cli = daemon.cli(*argv, stdin=stdin, via=via)
                    assert cli.returncode == exit_code, (case, via, cli.stderr)
                    first = cli.stderr.splitlines()[0]
                    assert first.startswith("iyclo: error: "), first
                    assert text in first, (case, via, first)
                    assert "Traceback" not in cli.stderr
        # nothing half-made by any of them
        assert daemon.call("list") == [s for s in daemon.call("list") if s["name"] == "holder"]
    finally:
        with contextlib.suppress(NotFoundError):
            daemon.call("remove", name="holder")


PASSWORD = "correct-horse-battery-staple"
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def _as(uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def _busctl(daemon: Daemon, who: list[str], member: str, *args: str) -> Any:
    """busctl in the host as `who`: the reply's data, or the error (name, message)."""
    result = daemon.host.run(
        [*who, "busctl", "--json=short", "call", "io.github.iyclo1", "/io/github/iyclo1",
         "io.github.iyclo1.Manager", member, *args],
        check=False, env={"SYSTEMD_LOG_LEVEL": "debug"},
    )  # fmt: skip
    if result.returncode == 0:
        return json.loads(result.stdout)["data"]
    return ("error", result.stderr)


def _socat(daemon: Daemon, who: list[str], *requests: dict[str, Any]) -> list[Any]:
    """Raw JSON-RPC lines through socat in the host as `who`: the replies, or the
    connection's error text."""
    lines = "".join(json.dumps({"jsonrpc": "2.0", "id": i, **r}) + "\n"
                    for i, r in enumerate(requests))  # fmt: skip
    result = daemon.host.run(
        [*who, "socat", "-t", "5", "-", "UNIX-CONNECT:/var/lib/iyclo/iyclo.sock"],
        check=False, input=lines,
    )  # fmt: skip
    if result.returncode != 0:
        return [("connect", result.stderr.strip())]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_who_may_do_what_on_both_fronts(daemon: Daemon) -> None:
    """Issue #11's must-show against the real daemon, with busctl and socat in the host:
    uid nobody reads nothing secret on either front; a member of the deploy group applies
    a pod; a non-member is refused with AccessDenied on both, even when the socket's file
    mode lets it connect (the daemon checks the peer)."""
    manifest = fast(pod_manifest("guarded"))
    manifest["containers"][0]["env"]["DB_PASSWORD"] = PASSWORD
    text = json.dumps(manifest)
    try:
        daemon.call("apply", manifest=text)
        # -- uid nobody, no member: every read over D-Bus, redacted
        reads = {
            "GetManifest": ("su", "guarded", "0"), "Diff": ("s", text), "Get": ("s", "guarded"),
            "History": ("s", "guarded"), "List": (),
        }  # fmt: skip
        for member, args in reads.items():
            answer = _busctl(daemon, list(NOBODY), member, *args)
            assert answer[0] != "error", (member, answer)
            assert PASSWORD not in json.dumps(answer), (member, answer)
        shown = json.loads(_busctl(daemon, list(NOBODY), "GetManifest", "su", "guarded", "0")[0])
        assert shown["containers"][0]["env"] == {"ROLE": "<redacted>", "DB_PASSWORD": "<redacted>"}
        denied = _busctl(daemon, list(NOBODY), "Apply", "s", text)
        assert denied[0] == "error"
        assert "io.github.iyclo1.Error.AccessDenied" in denied[1]
        assert "apply: access denied: uid 65534" in denied[1]
        # the socket (0660, the deploy group's or root's) keeps nobody out
        (refused,) = _socat(daemon, list(NOBODY), {"method": "version"})
        assert refused[0] == "connect"
        assert "Permission denied" in refused[1]
        # with the socket's group as its gid, nobody connects; still no member: refused
        group = int(daemon.host.run(["stat", "-c", "%g", "/var/lib/iyclo/iyclo.sock"]).stdout)
        replies = _socat(
            daemon, _as(65534, group),
            {"method": "get_manifest", "params": {"name": "guarded"}},
            {"method": "apply", "params": {"manifest": text}},
            {"method": "logs", "params": {"name": "guarded"}},
        )  # fmt: skip
        assert PASSWORD not in json.dumps(replies)
        assert replies[0]["result"]["containers"][0]["env"]["DB_PASSWORD"] == "<redacted>"
        for reply in replies[1:]:
            assert reply["error"]["data"]["type"] == "AccessDenied", reply
        assert daemon.call("get", name="guarded")["generation"] == 1

        # -- the deploy group is nogroup, nobody's own: nobody deploys on both fronts,
        # uid 1 (daemon), no member, is refused on both even with the socket's group
        config = daemon.host.path("/var/lib/iyclo/access-test.json")
        config.write_text(json.dumps({"deployGroup": "nogroup"}))
        daemon.stop()
        daemon.start("--config", "/var/lib/iyclo/access-test.json")
        changed = json.loads(text)
        changed["containers"][0]["env"]["ROLE"] = "changed-by-nobody"
        applied = _busctl(daemon, list(NOBODY), "Apply", "s", json.dumps(changed))
        assert applied[1] == 2, applied  # (path, generation, changed, state)
        changed["containers"][0]["env"]["ROLE"] = "changed-over-the-socket"
        (reply,) = _socat(
            daemon, list(NOBODY), {"method": "apply", "params": {"manifest": json.dumps(changed)}}
        )
        assert reply["result"]["generation"] == 3, reply
        (whole,) = _socat(
            daemon, list(NOBODY), {"method": "get_manifest", "params": {"name": "guarded"}}
        )
        assert whole["result"]["containers"][0]["env"]["DB_PASSWORD"] == PASSWORD
        outsider = _as(1, 65534)
        assert "access denied: uid 1 " in _busctl(daemon, outsider, "Apply", "s", text)[1]
        (reply,) = _socat(daemon, outsider, {"method": "remove", "params": {"name": "guarded"}})
        assert reply["error"]["data"]["type"] == "AccessDenied", reply
        assert daemon.call("get", name="guarded")["generation"] == 3
    finally:
        daemon.stop()
        daemon.start()
        with contextlib.suppress(NotFoundError):
            daemon.call("remove", name="guarded")


POLKIT_RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "io.github.iyclo1.manage" && subject.user == "nobody") {
        return polkit.Result.YES;
    }
});
"""


def test_polkit_grants_one_verb_on_both_fronts(daemon: Daemon) -> None:
    """The host's real polkitd, with iyclo's actions and a rule handing uid nobody
    io.github.iyclo1.manage: nobody may stop and start a pod over D-Bus (polkit's subject:
    its bus name) and the JSON socket (its pid and start time), and is still refused
    remove (deploy), with polkit named in the refusal."""
    host = daemon.host
    actions = "/usr/share/polkit-1/actions/io.github.iyclo1.policy"
    rule = "/etc/polkit-1/rules.d/50-iyclo-test.rules"
    host.run(["tee", actions], input=(ROOT / "packaging" / "io.github.iyclo1.policy").read_text())
    host.run(["tee", rule], input=POLKIT_RULE)
    try:
        daemon.call("apply", manifest=fast(pod_manifest("granted")))
        # polkitd picks up new rules by inotify: give it a moment, bounded
        answers: list[Any] = []

        def stop_as_nobody() -> bool:
            answers.append(_busctl(daemon, list(NOBODY), "Stop", "s", "granted"))
            return answers[-1] == ["stopped"]

        try:
            wait_for(stop_as_nobody, timeout=15, what="polkit to grant nobody Stop")
        except AssertionError:
            raise AssertionError(f"the last answer: {answers[-1:]}") from None
        refused = _busctl(daemon, list(NOBODY), "Remove", "s", "granted")
        assert refused[0] == "error"
        assert "remove: access denied: uid 65534" in refused[1]
        assert "polkit grants io.github.iyclo1.deploy" in refused[1]
        group = int(host.run(["stat", "-c", "%g", "/var/lib/iyclo/iyclo.sock"]).stdout)
        started, removed = _socat(
            daemon, _as(65534, group),
            {"method": "start", "params": {"name": "granted"}},
            {"method": "remove", "params": {"name": "granted"}},
        )  # fmt: skip
        assert started.get("result") == "running", started
        assert removed["error"]["data"]["type"] == "AccessDenied", removed
        assert daemon.call("get", name="granted")["state"] == "running"
    finally:
        host.run(["rm", "-f", actions, rule])
        with contextlib.suppress(NotFoundError):
            daemon.call("remove", name="granted")


def test_events_arrive_in_order_on_cli_and_dbus(daemon: Daemon) -> None:
    env_cmd = [
        sys.executable,
        "-m",
        "iyclo.cli",
        "--socket",
        str(daemon.socket),
        "events",
        "--json",
    ]
    cli = subprocess.Popen(env_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signals: list[dict[str, Any]] = []
    bus = daemon.dbus()
    ready = threading.Event()

    def listen() -> None:
        stream = bus.events()
        ready.set()
        with contextlib.suppress(IycloError):
            for event in stream:
                if not isinstance(event, PodChanged):
                    continue  # state changes only (a pull's progress is not one)
                signals.append(event.to_json())
                if event.name == "herald" and event.state == "removed":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    time.sleep(1.0)  # both subscriptions are in place before the first event
    try:
        daemon.call("apply", manifest=fast(pod_manifest("herald")))
        daemon.call("stop", name="herald")
        daemon.call("remove", name="herald")
        lines: list[dict[str, Any]] = []
        assert cli.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = cli.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["name"] == "herald" and event["event"] == "PodChanged":
                lines.append(event)
                if event["state"] == "removed":
                    break
        listener.join(30)
    finally:
        cli.kill()
        cli.communicate()  # reaps it and closes its pipes
        bus.close()
    expected = ["applying", "running", "stopped", "removing", "removed"]
    cli_states = [e["state"] for e in lines]
    bus_states = [e["state"] for e in signals if e["name"] == "herald"]
    assert cli_states == expected
    assert bus_states == expected
    # one contract: the CLI's JSON over the socket is what the D-Bus signals decode to
    assert lines == [e for e in signals if e["name"] == "herald"]


def _connect(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(daemon.socket))
    return sock


def _exchange(sock: socket.socket, payload: bytes) -> dict[str, Any]:
    sock.sendall(payload)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def test_json_socket_survives_bad_clients(daemon: Daemon) -> None:
    idle = _connect(daemon)  # connects and never writes
    try:
        abuser = _connect(daemon)
        reply = _exchange(abuser, b"{this is not json\n")
        assert reply["error"]["code"] == -32700
        reply = _exchange(abuser, b'{"jsonrpc": "2.0", "id": 7, "method": "fly"}\n')
        assert reply == {
            "jsonrpc": "2.0", "id": 7,
            "error": {"code": -32601, "message": "unknown method 'fly'"},
        }  # fmt: skip
        reply = _exchange(abuser, b'{"jsonrpc": "2.0", "id": 8, "method": "version"}\n')
        assert reply["result"] == daemon.call("version")  # the same connection still works
        batch: Any = _exchange(abuser, b"[1, 2]\n")  # a batch: one error per element
        assert [r["error"]["code"] for r in batch] == [-32600, -32600]
        abuser.close()

        huge = _connect(daemon)
        answer: dict[str, Any] = {}

        def flood() -> None:
            payload = b'{"jsonrpc": "2.0", "id": 9, "method": "validate", "params": {"manifest": "'
            payload += b"x" * (10 * 1024 * 1024) + b'"}}\n'
            with contextlib.suppress(OSError):
                answer.update(_exchange(huge, payload))

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        # others are served while the flood and the idle client are connected
        started = time.monotonic()
        for _ in range(20):
            assert daemon.call("version")
        assert time.monotonic() - started < 20
        flooder.join(30)
        assert not flooder.is_alive()
        huge.settimeout(5)
        rest = b""
        with contextlib.suppress(OSError):
            while chunk := huge.recv(65536):  # ends at EOF: the daemon dropped us
                rest += chunk
        replies = [answer] if answer else []
        replies += [json.loads(line) for line in rest.splitlines() if line.strip()]
        assert [r["error"]["code"] for r in replies] == [-32600]
        assert "longer than" in replies[0]["error"]["message"]
        huge.close()

        # the idle client is dropped after the daemon's idle timeout (5 s here)
        idle.settimeout(15)
        assert wait_for(lambda: idle.recv(1) == b"", timeout=20, what="idle client dropped")
    finally:
        idle.close()
