"""Which Podman this is, and what iyclo may use of it.

iyclo supports Podman 4.3 (Debian 12) and 5.4 (Debian 13). What differs between them is
decided here, once, from the version Podman itself reports, never by trying one way and
falling back to another: the daemon logs the `Features` it chose at start, and a Podman
outside the supported range, or one set up with another network backend, cgroup manager
or OCI runtime than iyclo is tested with, is refused with one line per problem.

Run as ``python -m iyclo.podman.platform --check`` (scripts/bootstrap does) to check the
machine's Podman from the command line, before anything else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

MIN_VERSION = (4, 3)
"""Debian 12's Podman. Older ones lack the pod exit policy iyclo's units rely on."""
MAX_MAJOR = 5
SUPPORTED_NETWORK_BACKENDS = ("netavark",)
SUPPORTED_RUNTIMES = ("runc", "crun")
SUPPORTED_CGROUP_MANAGERS = ("systemd",)
QUIET_ENV = {"PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
"""Podman 5 warns on stderr at every call on cgroup v1 hosts; the warning is not news."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("-", 1)[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@attrs.frozen
class Features:
    """What this Podman does well, by version (each measured or from Podman's release notes).

    - `keeps_updates`: `podman update` changes survive the container's next start from 5.1
      (with the SQLite database); on 4.3 they are lost (measured), so a changed container
      limit needs a new generation there.
    - `sdnotify_healthy`: `sdnotify=healthy` (4.7+): READY=1 only once the healthcheck passes.
    - `startup_healthchecks`: `--health-startup-*` (4.7+).
    - `quadlet`: Quadlet generator (4.4+); iyclo does not need it, but reports it.
    - `cgroupsv1_warning`: Podman 5 prints a deprecation warning at every call on cgroup v1.
    - `secret_labels_listed`: the REST API's secret list carries each secret's labels:
      measured on 5.4; 4.3 lists ``"Labels": null`` and only its inspect has them. Taken
      from 5.0 on (4.4-4.9 not measured: they get the inspect, which is right everywhere).
    - `pins_bridge_mac`: netavark sets each bridge's MAC address itself (netavark 1.9,
      shipped with Podman 4.8: containers/netavark#833); with Debian 12's netavark 1.4
      the kernel moves it as containers come and go, and iyclo pins it
      (``iyclo.podman.bridges``). Podman 4.3 does not report netavark's version, so the
      Podman version decides.
    """

    keeps_updates: bool
    sdnotify_healthy: bool
    startup_healthchecks: bool
    quadlet: bool
    cgroupsv1_warning: bool
    secret_labels_listed: bool
    pins_bridge_mac: bool

    @classmethod
    def for_version(cls, version: tuple[int, ...], cgroup_version: str) -> Features:
        return cls(
            keeps_updates=version >= (5, 1),
            sdnotify_healthy=version >= (4, 7),
            startup_healthchecks=version >= (4, 7),
            quadlet=version >= (4, 4),
            cgroupsv1_warning=version >= (5,) and cgroup_version == "v1",
            secret_labels_listed=version >= (5,),
            pins_bridge_mac=version >= (4, 8),
        )


@attrs.frozen
class Platform:
    """The facts of `podman info` that iyclo depends on."""

    version: str
    network_backend: str
    oci_runtime: str
    cgroup_manager: str
    cgroup_version: str

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Platform:
        """From `podman info --format json` or the REST API's `/info`: the same document."""
        host = info.get("host") or {}
        return cls(
            version=str((info.get("version") or {}).get("Version", "")),
            network_backend=str(host.get("networkBackend", "")),
            oci_runtime=str((host.get("ociRuntime") or {}).get("name", "")),
            cgroup_manager=str(host.get("cgroupManager", "")),
            cgroup_version=str(host.get("cgroupVersion", "")),
        )

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return _version_tuple(self.version)

    @property
    def features(self) -> Features:
        return Features.for_version(self.version_tuple, self.cgroup_version)

    def problems(self) -> list[str]:
        """One line for each way this Podman differs from what iyclo supports."""
        found = []
        version = self.version_tuple
        if not (version[:2] >= MIN_VERSION and version[:1] <= (MAX_MAJOR,)):
            found.append(
                f"Podman {self.version or '(unknown version)'} is not supported: iyclo needs "
                f"Podman {'.'.join(map(str, MIN_VERSION))} to {MAX_MAJOR}.x"
            )
        if self.network_backend not in SUPPORTED_NETWORK_BACKENDS:
            found.append(
                f'Podman uses the "{self.network_backend}" network backend: iyclo needs netavark '
                '(apt-get install netavark aardvark-dns; [network] network_backend = "netavark" '
                "in containers.conf, then podman system reset)"
            )
        if self.oci_runtime not in SUPPORTED_RUNTIMES:
            found.append(
                f'Podman uses the OCI runtime "{self.oci_runtime}": iyclo needs runc or crun'
            )
        if self.cgroup_manager not in SUPPORTED_CGROUP_MANAGERS:
            found.append(
                f'Podman uses the "{self.cgroup_manager}" cgroup manager: iyclo needs systemd '
                '([engine] cgroup_manager = "systemd" in containers.conf)'
            )
        return found

    def summary(self) -> str:
        return (
            f"Podman {self.version}: network {self.network_backend}, runtime {self.oci_runtime}, "
            f"cgroups {self.cgroup_version} ({self.cgroup_manager})"
        )


def podman_info(podman: str = "podman") -> dict[str, Any]:
    """`podman info` as JSON, from the command line (for use before any daemon runs)."""
    result = subprocess.run(
        [podman, "info", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **QUIET_ENV},
    )
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        raise RuntimeError(f"podman info failed: {detail}")
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iyclo.podman.platform",
        description="Check this machine's Podman against what iyclo supports.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if it is not supported")
    args = parser.parse_args(argv)
    try:
        platform = Platform.from_info(podman_info())
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"iyclo: {exc}", file=sys.stderr)
        return 1
    problems = platform.problems()
    for problem in problems:
        print(f"iyclo: {problem}", file=sys.stderr)
    if not problems:
        print(f"iyclo: {platform.summary()}")
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
