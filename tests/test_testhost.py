"""The test host harness against real systemd and real Podman: what every host test relies on.

Each claim the harness makes (private /tmp, private network, working cgroup limits, reachable
bus and API socket from outside, clean teardown, persistent disk across a reboot) is checked
here against the running system, never against mocks.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from podman import PodmanClient

from iyclo_testhost import (
    DEFAULT_BASE,
    Host,
    HostCommandError,
    TestHostError,
    TestHostUnavailable,
    boot,
    check_available,
)
from tests.host_fixtures import BUSYBOX_TAG, HostFactory, podman_major

pytestmark = pytest.mark.host

MIB_64 = 64 * 1024 * 1024


def _pids_in_namespace(pid_ns: str) -> list[int]:
    """Scan /proc independently of the harness: live processes whose PID namespace is pid_ns."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") == pid_ns:
                    state = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
                    if state[0] != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _pids_in_cgroup_named(leaf: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if f"/{leaf}" in Path(f"/proc/{entry.name}/cgroup").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _host_memory_cgroup(host: Host, unit_cgroup: str) -> Path:
    """Where a unit's memory cgroup is on the machine: the host's cgroup + the unit's path.

    Inside, systemd sees its own cgroup namespace; outside, the host's cgroup is a child of
    the cgroup the test runs in (for memory, this sandbox's /process_api/<id>).
    """
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        if ctrl == "memory":
            own = Path("/sys/fs/cgroup/memory", path.lstrip("/"), f"iyclo-testhost.{host.name}")
            return own / unit_cgroup.lstrip("/")
    pytest.fail("no cgroup v1 memory hierarchy on this machine; this test expects one")


def test_this_machine_can_boot_a_host() -> None:
    # The suite must not silently skip here: these machines are what the host is built for.
    check_available()
    assert issubclass(TestHostUnavailable, TestHostError)


def test_boots_to_running_inside_private_namespaces(testhost: Host) -> None:
    failed = testhost.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
    assert testhost.boot_state == "running", failed.stdout
    assert testhost.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert testhost.run(["systemd-detect-virt", "--container"]).stdout.strip() == "container-other"
    for ns in ("pid", "mnt", "net", "uts", "ipc", "cgroup"):
        inner = os.readlink(f"/proc/{testhost.pid}/ns/{ns}")
        assert inner != os.readlink(f"/proc/self/ns/{ns}"), ns
    # The host's disk is bind-mounted from its root; /run is a fresh tmpfs.
    mounts = testhost.run(["findmnt", "-n", "-o", "TARGET,FSTYPE,SOURCE", "-l"]).stdout
    table = {line.split()[0]: line.split()[1:] for line in mounts.splitlines()}
    assert table["/run"][0] == "tmpfs"
    assert table["/tmp"][0] == "tmpfs"
    assert str(testhost.root / "containers") in table["/var/lib/containers"][1]
    assert str(testhost.root / "iyclo") in table["/var/lib/iyclo"][1]


def test_loopback_is_up_and_carries_traffic(testhost: Host) -> None:
    link = testhost.run(["ip", "-o", "link", "show", "lo"]).stdout
    assert "UP" in link.partition("<")[2].partition(">")[0].split(",")
    echo = (
        "import socket\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "c = socket.create_connection(s.getsockname())\n"
        "a, _ = s.accept()\n"
        "c.sendall(b'over lo')\n"
        "print(a.recv(100).decode())\n"
    )
    assert testhost.run(["python3", "-c", echo]).stdout.strip() == "over lo"


def test_podman_is_configured_for_these_machines(testhost: Host) -> None:
    fmt = "{{.Host.CgroupManager}} {{.Host.OCIRuntime.Name}} {{.Store.GraphRoot}}"
    info = testhost.run(["podman", "info", "--format", fmt]).stdout.split()
    assert info == ["systemd", "runc", "/var/lib/containers/storage"]


def test_transient_unit_gets_its_memory_limit(testhost: Host) -> None:
    unit = f"iyclo-probe-{secrets.token_hex(4)}"
    testhost.run(["systemd-run", f"--unit={unit}", "-p", "MemoryMax=64M", "sleep", "300"])
    try:
        show = testhost.run(
            ["systemctl", "show", "-p", "ControlGroup", "-p", "MemoryMax", "-p", "ActiveState",
             f"{unit}.service"]
        ).stdout  # fmt: skip
        props = dict(line.split("=", 1) for line in show.splitlines())
        assert props == {
            "ControlGroup": f"/system.slice/{unit}.service",
            "MemoryMax": str(MIB_64),
            "ActiveState": "active",
        }
        # The kernel enforces it: read back from the machine's side of the cgroup tree.
        limit = _host_memory_cgroup(testhost, props["ControlGroup"]) / "memory.limit_in_bytes"
        assert int(limit.read_text()) == MIB_64
    finally:
        testhost.run(["systemctl", "stop", f"{unit}.service"])

    # And from inside a unit's own view of its cgroup (--wait: the unit is gone afterwards).
    read_own = (
        "cat /sys/fs/cgroup/memory$(grep :memory: /proc/self/cgroup | cut -d: -f3)"
        "/memory.limit_in_bytes"
    )
    out = testhost.run(
        ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "MemoryMax=64M", "sh", "-c", read_own]
    )
    assert out.stdout.strip() == str(MIB_64)


def test_podman_run_under_a_unit_with_limits(testhost: Host) -> None:
    script = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; grep CapEff /proc/self/status; "
        "ulimit -n; id -u nobody"
    )
    out = testhost.run(
        ["systemd-run", "--wait", "--pipe", "--quiet",
         "podman", "run", "--rm", "--memory", "64m", "--cap-drop", "all", BUSYBOX_TAG,
         "sh", "-c", script]
    ).stdout.split("\n")  # fmt: skip
    assert out[:4] == [str(MIB_64), "CapEff:\t0000000000000000", "1024", "65534"]


def test_published_port_stays_in_the_host_network(testhost: Host) -> None:
    port = 20000 + secrets.randbelow(20000)
    name = f"web-{secrets.token_hex(4)}"
    testhost.run(
        ["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:80", BUSYBOX_TAG,
         "httpd", "-f", "-p", "80", "-h", "/www"]
    )  # fmt: skip
    try:
        # (No `wget -T`: busybox 1.35's static wget segfaults with it.)
        fetch = ["busybox", "wget", "-qO-", f"http://127.0.0.1:{port}/"]
        out = testhost.run(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8 9 10; do {' '.join(fetch)} "
                                        "&& exit 0; sleep 0.1; done; exit 1"])  # fmt: skip
        assert out.stdout == "iyclo testhost\n"
        # The machine's own network never sees netavark's rules for it.
        assert f"dport {port}" not in firewall_rules(lambda argv: subprocess.run(
            argv, capture_output=True, text=True, check=False))  # fmt: skip
        assert f"dport {port}" in firewall_rules(lambda argv: testhost.run(argv, check=False))
    finally:
        testhost.run(["podman", "rm", "-f", "-t", "0", name])


FIREWALL_DUMPS = (["iptables-save", "-t", "nat"], ["nft", "list", "ruleset"])


def firewall_rules(run: Callable[[list[str]], subprocess.CompletedProcess[str]]) -> str:
    """NAT rules as netavark writes them: iptables on Debian 12, nftables on Debian 13
    (either dump names a published port as "dport N"). A tool that is missing adds nothing."""
    dumps = []
    for argv in FIREWALL_DUMPS:
        try:
            dumps.append(run(argv).stdout)
        except FileNotFoundError:
            continue
    return "\n".join(dumps)


async def test_system_bus_reachable_from_outside(testhost: Host) -> None:
    assert testhost.system_bus_address == (
        f"unix:path=/proc/{testhost.pid}/root/run/dbus/system_bus_socket"
    )
    bus = await MessageBus(
        bus_address=testhost.system_bus_address, bus_type=BusType.SYSTEM
    ).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path="/org/freedesktop/systemd1",
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=["org.freedesktop.systemd1.Manager", "SystemState"],
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert reply.body[0].value == "running"
    finally:
        bus.disconnect()


def test_podman_api_reachable_from_outside(testhost: Host) -> None:
    # The plain unix:///proc/<pid>/root/... form works with the bindings (unix://proc/... does
    # not: it loses the leading slash).
    assert testhost.podman_url == f"unix:///proc/{testhost.pid}/root/run/podman/podman.sock"
    with PodmanClient(base_url=testhost.podman_url) as client:
        version = client.version()  # type: ignore[no-untyped-call]
        assert version["Version"].split(".")[0] in ("4", "5")
        assert client.images.exists(BUSYBOX_TAG)
        container = client.containers.create(BUSYBOX_TAG, ["echo", "via the API"])
        try:
            container.start()
            assert container.wait() == 0
            logs = container.logs(stdout=True, stderr=False)
            assert (logs if isinstance(logs, bytes) else b"".join(logs)) == b"via the API\n"
        finally:
            container.remove(force=True)


def _own_name_policy(tmp_path: Path, name: str) -> Path:
    policy = tmp_path / f"{name}.conf"
    policy.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f'<busconfig><policy user="root"><allow own="{name}"/></policy></busconfig>\n'
    )
    return policy


async def _request_name(host: Host, name: str) -> str:
    """Ask the host's system bus for `name` from outside; the error name, or "" on success."""
    bus = await MessageBus(bus_address=host.system_bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="RequestName",
                signature="su",
                body=[name, 0],
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            return reply.error_name or "?"
        assert reply.body == [1]  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
        return ""
    finally:
        bus.disconnect()


def test_bus_policies_let_root_own_new_names(
    fresh_testhost_factory: HostFactory, testhost: Host, tmp_path: Path
) -> None:
    denied = "org.freedesktop.DBus.Error.AccessDenied"
    late = "io.github.iyclo1.Late"
    machine = [Path(f"/etc/dbus-1/system.d/{name}.conf") for name in ("io.github.iyclo1", late)]
    before = [p.read_bytes() if p.exists() else None for p in machine]  # iyclo may be installed
    # Without a policy the system bus refuses, as on a real machine. (A name no policy
    # names: the session's daemon may own io.github.iyclo1 on the shared host.)
    assert asyncio.run(_request_name(testhost, "io.github.iyclo1.NoPolicy")) == denied
    host = fresh_testhost_factory(
        extra_dbus_policies=[_own_name_policy(tmp_path, "io.github.iyclo1")], busybox=False
    )
    assert asyncio.run(_request_name(host, "io.github.iyclo1")) == ""
    # A policy added to a running host takes effect after the reload it triggers.
    assert asyncio.run(_request_name(host, late)) == denied
    host.install_dbus_policy(_own_name_policy(tmp_path, late))
    assert asyncio.run(_request_name(host, late)) == ""
    # Neither touched the machine's own bus configuration.
    assert [p.read_bytes() if p.exists() else None for p in machine] == before


def test_run_reports_failures_and_kills_on_timeout(testhost: Host) -> None:
    with pytest.raises(HostCommandError) as failed:
        testhost.run(["sh", "-c", "echo to-stdout; echo went wrong >&2; exit 3"])
    assert failed.value.returncode == 3
    message = str(failed.value)
    assert "sh -c" in message
    assert "exit code 3" in message
    assert "went wrong" in message
    assert testhost.run(["sh", "-c", "exit 4"], check=False).returncode == 4
    assert testhost.run(["cat"], input="round trip").stdout == "round trip"

    marker = f"{secrets.randbelow(10**6)}.5"
    with pytest.raises(HostCommandError, match="timed out"):
        testhost.run(["sh", "-c", f"sleep {marker}"], timeout=0.5)
    left = testhost.run(["pgrep", "-f", f"sleep {marker}"], check=False)
    assert left.returncode == 1, f"timed-out command still runs inside: {left.stdout}"


def test_real_tmp_untouched_and_teardown_leaves_nothing(
    fresh_testhost_factory: HostFactory,
) -> None:
    token = secrets.token_hex(8)
    sentinel = Path(f"/tmp/iyclo-testhost-sentinel-{token}")
    sentinel.write_text(token)
    old = 1_000_000_000  # 2001: old enough for any age-based cleaning
    os.utime(sentinel, (old, old))
    try:
        host = fresh_testhost_factory()
        pid, pid_ns, name = host.pid, os.readlink(f"/proc/{host.pid}/ns/pid"), host.name
        # Inside, /tmp is another filesystem: the sentinel is not there, and writes stay there.
        assert host.run(["test", "-e", str(sentinel)], check=False).returncode == 1
        host.run(["touch", f"/tmp/inner-{token}"])
        assert not Path(f"/tmp/inner-{token}").exists()
        # Leave work running so that teardown has something to kill.
        host.run(["systemd-run", "--unit=busy", "sleep", "300"])
        host.run(["podman", "run", "-d", "--name", "busy", BUSYBOX_TAG, "sleep", "300"])
        assert len(_pids_in_namespace(pid_ns)) > 5
        assert _pids_in_cgroup_named(f"iyclo-testhost.{name}")

        host.shutdown()

        assert not _pid_alive(pid)
        assert _pids_in_namespace(pid_ns) == []
        assert _pids_in_cgroup_named(f"iyclo-testhost.{name}") == []
        assert _leftover_cgroup_dirs(f"iyclo-testhost.{name}") == []
        assert not (host.root / "host.pid").exists()
        with pytest.raises(TestHostError, match="not running"):
            host.run(["true"])
        host.shutdown()  # idempotent

        assert sentinel.read_text() == token
        assert sentinel.stat().st_mtime == old
        assert not Path(f"/tmp/inner-{token}").exists()
    finally:
        sentinel.unlink()


def _leftover_cgroup_dirs(leaf: str) -> list[Path]:
    """The host's cgroup dirs that still exist in the hierarchies mounted on this machine."""
    left = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        mount = {"": "unified", "name=systemd": "systemd"}.get(ctrl, ctrl)
        if Path("/sys/fs/cgroup", mount, "cgroup.procs").exists():
            own = Path("/sys/fs/cgroup", mount, path.lstrip("/"), leaf)
            if own.exists():
                left.append(own)
    return left


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_reboot_keeps_disk_and_forgets_run(fresh_testhost_factory: HostFactory) -> None:
    first = fresh_testhost_factory()
    image_id = first.run(["podman", "image", "inspect", "-f", "{{.Id}}", BUSYBOX_TAG]).stdout
    first.run(["podman", "create", "--name", "keeper", BUSYBOX_TAG, "echo", "kept"])
    first.run(["podman", "run", "-d", "--name", "runner", BUSYBOX_TAG, "sleep", "300"])
    first.run(["sh", "-c", "echo state > /var/lib/iyclo/state.txt; touch /run/volatile"])
    first.shutdown()  # a crash, not a clean stop: SIGKILL to PID 1

    second = fresh_testhost_factory(root=first.root, name=first.name, busybox=False)
    assert second.pid != first.pid
    assert second.run(["podman", "image", "inspect", "-f", "{{.Id}}", BUSYBOX_TAG]).stdout == (
        image_id
    )
    states = second.run(["podman", "ps", "-a", "--format", "{{.Names}} {{.State}}"]).stdout
    # Podman noticed the reboot (its /run state is gone) and reset the running container:
    # Podman 4.3 to "Created", Podman 5.4 to "exited" (measured); the other stays created.
    reset = "exited" if podman_major(second) >= 5 else "created"
    assert sorted(states.lower().splitlines()) == ["keeper created", f"runner {reset}"]
    assert second.run(["podman", "start", "--attach", "keeper"]).stdout == "kept\n"
    second.run(["podman", "start", "runner"])
    assert second.run(["podman", "inspect", "-f", "{{.State.Status}}", "runner"]).stdout == (
        "running\n"
    )
    assert second.run(["cat", "/var/lib/iyclo/state.txt"]).stdout == "state\n"
    assert second.run(["test", "-e", "/run/volatile"], check=False).returncode == 1


def test_boot_after_a_crash_and_a_late_shutdown(fresh_testhost_factory: HostFactory) -> None:
    crashed = fresh_testhost_factory(busybox=False)
    crashed_ns = os.readlink(f"/proc/{crashed.pid}/ns/pid")
    os.kill(crashed.pid, signal.SIGKILL)  # dies behind the harness's back: no shutdown()
    deadline = time.monotonic() + 10
    while _pids_in_namespace(crashed_ns) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (crashed.root / "host.json").exists()  # stale: nobody cleaned up

    # Same root, same name (so the same cgroups): boot cleans up after the dead one.
    reborn = fresh_testhost_factory(root=crashed.root, name=crashed.name, busybox=False)
    assert reborn.boot_state == "running"
    # The stale handle's shutdown must not touch the new host sharing its name and root.
    crashed.shutdown()
    assert reborn.is_running()
    assert Host.attach(reborn.root).pid == reborn.pid
    assert reborn.run(["systemctl", "is-system-running"]).stdout.strip() == "running"


def test_boot_refuses_bad_roots_and_a_second_host_on_one_root(testhost: Host) -> None:
    with pytest.raises(TestHostError, match="hidden inside"):
        boot(Path("/tmp/iyclo-testhost-root"))
    with pytest.raises(TestHostError, match="invalid test host name"):
        boot(DEFAULT_BASE / "x", name="../escape")
    with pytest.raises(TestHostError, match="already running"):
        boot(testhost.root, name="another")
    attached = Host.attach(testhost.root)
    assert attached.pid == testhost.pid
    assert attached.run(["systemctl", "is-system-running"]).stdout.strip() == "running"


def test_cli_up_exec_status_down(testhost_base: Path) -> None:
    name = f"cli{os.getpid()}"
    root = testhost_base / name
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}

    def cli(command: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent.parent / "tools" / "iyclo_testhost.py"),
                command,
                "--root",
                str(root),
                "--name",
                name,
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    up = cli("up", "--no-busybox")
    try:
        assert up.returncode == 0, up.stderr
        pid = int((root / "host.pid").read_text())
        assert f"unix:path=/proc/{pid}/root/run/dbus/system_bus_socket" in up.stdout
        # The CLI has exited; the host lives on.
        assert cli("status").returncode == 0
        ran = cli("exec", "--", "sh", "-c", "cat; echo; systemctl is-system-running; exit 7",
                  stdin="piped in")  # fmt: skip
        assert (ran.returncode, ran.stdout) == (7, "piped in\nrunning\n")
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not _pid_alive(pid)
    assert cli("status").returncode == 3
    assert cli("down").returncode == 0  # nothing to do is not an error
