"""Bridge MACs that stay put (``iyclo.podman.bridges``), on real Linux bridges in a
private network namespace (``unshare -n``): the kernel moves an unpinned bridge's
address to a lower port's; a pinned one keeps its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iyclo.podman.platform import Features

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="needs root, ip (iproute2) and unshare to make bridges in a private namespace",
)

SCRIPT = """
import subprocess, sys
import structlog
from iyclo.podman.bridges import BridgePins

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

def ip(*args):
    subprocess.run(["ip", *args], check=True)

def address(name):
    out = subprocess.run(["ip", "-br", "link", "show", name], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[2]

def port(bridge, name, mac):
    ip("link", "add", name, "address", mac, "type", "veth", "peer", "name", name + "p")
    ip("link", "set", name, "master", bridge)

pins = BridgePins()
for bridge, pinned in (("loose0", False), ("kept0", True)):
    ip("link", "add", bridge, "type", "bridge")
    port(bridge, bridge + "a", "02:00:00:00:00:50")
    first = address(bridge)
    done = pins.pin([bridge, "absent0"]) if pinned else []
    port(bridge, bridge + "b", "02:00:00:00:00:01")   # a lower address joins
    ip("link", "del", bridge + "a")                     # and the first port leaves
    twice = pins.pin([bridge]) if pinned else []
    print(bridge, first, address(bridge), ",".join(done), ",".join(twice))

# netavark deletes a bridge with its last container and makes a new one: pinned again
ip("link", "del", "kept0")
ip("link", "add", "kept0", "type", "bridge")
print("again", ",".join(pins.pin(["kept0"])))
"""


def run_in_private_net() -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [line.split(" ") for line in result.stdout.splitlines()]


def test_a_pinned_bridge_keeps_its_address_as_ports_come_and_go() -> None:
    loose, kept, again = run_in_private_net()
    # unpinned, the kernel moved it (what Debian 12's netavark 1.4 leaves to the kernel)
    assert loose == ["loose0", "02:00:00:00:00:50", "02:00:00:00:00:01", "", ""]
    # pinned once (an absent interface is skipped), it stays, and is not pinned twice
    assert kept == ["kept0", "02:00:00:00:00:50", "02:00:00:00:00:50", "kept0", ""]
    assert again == ["again", "kept0"]


def test_only_a_podman_before_4_8_needs_the_pin() -> None:
    assert not Features.for_version((4, 3, 1), "v1").pins_bridge_mac
    assert Features.for_version((4, 8, 0), "v2").pins_bridge_mac
    assert Features.for_version((5, 4, 2), "v1").pins_bridge_mac
