"""Scalar value types of the manifest and the rules that check them.

Each type is a ``NewType`` over ``str``/``int`` so the manifest keeps exactly what
the user wrote (round-trips are byte-stable), while the converter and the schema
generator both find their rule here: one table, never written twice.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NewType

Name = NewType("Name", str)
"""A pod, job or container name: it becomes part of unit names and labels."""
Size = NewType("Size", str)
"""A byte size such as ``"256M"`` (base 1024, like systemd and Podman)."""
Duration = NewType("Duration", str)
"""A systemd time span such as ``"30s"`` or ``"1h 30min"``."""
Calendar = NewType("Calendar", str)
"""A systemd calendar expression, checked by systemd's own parser."""
EnvName = NewType("EnvName", str)
LabelKey = NewType("LabelKey", str)
Capability = NewType("Capability", str)
AbsPath = NewType("AbsPath", str)
VolumeSource = NewType("VolumeSource", str)
IPAddress = NewType("IPAddress", str)
Port = NewType("Port", int)
CPUQuota = NewType("CPUQuota", str)
"""A systemd CPU quota such as ``"50%"`` (of one CPU) or ``"150%"``."""
UlimitName = NewType("UlimitName", str)
"""A POSIX resource limit name as ``podman --ulimit`` spells it: ``nofile``, ``nproc``, ..."""
Ulimit = NewType("Ulimit", str)
"""A resource limit value ``"SOFT:HARD"``, or one number for both (``podman --ulimit``)."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$", re.IGNORECASE)
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CPU_QUOTA_RE = re.compile(r"^[0-9]+(\.[0-9]+)?%$")
ULIMIT_RE = re.compile(r"^([0-9]+)(?::([0-9]+))?$")
# setrlimit(2) resources, by the names Podman's --ulimit takes (RLIMIT_<NAME>).
ULIMIT_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
ULIMIT_NAME_RE = re.compile(f"^({'|'.join(ULIMIT_NAMES)})$")
RESERVED_LABEL_PREFIX = "io.github.iyclo."

_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

# systemd's time span units (src/basic/time-util.c), in microseconds.
_USEC_PER = {
    "us": 1, "usec": 1, "µs": 1,
    "ms": 1000, "msec": 1000,
    "s": 10**6, "sec": 10**6, "second": 10**6, "seconds": 10**6,
    "m": 60 * 10**6, "min": 60 * 10**6, "minute": 60 * 10**6, "minutes": 60 * 10**6,
    "h": 3600 * 10**6, "hr": 3600 * 10**6, "hour": 3600 * 10**6, "hours": 3600 * 10**6,
    "d": 86400 * 10**6, "day": 86400 * 10**6, "days": 86400 * 10**6,
    "w": 7 * 86400 * 10**6, "week": 7 * 86400 * 10**6, "weeks": 7 * 86400 * 10**6,
}  # fmt: skip
_SPAN_PART_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)")

# Linux capabilities (capabilities(7)); "ALL" is accepted as Podman does.
CAPABILITIES = frozenset(
    (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
        "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
        "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
        "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
        "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
        "CHECKPOINT_RESTORE"
    ).split()
)


def parse_size(text: str) -> int:
    """Bytes in a size string; raises ValueError naming the value."""
    match = SIZE_RE.match(text)
    if not match:
        raise ValueError(f'"{text}" is not a size (use e.g. "512K", "256M", "2G")')
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()]


def parse_duration(text: str) -> int:
    """Microseconds in a systemd time span, following systemd's own unit names."""
    pos, total, parts = 0, 0.0, 0
    stripped = text.strip()
    while pos < len(stripped):
        match = _SPAN_PART_RE.match(stripped, pos)
        if not match or match.end() == pos:
            break
        number, unit = match.groups()
        if unit not in _USEC_PER and unit != "":
            break
        total += float(number) * _USEC_PER[unit or "s"]
        pos, parts = match.end(), parts + 1
    if parts == 0 or pos != len(stripped):
        raise ValueError(f'"{text}" is not a time span (use e.g. "30s", "5min", "1h 30min")')
    return int(total)


def parse_cpu_quota(text: str) -> float:
    """The quota as a fraction of one CPU (``"150%"`` → 1.5)."""
    if not CPU_QUOTA_RE.match(text) or float(text[:-1]) <= 0:
        raise ValueError(f'"{text}" is not a CPU quota (use e.g. "50%" or "200%")')
    return float(text[:-1]) / 100


def parse_ulimit(text: str) -> tuple[int, int]:
    """(soft, hard) of a ulimit value; one number sets both, as ``podman --ulimit`` does."""
    match = ULIMIT_RE.match(text)
    if not match:
        raise ValueError(
            f'"{text}" is not a ulimit (use "SOFT:HARD" or one number, e.g. "1024:4096")'
        )
    soft = int(match.group(1))
    hard = soft if match.group(2) is None else int(match.group(2))
    if soft > hard:
        raise ValueError(f'"{text}" has a soft limit above its hard limit')
    return soft, hard


@dataclass(frozen=True)
class CalendarCheck:
    ok: bool
    message: str


@functools.lru_cache(maxsize=256)
def check_calendar(expression: str) -> CalendarCheck:
    """Ask systemd's own parser, so a schedule systemd would refuse fails at validation."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return CalendarCheck(False, "cannot check it: systemd-analyze is not installed")
    try:
        result = subprocess.run(
            [tool, "calendar", "--iterations=1", "--", expression],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"LC_ALL": "C", "SYSTEMD_COLORS": "0", "TZ": "UTC"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CalendarCheck(False, f"cannot check it: {exc}")
    if result.returncode != 0:
        return CalendarCheck(False, "systemd cannot parse it")
    return CalendarCheck(True, "")


def _check_name(value: str) -> None:
    if not NAME_RE.match(value):
        raise ValueError(
            f'"{value}" is not a valid name (lowercase letters, digits and "-", '
            "starting with a letter or digit, at most 63 characters)"
        )


def _check_calendar(value: str) -> None:
    if not value.strip():
        raise ValueError("the calendar expression is empty")
    check = check_calendar(value)
    if not check.ok:
        raise ValueError(f'"{value}" is not a valid calendar expression: {check.message}')


def _check_env(value: str) -> None:
    if not ENV_RE.match(value):
        raise ValueError(f'"{value}" is not a valid environment variable name')


def _check_label(value: str) -> None:
    if not LABEL_RE.match(value):
        raise ValueError(f'"{value}" is not a valid label key')
    if value.startswith(RESERVED_LABEL_PREFIX):
        raise ValueError(f'"{value}" uses the prefix "{RESERVED_LABEL_PREFIX}" reserved for iyclo')


def _check_capability(value: str) -> None:
    bare = value.removeprefix("CAP_")
    if value != "ALL" and bare not in CAPABILITIES:
        raise ValueError(f'"{value}" is not a Linux capability (e.g. "CAP_NET_RAW" or "ALL")')


def _check_abs_path(value: str) -> None:
    if not value.startswith("/") or "\0" in value or "/../" in f"{value}/":
        raise ValueError(f'"{value}" is not an absolute path')


def _check_ulimit_name(value: str) -> None:
    if not ULIMIT_NAME_RE.match(value):
        raise ValueError(f'"{value}" is not a ulimit name (e.g. "nofile", "nproc", "core")')


def _check_volume_source(value: str) -> None:
    if value.startswith("/"):
        _check_abs_path(value)
    elif not VOLUME_NAME_RE.match(value):
        raise ValueError(f'"{value}" is neither an absolute host path nor a volume name')


def _check_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f'"{value}" is not an IP address') from None


def _check_port(value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (1-65535)")


@dataclass(frozen=True)
class ValueRule:
    """How one value type is checked and described in the JSON Schema."""

    base: type
    check: Callable[[Any], object]
    schema: dict[str, Any]


VALUE_RULES: dict[object, ValueRule] = {
    Name: ValueRule(str, _check_name, {"pattern": NAME_RE.pattern}),
    Size: ValueRule(str, parse_size, {"pattern": "^[0-9]+[KMGTkmgt]?$"}),
    Duration: ValueRule(str, parse_duration, {"description": "systemd time span, e.g. 30s"}),
    Calendar: ValueRule(str, _check_calendar, {"description": "systemd calendar expression"}),
    EnvName: ValueRule(str, _check_env, {"pattern": ENV_RE.pattern}),
    LabelKey: ValueRule(str, _check_label, {"pattern": LABEL_RE.pattern}),
    Capability: ValueRule(str, _check_capability, {"description": "Linux capability"}),
    AbsPath: ValueRule(str, _check_abs_path, {"pattern": "^/"}),
    VolumeSource: ValueRule(str, _check_volume_source, {"description": "host path or volume"}),
    IPAddress: ValueRule(str, _check_ip, {"description": "IPv4 or IPv6 address"}),
    Port: ValueRule(int, _check_port, {"minimum": 1, "maximum": 65535}),
    CPUQuota: ValueRule(str, parse_cpu_quota, {"pattern": CPU_QUOTA_RE.pattern}),
    UlimitName: ValueRule(str, _check_ulimit_name, {"pattern": ULIMIT_NAME_RE.pattern}),
    Ulimit: ValueRule(str, parse_ulimit, {"pattern": ULIMIT_RE.pattern}),
}
