"""A Podman network as iyclo reads it back, from libpod's network inspect or list.

Only the fields Podman 4.3 and 5.4 both report under the same keys (``name``,
``internal``, ``dns_enabled``, ``labels``: measured on both); 5.x adds ``containers`` to
an inspect, which iyclo does not read: a network's users are the pods whose manifests
name it, from the store, on every version alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class NetworkInfo:
    name: str
    internal: bool
    dns_enabled: bool
    labels: dict[str, str]

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> NetworkInfo:
        return cls(
            name=str(data.get("name", "")),
            internal=bool(data.get("internal")),
            dns_enabled=bool(data.get("dns_enabled")),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        )
