"""What a pull is made of: the image it ends with, and the steps Podman's stream reports.

Podman's pull stream comes in two shapes, and both are read here, once (measured on the
test host's Podman 4.3 through ``POST /libpod/images/pull``): Podman 4.3 ignores
``compatMode`` and sends libpod's lines, ``{"stream": "Copying blob sha256:<id>\\n"}``,
one per layer and without sizes; a Podman that honours ``compatMode`` sends Docker's
``{"status": "Downloading", "id": "<layer>", "progressDetail": {"current": N,
"total": M}}``, which carries the bytes. Either ends with an ``error`` or with the image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from iyclo.manifest.model import PullPolicy

__all__ = ["ImageRef", "PullPolicy", "PullStep", "pull_step"]

_LIBPOD_STEPS = ("Copying blob ", "Copying config ")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """The local image a reference resolved to when a generation was made."""

    reference: str
    id: str
    """``sha256:<image ID>``: the image's config digest, what the container runs."""
    digest: str
    """Its manifest digest (``sha256:…``), what the registry names it by; "" if none."""

    def to_json(self) -> dict[str, str]:
        return {"image": self.reference, "id": self.id, "digest": self.digest}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRef:
        return cls(str(data["image"]), str(data["id"]), str(data.get("digest", "")))


@dataclasses.dataclass(frozen=True)
class PullStep:
    """One line of a pull's progress: a layer (short ID) and what happens to it."""

    layer: str
    status: str
    current: int = 0
    """Bytes done, 0 when Podman does not say."""
    total: int = 0
    """Bytes in all, 0 when Podman does not say."""


def pull_step(item: Mapping[str, Any]) -> PullStep | None:
    """The step one object of the pull stream reports, None for the others (the final
    image, blank lines, "Trying to pull …")."""
    line = item.get("stream")
    if isinstance(line, str):
        text = " ".join(line.split())
        for prefix in _LIBPOD_STEPS:
            if text.startswith(prefix):
                digest = text[len(prefix) :].removeprefix("sha256:")
                return PullStep(digest[:12], prefix.strip())
        return None
    status, layer = item.get("status"), item.get("id")
    if not isinstance(status, str) or not isinstance(layer, str):
        return None
    detail = item.get("progressDetail") or {}
    current, total = detail.get("current", 0), detail.get("total", 0)
    return PullStep(
        layer[:12], status,
        current if isinstance(current, int) else 0, total if isinstance(total, int) else 0,
    )  # fmt: skip
