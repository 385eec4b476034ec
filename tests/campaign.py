"""What the fault and load campaigns (issue #14) read back from a test host.

Every check reads systemd and Podman themselves, never the daemon's own idea of them:
the daemon's records are compared against what the host runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from iyclo.core import naming
from iyclo_testhost import Host

CAMPAIGN = os.environ.get("IYCLO_CAMPAIGN", "") == "full"
"""``IYCLO_CAMPAIGN=full`` runs the campaigns at the counts the issue asks for (100 kills,
50 pods); the default, which CI runs, is smaller so a CI run stays well inside its time."""


def scale(full: int, ci: int) -> int:
    return full if CAMPAIGN else ci


def _podman_rows(host: Host, *args: str) -> list[dict[str, Any]]:
    out = host.run(["podman", *args, "--format", "json"], timeout=120).stdout
    rows: list[dict[str, Any]] = json.loads(out or "[]") or []
    return rows


def host_objects(host: Host) -> dict[str, dict[str, list[str]]]:
    """Everything iyclo made on the host, by owner name: its units and slices, Podman
    pods, containers and secrets (iyclo labels every one; units go by their names)."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    units = host.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
         "iyclo-pod-*", "iyclo-job-*", f"{naming.SLICE_PREFIX}*"], timeout=60,
    ).stdout  # fmt: skip
    for line in units.splitlines():
        unit = line.split()[0] if line.split() else ""
        parsed = naming.parse_unit_name(unit)
        owner = parsed[1] if parsed else naming.parse_slice_name(unit)
        if owner is not None:
            found[owner]["units"].append(unit)
    for row in _podman_rows(host, "pod", "ps", "--filter", f"label={naming.LABEL_POD}"):
        found[row["Labels"][naming.LABEL_POD]]["pods"].append(row["Name"])
    for row in _podman_rows(host, "ps", "-a", "--filter", f"label={naming.LABEL_POD}"):
        found[row["Labels"][naming.LABEL_POD]]["containers"].append(row["Names"][0])
    # networks: every iyclo-labelled one belongs to a Network record (volumes are left out:
    # they outlive their pods on purpose)
    for row in _podman_rows(host, "network", "ls", "--filter",
                            f"label={naming.LABEL_KIND}=Network"):  # fmt: skip
        found[(row.get("labels") or {})[naming.LABEL_POD]]["networks"].append(row["name"])
    # `secret ls` has neither --format json nor a label filter on Podman 4.3
    ids = host.run(["podman", "secret", "ls", "--noheading", "--format", "{{.ID}}"]).stdout
    if ids.split():
        inspected = json.loads(host.run(["podman", "secret", "inspect", *ids.split()]).stdout)
        for row in inspected:
            spec = row.get("Spec") or {}
            owner = (spec.get("Labels") or {}).get(naming.LABEL_POD)
            if owner:
                found[owner]["secrets"].append(str(spec.get("Name")))
    return found


def problems(host: Host, records: list[dict[str, Any]]) -> list[str]:
    """What does not match: an iyclo object without a record (an orphan), a name with
    more than one Podman pod (a duplicate), a pod record whose unit neither runs nor was
    stopped on purpose. Empty when the host matches the store."""
    wrong: list[str] = []
    by_name = {record["name"]: record for record in records}
    for owner, objects in sorted(host_objects(host).items()):
        if owner not in by_name:
            wrong.append(f"orphan {owner}: {dict(objects)}")
            continue
        if len(objects.get("pods", [])) > 1:
            wrong.append(f"duplicate pods of {owner}: {objects['pods']}")
    for record in records:
        state = record.get("state")
        if record["kind"] == "Pod" and state not in ("running", "stopped"):
            wrong.append(f"pod {record['name']} is {state!r}, not running or stopped")
        if record["kind"] == "Job" and state not in ("scheduled", "running", "stopped"):
            wrong.append(f"job {record['name']} is {state!r}")
        if record["kind"] == "Network" and state != "created":
            wrong.append(f"network {record['name']} is {state!r}")
    return wrong


def wait_until_matching(host: Host, records: Callable[[], list[dict[str, Any]]],
                        timeout: float, what: str) -> None:  # fmt: skip
    """Until ``problems`` is empty (checked every 0.5 s), or fail naming what is left."""
    deadline = time.monotonic() + timeout
    left = problems(host, records())
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = problems(host, records())
    assert not left, f"{what}: the host does not match the store after {timeout:g}s: {left}"
