"""The JSON socket's line encoder (``iyclo.jsonline``): whatever the stdlib encoder could
send still goes out, and reads back to the same value."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from iyclo.jsonline import encode_line


@pytest.mark.parametrize(
    "value",
    [
        {"jsonrpc": "2.0", "id": 1, "result": {"name": "web", "ready": True, "restarts": 0}},
        {"id": 2**70},  # beyond 64 bits: a request's id comes back as the client sent it
        {"id": -(2**63) - 1},
        {"id": "\ud800"},  # a lone surrogate (JSON's "\ud800" decodes to one)
        {"id": "é ☃ 𝄞"},
        {1: "a key that is not a string"},
        {"nested": [[[{"a": [1.5, -0.0, 1e300]}]]]},
    ],
)
def test_a_line_reads_back_as_the_stdlib_would_have_written_it(value: Any) -> None:
    line = encode_line(value)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # one message, one line
    assert json.loads(line) == json.loads(json.dumps(value))


def test_what_json_cannot_hold_is_written_as_its_str() -> None:
    moment = datetime.datetime(2026, 12, 4, 18, 0, tzinfo=datetime.UTC)
    assert json.loads(encode_line({"at": moment, "path": object})) == {
        "at": str(moment), "path": str(object),
    }  # fmt: skip


def test_a_float_that_is_not_finite_goes_out_as_null_not_as_a_token_json_lacks() -> None:
    line = encode_line({"id": float("inf"), "x": float("nan")})
    assert json.loads(line, parse_constant=pytest.fail) == {
        "id": None, "x": None,
    }  # fmt: skip
