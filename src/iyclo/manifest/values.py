"""Scalar value types of the manifest and the rules that check them.

Each type is a ``NewType`` over ``str``/``int`` so the manifest keeps exactly what
the user wrote (round-trips are byte-stable), while the converter and the schema
generator both find their rule here: one table, never written twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
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
VolumeName = NewType("VolumeName", str)
"""A Podman named volume."""
SeccompProfile = NewType("SeccompProfile", str)
"""``"default"``, ``"unconfined"`` or the absolute path of a profile on the daemon's host."""
IPAddress = NewType("IPAddress", str)
Port = NewType("Port", int)
CPUQuota = NewType("CPUQuota", str)
"""A systemd CPU quota such as ``"50%"`` (of one CPU) or ``"150%"``."""
UlimitName = NewType("UlimitName", str)
"""A POSIX resource limit name as ``podman --ulimit`` spells it: ``nofile``, ``nproc``, ..."""
Ulimit = NewType("Ulimit", str)
"""A resource limit value ``"SOFT:HARD"``, or one number for both (``podman --ulimit``)."""
Credential = NewType("Credential", str)
"""The name of a systemd credential handed to iyclod (``LoadCredential=``, ``SetCredential=``)."""
FileMode = NewType("FileMode", str)
"""File permission bits in octal, as chmod takes them: ``"0400"``."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$", re.IGNORECASE)
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CPU_QUOTA_RE = re.compile(r"^[0-9]+(\.[0-9]+)?%$")
ULIMIT_RE = re.compile(r"^([0-9]+)(?::([0-9]+))?$")
# systemd's credential_name_valid(): a file name (no "/", not "." or ".."), at most NAME_MAX;
# narrower here, so a name is also safe to show and to pass on.
CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")
FILE_MODE_RE = re.compile(r"^0?[0-7]{3}$")
# setrlimit(2) resources, by the names Podman's --ulimit takes (RLIMIT_<NAME>).
ULIMIT_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
ULIMIT_NAME_RE = re.compile(f"^({'|'.join(ULIMIT_NAMES)})$")
RESERVED_LABEL_PREFIX = "io.github.iyclo."
# Label keys that Podman or Docker-compatible tools act on, so a manifest must not set them
# unless the operator allows them (policy.labelKeysAllow): exact keys, then prefixes (both
# compared in lower case: refusing a look-alike costs nothing). Podman reads
# PODMAN_SYSTEMD_UNIT and io.containers.autoupdate(.authfile, .restart) in `podman
# auto-update`, io.containers.capabilities, io.podman.annotations.* (userns, ...) in `kube
# play`; com.docker.* belongs to compose and Docker's networks.
RESERVED_LABEL_KEYS = frozenset({"podman_systemd_unit"})
RESERVED_LABEL_PREFIXES = ("io.containers.", "io.podman.", "com.docker.")
SECCOMP_KEYWORDS = ("default", "unconfined")
CALENDAR_MAX_LENGTH = 256
"""systemd's own examples are under 40 characters; anything near this is not a schedule."""
CALENDAR_CACHE_SIZE = 1024
SHOW_LIMIT = 256

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


def show(value: object, limit: int = SHOW_LIMIT) -> str:
    """A value quoted as JSON on one line, ASCII only and at most ``limit`` characters.

    Messages quote what the user sent; raw, a newline would split the one-line message,
    a lone surrogate would make it unsendable over D-Bus, a terminal control or
    right-to-left mark would disguise it, and a megabyte string would be echoed whole.
    """
    try:
        if isinstance(value, str) and len(value) > limit:
            value = value[:limit]  # cut before quoting: never encode a huge string whole
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):  # e.g. an int beyond Python's 4300-digit limit
        text = f"a {type(value).__name__} value"
    return text if len(text) <= limit else _cut(text, limit - 3) + "..."


def _cut(text: str, length: int) -> str:
    """``text[:length]`` without the start of an escape sequence the cut split
    (a trailing ``\\`` or ``\\u00``), which would read as a different character."""
    cut = text[:length]
    match = re.search(r"(\\+)(u[0-9a-fA-F]{0,3})?$", cut)
    if match and len(match.group(1)) % 2 == 1:
        cut = cut[: match.end(1) - 1]
    return cut


def parse_size(text: str) -> int:
    """Bytes in a size string; raises ValueError naming the value."""
    match = SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f'{show(text)} is not a size (use e.g. "512K", "256M", "2G")')
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
        raise ValueError(f'{show(text)} is not a time span (use e.g. "30s", "5min", "1h 30min")')
    return int(total)


def duration_seconds(text: str) -> float:
    """A time span in seconds, for the daemon's own waits (``parse_duration`` gives
    systemd's microseconds: taken for seconds, a "60s" wait would last two years)."""
    return parse_duration(text) / 1_000_000


def parse_cpu_quota(text: str) -> float:
    """The quota as a fraction of one CPU (``"150%"`` → 1.5)."""
    if not CPU_QUOTA_RE.fullmatch(text) or float(text[:-1]) <= 0:
        raise ValueError(f'{show(text)} is not a CPU quota (use e.g. "50%" or "200%")')
    return float(text[:-1]) / 100


def parse_ulimit(text: str) -> tuple[int, int]:
    """(soft, hard) of a ulimit value; one number sets both, as ``podman --ulimit`` does."""
    match = ULIMIT_RE.fullmatch(text)
    if not match:
        raise ValueError(
            f'{show(text)} is not a ulimit (use "SOFT:HARD" or one number, e.g. "1024:4096")'
        )
    soft = int(match.group(1))
    hard = soft if match.group(2) is None else int(match.group(2))
    if soft > hard:
        raise ValueError(f"{show(text)} has a soft limit above its hard limit")
    return soft, hard


@dataclass(frozen=True)
class CalendarCheck:
    ok: bool
    message: str
    definite: bool = True
    """False when systemd could not be asked (timeout, missing tool): never cached."""


_calendar_cache: OrderedDict[str, CalendarCheck] = OrderedDict()
_calendar_lock = threading.Lock()


def clear_calendar_cache() -> None:
    with _calendar_lock:
        _calendar_cache.clear()


def calendar_cache_size() -> int:
    with _calendar_lock:
        return len(_calendar_cache)


def _ask_systemd(expression: str) -> CalendarCheck:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return CalendarCheck(False, "cannot check it: systemd-analyze is not installed", False)
    try:
        result = subprocess.run(
            [tool, "calendar", "--iterations=1", "--", expression],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # only the exit status is read
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
            env={"LC_ALL": "C", "SYSTEMD_COLORS": "0", "TZ": "UTC"},
        )
    except subprocess.TimeoutExpired:
        return CalendarCheck(False, "cannot check it: systemd-analyze took over 10s", False)
    except OSError as exc:
        return CalendarCheck(False, f"cannot check it: {exc.strerror or exc}", False)
    if result.returncode == 1:  # measured: systemd 252 and 257 exit 1 on a parse error
        return CalendarCheck(False, "systemd cannot parse it")
    if result.returncode != 0:  # killed, or a failure that is not about the expression
        return CalendarCheck(
            False, f"cannot check it: systemd-analyze exited with {result.returncode}", False
        )
    return CalendarCheck(True, "")


def check_calendar(expression: str) -> CalendarCheck:
    """Ask systemd's own parser, so a schedule systemd would refuse fails at validation.

    Blocking (a subprocess, up to 10 s): from the event loop, await
    ``check_calendar_async`` instead. The answer is cached, bounded in entries
    (``CALENDAR_CACHE_SIZE``) and in size (``CALENDAR_MAX_LENGTH`` per expression, longer
    ones are refused unasked), and only when systemd answered: a timeout cached as a
    failure would make a stored job unreadable until the daemon restarts.
    """
    if len(expression) > CALENDAR_MAX_LENGTH:
        return CalendarCheck(
            False,
            f"it is {len(expression)} characters long, more than the {CALENDAR_MAX_LENGTH} allowed",
        )
    with _calendar_lock:
        cached = _calendar_cache.get(expression)
        if cached is not None:
            _calendar_cache.move_to_end(expression)
            return cached
    check = _ask_systemd(expression)  # outside the lock: checks in other threads go on
    if check.definite:
        with _calendar_lock:
            _calendar_cache[expression] = check
            _calendar_cache.move_to_end(expression)
            while len(_calendar_cache) > CALENDAR_CACHE_SIZE:
                _calendar_cache.popitem(last=False)
    return check


async def check_calendar_async(expression: str) -> CalendarCheck:
    """``check_calendar`` in a worker thread, so the event loop keeps serving meanwhile."""
    return await asyncio.to_thread(check_calendar, expression)


def _check_name(value: str) -> None:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f'{show(value)} is not a valid name (lowercase letters, digits and "-", '
            "starting with a letter or digit, at most 63 characters)"
        )


def _check_calendar(value: str) -> None:
    if len(value) > CALENDAR_MAX_LENGTH:
        raise ValueError(
            f"the calendar expression is {len(value)} characters long, more than the "
            f"{CALENDAR_MAX_LENGTH} allowed"
        )
    if not value.strip():
        raise ValueError("the calendar expression is empty")
    check = check_calendar(value)
    if not check.ok:
        raise ValueError(f"{show(value)} is not a valid calendar expression: {check.message}")


def _check_env(value: str) -> None:
    if not ENV_RE.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid environment variable name")


def reserved_label(key: str, allowed: tuple[str, ...] = ()) -> str | None:
    """Why a manifest must not set the label ``key`` (one Podman or Docker-compatible tools
    act on), or None; ``allowed`` lists the keys and prefixes the operator lets through.

    iyclo's own prefix is not here: it is refused whatever the policy (``_check_label``).
    """
    lowered = key.lower()
    if any(lowered == a.lower() or (a.endswith(".") and lowered.startswith(a.lower()))
           for a in allowed):  # fmt: skip
        return None
    if lowered in RESERVED_LABEL_KEYS:
        return "is a key Podman acts on"
    for prefix in RESERVED_LABEL_PREFIXES:
        if lowered.startswith(prefix):
            return f'uses the prefix "{prefix}", which Podman or Docker-compatible tools act on'
    return None


def _check_label(value: str) -> None:
    if not LABEL_RE.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid label key")
    if value.lower().startswith(RESERVED_LABEL_PREFIX):
        raise ValueError(
            f'{show(value)} uses the prefix "{RESERVED_LABEL_PREFIX}" reserved for iyclo'
        )


def _check_capability(value: str) -> None:
    bare = value.removeprefix("CAP_")
    if value != "ALL" and bare not in CAPABILITIES:
        raise ValueError(f'{show(value)} is not a Linux capability (e.g. "CAP_NET_RAW" or "ALL")')


def path_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute path without ".." components, or None.

    ".." is refused, not resolved: it is the one component whose meaning depends on what
    the path's parent is on disk, so a path that passed a prefix check as text could
    still leave the tree the check was for.
    """
    if not value.startswith("/"):
        return f"{show(value)} is not an absolute path"
    if ".." in value.split("/"):
        return f'{show(value)} has a ".." component'
    return None


def normalise_path(value: str) -> str:
    """``value`` (absolute, no "..") without empty and "." components or a trailing "/":
    the form prefix checks compare, since "/srv//x" and "/srv/./x" are "/srv/x" to the kernel."""
    return "/" + "/".join(part for part in value.split("/") if part not in ("", "."))


def _check_abs_path(value: str) -> None:
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(problem)


def _check_ulimit_name(value: str) -> None:
    if not ULIMIT_NAME_RE.fullmatch(value):
        raise ValueError(f'{show(value)} is not a ulimit name (e.g. "nofile", "nproc", "core")')


def _check_volume_name(value: str) -> None:
    # 255: Podman keeps a volume as a directory of that name (NAME_MAX)
    if not VOLUME_NAME_RE.fullmatch(value) or len(value) > 255:
        raise ValueError(f"{show(value)} is not a volume name")


def _check_volume_source(value: str) -> None:
    if value.startswith("/"):
        _check_abs_path(value)
    elif not VOLUME_NAME_RE.fullmatch(value) or len(value) > 255:
        raise ValueError(f"{show(value)} is neither an absolute host path nor a volume name")


def _check_seccomp_profile(value: str) -> None:
    # ".." is the policy's to refuse (``policy.problems``), so that a stored manifest from
    # before that rule can still be read, stopped and removed
    if value not in SECCOMP_KEYWORDS and not value.startswith("/"):
        raise ValueError(f'{show(value)} is not an absolute path, "default" or "unconfined"')


def _check_credential(value: str) -> None:
    if not CREDENTIAL_RE.fullmatch(value):
        raise ValueError(
            f'{show(value)} is not a credential name (letters, digits, "_", ".", "@" and "-", '
            "as in LoadCredential=)"
        )


def parse_file_mode(text: str) -> int:
    """The permission bits of an octal mode string (``"0400"`` → 0o400)."""
    if not FILE_MODE_RE.fullmatch(text):
        raise ValueError(f'{show(text)} is not a file mode (use octal, e.g. "0400" or "0440")')
    return int(text, 8)


def _check_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{show(value)} is not an IP address") from None


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
    Calendar: ValueRule(
        str,
        _check_calendar,
        {"description": "systemd calendar expression", "maxLength": CALENDAR_MAX_LENGTH},
    ),
    EnvName: ValueRule(str, _check_env, {"pattern": ENV_RE.pattern}),
    LabelKey: ValueRule(str, _check_label, {"pattern": LABEL_RE.pattern}),
    Capability: ValueRule(str, _check_capability, {"description": "Linux capability"}),
    AbsPath: ValueRule(str, _check_abs_path, {"pattern": "^/"}),
    VolumeSource: ValueRule(str, _check_volume_source, {"description": "host path or volume"}),
    VolumeName: ValueRule(str, _check_volume_name, {"pattern": VOLUME_NAME_RE.pattern}),
    SeccompProfile: ValueRule(
        str,
        _check_seccomp_profile,
        {"description": '"default", "unconfined" or an absolute path'},
    ),
    IPAddress: ValueRule(str, _check_ip, {"description": "IPv4 or IPv6 address"}),
    Port: ValueRule(int, _check_port, {"minimum": 1, "maximum": 65535}),
    CPUQuota: ValueRule(str, parse_cpu_quota, {"pattern": CPU_QUOTA_RE.pattern}),
    UlimitName: ValueRule(str, _check_ulimit_name, {"pattern": ULIMIT_NAME_RE.pattern}),
    Ulimit: ValueRule(str, parse_ulimit, {"pattern": ULIMIT_RE.pattern}),
    Credential: ValueRule(str, _check_credential, {"pattern": CREDENTIAL_RE.pattern}),
    FileMode: ValueRule(str, parse_file_mode, {"pattern": FILE_MODE_RE.pattern}),
}
