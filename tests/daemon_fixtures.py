"""Run the real daemon inside a test host, as systemd would on a real machine.

`iyclod` runs as a `Type=notify` unit of the test host's own systemd (so READY=1 is
part of what is tested) from this checkout's virtualenv; tests reach it through its
JSON socket, which lives under the host's persistent /var/lib/iyclo and so is
visible from outside at `<root>/iyclo/iyclo.sock`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from iyclo.client.dbus import DBusClient
from iyclo.client.jsonrpc import JsonRpcClient
from iyclo.errors import NotFoundError
from iyclo_testhost import Host

ROOT = Path(__file__).parent.parent
INNER_STATE = "/var/lib/iyclo"
UNIT = "iyclod.service"


class Daemon:
    """One iyclod inside `host`; start, SIGKILL, restart, and talk to it."""

    def __init__(self, host: Host, extra_args: tuple[str, ...] = ()) -> None:
        self.host = host
        self.extra_args = extra_args
        self.socket = host.root / "iyclo" / "iyclo.sock"
        self.log = host.root / "iyclo" / "iyclod.log"

    def start(self, *extra: str, properties: Sequence[str] = ()) -> None:
        """Start iyclod with ``extra`` arguments and ``properties`` of its unit (e.g.
        ``LoadCredential=``)."""
        argv = [
            "systemd-run", f"--unit={UNIT}", "--collect",
            "-p", "Type=notify", "-p", "NotifyAccess=main", "-p", "TimeoutStartSec=90",
            *(word for item in properties for word in ("-p", item)),
            f"--setenv=PYTHONPATH={ROOT / 'src'}", "--setenv=PYTHONUNBUFFERED=1",
            sys.executable, "-m", "iyclo.daemon",
            "--state-dir", INNER_STATE, "--socket", f"{INNER_STATE}/iyclo.sock",
            "--log-file", f"{INNER_STATE}/iyclod.log", "--log-level", "debug",
            *self.extra_args, *extra,
        ]  # fmt: skip
        result = self.host.run(argv, check=False, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"iyclod did not start: {result.stderr}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would; its pods' units are not its children."""
        self.host.run(["systemctl", "kill", "--signal=KILL", UNIT], check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = self.unit_property("ActiveState")
            if state in ("failed", "inactive", ""):
                break
            time.sleep(0.05)
        self.host.run(["systemctl", "reset-failed", UNIT], check=False)

    def stop(self) -> None:
        self.host.run(["systemctl", "stop", UNIT], check=False, timeout=90)
        self.host.run(["systemctl", "reset-failed", UNIT], check=False)

    def unit_property(self, name: str, unit: str = UNIT) -> str:
        out = self.host.run(["systemctl", "show", "-P", name, unit], check=False).stdout
        return out.strip()

    def client(self, timeout: float = 240) -> JsonRpcClient:
        return JsonRpcClient(self.socket, timeout=timeout)

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as client:
            return client.call(method, **params)

    def dbus(self, timeout: float = 240) -> DBusClient:
        """A D-Bus client on the host's system bus, from outside its namespaces."""
        return DBusClient(bus_address=self.host.system_bus_address, timeout=timeout)

    def _cli_env(self, via: str) -> dict[str, str]:
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("IYCLO_SOCKET", None)
        if via == "socket":
            env["IYCLO_SOCKET"] = str(self.socket)
        else:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.host.system_bus_address
        return env

    def cli(
        self, *args: str, stdin: str | None = None, via: str = "socket"
    ) -> subprocess.CompletedProcess[str]:
        """The real `iyclo` CLI, run on the machine, reaching the daemon over its
        JSON socket (`via="socket"`) or over the host's system bus (`via="dbus"`)."""
        return subprocess.run(
            [sys.executable, "-m", "iyclo.cli", *args], capture_output=True, text=True,
            input=stdin, env=self._cli_env(via), timeout=300, check=False,
        )  # fmt: skip

    def cli_stream(self, *args: str, via: str = "socket") -> subprocess.Popen[str]:
        """`cli`, left running with its output piped (e.g. `iyclo events --json`)."""
        return subprocess.Popen(
            [sys.executable, "-m", "iyclo.cli", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=self._cli_env(via),
        )  # fmt: skip

    def podman_json(self, *args: str) -> Any:
        return json.loads(self.host.run(["podman", *args, "--format", "json"]).stdout or "null")


def pod_manifest(name: str, **overrides: Any) -> dict[str, Any]:
    """A small two-container pod on local busybox; the first container is the main one."""
    manifest: dict[str, Any] = {
        "apiVersion": "iyclo/v1",
        "kind": "Pod",
        "name": name,
        "restart": {"policy": "on-failure", "delay": "1s", "limit": 10, "window": "1min"},
        "containers": [
            {
                "name": "main",
                "image": "localhost/busybox:latest",
                "command": ["sleep", "100000"],
                "env": {"ROLE": "main"},
            },
            {
                "name": "side",
                "image": "localhost/busybox:latest",
                "command": ["sleep", "100000"],
            },
        ],
    }
    manifest.update(overrides)
    return manifest


def fast(manifest: dict[str, Any]) -> dict[str, Any]:
    """Every container stops within 1 s (busybox as PID 1 ignores SIGTERM)."""
    for container in manifest["containers"]:
        container["stopTimeout"] = "1s"
    return manifest


def remove(daemon: Daemon, name: str, *, purge_history: bool = False) -> None:
    """Remove a pod or job if it is there (cleanup in a test's `finally`)."""
    with contextlib.suppress(NotFoundError):
        daemon.call("remove", name=name, purge_history=purge_history)


def inspect(host: Host, container: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(host.run(["podman", "inspect", container]).stdout)
    return data[0]


def pods_of(host: Host, name: str) -> list[str]:
    """Names of the Podman pods iyclo labelled as `name`'s."""
    out = host.run(
        ["podman", "pod", "ps", "--filter", f"label=io.github.iyclo.pod={name}",
         "--format", "{{.Name}}"]
    ).stdout  # fmt: skip
    return sorted(out.split())


def unit_show(host: Host, unit: str, *props: str) -> dict[str, str]:
    args = ["systemctl", "show", unit]
    for name in props:
        args += ["-p", name]
    out = host.run(args, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.2,
    what: str | Callable[[], str] = "",
) -> Any:  # fmt: skip
    """Poll `predicate` until it returns a truthy value, bounded in time. ``what`` may be
    a callable, for a failure to say what was seen by then."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    said = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {said or predicate}: {last!r}")


@pytest.fixture(scope="session")
def daemon(testhost: Host) -> Iterator[Daemon]:
    """The session's daemon inside the session's test host, on its system bus too."""
    testhost.install_dbus_policy(ROOT / "dbus" / "io.github.iyclo1.conf")
    instance = Daemon(testhost, ("--idle-timeout", "5"))
    instance.start()
    yield instance
    instance.stop()
