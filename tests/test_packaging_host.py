"""The daemon's own unit file, run by a real systemd: iyclod comes up from it as
Type=notify, owns its bus name, serves, and leaves its pods running when it stops."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_fixtures import Daemon, pod_manifest

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]
ROOT = Path(__file__).parent.parent


def test_iyclod_runs_from_its_unit_file(fresh_testhost_factory: Any) -> None:
    host = fresh_testhost_factory(extra_dbus_policies=[ROOT / "dbus" / "io.github.iyclo1.conf"])
    units = host.path("/etc/systemd/system")
    for name in ("iyclod.service", "iyclo.slice"):
        (units / name).write_text((ROOT / "packaging" / name).read_text())
    dropin = units / "iyclod.service.d"
    dropin.mkdir()
    # this checkout's interpreter instead of /usr/bin/iyclod; the rest of the unit as shipped
    (dropin / "checkout.conf").write_text(
        "[Service]\nExecStart=\n"
        f"ExecStart={sys.executable} -m iyclo.daemon --state-dir /var/lib/iyclo "
        "--socket /var/lib/iyclo/iyclo.sock\n"
        f"Environment=PYTHONPATH={ROOT / 'src'}\n"
    )
    host.run(["systemctl", "daemon-reload"])
    verify = host.run(["systemd-analyze", "verify", "iyclod.service"], check=False)
    assert verify.returncode == 0, verify.stderr
    host.run(["systemctl", "start", "iyclod.service"], timeout=120)
    show = host.run(["systemctl", "show", "iyclod.service", "-p", "ActiveState", "-p", "Type"])
    assert "ActiveState=active" in show.stdout
    assert "Type=notify" in show.stdout
    owner = host.run(["busctl", "status", "io.github.iyclo1"], check=False)
    assert owner.returncode == 0, owner.stderr
    assert host.run(["test", "-d", "/run/iyclo"], check=False).returncode == 0

    daemon = Daemon(host)
    daemon.call("apply", manifest=json.dumps(pod_manifest("packaged")))
    host.run(["systemctl", "stop", "iyclod.service"], timeout=60)
    pod = host.run(["systemctl", "show", "-P", "ActiveState", "iyclo-pod-packaged.service"])
    assert pod.stdout.strip() == "active"  # the pod is not iyclod's child
    host.run(["systemctl", "start", "iyclod.service"], timeout=120)
    assert daemon.call("get", name="packaged")["state"] == "running"
