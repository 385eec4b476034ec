"""Names and enumerations of systemd's D-Bus API (``org.freedesktop.systemd1``).

Kept in one place so the adapter, the fake systemd used by the tests and any
caller agree on every string; values were checked against systemd 252
(``busctl introspect org.freedesktop.systemd1 /org/freedesktop/systemd1``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

BUS_NAME: Final = "org.freedesktop.systemd1"
OBJECT_PATH: Final = "/org/freedesktop/systemd1"
UNIT_PATH_PREFIX: Final = "/org/freedesktop/systemd1/unit/"
JOB_PATH_PREFIX: Final = "/org/freedesktop/systemd1/job/"

IFACE_MANAGER: Final = "org.freedesktop.systemd1.Manager"
IFACE_UNIT: Final = "org.freedesktop.systemd1.Unit"
IFACE_SERVICE: Final = "org.freedesktop.systemd1.Service"
IFACE_TIMER: Final = "org.freedesktop.systemd1.Timer"
IFACE_SLICE: Final = "org.freedesktop.systemd1.Slice"
IFACE_PROPERTIES: Final = "org.freedesktop.DBus.Properties"
# Every per-unit-type interface (Service, Timer, Scope, ...) shares this prefix.
IFACE_PREFIX: Final = "org.freedesktop.systemd1."

DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
IFACE_PEER: Final = "org.freedesktop.DBus.Peer"

# Error names systemd returns that callers need to tell apart.
ERROR_NO_SUCH_UNIT: Final = "org.freedesktop.systemd1.NoSuchUnit"
ERROR_UNIT_EXISTS: Final = "org.freedesktop.systemd1.UnitExists"
ERROR_LOAD_FAILED: Final = "org.freedesktop.systemd1.LoadFailed"


class JobMode(StrEnum):
    """How a new job interacts with queued ones (the ``mode`` argument of StartUnit & co)."""

    REPLACE = "replace"
    FAIL = "fail"
    ISOLATE = "isolate"
    IGNORE_DEPENDENCIES = "ignore-dependencies"
    IGNORE_REQUIREMENTS = "ignore-requirements"
    FLUSH = "flush"
    TRIGGERING = "triggering"


class JobResult(StrEnum):
    """The ``result`` argument of the Manager's ``JobRemoved`` signal.

    Only ``done`` means the job did what was asked. The list follows systemd's
    ``job_result_table``; newer systemd versions may add values.
    """

    DONE = "done"
    CANCELED = "canceled"
    TIMEOUT = "timeout"
    FAILED = "failed"
    DEPENDENCY = "dependency"
    SKIPPED = "skipped"
    INVALID = "invalid"
    ASSERT = "assert"
    UNSUPPORTED = "unsupported"
    COLLECTED = "collected"
    ONCE = "once"
    FROZEN = "frozen"
    CONCURRENCY = "concurrency"


class UnitActiveState(StrEnum):
    """``org.freedesktop.systemd1.Unit.ActiveState``."""

    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    MAINTENANCE = "maintenance"
    REFRESHING = "refreshing"


class UnitLoadState(StrEnum):
    """``org.freedesktop.systemd1.Unit.LoadState``."""

    STUB = "stub"
    LOADED = "loaded"
    NOT_FOUND = "not-found"
    BAD_SETTING = "bad-setting"
    ERROR = "error"
    MERGED = "merged"
    MASKED = "masked"


class KillWhom(StrEnum):
    """Which processes of a unit ``KillUnit`` signals."""

    MAIN = "main"
    CONTROL = "control"
    ALL = "all"
