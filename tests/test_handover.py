"""The caller's file descriptors on both fronts (``exec``, ``follow_logs``), against the
real service over the fakes: D-Bus takes descriptors only where a method has ``h``
arguments, one for each, and closes any others; the JSON socket asks for them only
after the call was checked."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.api.dbus import BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, export_service
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.core.access import Gate
from tests.fakes.dbus_session import PrivateBus
from tests.fakes.fixtures import Core


@pytest.fixture
async def bus_address(core: Core) -> AsyncIterator[str]:
    with PrivateBus() as bus:
        unexport = await export_service(core.service, bus_address=bus.address, gate=Gate())
        try:
            yield bus.address
        finally:
            await unexport()


def _call(member: str, signature: str, body: list[object], fds: list[int]) -> Message:
    return Message(destination=BUS_NAME, path=MANAGER_PATH, interface=MANAGER_INTERFACE,
                   member=member, signature=signature, body=body, unix_fds=fds)  # fmt: skip


def _nobody_reads(write_end: int) -> bool:
    """Whether every read end of the pipe is closed: a write then fails with EPIPE."""
    try:
        os.write(write_end, b"x")
    except BrokenPipeError:
        return True
    return False


async def test_dbus_closes_descriptors_sent_where_none_are_taken(bus_address: str) -> None:
    client = await MessageBus(bus_address=bus_address, negotiate_unix_fd=True).connect()
    try:
        for member, signature, body in [
            ("List", "", []),  # takes none
            ("Exec", "ssasbbh", ["web", "", ["true"], False, False, 0]),  # a wrong signature
            ("Exec", "ssasbbhhh", ["web", "", ["true"], False, False, 0, 0, 0]),  # one, thrice
        ]:
            read_end, write_end = os.pipe()
            try:
                reply = await client.call(_call(member, signature, body, [read_end]))
                os.close(read_end)
                assert reply is not None
                assert reply.message_type is MessageType.ERROR, (member, reply.body)
                assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
                assert _nobody_reads(write_end), f"iyclod kept the descriptor of {member}"
            finally:
                os.close(write_end)
        # a call naming descriptors it does not carry: refused, never taken for iyclod's own
        bare = await client.call(_call("FollowLogs", "suh", ["web", 0, 0], []))
        assert bare is not None
        assert bare.error_name == "org.freedesktop.DBus.Error.InvalidArgs", bare.body
    finally:
        client.disconnect()


async def test_dbus_exec_of_an_unknown_pod_is_one_line(bus_address: str) -> None:
    client = await MessageBus(bus_address=bus_address, negotiate_unix_fd=True).connect()
    read_end, write_end = os.pipe()
    try:
        reply = await client.call(
            _call(
                "Exec",
                "ssasbbhhh",
                ["nosuch", "", ["true"], False, False, 0, 1, 2],
                [read_end, write_end, write_end],
            )
        )
        assert reply is not None
        assert reply.error_name == "io.github.iyclo1.Error.NotFound", reply.body
        assert "nosuch" in reply.body[0], reply.body
        assert "\n" not in reply.body[0]
        os.close(read_end)
        assert _nobody_reads(write_end), "iyclod kept a descriptor of a refused call"
    finally:
        os.close(write_end)
        client.disconnect()


@pytest.fixture
async def json_socket(core: Core, tmp_path: Path) -> AsyncIterator[Path]:
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock", gate=Gate())
    await server.start()
    try:
        yield tmp_path / "iyclo.sock"
    finally:
        await server.close()


def _exchange(path: Path, request: dict[str, object]) -> list[dict[str, object]]:
    """The first line the daemon answers a request with."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, **request}).encode() + b"\n")
        with sock.makefile("rb") as answers:
            return [json.loads(answers.readline())]


async def test_json_socket_asks_for_descriptors_only_after_the_check(json_socket: Path) -> None:
    (reply,) = await asyncio.to_thread(
        _exchange, json_socket, {"method": "exec", "params": {"name": "nosuch",
                                                              "command": ["true"]}}
    )  # fmt: skip
    assert "method" not in reply, reply  # no "fds" notification first
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["data"]["type"] == "NotFound", reply  # type: ignore[index]
