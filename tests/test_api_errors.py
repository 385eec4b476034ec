"""A bug inside a method leaks nothing to clients, on either front (as dbus-fast's own
``tests/service/test_methods.py`` proves for its wrapper): the reply is an internal error
with an incident id, and only the daemon's log has the exception and its traceback.
Parameters are checked against the method registry before any method runs, so a
``TypeError`` raised inside one is a bug too, never "invalid params".
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.api.dbus import BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, export_service
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.client.dbus import DBusClient
from iyclo.client.jsonrpc import JsonRpcClient
from iyclo.errors import InvalidError, IycloError
from tests.fakes.fixtures import Core, fail_once

WEB = (Path(__file__).parent.parent / "examples" / "web.json").read_text()
INTERNAL = re.compile(r"^internal error \(id ([0-9a-f]{8}); see the daemon's log\)$")


def assert_leaks_nothing(text: str) -> str:
    """The incident id of an internal error's text that says nothing else."""
    assert "oops" not in text
    assert 'File "' not in text
    assert "Traceback" not in text
    found = INTERNAL.match(text)
    assert found, text
    return found.group(1)


@pytest.fixture
async def fronts(
    core: Core, dbus_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Core, Path]]:
    """The real service behind both fronts; ``core.entered`` records which of its
    methods a front called."""
    entered: list[str] = []
    for method in ("status", "manifest", "list_all"):
        real = getattr(core.service, method)

        async def recorded(*args: Any, _real: Any = real, _name: str = method) -> Any:
            entered.append(_name)
            return await _real(*args)

        monkeypatch.setattr(core.service, method, recorded)
    core.entered = entered  # type: ignore[attr-defined]
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock")
    await server.start()
    unexport = await export_service(core.service, bus_address=dbus_address)
    entered.clear()  # the exporter's own start-up read
    try:
        yield core, tmp_path / "iyclo.sock"
    finally:
        await unexport()
        await server.close()


async def _rpc(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, **request}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    reply: dict[str, Any] = json.loads(line)
    return reply


async def _dbus(
    address: str, member: str, signature: str = "", body: list[Any] | None = None
) -> Message:
    bus = await MessageBus(bus_address=address).connect()
    try:
        message = Message(destination=BUS_NAME, path=MANAGER_PATH, interface=MANAGER_INTERFACE,
                          member=member, signature=signature, body=body)  # fmt: skip
        async with asyncio.timeout(10):
            return await bus.call(message)
    finally:
        bus.disconnect()


@pytest.mark.parametrize("error", [Exception("oops"), TypeError("oops() got an argument 'x'")])
async def test_a_bug_inside_a_method_leaks_nothing(
    fronts: tuple[Core, Path],
    dbus_address: str,
    error: Exception,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, socket_path = fronts
    with structlog.testing.capture_logs() as logs:
        fail_once(monkeypatch, core, error)
        reply = await _dbus(dbus_address, "Get", "s", ["web"])
        fail_once(monkeypatch, core, error)
        answer = await _rpc(socket_path, {"method": "get", "params": {"name": "web"}})

    assert reply.message_type is MessageType.ERROR
    assert reply.error_name == "io.github.iyclo1.Error.Failed"
    dbus_incident = assert_leaks_nothing(reply.body[0])
    assert answer["error"]["code"] == -32603  # JSON-RPC's "Internal error", not -32602
    rpc_incident = assert_leaks_nothing(answer["error"]["message"])
    assert answer["error"]["data"] == {"incident": rpc_incident}
    assert "oops" not in json.dumps(answer)
    # The daemon's log has it all, under the incident the client was told.
    logged = [e for e in logs if e["log_level"] == "error"]
    assert [(e["incident"], e["exc_info"] is True) for e in logged] == [
        (dbus_incident, True),
        (rpc_incident, True),
    ]
    assert {e["method"] for e in logged} == {"ManagerInterface.get", "get"}


async def test_the_clients_raise_the_internal_error_as_one_line(
    fronts: tuple[Core, Path], dbus_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, socket_path = fronts
    await core.service.apply(WEB)
    via_dbus = await asyncio.to_thread(DBusClient, bus_address=dbus_address, timeout=10)
    via_json = await asyncio.to_thread(JsonRpcClient, socket_path, timeout=10)
    try:
        with structlog.testing.capture_logs():
            for client in (via_dbus, via_json):
                fail_once(monkeypatch, core, Exception("oops"))
                with pytest.raises(IycloError) as caught:
                    await asyncio.to_thread(client.call, "get", name="web")
                assert type(caught.value) is IycloError
                assert_leaks_nothing(caught.value.message)
    finally:
        await asyncio.to_thread(via_dbus.close)
        await asyncio.to_thread(via_json.close)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"nam": "web"}, "get: unknown parameter 'nam'"),
        ({}, "get: missing parameter 'name'"),
        ({"name": 7}, "get: parameter 'name' must be a string"),
        (["web", "extra"], "get: takes 1 parameters, 2 given"),
    ],
)
async def test_parameters_are_refused_before_the_call(
    fronts: tuple[Core, Path], params: Any, message: str
) -> None:
    core, socket_path = fronts
    answer = await _rpc(socket_path, {"method": "get", "params": params})
    assert answer["error"] == {"code": -32602, "message": message}
    assert core.entered == []  # type: ignore[attr-defined]  # never entered


async def test_both_clients_refuse_the_same_parameters_alike(
    fronts: tuple[Core, Path], dbus_address: str
) -> None:
    core, socket_path = fronts
    via_dbus = await asyncio.to_thread(DBusClient, bus_address=dbus_address, timeout=10)
    via_json = await asyncio.to_thread(JsonRpcClient, socket_path, timeout=10)
    try:
        for params in ({"nam": "web"}, {"name": "web", "generation": True}):
            messages = []
            for client in (via_dbus, via_json):
                with pytest.raises(InvalidError) as caught:
                    await asyncio.to_thread(client.call, "get_manifest", **params)
                messages.append(caught.value.message)
            assert messages[0] == messages[1]
    finally:
        await asyncio.to_thread(via_dbus.close)
        await asyncio.to_thread(via_json.close)
    assert core.entered == []  # type: ignore[attr-defined]
