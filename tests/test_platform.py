"""What iyclo makes of the Podman it finds: the parts of `podman info` measured on Debian 12
and Debian 13 (this project's test hosts), and each way a Podman can be unsupported."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from iyclo.podman.platform import Features, Platform

# `podman info --format json`, the fields iyclo reads, as measured on each release.
BOOKWORM: dict[str, Any] = {
    "host": {"networkBackend": "netavark", "cgroupManager": "systemd", "cgroupVersion": "v1",
             "ociRuntime": {"name": "runc"}},
    "version": {"Version": "4.3.1", "APIVersion": "4.3.1"},
}  # fmt: skip
TRIXIE: dict[str, Any] = {
    "host": {"networkBackend": "netavark", "cgroupManager": "systemd", "cgroupVersion": "v1",
             "ociRuntime": {"name": "runc"}},
    "version": {"Version": "5.4.2", "APIVersion": "5.4.2"},
}  # fmt: skip


def test_debian_12_podman_is_supported_and_lacks_what_came_later() -> None:
    platform = Platform.from_info(BOOKWORM)
    assert platform.problems() == []
    assert (
        platform.summary() == "Podman 4.3.1: network netavark, runtime runc, cgroups v1 (systemd)"
    )
    assert platform.features == Features(
        keeps_updates=False, sdnotify_healthy=False, startup_healthchecks=False,
        quadlet=False, cgroupsv1_warning=False, secret_labels_listed=False,
        pins_bridge_mac=False,
    )  # fmt: skip


def test_debian_13_podman_is_supported_with_its_newer_features() -> None:
    platform = Platform.from_info(TRIXIE)
    assert platform.problems() == []
    assert platform.features == Features(
        keeps_updates=True, sdnotify_healthy=True, startup_healthchecks=True,
        quadlet=True, cgroupsv1_warning=True, secret_labels_listed=True,
        pins_bridge_mac=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version": "4.2.0"}, "Podman 4.2.0 is not supported: iyclo needs Podman 4.3 to 5.x"),
        ({"version": "6.0.0"}, "Podman 6.0.0 is not supported: iyclo needs Podman 4.3 to 5.x"),
        ({"version": ""}, "Podman (unknown version) is not supported"),
        ({"network_backend": "cni"}, 'Podman uses the "cni" network backend: iyclo needs netavark'),
        ({"cgroup_manager": "cgroupfs"}, 'Podman uses the "cgroupfs" cgroup manager'),
        ({"oci_runtime": "kata"}, 'Podman uses the OCI runtime "kata": iyclo needs runc or crun'),
    ],
)
def test_each_unsupported_setup_is_one_line(change: dict[str, str], problem: str) -> None:
    platform = attrs.evolve(Platform.from_info(BOOKWORM), **change)
    problems = platform.problems()
    assert len(problems) == 1
    assert problems[0].startswith(problem)
