"""iyclod's D-Bus interface and the CLI's D-Bus client, over real buses.

Each test module run spawns private ``dbus-daemon``s under a temporary directory; the
service behind the interface is the real ``Service`` (``tests.fakes.fixtures.core``) on a
real store, over the fake systemd (a real D-Bus service on its own private bus) and a fake
Podman that runs the containers the fake systemd's units name. Calls go through
``DBusClient``, through ``busctl`` and ``gdbus``, and through a raw dbus-fast connection
that also watches the signals. The synchronous client runs in worker threads so the event
loop serving the interface stays free; every test that serves the interface also checks
that loop was never blocked for more than 0.2 s.
"""

from __future__ import annotations

import ast
import asyncio
import configparser
import contextlib
import copy
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

import iyclo
from iyclo.api.dbus import (
    BUS_NAME,
    JOB_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    POD_INTERFACE,
    bus_label_escape,
    export_service,
    job_path,
    pod_path,
)
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.client.dbus import DBusClient, bus_label_unescape
from iyclo.client.jsonrpc import JsonRpcClient
from iyclo.contract.events import PodChanged
from iyclo.core.access import Gate
from iyclo.core.events import QUEUE_LIMIT
from iyclo.errors import (
    AccessDeniedError,
    ConflictError,
    InvalidError,
    IycloError,
    NotFoundError,
    PodmanError,
    StoreError,
    SystemdError,
    UnavailableError,
)
from tests.fakes.fixtures import Core, fail_once
from tests.nobody import NobodyPython, calls_as_nobody

ROOT = Path(__file__).parent.parent
SRC_DIR = Path(iyclo.__file__).parent.parent
DBUS_DIR = ROOT / "dbus"


def _web_text() -> str:
    """examples/web.json, its shell one-liner swapped for a plain command: gdbus parses
    arguments as GVariant text first, and a JSON string with escaped quotes trips it."""
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["containers"][1]["command"] = ["sleep", "1000"]
    return json.dumps(data, indent=2)


WEB = _web_text()
JOB = json.dumps(
    {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": "backup", "network": "none",
        "schedule": {"calendar": "*-*-* 03:00:00"},
        "containers": [{"name": "dump", "image": "localhost/busybox:latest",
                        "command": ["sh", "-c", "exit 3"]}],
    }
)  # fmt: skip
BAD_NAME = (ROOT / "tests" / "manifests" / "broken" / "05-bad-name.json").read_text()
MAX_LAG = 0.2
NOBODY = 65534


def manifest(name: str = "web", **changes: Any) -> str:
    """examples/web.json under another name, or with other top-level fields. Its named
    volume is renamed with it: a volume belongs to the pod that made it (issue #11)."""
    data = json.loads(WEB)
    data["name"] = name
    if name != "web":
        for container in data["containers"]:
            for volume in container["volumes"]:
                volume["source"] = volume["source"].replace("web", name, 1)
    data.update(changes)
    return json.dumps(data)


# -- buses --------------------------------------------------------------------------------


def spawn_bus(*args: str) -> tuple[subprocess.Popen[str], str]:
    """A private dbus-daemon in the foreground; returns it and its address."""
    if shutil.which("dbus-daemon") is None:
        pytest.fail("dbus-daemon is missing: install package 'dbus' (scripts/bootstrap does)")
    proc = subprocess.Popen(
        ["dbus-daemon", "--nofork", "--print-address=1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    if not address:
        proc.wait(5)
        proc.stdout.close()
        pytest.fail(f"dbus-daemon {' '.join(args)} did not start (exit {proc.returncode})")
    return proc, address


def stop_bus(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def bus_dir() -> Iterator[Path]:
    """World-traversable, so a bus socket in it can be used by uid nobody too."""
    path = Path(tempfile.mkdtemp(prefix="iyclo-dbus-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def address(bus_dir: Path) -> Iterator[str]:
    """A private session bus, shared by the tests of this module."""
    proc, bus_address = spawn_bus("--session", f"--address=unix:path={bus_dir}/session")
    yield bus_address
    stop_bus(proc)


SYSTEM_LIKE_CONFIG = """<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <!-- the default policy of /usr/share/dbus-1/system.conf -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


@pytest.fixture(scope="module")
def system_address(bus_dir: Path) -> Iterator[str]:
    """A bus with the system bus's default policy plus dbus/io.github.iyclo1.conf."""
    config = bus_dir / "system.conf"
    config.write_text(
        SYSTEM_LIKE_CONFIG.format(
            socket=bus_dir / "system", policy=DBUS_DIR / "io.github.iyclo1.conf"
        )
    )
    proc, bus_address = spawn_bus(f"--config-file={config}")
    yield bus_address
    stop_bus(proc)


# -- the loop watch, the served interface, the clients ------------------------------------


class LagWatch:
    """How late the event loop woke a sleeper: a blocked loop shows up here."""

    period = 0.01

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - start - self.period)


@pytest.fixture
async def lag() -> AsyncIterator[LagWatch]:
    watch = LagWatch()
    task = asyncio.create_task(watch.run())
    yield watch
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert watch.worst < MAX_LAG, f"the event loop was blocked for {watch.worst:.3f}s"


@pytest.fixture
async def served(address: str, core: Core, lag: LagWatch) -> AsyncIterator[Core]:
    unexport = await export_service(core.service, bus_address=address)
    yield core
    await unexport()


@pytest.fixture
async def watching(served: Core) -> Core:
    """The service follows systemd and Podman too: pods' live state, jobs' runs."""
    await served.service.start_watching()
    return served


def unit_calls(core: Core, member: str) -> list[str]:
    """The units the service asked the fake systemd to ``member`` (StopUnit, ...)."""
    return [str(args[0]) for args in core.systemd.calls[member]]


@pytest.fixture
async def client(address: str) -> AsyncIterator[DBusClient]:
    dbus_client = await asyncio.to_thread(DBusClient, bus_address=address, timeout=30)
    yield dbus_client
    await asyncio.to_thread(dbus_client.close)


async def call(client: DBusClient, method: str, **params: Any) -> Any:
    """The blocking client, off the loop that serves the interface."""
    return await asyncio.to_thread(client.call, method, **params)


class Observer:
    """A raw dbus-fast connection on the test's loop: calls methods, records signals."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: list[Message] = []
        self._arrived = asyncio.Event()
        bus.add_message_handler(self._record)

    def _record(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL:
            self.signals.append(message)
            self._arrived.set()

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = BUS_NAME,
    ) -> Message:
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        async with asyncio.timeout(10):
            return await self.bus.call(message)

    async def get_all(self, path: str, interface: str) -> dict[str, Any] | None:
        """The properties of an object, or None when it is not exported."""
        reply = await self.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", [interface])
        if reply.message_type is MessageType.ERROR:
            return None
        return {key: variant.value for key, variant in reply.body[0].items()}

    async def wait_for(self, predicate: Callable[[Message], bool], since: int = 0) -> Message:
        """The first signal from index ``since`` on that matches (5 s at most)."""
        async with asyncio.timeout(5):
            while True:
                for message in self.signals[since:]:
                    if predicate(message):
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    def properties_changed(self, path: str, interface: str, since: int = 0) -> list[dict[str, Any]]:
        return [
            {key: variant.value for key, variant in m.body[1].items()}
            for m in self.signals[since:]
            if m.path == path and m.member == "PropertiesChanged" and m.body[0] == interface
        ]


@pytest.fixture
async def observer(address: str) -> AsyncIterator[Observer]:
    bus = await MessageBus(bus_address=address).connect()
    watcher = Observer(bus)
    reply = await watcher.call(
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "AddMatch",
        "s",
        [f"type='signal',sender='{BUS_NAME}'"],
        destination="org.freedesktop.DBus",
    )
    assert reply.message_type is MessageType.METHOD_RETURN
    yield watcher
    bus.disconnect()
    await bus.wait_for_disconnect()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (5 s at most): objects follow events asynchronously."""
    async with asyncio.timeout(5):
        while not await check():  # noqa: ASYNC110 (the condition lives on the bus)
            await asyncio.sleep(0.02)


# -- tools --------------------------------------------------------------------------------


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


async def busctl(address: str, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """busctl, logging at debug level: that is where it names a D-Bus error."""
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "debug"}
    return await run(*prefix, "busctl", f"--address={address}", *args, env=env)


async def busctl_call(
    address: str, member: str, *args: str, path: str = MANAGER_PATH, iface: str = MANAGER_INTERFACE
) -> Any:
    """A successful call's out-arguments as busctl's JSON sees them (None: no reply body)."""
    code, out, err = await busctl(
        address, "--json=short", "call", BUS_NAME, path, iface, member, *args
    )
    assert code == 0, err[-2000:]
    return json.loads(out)["data"] if out.strip() else None


def busctl_error(stderr: str) -> tuple[str, str]:
    """(error name, message) of a failed ``busctl call``."""
    name = re.search(r"type=error .* error-name=(\S+) error-message=", stderr)
    message = re.search(r"^Call failed: (.*)$", stderr, re.MULTILINE)
    assert name, stderr[-2000:]
    assert message, stderr[-2000:]
    return name.group(1), message.group(1)


GDBUS = shutil.which("gdbus")
needs_gdbus = pytest.mark.skipif(
    GDBUS is None, reason="gdbus is not installed (Debian/Ubuntu package libglib2.0-bin)"
)


async def gdbus_call(
    address: str, member: str, *args: str, path: str = MANAGER_PATH, iface: str = MANAGER_INTERFACE
) -> tuple[int, str, str]:
    assert GDBUS is not None
    return await run(
        GDBUS, "call", "--address", address, "--dest", BUS_NAME, "--object-path", path,
        "--method", f"{iface}.{member}", *args,
    )  # fmt: skip


def gvariant_strings(text: str) -> tuple[str, ...]:
    """A GVariant text tuple of strings, e.g. ``('a', 'b')``: same quoting as Python's."""
    value = ast.literal_eval(text.strip())
    assert isinstance(value, tuple)
    return value


def wire(value: Any) -> Any:
    """What a value looks like after the JSON socket's encoding: the shape both must return."""
    return json.loads(json.dumps(value, default=str))


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("web", "web"),
        ("web-1", "web_2d1"),
        ("1web", "_31web"),
        ("", "_"),
        ("a_b", "a_5fb"),
        ("a.b/c", "a_2eb_2fc"),
        ("é", "_c3_a9"),
        ("Z9", "Z9"),
    ],
)
def test_object_path_labels_follow_sd_bus(name: str, label: str) -> None:
    assert bus_label_escape(name) == label
    assert bus_label_unescape(label) == name
    assert pod_path(name) == f"/io/github/iyclo1/pod/{label}"


# -- every method, three ways -------------------------------------------------------------


async def test_client_speaks_every_manager_method(served: Core, client: DBusClient) -> None:
    service = served.service
    assert await call(client, "version") == iyclo.__version__
    assert await call(client, "validate", manifest=WEB) == []
    assert await call(client, "validate", manifest=BAD_NAME) == await service.validate(BAD_NAME)
    assert len(await call(client, "validate", manifest=BAD_NAME)) == 2
    assert (await call(client, "diff", manifest=WEB)).startswith("--- (none)\n")

    applied = await call(client, "apply", manifest=WEB)
    assert applied == {
        "name": "web",
        "kind": "Pod",
        "generation": 1,
        "changed": True,
        "state": "running",
    }
    assert await service.manifest("web") == wire(json.loads(WEB))  # the text, as applied
    assert (await call(client, "apply", manifest=WEB))["changed"] is False
    assert await call(client, "diff", manifest=WEB) == ""
    changed = json.loads(manifest(labels={"app": "web", "tier": "front"}))
    assert await call(client, "apply", manifest=changed) == {
        "name": "web",
        "kind": "Pod",
        "generation": 2,
        "changed": True,
        "state": "running",
    }

    assert await call(client, "list") == wire(await service.list_all())
    status = await call(client, "get", name="web")
    assert status == wire(await service.status("web"))
    assert status["containers"][0]["name"] == "httpd"
    current = await call(client, "get_manifest", name="web")
    first = await call(client, "get_manifest", name="web", generation=1)
    assert current == wire(await service.manifest("web")) != first
    assert first == wire(await service.manifest("web", 1))
    assert current["labels"] == changed["labels"]
    assert await call(client, "history", name="web") == wire(await service.history("web"))
    assert [h["current"] for h in await call(client, "history", name="web")] == [False, True]

    assert await call(client, "stop", name="web") == "stopped"
    assert (await call(client, "get", name="web"))["state"] == "stopped"
    assert await call(client, "start", name="web") == "running"
    assert await call(client, "restart", name="web") == "running"
    assert await call(client, "reconcile") == {
        "adopted": ["web"],
        "recreated": [],
        "removed": [],
        "failed": [],
    }
    with pytest.raises(InvalidError, match=r"^pod 'web' is not a job; only jobs can be run$"):
        await call(client, "run_job", name="web")
    assert await call(client, "remove", name="web") is None
    assert await call(client, "list") == []
    assert "iyclo-pod-web.service" in unit_calls(served, "StopUnit")
    assert served.podman.pods == {}
    # The name comes back from the object path's label: one that needs escaping.
    assert (await call(client, "apply", manifest=manifest("9-lives")))["name"] == "9-lives"


async def test_client_list_leaves_out_a_pod_removed_meanwhile(
    served: Core, client: DBusClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = served.service
    await service.apply(manifest("a"))
    await service.apply(manifest("b"))
    list_all = service.list_all

    async def list_then_lose_a() -> list[dict[str, Any]]:
        rows = await list_all()
        await asyncio.to_thread(served.store.remove, "a")  # between the List and its Get
        return rows

    monkeypatch.setattr(service, "list_all", list_then_lose_a)
    assert [p["name"] for p in await call(client, "list")] == ["b"]


async def test_same_results_as_the_json_socket(
    address: str, core: Core, client: DBusClient, tmp_path: Path, lag: LagWatch
) -> None:
    """One service behind both fronts: each call made on both gives equal results. A change
    is made once beforehand, so that both fronts then see (and repeat) the same state."""
    service = core.service
    server = JsonRpcServer(service, tmp_path / "iyclo.sock")
    await server.start()
    unexport = await export_service(service, bus_address=address)
    json_client = await asyncio.to_thread(JsonRpcClient, tmp_path / "iyclo.sock")
    labelled = json.loads(manifest(labels={"x": "y"}))
    try:
        await service.apply(WEB)
        await service.apply(labelled)
        for method, params in [
            ("apply", {"manifest": labelled}),
            ("validate", {"manifest": BAD_NAME}),
            ("diff", {"manifest": WEB}),
            ("list", {}),
            ("get", {"name": "web"}),
            ("get_manifest", {"name": "web", "generation": 1}),
            ("get_manifest", {"name": "web"}),
            ("history", {"name": "web"}),
            ("stop", {"name": "web"}),
            ("get", {"name": "web"}),
            ("start", {"name": "web"}),
            ("restart", {"name": "web"}),
            ("reconcile", {}),
            ("version", {}),
            ("logs", {"name": "web", "lines": 3}),
        ]:
            via_json = await asyncio.to_thread(json_client.call, method, **params)
            via_dbus = await call(client, method, **params)
            assert via_dbus == via_json, method
        await service.remove("web")
        for method, params in [
            ("get", {"name": "web"}),
            ("apply", {"manifest": BAD_NAME}),
            ("runs", {"name": "web"}),
            ("remove", {"name": "web"}),
        ]:
            with pytest.raises(IycloError) as from_json:
                await asyncio.to_thread(json_client.call, method, **params)
            with pytest.raises(IycloError) as from_dbus:
                await call(client, method, **params)
            assert type(from_dbus.value) is type(from_json.value)
            assert from_dbus.value.message == from_json.value.message
            assert getattr(from_dbus.value, "details", None) == getattr(
                from_json.value, "details", None
            )
    finally:
        await asyncio.to_thread(json_client.close)
        await unexport()
        await server.close()


async def test_busctl_speaks_every_manager_method(served: Core, address: str) -> None:
    service = served.service
    assert await busctl_call(address, "Validate", "s", WEB) == [[]]
    assert await busctl_call(address, "Validate", "s", BAD_NAME) == [
        await service.validate(BAD_NAME)
    ]
    assert (await busctl_call(address, "Diff", "s", WEB))[0].startswith("--- (none)")
    assert await busctl_call(address, "Apply", "s", manifest("web-1")) == [
        "/io/github/iyclo1/pod/web_2d1",
        1,
        True,
        "running",
    ]
    assert await busctl_call(address, "Apply", "s", manifest("web-1")) == [
        "/io/github/iyclo1/pod/web_2d1",
        1,
        False,
        "running",
    ]
    running = ["web-1", "Pod", "running", 1, 0, 2, "iyclo-pod-web-1.service"]
    assert await busctl_call(address, "List") == [[running]]
    (text,) = await busctl_call(address, "Get", "s", "web-1")
    assert json.loads(text) == wire(await service.status("web-1"))
    (text,) = await busctl_call(address, "GetManifest", "su", "web-1", "0")
    assert json.loads(text) == json.loads(manifest("web-1"))
    (text,) = await busctl_call(address, "History", "s", "web-1")
    assert [h["generation"] for h in json.loads(text)] == [1]
    assert await busctl_call(address, "Stop", "s", "web-1") == ["stopped"]
    assert (await busctl_call(address, "List"))[0][0][2] == "stopped"
    assert (await busctl_call(address, "List"))[0][0][5] == 0  # no container running
    assert await busctl_call(address, "Start", "s", "web-1") == ["running"]
    assert await busctl_call(address, "Restart", "s", "web-1") == ["running"]
    (text,) = await busctl_call(address, "Reconcile")
    assert json.loads(text)["adopted"] == ["web-1"]
    code, _, err = await busctl(
        address, "call", BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE, "RunJob", "s", "web-1"
    )
    assert code != 0
    assert busctl_error(err) == (
        "io.github.iyclo1.Error.Invalid",
        "pod 'web-1' is not a job; only jobs can be run",
    )
    for prop, expected in (("Version", iyclo.__version__), ("PodCount", 1)):
        code, out, err = await busctl(
            address, "--json=short", "get-property", BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE, prop
        )
        assert code == 0, err
        assert json.loads(out)["data"] == expected
    assert await busctl_call(address, "Remove", "s", "web-1") is None
    assert await busctl_call(address, "List") == [[]]


@needs_gdbus
async def test_gdbus_speaks_every_manager_method(served: Core, address: str) -> None:
    service = served.service

    async def ok(member: str, *args: str) -> str:
        code, out, err = await gdbus_call(address, member, *args)
        assert code == 0, err
        return out.strip()

    assert await ok("Validate", WEB) == "(@as [],)"
    assert await ok("Validate", BAD_NAME) == repr((await service.validate(BAD_NAME),))
    assert gvariant_strings(await ok("Diff", WEB))[0].startswith("--- (none)")
    assert (
        await ok("Apply", WEB)
        == "(objectpath '/io/github/iyclo1/pod/web', uint32 1, true, 'running')"
    )
    assert await ok("List") == (
        "([('web', 'Pod', 'running', uint32 1, uint32 0, uint32 2, 'iyclo-pod-web.service')],)"
    )
    status = json.loads(gvariant_strings(await ok("Get", "web"))[0])
    assert status == wire(await service.status("web"))
    manifest_text = gvariant_strings(await ok("GetManifest", "web", "0"))[0]
    assert json.loads(manifest_text) == await service.manifest("web")
    assert len(json.loads(gvariant_strings(await ok("History", "web"))[0])) == 1
    assert await ok("Stop", "web") == "('stopped',)"
    assert await ok("Start", "web") == "('running',)"
    assert await ok("Restart", "web") == "('running',)"
    assert json.loads(gvariant_strings(await ok("Reconcile"))[0])["adopted"] == ["web"]
    code, _, err = await gdbus_call(address, "RunJob", "web")
    assert code != 0
    assert "GDBus.Error:io.github.iyclo1.Error.Invalid: pod 'web' is not a job;" in err
    assert await ok("Remove", "web") == "()"
    assert json.loads(gvariant_strings(await ok("Health"))[0]) == {"state": "ok", "problems": []}
    code, out, err = await run(
        GDBUS or "gdbus", "call", "--address", address, "--dest", BUS_NAME, "--object-path",
        MANAGER_PATH, "--method", "org.freedesktop.DBus.Properties.GetAll", MANAGER_INTERFACE,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        f"({{'JobCount': <uint32 0>, 'PodCount': <uint32 0>, 'Problems': <@as []>, "
        f"'State': <'ok'>, 'Version': <'{iyclo.__version__}'>}},)"
    )


# -- errors -------------------------------------------------------------------------------

ERRORS: list[IycloError] = [
    NotFoundError("no pod or job named 'web'"),
    InvalidError("name: bad", ["name: bad", "containers[0].image: missing"]),
    ConflictError("cannot apply pod 'web': a job with that name exists"),
    PodmanError("podman: image localhost/nope not found"),
    SystemdError("unit iyclo-pod-web.service did not start (failed)"),
    AccessDeniedError("not allowed"),
    StoreError("/var/lib/iyclo: read-only file system"),
    UnavailableError("apply: iyclod is degraded (podman: cannot reach Podman)"),
    IycloError("something failed"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
async def test_errors_reach_the_client_typed(
    served: Core, client: DBusClient, error: IycloError, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_once(monkeypatch, served, copy.copy(error))
    with pytest.raises(IycloError) as caught:
        await call(client, "stop", name="web")
    assert type(caught.value) is type(error)
    assert caught.value.message == error.message
    if isinstance(error, InvalidError):
        assert isinstance(caught.value, InvalidError)
        assert caught.value.details == error.details


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
async def test_errors_reach_busctl_and_gdbus_by_name(
    served: Core, address: str, error: IycloError, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_once(monkeypatch, served, copy.copy(error))
    code, _, err = await busctl(
        address, "call", BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE, "Get", "s", "web"
    )
    assert code != 0
    name, message = busctl_error(err)
    assert (name, message) == (error.dbus_name, error.message)
    if GDBUS is not None:
        fail_once(monkeypatch, served, copy.copy(error))
        code, _, err = await gdbus_call(address, "Get", "web")
        assert code != 0
        assert f"GDBus.Error:{error.dbus_name}: {error.message}" in err


async def test_invalid_manifest_lists_every_problem(
    served: Core, client: DBusClient, address: str
) -> None:
    expected = await served.service.validate(BAD_NAME)
    with pytest.raises(InvalidError) as caught:
        await call(client, "apply", manifest=BAD_NAME)
    assert caught.value.details == expected
    assert caught.value.message == expected[0]
    code, _, err = await busctl(
        address, "call", BUS_NAME, MANAGER_PATH, MANAGER_INTERFACE, "Apply", "s", BAD_NAME
    )
    assert code != 0
    assert busctl_error(err) == ("io.github.iyclo1.Error.Invalid", expected[0])
    assert "\n".join(expected) in err


async def test_client_errors_without_a_daemon(address: str, client: DBusClient) -> None:
    with pytest.raises(IycloError, match="not running on the bus at"):
        await call(client, "list")
    with pytest.raises(InvalidError, match=r"^unknown method 'frobnicate'$"):
        await call(client, "frobnicate")
    with pytest.raises(InvalidError, match=r"^get: unknown parameter 'nam'$"):
        await call(client, "get", nam="web")


def test_client_cannot_reach_a_missing_bus(tmp_path: Path) -> None:
    with pytest.raises(IycloError, match="cannot reach the bus at unix:path="):
        DBusClient(bus_address=f"unix:path={tmp_path}/none", timeout=5)


# -- signals and objects ------------------------------------------------------------------


async def test_events_reach_the_client_in_order_as_produced(
    watching: Core, client: DBusClient
) -> None:
    """What the core publishes, as the producers spell it: a pod's states, then a job's,
    and the end of a run whose container exits 3."""
    events = await asyncio.to_thread(client.events)
    before = time.time()
    await call(client, "apply", manifest=WEB)
    await call(client, "stop", name="web")
    await call(client, "remove", name="web")
    await call(client, "apply", manifest=JOB)
    watching.systemd.units["iyclo-job-backup.service"].exit_status = 3
    run = await call(client, "run_job", name="backup")
    received = [(await asyncio.to_thread(next, events)).to_json() for _ in range(10)]
    assert [(e["event"], e["name"], e["state"]) for e in received] == [
        ("PodChanged", "web", "applying"),
        ("PodChanged", "web", "running"),
        ("PodChanged", "web", "stopped"),
        ("PodChanged", "web", "removing"),
        ("PodChanged", "web", "removed"),
        ("JobChanged", "backup", "applying"),
        ("JobChanged", "backup", "scheduled"),
        ("JobChanged", "backup", "running"),
        ("JobFinished", "backup", "failed"),
        ("JobChanged", "backup", "scheduled"),
    ]
    assert set(received[0]) == {"event", "name", "state", "generation", "error", "at"}
    assert {e["generation"] for e in received if e["event"] != "JobFinished"} == {1}
    finished = received[8]
    assert (finished["run"], finished["exitCode"], finished["result"]) == (
        run["run"],
        3,
        "exit-code",
    )
    assert finished["durationSec"] > 0
    times = [e["at"] for e in received]
    assert before <= times[0]
    assert times == sorted(times)


async def test_a_pull_reports_its_progress_as_signals_while_it_runs(
    served: Core, client: DBusClient
) -> None:
    """``Pull`` over D-Bus: its steps arrive as ``PullProgress`` signals, before the reply."""
    events = await asyncio.to_thread(client.events)
    image = "127.0.0.1:5000/app:1"
    result = await call(client, "pull", image=image)
    assert [(i["container"], i["image"]) for i in result["images"]] == [("", image)]
    received = [(await asyncio.to_thread(next, events)).to_json() for _ in range(2)]
    assert [(e["event"], e["name"], e["image"], e["status"]) for e in received] == [
        ("PullProgress", "", image, "Copying blob"), ("PullProgress", "", image, "Copying config"),
    ]  # fmt: skip
    assert set(received[0]) == {
        "event", "name", "image", "layer", "status", "current", "total", "at"
    }  # fmt: skip
    assert served.podman.calls["ensure_image"] == [(image, "always")]


async def test_events_wait_for_what_comes_next(served: Core, client: DBusClient) -> None:
    events = await asyncio.to_thread(client.events)
    for state in ("starting", "running", "stopping", "stopped"):
        waiting = asyncio.ensure_future(asyncio.to_thread(next, events))
        await asyncio.sleep(0.05)  # the client now waits on an empty queue
        served.service.events.publish(PodChanged(name="web", state=state))
        assert (await waiting).state == state
    assert await call(client, "version") == iyclo.__version__


async def test_pod_objects_follow_the_pods(watching: Core, observer: Observer) -> None:
    service = watching.service
    path = pod_path("web-1")
    assert path == "/io/github/iyclo1/pod/web_2d1"
    assert await observer.get_all(path, POD_INTERFACE) is None

    await service.apply(manifest("web-1"))

    async def exported() -> bool:  # the object follows the events: applying, then running
        props = await observer.get_all(path, POD_INTERFACE)
        return props is not None and props["State"] == "running"

    await eventually(exported)
    props = await observer.get_all(path, POD_INTERFACE)
    assert props is not None
    status = await service.status("web-1")
    assert props == {
        "Name": "web-1",
        "Kind": "Pod",
        "State": "running",
        "Generation": 1,
        "Unit": "iyclo-pod-web-1.service",
        "Restarts": 0,
        "Containers": [(c["name"], "running", c["id"]) for c in status["containers"]],
        "Ready": True,
        "Health": [],
        "HealthRestarts": 0,
    }

    # A crash systemd restarts: State, Restarts and Ready change, nothing else is announced.
    mark = len(observer.signals)
    watching.systemd.set_unit_state(
        "iyclo-pod-web-1.service", "activating", "auto-restart", n_restarts=1
    )
    await observer.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path, mark)
    assert observer.properties_changed(path, POD_INTERFACE, mark) == [
        {"State": "restarting", "Restarts": 1, "Ready": False}
    ]
    watching.systemd.set_unit_state("iyclo-pod-web-1.service", "active", "running")
    await observer.wait_for(
        lambda m: m.member == "PropertiesChanged" and "State" in m.body[1], mark + 1
    )

    # The pod object's own methods go to the service.
    mark = len(observer.signals)
    reply = await observer.call(path, POD_INTERFACE, "Stop")
    assert reply.body == ["stopped"]
    await observer.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path, mark)
    changed = observer.properties_changed(path, POD_INTERFACE, mark)[0]
    assert changed["State"] == "stopped"
    assert [c[1] for c in changed["Containers"]] == ["exited", "exited"]
    assert (await observer.call(path, POD_INTERFACE, "Start")).body == ["running"]
    assert (await observer.call(path, POD_INTERFACE, "Restart")).body == ["running"]
    assert unit_calls(watching, "StopUnit").count("iyclo-pod-web-1.service") == 1
    assert unit_calls(watching, "RestartUnit") == ["iyclo-pod-web-1.service"]

    reply = await observer.call(path, POD_INTERFACE, "Remove")
    assert reply.message_type is MessageType.METHOD_RETURN

    async def gone() -> bool:
        return await observer.get_all(path, POD_INTERFACE) is None

    await eventually(gone)
    assert watching.podman.pods == {}


async def test_job_objects_follow_the_jobs(
    watching: Core, observer: Observer, address: str
) -> None:
    """A job is a Job object at /job/<label> from the moment Apply answers until Remove
    answers, never a Pod object; its properties follow the job's events."""
    job = json.loads(JOB)
    job["name"] = "night-backup"
    path = "/io/github/iyclo1/job/night_2dbackup"
    assert job_path("night-backup") == path
    assert await busctl_call(address, "Apply", "s", json.dumps(job)) == [
        path, 1, True, "scheduled"
    ]  # fmt: skip
    props = await observer.get_all(path, JOB_INTERFACE)  # exported before Apply answered
    assert props == {
        "Name": "night-backup", "State": "scheduled", "Generation": 1,
        "Unit": "iyclo-job-night-backup.service", "Timer": "iyclo-job-night-backup.timer",
        "Schedule": "*-*-* 03:00:00", "NextRun": "", "LastRun": 0, "LastRunStarted": "",
        "LastState": "", "LastResult": "", "LastExitCode": -1,
    }  # fmt: skip
    assert await observer.get_all(path, POD_INTERFACE) is None
    assert await observer.get_all(pod_path("night-backup"), POD_INTERFACE) is None
    counts = await observer.get_all(MANAGER_PATH, MANAGER_INTERFACE)
    assert counts is not None
    assert (counts["PodCount"], counts["JobCount"]) == (0, 1)

    mark = len(observer.signals)
    reply = await observer.call(path, JOB_INTERFACE, "Stop")
    assert reply.body == ["stopped"]
    await observer.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path, mark)
    assert observer.properties_changed(path, JOB_INTERFACE, mark) == [{"State": "stopped"}]
    assert unit_calls(watching, "StopUnit")[-1] == "iyclo-job-night-backup.timer"

    # A run through the object itself; its end shows in the Last* properties.
    assert (await observer.call(path, JOB_INTERFACE, "Start")).body == ["scheduled"]
    watching.systemd.units["iyclo-job-night-backup.service"].exit_status = 3
    reply = await observer.call(path, JOB_INTERFACE, "Run")
    assert json.loads(reply.body[0])["run"] == 1

    async def ran() -> bool:
        props = await observer.get_all(path, JOB_INTERFACE)
        return props is not None and props["LastState"] == "failed"

    await eventually(ran)
    props = await observer.get_all(path, JOB_INTERFACE)
    assert props is not None
    assert (props["LastRun"], props["LastExitCode"], props["LastResult"]) == (1, 3, "exit-code")
    assert props["State"] == "scheduled"

    assert await busctl_call(address, "Remove", "s", "night-backup") is None
    assert await observer.get_all(path, JOB_INTERFACE) is None  # gone before Remove answered
    counts = await observer.get_all(MANAGER_PATH, MANAGER_INTERFACE)
    assert counts is not None
    assert counts["JobCount"] == 0


async def test_pod_method_errors_are_typed(served: Core, observer: Observer) -> None:
    await served.service.apply(WEB)
    await served.service.stop("web")

    async def exported() -> bool:
        return await observer.get_all(pod_path("web"), POD_INTERFACE) is not None

    await eventually(exported)
    served.systemd.job_result_next = "failed"  # the unit's start job fails
    reply = await observer.call(pod_path("web"), POD_INTERFACE, "Start")
    assert reply.message_type is MessageType.ERROR
    assert reply.error_name == "io.github.iyclo1.Error.Systemd"
    assert reply.body == ["unit iyclo-pod-web.service did not start (failed)"]


async def test_pod_count_follows_the_pods(served: Core, observer: Observer) -> None:
    async def pod_count() -> int:
        reply = await observer.call(
            MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            "ss",
            [MANAGER_INTERFACE, "PodCount"],
        )
        value: int = reply.body[0].value
        return value

    def count_changed(m: Message) -> bool:
        return (
            m.path == MANAGER_PATH and m.member == "PropertiesChanged" and "PodCount" in m.body[1]
        )

    assert await pod_count() == 0
    for change, expected in (
        (served.service.apply(manifest("a")), 1),
        (served.service.apply(manifest("b")), 2),
        (served.service.remove("a"), 1),
    ):
        mark = len(observer.signals)
        await change
        message = await observer.wait_for(count_changed, mark)
        assert message.body[1]["PodCount"].value == expected
        assert await pod_count() == expected
    assert observer.properties_changed(MANAGER_PATH, MANAGER_INTERFACE) == [
        {"PodCount": 1},
        {"PodCount": 2},
        {"PodCount": 1},
    ]


async def test_pods_present_at_start_are_exported_at_once(
    address: str, core: Core, observer: Observer, lag: LagWatch
) -> None:
    await core.service.apply(WEB)
    await core.service.stop("web")
    unexport = await export_service(core.service, bus_address=address)
    try:
        props = await observer.get_all(pod_path("web"), POD_INTERFACE)
        assert props is not None
        assert props["State"] == "stopped"
        manager = await observer.get_all(MANAGER_PATH, MANAGER_INTERFACE)
        assert manager == {"PodCount": 1, "JobCount": 0, "Version": iyclo.__version__,
                           "State": "ok", "Problems": []}  # fmt: skip
    finally:
        await unexport()


# -- introspection ------------------------------------------------------------------------


def interface_shape(xml_text: str, name: str) -> dict[str, Any]:
    """What a client can rely on: members with arg names, types, directions; access."""
    root = ET.fromstring(xml_text)
    found = [i for i in root.iter("interface") if i.get("name") == name]
    assert len(found) == 1, f"{name} is not described exactly once"
    interface = found[0]
    return {
        "methods": {
            m.get("name"): [
                (a.get("name"), a.get("type"), a.get("direction", "in")) for a in m.findall("arg")
            ]
            for m in interface.findall("method")
        },
        "signals": {
            s.get("name"): [(a.get("name"), a.get("type")) for a in s.findall("arg")]
            for s in interface.findall("signal")
        },
        "properties": {
            p.get("name"): (p.get("type"), p.get("access")) for p in interface.findall("property")
        },
    }


def own_interfaces(xml_text: str) -> set[str]:
    names = {i.get("name") or "" for i in ET.fromstring(xml_text).iter("interface")}
    return {n for n in names if not n.startswith("org.freedesktop.DBus.")}


async def test_introspection_xml_files_match_what_is_exported(
    served: Core, observer: Observer
) -> None:
    await served.service.apply(WEB)
    await served.service.apply(JOB)

    async def introspect(path: str) -> str:
        reply = await observer.call(path, "org.freedesktop.DBus.Introspectable", "Introspect")
        assert reply.message_type is MessageType.METHOD_RETURN
        text: str = reply.body[0]
        return text

    async def exported() -> bool:
        return POD_INTERFACE in own_interfaces(await introspect(pod_path("web")))

    async def job_exported() -> bool:
        return JOB_INTERFACE in own_interfaces(await introspect(job_path("backup")))

    await eventually(exported)
    await eventually(job_exported)
    documented_files = {p.name for p in DBUS_DIR.glob("*.xml")}
    objects = [
        (MANAGER_PATH, MANAGER_INTERFACE),
        (pod_path("web"), POD_INTERFACE),
        (job_path("backup"), JOB_INTERFACE),
    ]
    assert documented_files == {f"{interface}.xml" for _, interface in objects}
    for path, interface in objects:
        live = await introspect(path)
        documented = (DBUS_DIR / f"{interface}.xml").read_text()
        assert own_interfaces(live) == {interface}
        assert interface_shape(live, interface) == interface_shape(documented, interface)
    assert {n.get("name") for n in ET.fromstring(await introspect(MANAGER_PATH))} >= {
        "pod",
        "job",
    }


# -- the bus is never blocked -------------------------------------------------------------


async def test_a_slow_apply_does_not_block_the_bus(
    served: Core, client: DBusClient, address: str, lag: LagWatch
) -> None:
    gate = served.podman.hold("create_pod_with_containers")  # Podman taking its time
    applying = asyncio.ensure_future(call(client, "apply", manifest=WEB))
    await asyncio.wait_for(served.podman.entered["create_pod_with_containers"].wait(), 10)
    other = await asyncio.to_thread(DBusClient, bus_address=address, timeout=10)
    try:
        started = time.monotonic()
        assert await call(other, "version") == iyclo.__version__
        # the pod being applied is listed already (its record is in), nothing waits for it
        assert [p["name"] for p in await call(other, "list")] == ["web"]
        assert await busctl_call(address, "Validate", "s", WEB) == [[]]
        assert time.monotonic() - started < 5
        assert not applying.done()
    finally:
        gate.set()
        await asyncio.to_thread(other.close)
    assert (await applying)["changed"] is True
    assert lag.worst < MAX_LAG


# -- the bus name, and the system bus policy ----------------------------------------------


async def test_unexport_releases_the_name(
    address: str, core: Core, observer: Observer, lag: LagWatch
) -> None:
    async def owned() -> bool:
        reply = await observer.call(
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", [BUS_NAME],
            destination="org.freedesktop.DBus",
        )  # fmt: skip
        value: bool = reply.body[0]
        return value

    unexport = await export_service(core.service, bus_address=address)
    assert await owned()
    await unexport()
    assert not await owned()
    await unexport()  # twice is harmless
    core.service.events.publish(PodChanged(name="web", state="running"))  # nobody listens


async def test_losing_the_bus(bus_dir: Path, core: Core, lag: LagWatch) -> None:
    """The daemon logs it; a client streaming events, or calling, gets a one-line error."""
    proc, doomed = spawn_bus("--session", f"--address=unix:path={bus_dir}/doomed")
    with structlog.testing.capture_logs() as logs:
        try:
            unexport = await export_service(core.service, bus_address=doomed)
            dbus_client = await asyncio.to_thread(DBusClient, bus_address=doomed, timeout=10)
            events = await asyncio.to_thread(dbus_client.events)
            waiting = asyncio.ensure_future(asyncio.to_thread(next, events))
        finally:
            await asyncio.to_thread(stop_bus, proc)
        with pytest.raises(IycloError, match=r"^lost the connection to the bus at unix:path="):
            await waiting
        with pytest.raises(IycloError, match=r"^lost the connection to the bus at unix:path="):
            await call(dbus_client, "list")
        await asyncio.to_thread(dbus_client.close)

        async def logged() -> bool:
            return any(e["event"].startswith("lost the D-Bus connection") for e in logs)

        await eventually(logged)
        await unexport()


async def test_a_burst_of_signals_keeps_the_connection(bus_dir: Path, core: Core) -> None:
    """A bus daemon that reads nothing for a while (busy, here stopped) while a burst of
    signals is sent: the interface waits for it rather than filling its socket, which
    dbus-fast 5.2 takes for a broken connection (``PACE_EVERY``)."""
    proc, address = spawn_bus("--session", f"--address=unix:path={bus_dir}/burst")
    with structlog.testing.capture_logs() as logs:
        try:
            unexport = await export_service(core.service, bus_address=address)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                for index in range(QUEUE_LIMIT):  # 1.2 MB of signals, the queue's worth
                    core.service.events.publish(
                        PodChanged(name=f"burst-{index}", state="failed", error="x" * 1200)
                    )
                    if index % 50 == 0:
                        await asyncio.sleep(0)  # the forwarder sends what it has
                await asyncio.sleep(0.5)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            dbus_client = await asyncio.to_thread(DBusClient, bus_address=address, timeout=10)
            try:
                listed = await call(dbus_client, "list")
            except IycloError as exc:
                pytest.fail(f"no answer after the burst: {exc.message}")
            finally:
                await asyncio.to_thread(dbus_client.close)
            assert listed == []
            await unexport()
        finally:
            await asyncio.to_thread(stop_bus, proc)
    lost = sum(1 for e in logs if e["event"].startswith("lost the D-Bus connection"))
    assert lost == 0, "the bus connection was dropped during the burst"


async def test_a_second_daemon_is_refused(served: Core, address: str) -> None:
    with pytest.raises(ConflictError, match=r"already owned .* is another iyclod running"):
        await export_service(served.service, bus_address=address)


async def test_name_refused_by_bus_policy(bus_dir: Path, core: Core) -> None:
    config = bus_dir / "deny.conf"
    config.write_text(
        f"""<busconfig>
  <type>session</type>
  <listen>unix:path={bus_dir}/deny</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <deny own="{BUS_NAME}"/>
  </policy>
</busconfig>
"""
    )
    proc, deny_address = spawn_bus(f"--config-file={config}")
    try:
        with pytest.raises(AccessDeniedError) as caught:
            await export_service(core.service, bus_address=deny_address)
    finally:
        stop_bus(proc)
    assert "\n" not in caught.value.message
    assert "io.github.iyclo1.conf" in caught.value.message
    assert "/usr/share/dbus-1/system.d/" in caught.value.message


NOBODY_DAEMON = """
import asyncio, sys, tempfile
from pathlib import Path
from iyclo.api.dbus import export_service
from iyclo.core.service import Service
from iyclo.errors import IycloError
from iyclo.store import Store
# The real service on an empty store: the bus refuses the name before systemd or Podman
# would be asked anything, so it has neither.
service = Service(Store.open(Path(tempfile.mkdtemp())), None, None)
try:
    asyncio.run(export_service(service, bus_address=sys.argv[1]))
except IycloError as exc:
    print(type(exc).__name__, exc.message)
"""


def python_env() -> dict[str, str]:
    path = f"{SRC_DIR}{os.pathsep}{ROOT}"
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


SECRET = "hunter2-in-env"


def _web_with_password() -> str:
    data = json.loads(WEB)
    data["containers"][1]["env"]["DB_PASSWORD"] = SECRET
    return json.dumps(data)


async def test_system_bus_policy_file(
    system_address: str, core: Core, lag: LagWatch, nobody_python: NobodyPython
) -> None:
    """dbus/io.github.iyclo1.conf on a bus with the system bus's default policy, and the
    daemon's own access decisions behind it (issue #11): everyone may call, the daemon
    refuses non-members with its typed AccessDenied and redacts what they read; a member
    of the deploy group may do everything and reads manifests whole."""
    if os.geteuid() != 0:
        with pytest.raises(AccessDeniedError):
            await export_service(core.service, bus_address=system_address)
        pytest.skip("the rest needs root: it checks what root and uid nobody may do")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to act as uid nobody")

    # Nobody but root owns the name.
    code, out, err = await run(
        *as_nobody(nobody_python.python, "-c", NOBODY_DAEMON, system_address),
        env=nobody_python.env(),
    )
    assert code == 0, err
    assert out.startswith("AccessDeniedError the ")
    assert "io.github.iyclo1.conf" in out

    gate = Gate(deploy_group="iyclo-test-nobody-is-not-in")
    unexport = await export_service(core.service, bus_address=system_address, gate=gate)
    web = _web_with_password()
    try:
        await core.service.apply(web)
        reads = [
            ("list", {}),
            ("get", {"name": "web"}),
            ("get_manifest", {"name": "web", "generation": 0}),
            ("get_manifest", {"name": "web", "generation": 1}),
            ("history", {"name": "web"}),
            ("diff", {"manifest": WEB}),
            ("validate", {"manifest": WEB}),
            ("version", {}),
        ]
        changes = [
            ("apply", {"manifest": WEB}),
            ("stop", {"name": "web"}),
            ("start", {"name": "web"}),
            ("restart", {"name": "web"}),
            ("remove", {"name": "web"}),
            ("reconcile", {}),
            ("run_job", {"name": "web"}),
            ("logs", {"name": "web"}),
        ]
        replies = await nobody_calls(system_address, nobody_python, [*reads, *changes])
        for (method, _), answer in zip(reads, replies, strict=False):
            assert "ok" in answer, (method, answer)
            assert SECRET not in json.dumps(answer), (method, answer)  # redacted, every read
        listed, _, current, first, history, diff = (a["ok"] for a in replies[:6])
        assert [p["name"] for p in listed] == ["web"]
        assert listed[0]["digest"] == "<redacted>"
        assert current == first
        assert current["containers"][1]["env"] == {"TZ": "<redacted>", "DB_PASSWORD": "<redacted>"}
        assert {g["digest"] for g in history} == {"<redacted>"}
        assert "DB_PASSWORD" in diff  # which key differs is shown; its value is not
        for (method, _), answer in zip(changes, replies[len(reads) :], strict=True):
            assert answer["error"] == "AccessDeniedError", (method, answer)
            assert answer["message"].startswith(f"{method}: access denied: uid {NOBODY} ")
            assert "\n" not in answer["message"]
        assert unit_calls(core, "StopUnit") == []

        # busctl as nobody: introspection and properties are open; the Pod's methods reach
        # the daemon, which refuses them with its own typed error, naming the verb.
        code, out, err = await busctl(
            system_address, "--json=short", "get-property", BUS_NAME, pod_path("web"),
            POD_INTERFACE, "State", prefix=tuple(as_nobody()),
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["data"] == "running"
        code, out, err = await busctl(
            system_address, "introspect", BUS_NAME, MANAGER_PATH, prefix=tuple(as_nobody())
        )
        assert code == 0, err
        assert ".Apply" in out
        code, _, err = await busctl(
            system_address, "call", BUS_NAME, pod_path("web"), POD_INTERFACE, "Stop",
            prefix=tuple(as_nobody()),
        )  # fmt: skip
        assert code != 0
        assert busctl_error(err)[0] == "io.github.iyclo1.Error.AccessDenied"
        assert unit_calls(core, "StopUnit") == []

        # Root may change pods.
        assert await busctl_call(system_address, "Stop", "s", "web") == ["stopped"]

        # nobody's own group (nogroup, in the user database) made the deploy group: nobody
        # may now manage and deploy, and reads the manifest whole.
        gate.deploy_group = grp.getgrgid(pwd.getpwuid(NOBODY).pw_gid).gr_name
        replies = await nobody_calls(
            system_address, nobody_python,
            [("start", {"name": "web"}), ("get_manifest", {"name": "web", "generation": 0}),
             ("apply", {"manifest": WEB})],
        )  # fmt: skip
        assert replies[0] == {"ok": "running"}, replies[0]
        assert replies[1]["ok"]["containers"][1]["env"]["DB_PASSWORD"] == SECRET
        assert replies[2]["ok"]["generation"] == 2, replies[2]
    finally:
        await unexport()


async def nobody_calls(
    address: str, nobody_python: NobodyPython, requests: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Each request made by iyclo's D-Bus client running as uid nobody, its answer or its
    typed error."""
    return await calls_as_nobody(nobody_python, "dbus", address, requests)


def test_activation_file() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DBUS_DIR / "io.github.iyclo1.service")
    assert dict(parser["D-BUS Service"]) == {
        "Name": "io.github.iyclo1",
        "Exec": "/bin/false",
        "User": "root",
        "SystemdService": "iyclod.service",
    }


CTRL_C = """
import os, signal, sys, threading
from iyclo.client.dbus import DBusClient
client = DBusClient(bus_address=sys.argv[1], timeout=10)
events = client.events()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    next(events)
except KeyboardInterrupt:
    print("interrupted")
client.close()
print("closed")
"""


async def test_client_closes_cleanly_after_ctrl_c(served: Core, address: str) -> None:
    """`iyclo events` ends with Ctrl-C: closing then must leave nothing half-done behind."""
    code, out, err = await run(
        sys.executable, "-W", "error", "-c", CTRL_C, address, env=python_env()
    )
    assert (code, out.split(), err) == (0, ["interrupted", "closed"], "")


# -- the client stays lean ----------------------------------------------------------------

MEASURE = """
import json, sys, time
t0 = time.perf_counter()
from iyclo.client.dbus import DBusClient
t1 = time.perf_counter()
client = DBusClient(bus_address=sys.argv[1], timeout=10)
version = client.call("version")
pods = client.call("list")
client.close()
t2 = time.perf_counter()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("structlog", "attrs", "attr",
    "cattrs", "tinydb", "podman", "rich", "rich_click", "click") or m.split(".")[:2] in (
    ["iyclo", p] for p in ("core", "api", "manifest", "cli", "store", "podman", "systemd")))
print(json.dumps({"import": t1 - t0, "call": t2 - t1, "version": version, "pods": len(pods),
                  "heavy": heavy}))
"""


async def test_client_import_and_call_are_quick_and_lean(served: Core, address: str) -> None:
    await served.service.apply(WEB)
    code, out, err = await run(sys.executable, "-c", MEASURE, address, env=python_env())
    assert code == 0, err
    measured = json.loads(out)
    print(f"\nDBusClient import {measured['import'] * 1000:.0f} ms, "
          f"connect + version + list + close {measured['call'] * 1000:.0f} ms")  # fmt: skip
    assert measured["heavy"] == []
    assert measured["version"] == iyclo.__version__
    assert measured["pods"] == 1
    assert measured["import"] + measured["call"] < 1.5


async def test_the_interface_comes_back_after_the_bus_daemon_restarts(
    core: Core, tmp_path: Path
) -> None:
    """A bus daemon that crashes and comes back (socket activation does that on a real
    host) gets the name, the objects and the answers back without restarting iyclod."""
    socket_path = tmp_path / "bus"
    first, _ = spawn_bus("--session", f"--address=unix:path={socket_path}")
    address = f"unix:path={socket_path}"  # without the guid, which the new bus changes
    unexport = await export_service(core.service, bus_address=address)
    second: subprocess.Popen[str] | None = None
    try:
        await core.service.apply(WEB)
        first.kill()  # as a crash would: no goodbye to anyone
        await asyncio.to_thread(first.wait, 10)
        assert first.stdout is not None
        first.stdout.close()
        socket_path.unlink(missing_ok=True)
        second, again = spawn_bus("--session", f"--address=unix:path={socket_path}")
        assert again.startswith(f"unix:path={socket_path}")
        deadline = time.monotonic() + 15
        answer: Any = None
        while time.monotonic() < deadline:
            try:
                client = await asyncio.to_thread(DBusClient, bus_address=address, timeout=5)
            except IycloError:
                await asyncio.sleep(0.1)
                continue
            try:
                answer = await call(client, "get", name="web")
                break
            except IycloError:
                await asyncio.sleep(0.1)
            finally:
                await asyncio.to_thread(client.close)
        assert answer is not None, "the interface did not come back"
        assert answer["name"] == "web"
        out = await asyncio.to_thread(
            subprocess.run,
            ["busctl", f"--address={address}", "get-property", BUS_NAME,
             pod_path("web"), POD_INTERFACE, "State"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert out.stdout.strip() == 's "running"', out.stderr
    finally:
        await unexport()
        if second is not None:
            stop_bus(second)
