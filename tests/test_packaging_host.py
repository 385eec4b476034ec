"""iyclod installed as an operator would (`iyclo system install`), run by a real systemd:
its unit verifies, it comes up as Type=notify on a D-Bus call alone (activation), owns
its bus name, serves, and leaves its pods running when it stops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_fixtures import Daemon, pod_manifest

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]
ROOT = Path(__file__).parent.parent
IYCLO = str(Path(sys.executable).with_name("iyclo"))
INSTALLED = (
    "/etc/systemd/system/iyclod.service",
    "/etc/dbus-1/system.d/io.github.iyclo1.conf",
    "/usr/local/share/dbus-1/system-services/io.github.iyclo1.service",
    "/usr/share/polkit-1/actions/io.github.iyclo1.policy",
    "/etc/iyclo/iyclo.json",
)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [IYCLO, "system", "install", "--dry-run", "--prefix", str(tmp_path / "p q")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["write"] * len(INSTALLED)
    assert not (tmp_path / "p q").exists()


def test_installed_iyclod_starts_on_a_dbus_call(fresh_testhost_factory: Any) -> None:
    host = fresh_testhost_factory()
    installed = host.run([IYCLO, "system", "install"]).stdout
    for path in INSTALLED:
        assert f"write {path}" in installed
    unit = host.path("/etc/systemd/system/iyclod.service").read_text()
    assert f"ExecStart={Path(IYCLO).with_name('iyclod')} " in unit
    verify = host.run(["systemd-analyze", "verify", "iyclod.service"], check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""

    # Nothing started it: the first call to its bus name does, through systemd.
    state = host.run(["systemctl", "is-active", "iyclod.service"], check=False).stdout.strip()
    assert state == "inactive"
    listed = host.run(
        ["busctl", "call", "--timeout=120", "io.github.iyclo1", "/io/github/iyclo1",
         "io.github.iyclo1.Manager", "List"], timeout=150,
    )  # fmt: skip
    assert listed.stdout.startswith("a(")  # an array of pods and jobs (none yet)
    assert listed.stdout.strip().endswith(" 0")
    show = host.run(["systemctl", "show", "iyclod.service", "-p", "ActiveState", "-p", "Type"])
    assert "ActiveState=active" in show.stdout
    assert "Type=notify" in show.stdout
    assert host.run(["test", "-d", "/run/iyclo"], check=False).returncode == 0

    daemon = Daemon(host)
    daemon.socket = host.path("/run/iyclo/iyclo.sock")  # where the installed unit serves
    daemon.call("apply", manifest=json.dumps(pod_manifest("packaged")))
    host.run(["systemctl", "stop", "iyclod.service"], timeout=60)
    pod = host.run(["systemctl", "show", "-P", "ActiveState", "iyclo-pod-packaged.service"])
    assert pod.stdout.strip() == "active"  # the pod is not iyclod's child
    host.run(["systemctl", "start", "iyclod.service"], timeout=120)
    assert daemon.call("get", name="packaged")["state"] == "running"

    removed = host.run([IYCLO, "system", "uninstall"]).stdout
    for path in INSTALLED[:-1]:
        assert f"remove {path}" in removed
        assert not host.path(path).exists()
    assert host.path("/etc/iyclo/iyclo.json").exists()  # the operator's config stays
    assert host.run(["systemctl", "is-active", "iyclod.service"], check=False).returncode != 0
    pod = host.run(["systemctl", "show", "-P", "ActiveState", "iyclo-pod-packaged.service"])
    assert pod.stdout.strip() == "active"


def test_install_makes_the_deploy_group_only_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live install (prefix /) runs `groupadd --system iyclo` first when the group is not
    there, and never when it is (dry runs: nothing is run)."""
    from iyclo import install

    monkeypatch.setattr(install, "iyclod_path", lambda: Path(IYCLO).with_name("iyclod"))
    monkeypatch.setattr(install, "_group_exists", lambda name: False)
    steps = [s.text for s in install.install(dry_run=True)]
    assert steps[-3:] == [
        "run groupadd --system iyclo",
        "run systemctl daemon-reload",
        "run busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus "
        "ReloadConfig",
    ]
    monkeypatch.setattr(install, "_group_exists", lambda name: True)
    assert not any("groupadd" in s.text for s in install.install(dry_run=True))
