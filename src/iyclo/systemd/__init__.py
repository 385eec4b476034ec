"""systemd adapter: a typed D-Bus client for ``org.freedesktop.systemd1``.

Everything iyclo does to systemd goes through :class:`SystemdManager`; unit
properties are built with :func:`prop` so their D-Bus signatures come from one
table.
"""

from .const import JobMode, JobResult, KillWhom, UnitActiveState, UnitLoadState
from .manager import JobRemoved, SystemdManager, UnitChange, UnitInfo, UnitWatch
from .paths import unit_name_from_path, unit_object_path, unit_path_escape, unit_path_unescape
from .properties import (
    PROPERTY_SIGNATURES,
    USEC_INFINITY,
    ExecCommand,
    UnitProperty,
    exec_command,
    prop,
    usec,
)

__all__ = [
    "PROPERTY_SIGNATURES",
    "USEC_INFINITY",
    "ExecCommand",
    "JobMode",
    "JobRemoved",
    "JobResult",
    "KillWhom",
    "SystemdManager",
    "UnitActiveState",
    "UnitChange",
    "UnitInfo",
    "UnitLoadState",
    "UnitProperty",
    "UnitWatch",
    "exec_command",
    "prop",
    "unit_name_from_path",
    "unit_object_path",
    "unit_path_escape",
    "unit_path_unescape",
    "usec",
]
