"""Advice belongs to the CLI: an error's hint reaches ``iyclo`` over either transport and
is printed after the message, while the message every D-Bus caller gets has none. The
CLI's modules import one way, so a command module never needs another."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.api.dbus import BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, export_service
from iyclo.api.jsonrpc import JsonRpcServer
from tests.fakes.fixtures import Core

ROOT = Path(__file__).parent.parent
CLI = ROOT / "src" / "iyclo" / "cli"

JOB = {
    "apiVersion": "iyclo/v1", "kind": "Job", "name": "twin", "network": "none",
    "schedule": {"calendar": "*-*-* 03:00:00"},
    "containers": [{"name": "a", "image": "localhost/busybox:latest", "command": ["true"]}],
}  # fmt: skip
POD = {
    "apiVersion": "iyclo/v1", "kind": "Pod", "name": "twin",
    "containers": [{"name": "a", "image": "localhost/busybox:latest", "command": ["sleep", "9"]}],
}  # fmt: skip


@pytest.fixture
async def fronts(core: Core, dbus_address: str, tmp_path: Path) -> AsyncIterator[Path]:
    server = JsonRpcServer(core.service, tmp_path / "iyclo.sock")
    await server.start()
    unexport = await export_service(core.service, bus_address=dbus_address)
    try:
        await core.service.apply(JOB)
        yield tmp_path / "iyclo.sock"
    finally:
        await unexport()
        await server.close()


async def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iyclo.cli", *args, "apply", "-f", "-"],
            input=json.dumps(POD), capture_output=True, text=True, env=env, timeout=60,
            check=False,
        )  # fmt: skip

    return await asyncio.to_thread(run)


async def test_the_hint_is_the_clis_alone(fronts: Path, dbus_address: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DBUS_SESSION_BUS_ADDRESS": dbus_address}
    env.pop("IYCLO_SOCKET", None)
    expected = [
        "iyclo: error: cannot apply pod 'twin': a job with that name exists",
        "hint: remove it first with `iyclo rm twin`",
    ]
    for args in (("--bus", "session"), ("--socket", str(fronts))):
        done = await _cli(*args, env=env)
        assert (done.returncode, done.stderr.splitlines()) == (4, expected), args

    # What any other D-Bus caller gets: the name and the message, no advice.
    bus = await MessageBus(bus_address=dbus_address).connect()
    try:
        reply = await bus.call(
            Message(destination=BUS_NAME, path=MANAGER_PATH, interface=MANAGER_INTERFACE,
                    member="Apply", signature="s", body=[json.dumps(POD)])
        )  # fmt: skip
    finally:
        bus.disconnect()
    assert reply.message_type is MessageType.ERROR
    assert reply.error_name == "io.github.iyclo1.Error.Conflict"
    assert reply.body[0] == "cannot apply pod 'twin': a job with that name exists"
    assert "iyclo rm" not in reply.body[0]


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("iyclo.cli")}


def test_the_cli_imports_one_way() -> None:
    """main → command modules → formats/output/transport, never back or across."""
    layers = {
        "start": 3, "main": 2, "__main__": 4, "commands": 1, "jobs": 1, "operate": 1,
        "formats": 0, "output": 0, "transport": 0, "progress": 0, "table": 0,
    }  # fmt: skip
    assert {p.stem for p in CLI.glob("*.py")} - {"__init__"} == set(layers)
    for module in CLI.glob("*.py"):
        if module.stem == "__init__":
            continue
        for name in _imports(module):
            target = name.removeprefix("iyclo.cli.").split(".")[0]
            if target in layers and target != module.stem:
                assert layers[target] < layers[module.stem] or (
                    layers[target] == 0 == layers[module.stem]
                    and (target == "output" or (target, module.stem) == ("table", "formats"))
                ), f"{module.stem} imports {target}"
