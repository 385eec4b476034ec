"""Images from a real registry: Debian's docker-registry on 127.0.0.1 in the test host,
images pushed to it with `podman push`, pods deployed from it by the real daemon.

What each test reads back is Podman's, systemd's and the registry's own account (the
digest `podman push` wrote, the unit's state, the Podman pods), not only the daemon's.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.core import naming
from iyclo.errors import PodmanError
from iyclo_testhost import (
    Host,
    busybox_rootfs_tar,
    ensure_redis_image,
    import_image,
    registry_unit,
    start_registry,
)
from tests.daemon_fixtures import Daemon, fast, pods_of, remove, unit_show, wait_for
from tests.host_fixtures import BUSYBOX_TAG

pytestmark = [pytest.mark.host, pytest.mark.timeout(600)]

REDIS_PORT = 16379
USER, PASSWORD = "deployer", "s3cret-registry-pw"
AUTH_FILE = "/run/containers/0/auth.json"
"""Where Podman keeps root's registry logins (`podman login`), and its service reads them."""


@pytest.fixture(scope="module")
def registry(daemon: Daemon) -> Iterator[str]:
    """The test registry's location inside the session's host, e.g. 127.0.0.1:5000."""
    location = start_registry(daemon.host)
    yield location
    daemon.host.run(["systemctl", "stop", registry_unit(5000)], check=False)


@pytest.fixture(scope="module")
def locked_registry(daemon: Daemon) -> Iterator[str]:
    """A second test registry that lets only `USER` in."""
    location = start_registry(daemon.host, 5001, users={USER: PASSWORD})
    yield location
    daemon.host.run(["systemctl", "stop", registry_unit(5001)], check=False)


def push(host: Host, source: str, target: str, tmp: Path) -> str:
    """`podman push` `source` as `target`, then remove both from local storage so that a
    pull downloads it; the manifest digest the registry stored.

    Removed, not only untagged: an image still stored under another name is not
    downloaded again, and keeps the manifest digest it was first stored with (measured:
    the import's, not the registry's).
    """
    digest_file = f"/var/lib/iyclo/push-{tmp.name}.digest"  # persistent, seen from outside
    host.run(["podman", "tag", source, target])
    host.run(["podman", "push", "--quiet", "--digestfile", digest_file, target], timeout=300)
    digest = host.path(digest_file).read_text().strip()
    host.run(["podman", "rmi", target, source])
    return digest


def variant(host: Host, tag: str, label: str) -> str:
    """A busybox image of its own (another config, so another digest) tagged `tag`."""
    return import_image(host, busybox_rootfs_tar(), tag, "CMD=/bin/sh", f"LABEL variant={label}")


def steps(image: str, stderr: str) -> list[str]:
    """The progress lines of `image`'s pull: `IMAGE LAYER STATUS…`, as Podman words it
    (measured: 4.3 "Copying blob", 5.4 "Already exists", "Pulling fs layer", "Download
    complete")."""
    return re.findall(rf"^{re.escape(image)} [0-9a-f]{{12}} \S.*$", stderr, re.MULTILINE)


def assert_nothing_of(daemon: Daemon, name: str) -> None:
    """No record, no Podman pod and no unit of `name`: a first apply that failed."""
    assert name not in [p["name"] for p in daemon.call("list")]
    assert pods_of(daemon.host, name) == []
    unit = unit_show(daemon.host, f"iyclo-pod-{name}.service", "LoadState")
    assert unit["LoadState"] == "not-found"


def one_pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    return fast({
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "containers": [{"name": "main", "image": image, "command": ["sleep", "100000"],
                        **container}],
    })  # fmt: skip


def apply_cli(
    daemon: Daemon, manifest: dict[str, Any], via: str = "socket"
) -> subprocess.CompletedProcess[str]:
    """`iyclo apply -f -` of `manifest`, as a person would run it."""
    return daemon.cli("apply", "-f", "-", stdin=json.dumps(manifest), via=via)


def test_pull_and_apply_from_the_registry_show_progress_and_record_the_digest(
    daemon: Daemon, registry: str, tmp_path: Path
) -> None:
    host = daemon.host
    image = f"{registry}/busybox:progress"
    digest = push(host, variant(host, "localhost/variant:progress", "progress"), image, tmp_path)
    try:
        pulled = daemon.cli("pull", image)
        assert pulled.returncode == 0, pulled.stderr
        # Podman's steps, one line each, on stderr; the result on stdout
        assert steps(image, pulled.stderr)
        assert pulled.stdout.strip() == f"{image} {digest}"
        quiet = daemon.cli("pull", image, "--json")
        assert quiet.returncode == 0, quiet.stderr
        assert "Copying" not in quiet.stderr
        assert json.loads(quiet.stdout)["images"][0]["digest"] == digest

        host.run(["podman", "rmi", image])
        result = apply_cli(daemon, one_pod("reg", image), via="dbus")  # progress over D-Bus
        assert result.returncode == 0, result.stderr
        assert steps(image, result.stderr)
        assert "pod/reg configured (generation 1, running)" in result.stdout
        status = daemon.call("get", name="reg")
        assert status["images"]["main"]["digest"] == digest
        assert status["images"]["main"]["image"] == image
        container = json.loads(
            host.run(["podman", "inspect", naming.container_name("iyclo-reg-g1", "main")]).stdout
        )[0]
        assert f"sha256:{container['Image']}" == status["images"]["main"]["id"]
        inspected = daemon.cli("inspect", "reg")
        assert json.loads(inspected.stdout)["images"]["main"]["digest"] == digest
        shown = [line for line in result.stderr.splitlines() if line.strip()]
        print(f"\napply from {image} over D-Bus: {len(shown)} progress lines, e.g. "
              f"{shown[0].strip()!r}; recorded digest {digest}")  # fmt: skip
    finally:
        remove(daemon, "reg")


@pytest.mark.parametrize(
    ("tag", "reason"),
    [("busybox:nope", "manifest unknown"), ("", "connection refused")],
    ids=["missing-tag", "unreachable-registry"],
)
def test_a_failed_pull_is_one_line_and_changes_nothing(
    daemon: Daemon, registry: str, tmp_path: Path, tag: str, reason: str
) -> None:
    host = daemon.host
    good = f"{registry}/busybox:good"
    push(host, variant(host, "localhost/variant:good", "good"), good, tmp_path)
    bad = f"{registry}/{tag}" if tag else "127.0.0.1:5999/busybox:1"
    try:
        assert daemon.call("apply", manifest=one_pod("keep", good))["generation"] == 1
        before = unit_show(host, "iyclo-pod-keep.service", "ActiveState", "MainPID")
        result = apply_cli(daemon, one_pod("keep", bad))
        assert result.returncode == 5
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f'iyclo: error: image "{bad}" could not be pulled: ')
        assert reason in lines[0]
        print(f"\n{lines[0]} (exit {result.returncode}, generation 1 still running)")
        # nothing changed: same generation, same unit and main PID, no second pod
        assert [g["generation"] for g in daemon.call("history", name="keep")] == [1]
        assert unit_show(host, "iyclo-pod-keep.service", "ActiveState", "MainPID") == before
        assert pods_of(host, "keep") == ["iyclo-keep-g1"]
        # and a first apply that fails leaves no record, pod or unit
        with pytest.raises(PodmanError, match=f'image "{bad}"'):
            daemon.call("apply", manifest=one_pod("never-made", bad))
        assert_nothing_of(daemon, "never-made")
    finally:
        remove(daemon, "keep")


@pytest.mark.parametrize("policy", ["always", "newer"])
def test_pull_policy_always_and_newer_pick_up_a_pushed_tag(
    daemon: Daemon, registry: str, tmp_path: Path, policy: str
) -> None:
    """Podman decides both (its pull endpoint's own policy): the same tag pushed anew is a
    new generation from the same manifest, the same image again is no change."""
    host = daemon.host
    image = f"{registry}/busybox:moving-{policy}"
    first = push(host, variant(host, "localhost/variant:one", f"one-{policy}"), image, tmp_path)
    manifest = one_pod("moving", image, pullPolicy=policy)
    try:
        assert daemon.call("apply", manifest=manifest)["generation"] == 1
        again = daemon.call("apply", manifest=manifest)
        assert (again["changed"], again["generation"]) == (False, 1)  # the same image
        second = push(
            host, variant(host, "localhost/variant:two", f"two-{policy}"), image, tmp_path
        )
        assert second != first
        result = daemon.call("apply", manifest=manifest)
        assert (result["changed"], result["generation"]) == (True, 2)
        assert daemon.call("get", name="moving")["images"]["main"]["digest"] == second
        history = daemon.call("get_manifest", name="moving", generation=1)
        assert history == manifest  # the same manifest, two generations: two images
        assert pods_of(host, "moving") == ["iyclo-moving-g2"]
        assert unit_show(host, "iyclo-pod-moving.service", "ActiveState")["ActiveState"] == (
            "active"
        )
    finally:
        remove(daemon, "moving")


def test_credentials_come_from_podmans_auth_file_and_a_refused_login_is_one_line(
    daemon: Daemon, locked_registry: str, tmp_path: Path
) -> None:
    host = daemon.host
    image = f"{locked_registry}/busybox:locked"
    source = variant(host, "localhost/variant:locked", "locked")
    host.run(["podman", "tag", source, image])
    host.run(["podman", "push", "--quiet", "--creds", f"{USER}:{PASSWORD}", image])
    host.run(["podman", "rmi", image, source])
    auth = host.path(AUTH_FILE)
    manifest = one_pod("locked", image)
    try:
        for password in (None, "wrong"):  # no login, then a refused one
            if password is not None:
                token = base64.b64encode(f"{USER}:{password}".encode()).decode()
                auth.parent.mkdir(parents=True, exist_ok=True)
                auth.write_text(json.dumps({"auths": {locked_registry: {"auth": token}}}))
            result = apply_cli(daemon, manifest)
            assert result.returncode == 5
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(f'iyclo: error: image "{image}" could not be pulled: ')
            assert "unauthorized" in lines[0] or "authentication required" in lines[0]
            assert_nothing_of(daemon, "locked")
        login = ["podman", "login", "--username", USER, "--password-stdin", locked_registry]
        host.run(login, input=PASSWORD)
        assert USER not in json.dumps(manifest)  # credentials are Podman's, never the manifest's
        result = apply_cli(daemon, manifest)
        assert result.returncode == 0, result.stderr
        assert daemon.call("get", name="locked")["state"] == "running"
        assert PASSWORD not in json.dumps(daemon.call("get", name="locked"))
    finally:
        remove(daemon, "locked")
        auth.unlink(missing_ok=True)


def test_pull_policy_never_refuses_a_missing_image(daemon: Daemon, registry: str) -> None:
    image = f"{registry}/busybox:absent"
    result = apply_cli(daemon, one_pod("nopull", image, pullPolicy="never"))
    assert result.returncode == 5
    assert result.stderr.strip() == (
        f'iyclo: error: image "{image}" is not present and its pullPolicy is "never"'
    )
    assert_nothing_of(daemon, "nopull")
    # present locally, it is used as it is
    manifest = one_pod("nopull", BUSYBOX_TAG, pullPolicy="never")
    try:
        assert daemon.call("apply", manifest=manifest)["state"] == "running"
    finally:
        remove(daemon, "nopull")


def test_a_redis_image_from_debian_packages_is_deployed_from_the_registry(
    daemon: Daemon, registry: str, tmp_path: Path
) -> None:
    host = daemon.host
    local = ensure_redis_image(host)
    image = f"{registry}/redis:test"
    digest = push(host, local, image, tmp_path)
    manifest = fast({
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": "redis",
        "containers": [{"name": "redis", "image": image, "pullPolicy": "always",
                        "ports": [{"containerPort": 6379, "hostPort": REDIS_PORT,
                                   "hostIp": "127.0.0.1"}]}],
    })  # fmt: skip
    try:
        result = apply_cli(daemon, manifest)
        assert result.returncode == 0, result.stderr
        assert steps(image, result.stderr)
        assert daemon.call("get", name="redis")["images"]["redis"]["digest"] == digest
        # redis-cli from the same image, on the test host's own loopback
        ping = ["podman", "run", "--rm", "--network", "host", image,
                "redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"]  # fmt: skip

        def pong() -> bool:
            return host.run(ping, check=False, timeout=60).stdout.strip() == "PONG"

        wait_for(pong, timeout=60, interval=1, what="redis to answer PONG")
    finally:
        remove(daemon, "redis")
