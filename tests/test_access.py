"""Who may do what (issue #11), decided by the daemon from the caller the kernel names.

The JSON socket's half, against the real service over the fakes: the socket has its final
mode and group from the moment it is there, a peer let in by the file mode is still
checked against the user database, and a non-member's reads hide ``env`` values. The
D-Bus half is ``test_dbus_api.py::test_system_bus_policy_file``; polkit's is here too,
with a fake polkit authority on a private bus.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.dbus import export_service, pod_path
from iyclo.api.guard import Guarded, fixed
from iyclo.api.jsonrpc import JsonRpcServer
from iyclo.contract.methods import Access
from iyclo.core.access import Caller, Gate
from iyclo.core.redact import REDACTED, redact_manifest, redact_record
from iyclo.errors import AccessDeniedError, InvalidError
from tests.fakes.dbus_session import PrivateBus
from tests.fakes.fixtures import Core
from tests.fakes.polkit import FakePolkit
from tests.nobody import NOBODY, NobodyPython, calls_as_nobody

SECRET = "s3cret-in-env"
ROOT = Path(__file__).resolve().parent.parent
# A group every Debian system has and uid nobody is not in: the file mode lets a process
# holding it as its gid connect, the user database says nobody is no member.
OTHER_GROUP = "adm"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="acting as uid nobody needs root and setpriv (util-linux)",
)


def manifest() -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "web.json").read_text())
    data["containers"][1]["env"]["DB_PASSWORD"] = SECRET
    return data


async def as_nobody(
    nobody_python: NobodyPython,
    path: Path,
    requests: list[tuple[str, dict[str, Any]]],
    *,
    gid: int = NOBODY,
) -> list[dict[str, Any]]:
    return await calls_as_nobody(nobody_python, "socket", str(path), requests, gid=gid)


def open_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="iyclo-access-"))
    directory.chmod(0o755)
    return directory


@pytest.fixture
async def served(core: Core) -> AsyncIterator[tuple[Path, Gate]]:
    """The socket, owned by OTHER_GROUP, mode 0660, in a directory nobody may enter
    (pytest's own tmp_path is root's alone)."""
    directory = open_directory()
    gate = Gate(deploy_group=OTHER_GROUP)
    server = JsonRpcServer(core.service, directory / "iyclo.sock", gate=gate, group=OTHER_GROUP)
    await server.start()
    try:
        yield directory / "iyclo.sock", gate
    finally:
        await server.close()
        shutil.rmtree(directory)


async def test_the_socket_is_never_seen_with_another_mode_or_group(
    core: Core, tmp_path: Path
) -> None:
    """A watcher stats the path all through start-up: the first time it sees the socket,
    and every time after, it is 0660 and the deploy group's."""
    path = tmp_path / "iyclo.sock"
    seen: set[tuple[int, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            seen.add((stat.S_IMODE(info.st_mode), info.st_gid))

    watcher = threading.Thread(target=watch)
    watcher.start()
    server = JsonRpcServer(core.service, path, gate=Gate(OTHER_GROUP), group=OTHER_GROUP)
    try:
        await server.start()
        await asyncio.sleep(0.05)
    finally:
        done.set()
        watcher.join()
        await server.close()
    assert seen == {(0o660, grp.getgrnam(OTHER_GROUP).gr_gid)}
    assert [n for n in os.listdir(tmp_path) if "sock" in n] == []  # nor a staging name


async def test_the_socket_checks_the_peer_not_only_the_file_mode(
    served: tuple[Path, Gate], core: Core, nobody_python: NobodyPython
) -> None:
    path, gate = served
    await core.service.apply(manifest())
    # Without the socket's group, nobody cannot even connect.
    (refused,) = await as_nobody(nobody_python, path, [("version", {})])
    assert refused["connect"] == "AccessDeniedError", refused
    # With it as its gid, nobody connects, yet is no member in the user database.
    adm = grp.getgrnam(OTHER_GROUP).gr_gid
    replies = await as_nobody(
        nobody_python, path,
        [("get_manifest", {"name": "web"}), ("diff", {"manifest": manifest()}),
         ("apply", {"manifest": manifest()}), ("stop", {"name": "web"}),
         ("logs", {"name": "web"}), ("pull", {"image": "127.0.0.1:5000/fill-the-disk:1"})],
        gid=adm,
    )  # fmt: skip
    shown, diff, apply, stop, logs, pull = replies
    assert shown["ok"]["containers"][1]["env"] == {"TZ": REDACTED, "DB_PASSWORD": REDACTED}
    assert diff == {"ok": ""}
    assert SECRET not in json.dumps(replies)
    for answer, verb in ((apply, "apply"), (stop, "stop"), (logs, "logs"), (pull, "pull")):
        assert answer["error"] == "AccessDeniedError", answer
        assert answer["message"].startswith(f"{verb}: access denied: uid {NOBODY} ")
    assert "127.0.0.1:5000/fill-the-disk:1" not in {c[0] for c in core.podman.calls["ensure_image"]}
    # nobody's own group made the deploy group: the same peer deploys and reads it whole.
    gate.deploy_group = grp.getgrgid(pwd.getpwuid(NOBODY).pw_gid).gr_name
    changed = manifest()
    changed["containers"][1]["env"]["TZ"] = "Europe/Berlin"
    shown, applied = await as_nobody(
        nobody_python, path,
        [("get_manifest", {"name": "web"}), ("apply", {"manifest": changed})], gid=adm,
    )  # fmt: skip
    assert shown["ok"]["containers"][1]["env"]["DB_PASSWORD"] == SECRET
    assert applied["ok"]["generation"] == 2, applied


def test_redaction_keeps_the_keys_and_leaves_the_stored_document_alone() -> None:
    stored = manifest()
    shown = redact_manifest(stored)
    assert shown["containers"][1]["env"] == {"TZ": REDACTED, "DB_PASSWORD": REDACTED}
    assert stored["containers"][1]["env"]["DB_PASSWORD"] == SECRET
    assert redact_manifest({"containers": [{"name": "a"}]}) == {"containers": [{"name": "a"}]}


def test_init_containers_env_and_check_output_are_redacted_too() -> None:
    stored = {"initContainers": [{"name": "migrate", "env": {"DB_PASSWORD": SECRET}}],
              "containers": [{"name": "a"}]}  # fmt: skip
    assert redact_manifest(stored)["initContainers"][0]["env"] == {"DB_PASSWORD": REDACTED}
    status = {"digest": "abc", "containers": [
        {"name": "a", "health": "unhealthy", "healthOutput": f"login failed for {SECRET}"},
        {"name": "b", "health": ""}]}  # fmt: skip
    shown = redact_record(status)
    assert shown["digest"] == REDACTED
    assert shown["containers"] == [
        {"name": "a", "health": "unhealthy", "healthOutput": REDACTED},
        {"name": "b", "health": ""},
    ]
    assert status["containers"][0]["healthOutput"] == f"login failed for {SECRET}"


class Answers:
    """An Authority that grants what it is told, recording what it was asked."""

    def __init__(self, grants: set[tuple[int, str]]) -> None:
        self.grants = grants
        self.asked: list[tuple[int, str]] = []

    async def allows(self, caller: Caller, action_id: str) -> bool:
        self.asked.append((caller.uid, action_id))
        return (caller.uid, action_id) in self.grants


async def test_the_gate_asks_the_authority_only_for_callers_outside_the_group() -> None:
    authority = Answers({(NOBODY, "io.github.iyclo1.manage")})
    gate = Gate(deploy_group=grp.getgrgid(0).gr_name, authority=authority)
    nobody = Caller(uid=NOBODY, pid=1)
    await gate.require(nobody, Access.MANAGE, "stop")
    await gate.require(nobody, Access.READ, "get")
    with pytest.raises(AccessDeniedError, match=r"^apply: access denied: uid 65534 .*polkit"):
        await gate.require(nobody, Access.DEPLOY, "apply")
    assert not await gate.may_reveal(nobody)
    await gate.require(Caller(uid=0), Access.DEPLOY, "apply")
    assert authority.asked == [
        (NOBODY, "io.github.iyclo1.manage"),
        (NOBODY, "io.github.iyclo1.deploy"),
        (NOBODY, "io.github.iyclo1.deploy"),
    ]


async def test_polkit_grants_one_verb_on_both_fronts(
    core: Core, nobody_python: NobodyPython
) -> None:
    """A polkit rule hands uid nobody ``io.github.iyclo1.manage`` and nothing else: it may
    stop the pod over D-Bus (its bus name the subject) and the JSON socket (its pid and
    start time), and is refused apply on both, with polkit named in the refusal."""
    with PrivateBus(any_user=True) as bus:
        grants = {(NOBODY, "io.github.iyclo1.manage")}
        async with FakePolkit(bus.address, grants) as polkit:
            gate = Gate(deploy_group="iyclo-test-nobody-is-not-in")
            unexport = await export_service(core.service, bus_address=bus.address, gate=gate)
            directory = open_directory()
            server = JsonRpcServer(core.service, directory / "iyclo.sock", gate=gate)
            await server.start()
            (directory / "iyclo.sock").chmod(0o666)  # here the peer check is the only gate
            try:
                assert gate.authority is not None  # found on the bus
                await core.service.apply(manifest())
                stop = await nobody_busctl(bus.address, "call", pod_path("web"), "Stop")
                assert stop.returncode == 0, stop.stderr
                applied = await nobody_busctl(
                    bus.address, "call", "/io/github/iyclo1", "Apply", "s", json.dumps(manifest()),
                    interface="io.github.iyclo1.Manager",
                )  # fmt: skip
                assert applied.returncode != 0
                assert "access denied" in applied.stderr
                assert "polkit" in applied.stderr
                start, apply = await as_nobody(
                    nobody_python, directory / "iyclo.sock",
                    [("start", {"name": "web"}), ("apply", {"manifest": manifest()})],
                )  # fmt: skip
                assert start == {"ok": "running"}, start
                assert apply["error"] == "AccessDeniedError", apply
            finally:
                await server.close()
                await unexport()
                shutil.rmtree(directory)
            kinds = [(kind, uid, action) for kind, uid, action, _ in polkit.asked]
            assert kinds == [
                ("system-bus-name", NOBODY, "io.github.iyclo1.manage"),
                ("system-bus-name", NOBODY, "io.github.iyclo1.deploy"),
                ("unix-process", NOBODY, "io.github.iyclo1.manage"),
                ("unix-process", NOBODY, "io.github.iyclo1.deploy"),
            ]
            assert {flags for *_, flags in polkit.asked} == {0}  # never an interactive prompt


async def nobody_busctl(
    address: str, verb: str, path: str, member: str, *args: str,
    interface: str = "io.github.iyclo1.Pod",
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """busctl as uid nobody, run without taking a thread from the loop's executor (the
    service under test needs those for its store)."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "busctl",
            f"--address={address}", verb, "io.github.iyclo1", path, interface, member,
            *args]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


async def test_concurrent_callers_are_each_judged_as_themselves(core: Core) -> None:
    """The D-Bus sender travels with each call's own task (``api.dbus_caller``): calls of
    root and nobody interleaved on one bus are each decided for their own sender."""
    with PrivateBus(any_user=True) as bus:
        unexport = await export_service(
            core.service, bus_address=bus.address, gate=Gate("iyclo-test-nobody-is-not-in")
        )
        try:
            await core.service.apply(manifest())
            text = json.dumps(manifest())

            async def call(as_root: bool) -> tuple[int, str]:
                prefix = [] if as_root else ["setpriv", f"--reuid={NOBODY}",
                                             f"--regid={NOBODY}", "--clear-groups"]  # fmt: skip
                proc = await asyncio.create_subprocess_exec(
                    *prefix, "busctl", f"--address={bus.address}", "call", "io.github.iyclo1",
                    "/io/github/iyclo1", "io.github.iyclo1.Manager", "Apply", "s", text,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                _, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode is not None
                return proc.returncode, err.decode()

            order = [i % 2 == 0 for i in range(20)]
            results = await asyncio.gather(*(call(as_root) for as_root in order))
        finally:
            await unexport()
    for as_root, (code, err) in zip(order, results, strict=True):
        if as_root:
            assert code == 0, err
        else:
            assert code != 0
            assert "access denied: uid 65534" in err, err


async def test_a_non_member_cannot_probe_the_host_through_validate_or_diff(core: Core) -> None:
    """Validation looks at the host (bind-mount sources, secret files) only for a caller
    who may deploy: for anyone else, whether a root-only path exists, is a link or holds
    a secret of some size stays unsaid."""
    probe = manifest()
    probe["containers"][1]["secrets"] = [
        {"name": "pw", "file": "/etc/iyclo/secrets/iyclo-test-absent", "env": "PW"}
    ]
    root = Guarded(core.service, Gate("iyclo-none"), fixed(Caller(uid=0)))
    nobody = Guarded(core.service, Gate("iyclo-none"), fixed(Caller(uid=NOBODY)))
    (line,) = await root.validate(probe)
    assert line.startswith("containers[1].secrets[0].file: ")
    assert await nobody.validate(probe) == []
    assert "+" in await nobody.diff(probe)  # a diff, with no word about the file
    with pytest.raises(InvalidError, match=r"^containers\[1\]\.secrets\[0\]\.file: "):
        await root.diff(probe)
