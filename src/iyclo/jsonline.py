"""One line the daemon writes on its JSON socket (its replies and events; the CLI's small
requests are written by the stdlib, which spares every command orjson's import).

orjson writes the 1 KB reply of a ``get`` in ~1.3 µs where the stdlib's encoder took
~17-26 µs on the bench machine (2 shared vCPUs): the largest single share of a call's CPU
on the daemon's side. A value orjson refuses (an integer beyond 64 bits, a string with a
lone surrogate — both can come back as a request's ``id`` —, a dict with keys that are not
strings) is written by the stdlib encoder instead, so whatever could be sent before still
can. A float that is not finite goes out as ``null``: the stdlib wrote ``NaN`` or
``Infinity``, which are not JSON.

Lines are still read by the stdlib (``json.loads``): orjson reads an integer beyond 64 bits
as a float without a word, and refuses lone surrogates that the daemon's parser answers.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
"""Datetimes and dataclasses go through ``default=str`` as they did with the stdlib."""


def encode_line(message: Any) -> bytes:
    """``message`` as one line of JSON, newline included; what JSON cannot hold is
    written as its ``str``."""
    try:
        return orjson.dumps(message, default=str, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: the values the docstring above names
        return json.dumps(message, default=str).encode() + b"\n"
