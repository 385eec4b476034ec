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
    """A copy of a stored manifest (``dump_manifest`` shape) with every ``env`` value
    replaced by "<redacted>"."""
    shown = copy.deepcopy(document)
    for container in shown.get("containers") or []:
        env = container.get("env") if isinstance(container, dict) else None
        if isinstance(env, dict):
            container["env"] = dict.fromkeys(env, REDACTED)
    return shown


def redact_digest(record: dict[str, Any]) -> dict[str, Any]:
    """A status or history entry without its manifest digest."""
    if "digest" not in record:
        return record
    return {**record, "digest": REDACTED}
