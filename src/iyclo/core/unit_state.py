"""How the core reads a unit's ``ActiveState``, in systemd's own enumeration.

A unit's processes may run from the moment it leaves inactive until it is inactive or
failed again, so activating, reloading and deactivating count as running (a oneshot run
is *activating* for as long as it runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iyclo.systemd.const import UnitActiveState as Active

RUNNING = frozenset({Active.ACTIVE, Active.ACTIVATING, Active.RELOADING, Active.DEACTIVATING})
ENDED = frozenset({Active.INACTIVE, Active.FAILED})
TRANSITIONS = frozenset({Active.ACTIVATING, Active.RELOADING, Active.DEACTIVATING})
"""A job of systemd's is under way: the state is about to change."""
SETTLED = {str(Active.ACTIVE), str(Active.INACTIVE), str(Active.FAILED)}


def is_running(props: Mapping[str, Any] | None) -> bool:
    return props is not None and props.get("ActiveState") in RUNNING


def is_active(props: Mapping[str, Any] | None) -> bool:
    return props is not None and props.get("ActiveState") == Active.ACTIVE


def is_ended(props: Mapping[str, Any] | None) -> bool:
    return props is not None and props.get("ActiveState") in ENDED
