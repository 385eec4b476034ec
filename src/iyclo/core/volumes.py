"""Named volumes iyclo made: who owns them, who mounts them, and removing a pod's own.

A volume outlives generations and the pod itself (``iyclo rm`` keeps it, as Docker and
Podman do); ``iyclo rm --volumes`` removes the ones the pod owns (``VOLUME_OWNER_LABEL``)
that no other record mounts. Whether one is in use is read from the store (the records
whose current manifests mount it), the same on every Podman version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from iyclo.core import naming
from iyclo.manifest.policy import VOLUME_OWNER_LABEL
from iyclo.podman.client import PodmanClient
from iyclo.store import Deployment


def mounted(stored: dict[str, Any]) -> set[str]:
    """The named volumes a stored manifest mounts, read from its JSON as stored."""
    return {
        str(volume.get("source"))
        for key in ("initContainers", "containers")
        for container in stored.get(key) or []
        for volume in container.get("volumes") or []
        if not str(volume.get("source", "/")).startswith("/")
    }


def users_of(volume: str, records: Iterable[Deployment]) -> list[str]:
    return sorted(r.name for r in records if volume in mounted(r.manifest))


async def listing(podman: PodmanClient, records: list[Deployment]) -> list[dict[str, Any]]:
    """Every volume iyclo made, sorted by name: name, owner, the records mounting it
    (``usedBy``, ``inUse``) and where Podman keeps its data."""
    rows = []
    for volume in await podman.list_volumes(naming.LABEL_POD):
        name = str(volume.get("Name", ""))
        labels = volume.get("Labels") or {}
        users = users_of(name, records)
        rows.append({
            "name": name,
            "owner": str(labels.get(VOLUME_OWNER_LABEL, "")),
            "inUse": bool(users),
            "usedBy": users,
            "mountpoint": str(volume.get("Mountpoint", "")),
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["name"])


async def remove_owned(podman: PodmanClient, owner: str, records: list[Deployment]) -> list[str]:
    """The volumes ``owner`` made that no remaining record mounts; the names removed."""
    removed = []
    for volume in await podman.list_volumes(f"{VOLUME_OWNER_LABEL}={owner}"):
        name = str(volume.get("Name", ""))
        if not users_of(name, [r for r in records if r.name != owner]):
            await podman.remove_volume(name)
            removed.append(name)
    return removed
