"""Build the ``a(sv)`` property lists that StartTransientUnit and SetUnitProperties take.

systemd checks the D-Bus type of every property it is sent and rejects the
whole call on one wrong signature ("Unexpected message contents"), so the
signature of each property lives in exactly one table here and callers only
say *what* they want: ``prop("MemoryMax", 64 * 1024**2)``. Names systemd does
not accept as input (e.g. the read-only ``TimersCalendar``) are absent, so
asking for them fails on our side with a clear ``ValueError``.

The table was checked against systemd 252 by starting transient units that
set every property listed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from dbus_fast import Variant
from dbus_fast.errors import SignatureBodyMismatchError

UnitProperty = tuple[str, Variant]
"""One ``(sv)`` entry: property name and its typed value."""

USEC_INFINITY: Final = 2**64 - 1
"""systemd's "no limit" for ``t`` (usec and byte) properties (``infinity`` in unit files)."""

_EXEC: Final = "a(sasb)"

_SIGNATURES: dict[str, str] = {
    # [Unit] section, valid for every unit type.
    "Description": "s",
    "Documentation": "as",
    "Wants": "as",
    "Requires": "as",
    "Requisite": "as",
    "BindsTo": "as",
    "PartOf": "as",
    "Before": "as",
    "After": "as",
    "Conflicts": "as",
    "OnFailure": "as",
    "OnSuccess": "as",
    "DefaultDependencies": "b",
    "StopWhenUnneeded": "b",
    "RefuseManualStart": "b",
    "RefuseManualStop": "b",
    "CollectMode": "s",
    "StartLimitBurst": "u",
    "StartLimitIntervalUSec": "t",
    "StartLimitAction": "s",
    "FailureAction": "s",
    "SuccessAction": "s",
    "AddRef": "b",
    # [Service]
    "Type": "s",
    "ExitType": "s",
    "ExecCondition": _EXEC,
    "ExecStartPre": _EXEC,
    "ExecStart": _EXEC,
    "ExecStartPost": _EXEC,
    "ExecReload": _EXEC,
    "ExecStop": _EXEC,
    "ExecStopPost": _EXEC,
    "PIDFile": "s",
    "Restart": "s",
    "RestartUSec": "t",
    "RemainAfterExit": "b",
    "GuessMainPID": "b",
    "TimeoutStartUSec": "t",
    "TimeoutStopUSec": "t",
    "TimeoutAbortUSec": "t",
    "RuntimeMaxUSec": "t",
    "WatchdogUSec": "t",
    "NotifyAccess": "s",
    "OOMPolicy": "s",
    "FileDescriptorStoreMax": "u",
    # Execution environment.
    "Environment": "as",
    "EnvironmentFiles": "a(sb)",
    "WorkingDirectory": "s",
    "User": "s",
    "Group": "s",
    "SupplementaryGroups": "as",
    "StandardInput": "s",
    "StandardOutput": "s",
    "StandardError": "s",
    "SyslogIdentifier": "s",
    "UMask": "u",
    "Nice": "i",
    "LimitNOFILE": "t",
    "LimitNOFILESoft": "t",
    "LimitNPROC": "t",
    "LimitNPROCSoft": "t",
    "LimitCORE": "t",
    "LimitCORESoft": "t",
    # Sandboxing.
    "NoNewPrivileges": "b",
    "PrivateTmp": "b",
    "PrivateDevices": "b",
    "PrivateNetwork": "b",
    "PrivateUsers": "b",
    "PrivateMounts": "b",
    "ProtectKernelTunables": "b",
    "ProtectKernelModules": "b",
    "ProtectKernelLogs": "b",
    "ProtectControlGroups": "b",
    "ProtectClock": "b",
    "ProtectHostname": "b",
    "RestrictRealtime": "b",
    "RestrictSUIDSGID": "b",
    "LockPersonality": "b",
    "MemoryDenyWriteExecute": "b",
    "RemoveIPC": "b",
    "DynamicUser": "b",
    "ProtectSystem": "s",
    "ProtectHome": "s",
    "ProtectProc": "s",
    "ProcSubset": "s",
    "ReadWritePaths": "as",
    "ReadOnlyPaths": "as",
    "InaccessiblePaths": "as",
    "CapabilityBoundingSet": "t",
    "AmbientCapabilities": "t",
    # Killing.
    "KillMode": "s",
    "KillSignal": "i",
    "FinalKillSignal": "i",
    "SendSIGKILL": "b",
    "SendSIGHUP": "b",
    # Resource control (cgroups).
    "Slice": "s",
    "Delegate": "b",
    "CPUAccounting": "b",
    "MemoryAccounting": "b",
    "IOAccounting": "b",
    "TasksAccounting": "b",
    "IPAccounting": "b",
    "MemoryMin": "t",
    "MemoryLow": "t",
    "MemoryHigh": "t",
    "MemoryMax": "t",
    "MemorySwapMax": "t",
    "CPUQuotaPerSecUSec": "t",
    "CPUQuotaPeriodUSec": "t",
    "CPUWeight": "t",
    "StartupCPUWeight": "t",
    "IOWeight": "t",
    "StartupIOWeight": "t",
    "TasksMax": "t",
    "DevicePolicy": "s",
    # [Timer]. A transient timer takes OnCalendar as one "s" per property (the
    # read-only TimersCalendar a(sst) is what systemd reports back), and the
    # monotonic triggers keep their unit-file names ("OnBootSec") with a "t"
    # value in microseconds.
    "OnCalendar": "s",
    "OnActiveSec": "t",
    "OnBootSec": "t",
    "OnStartupSec": "t",
    "OnUnitActiveSec": "t",
    "OnUnitInactiveSec": "t",
    "AccuracyUSec": "t",
    "RandomizedDelayUSec": "t",
    "FixedRandomDelay": "b",
    "Persistent": "b",
    "WakeSystem": "b",
    "RemainAfterElapse": "b",
    "OnClockChange": "b",
    "OnTimezoneChange": "b",
}

PROPERTY_SIGNATURES: Final[Mapping[str, str]] = MappingProxyType(_SIGNATURES)
"""Property name -> D-Bus signature systemd expects when the property is *set*."""

_INTEGER_CODES: Final = frozenset("ynqiuxt")


class ExecCommand(NamedTuple):
    """One ``(sasb)`` entry of ExecStart & co: binary, full argv (argv[0] included), and
    whether a non-zero exit is ignored (the ``-`` prefix in unit files)."""

    path: str
    argv: list[str]
    ignore_failure: bool


def exec_command(argv: Sequence[str], ignore_failure: bool = False) -> list[ExecCommand]:
    """The ``a(sasb)`` value running one command; concatenate lists for several commands.

    ``argv[0]`` doubles as the binary: systemd (>= 239) resolves a bare name
    through its own search path when the unit starts, which is what a unit
    file would do, so the daemon's ``$PATH`` does not leak into the unit.
    """
    if not argv or not argv[0]:
        raise ValueError("exec_command needs a non-empty argv")
    return [ExecCommand(argv[0], list(argv), ignore_failure)]


def usec(seconds: float) -> int:
    """Seconds to the microseconds every ``*USec`` property takes."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    return round(seconds * 1_000_000)


def prop(name: str, value: Any) -> UnitProperty:
    """Build one property with the signature systemd expects for ``name``.

    Raises ``ValueError`` for a name missing from the table or a value that
    does not fit its signature (a bool is refused for integer signatures even
    though Python treats it as an int, since that is always a caller bug).
    """
    try:
        signature = _SIGNATURES[name]
    except KeyError:
        raise ValueError(f"unknown or read-only systemd unit property {name!r}") from None
    if signature in _INTEGER_CODES and isinstance(value, bool):
        raise ValueError(f"property {name} takes an integer ({signature!r}), not a bool")
    try:
        return (name, Variant(signature, value))
    except SignatureBodyMismatchError as err:
        raise ValueError(f"property {name} ({signature!r}): {err}") from None
