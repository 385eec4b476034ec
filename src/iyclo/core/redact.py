"""What a caller who may not deploy sees of a stored manifest.

People keep putting passwords in ``env`` (it was the only way to hand a container a
credential before ``secrets``), so its values are replaced for everyone who could not
have written them; the keys stay, so the shape of a pod is still readable. The digest of
a manifest goes too: with the rest of the manifest in hand, a SHA-256 of the whole is an
offline oracle for guessing a weak ``env`` value.
"""

from __future__ import annotations

import copy
from typing import Any

REDACTED = "<redacted>"


def redact_manifest(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored manifest (``dump_manifest`` shape) with every ``env`` value of
    its containers and init containers replaced by "<redacted>"."""
    shown = copy.deepcopy(document)
    for field in ("initContainers", "containers"):
        for container in shown.get(field) or []:
            env = container.get("env") if isinstance(container, dict) else None
            if isinstance(env, dict):
                container["env"] = dict.fromkeys(env, REDACTED)
    return shown


def redact_record(record: dict[str, Any]) -> dict[str, Any]:
    """A status or history entry without its manifest digest, nor its containers' last
    health check output (a check prints what it likes: as open as the journal, which
    only those who may deploy or read logs see)."""
    shown = {**record, "digest": REDACTED} if "digest" in record else dict(record)
    containers = shown.get("containers")
    if isinstance(containers, list) and any("healthOutput" in c for c in containers):
        shown["containers"] = [
            {**c, "healthOutput": REDACTED} if "healthOutput" in c else c for c in containers
        ]
    return shown
