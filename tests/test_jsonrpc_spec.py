"""The JSON socket speaks JSON-RPC 2.0 as specified (jsonrpc.org/specification): batches
(empty, invalid and mixed), notifications never answered (not even with an error), ids
echoed as sent. Against the real service over the fakes, as a raw socket client sees it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.jsonrpc import MAX_SUBSCRIPTIONS

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
CONFLICT = -32003


async def exchange(path: Path, *lines: str, replies: int) -> list[Any]:
    """Send `lines`, read `replies` lines back, then check nothing more comes."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        for line in lines:
            writer.write(line.encode() + b"\n")
        await writer.drain()
        got = [json.loads(await asyncio.wait_for(reader.readline(), 10)) for _ in range(replies)]
        with pytest.raises(TimeoutError):  # and no answer beyond those
            await asyncio.wait_for(reader.readline(), 0.3)
        return got
    finally:
        writer.close()
        await writer.wait_closed()


def req(method: str, rid: Any = None, **params: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if rid is not None:
        request["id"] = rid
    return request


async def test_ids_are_echoed_as_sent(socket_path: Path) -> None:
    ids = ["a-string", 7, 2.5, None]
    lines = [json.dumps({**req("version"), "id": rid}) for rid in ids]
    replies = await exchange(socket_path, *lines, replies=len(ids))
    assert [reply["id"] for reply in replies] == ids
    assert all("result" in reply for reply in replies)


async def test_notifications_are_never_answered_even_when_they_fail(socket_path: Path) -> None:
    requests = [req("version"), req("no-such-method"), req("get", name="nothing-here"),
                req("version", rid=1)]  # fmt: skip
    lines = [json.dumps(r) for r in requests]
    (reply,) = await exchange(socket_path, *lines, replies=1)
    assert reply["id"] == 1  # only the one request with an id


async def test_an_empty_batch_is_one_invalid_request(socket_path: Path) -> None:
    (reply,) = await exchange(socket_path, "[]", replies=1)
    assert reply["id"] is None
    assert reply["error"]["code"] == INVALID_REQUEST


async def test_an_invalid_batch_answers_each_element(socket_path: Path) -> None:
    (replies,) = await exchange(socket_path, "[1, 2, 3]", replies=1)
    assert [(r["id"], r["error"]["code"]) for r in replies] == [(None, INVALID_REQUEST)] * 3


async def test_a_mixed_batch_answers_the_requests_in_order(socket_path: Path) -> None:
    batch = [req("version", rid="v"), req("version"), {"jsonrpc": "2.0", "id": "bad", "x": 1},
             req("no-such-method", rid=9), {"jsonrpc": "2.0", "id": {"an": "object"}},
             req("list", rid=10)]  # fmt: skip
    (replies,) = await exchange(socket_path, json.dumps(batch), replies=1)
    assert [r["id"] for r in replies] == ["v", "bad", 9, None, 10]
    assert "result" in replies[0]
    assert replies[1]["error"]["code"] == INVALID_REQUEST  # no method
    assert replies[2]["error"]["code"] == METHOD_NOT_FOUND
    assert replies[3]["error"]["code"] == INVALID_REQUEST  # an id must be a string or number
    assert replies[4]["result"] == []


async def test_a_batch_of_notifications_gets_no_answer(socket_path: Path) -> None:
    batch = json.dumps([req("version"), req("no-such-method")])
    (reply,) = await exchange(socket_path, batch, json.dumps(req("version", rid=2)), replies=1)
    assert reply["id"] == 2  # the request after the batch: the batch itself got nothing


async def test_subscriptions_per_connection_are_bounded(socket_path: Path) -> None:
    lines = [json.dumps(req("subscribe", rid=n)) for n in range(MAX_SUBSCRIPTIONS + 1)]
    replies = await exchange(socket_path, *lines, replies=len(lines))
    assert [r.get("result") for r in replies[:-1]] == [{"subscribed": True}] * MAX_SUBSCRIPTIONS
    assert replies[-1]["error"]["code"] == CONFLICT
    assert f"at most {MAX_SUBSCRIPTIONS}" in replies[-1]["error"]["message"]
