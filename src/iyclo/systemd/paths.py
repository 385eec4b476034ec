"""Unit name <-> D-Bus object path, following systemd's ``bus_label_escape``.

systemd exports unit ``foo-bar.service`` at
``/org/freedesktop/systemd1/unit/foo_2dbar_2eservice``: every byte that is not
an ASCII letter, or an ASCII digit after the first position, becomes ``_`` and
two lowercase hex digits. Signals carry only the object path, so the adapter
decodes it to name the unit; computing the path locally also saves a GetUnit
round trip (systemd loads the unit on first access to its path, as systemctl
relies on).
"""

from __future__ import annotations

import functools

from .const import UNIT_PATH_PREFIX

_HEX = "0123456789abcdef"
_UNHEX = {ord(c): int(c, 16) for c in "0123456789abcdefABCDEF"}


def _is_alpha(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A  # A-Z, a-z


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def unit_path_escape(name: str) -> str:
    """Escape ``name`` into one object-path label, byte for byte like ``bus_label_escape``."""
    if not name:
        return "_"
    out: list[str] = []
    for index, byte in enumerate(name.encode()):
        if _is_alpha(byte) or (index > 0 and _is_digit(byte)):
            out.append(chr(byte))
        else:
            out.append(f"_{_HEX[byte >> 4]}{_HEX[byte & 0xF]}")
    return "".join(out)


def unit_path_unescape(label: str) -> str:
    """Invert :func:`unit_path_escape`, like ``bus_label_unescape``.

    A ``_`` not followed by two hex digits (either case) is kept literally, as
    systemd does.
    """
    if label == "_":
        return ""
    raw = label.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5F:
            high, low = _unhex(raw, i + 1), _unhex(raw, i + 2)
            if high is not None and low is not None:
                out.append(high << 4 | low)
                i += 3
                continue
        out.append(raw[i])
        i += 1
    return out.decode(errors="surrogateescape")


def _unhex(raw: bytes, index: int) -> int | None:
    if index >= len(raw):
        return None
    return _UNHEX.get(raw[index])


@functools.lru_cache(maxsize=4096)
def unit_object_path(name: str) -> str:
    """The object path systemd exports unit ``name`` at; kept per name, since every
    read of a unit asks for it (escaping byte by byte was ~50 µs of each)."""
    return UNIT_PATH_PREFIX + unit_path_escape(name)


def unit_name_from_path(path: str) -> str | None:
    """The unit name for a unit object path, or ``None`` if ``path`` is not one."""
    if not path.startswith(UNIT_PATH_PREFIX):
        return None
    label = path[len(UNIT_PATH_PREFIX) :]
    if not label or "/" in label:
        return None
    return unit_path_unescape(label)
