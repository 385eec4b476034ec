"""The JSON socket drops a client silent for its idle timeout, and only such a client:
not one that keeps calling, not one whose call is still running, not one holding an event
stream (``api.jsonrpc._Idle``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.jsonrpc import JsonRpcServer

IDLE = 0.3


class _Events:
    async def stream(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # nothing ever happens
        yield


class _Service:
    """Just what a ``get`` and a ``subscribe`` reach: a ``get`` of "slow" takes 3 idle
    timeouts to answer."""

    events = _Events()

    async def status(self, name: str) -> dict[str, Any]:
        if name == "slow":
            await asyncio.sleep(3 * IDLE)
        return {"name": name}


@pytest.fixture
async def sock(tmp_path: Path) -> AsyncIterator[Path]:
    server = JsonRpcServer(_Service(), tmp_path / "iyclo.sock", idle_timeout=IDLE)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server.path
    finally:
        await server.close()


async def _call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, **params: Any
) -> Any:
    writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                             "params": params}).encode() + b"\n")  # fmt: skip
    return json.loads(await asyncio.wait_for(reader.readline(), 10))["result"]


async def _dropped(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False


async def test_a_silent_client_is_dropped_after_the_idle_timeout(sock: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        assert not await _dropped(reader, IDLE / 2)
        assert await _dropped(reader, 4 * IDLE)
    finally:
        writer.close()


async def test_a_client_that_keeps_calling_is_kept(sock: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        for _ in range(8):  # 8 x IDLE/3: longer than the timeout in all, never silent for it
            assert await _call(reader, writer, "get", name="web") == {"name": "web"}
            await asyncio.sleep(IDLE / 3)
        assert await _call(reader, writer, "get", name="web") == {"name": "web"}
    finally:
        writer.close()


async def test_a_call_longer_than_the_idle_timeout_is_answered(sock: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        assert await _call(reader, writer, "get", name="slow") == {"name": "slow"}
        assert await _dropped(reader, 4 * IDLE)  # silent after it: dropped as usual
    finally:
        writer.close()


async def test_a_client_holding_an_event_stream_is_kept(sock: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        assert await _call(reader, writer, "subscribe") == {"subscribed": True}
        assert not await _dropped(reader, 4 * IDLE)
    finally:
        writer.close()
