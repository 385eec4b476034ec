"""Sandboxing and resources on both layers, read back from the running test host.

Nothing here trusts iyclo's own config: capabilities, no-new-privileges and seccomp come
from /proc inside the container, limits from the cgroup files the kernel enforces (the
test host has the cgroup v1 memory, cpu and pids controllers, so the v1 files are read),
unit and slice properties from `systemctl show`, the user namespace from the host's view of
the container's process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.core import naming
from iyclo.errors import InvalidError, NotFoundError
from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, inspect, remove, unit_show, wait_for
from tests.host_fixtures import podman_major

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

IMAGE = "localhost/busybox:latest"
SLEEP = ["sleep", "100000"]
# Podman 4.3.1's default set, measured: CHOWN DAC_OVERRIDE FOWNER FSETID KILL
# NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT.
PODMAN_DEFAULT_CAPS = 0x800405FB
# iyclo's default: the above without SETPCAP (bit 8), SETFCAP (31) and SYS_CHROOT (18).
IYCLO_DEFAULT_CAPS = 0x4FB
CAP_KILL, CAP_SYS_CHROOT = 1 << 5, 1 << 18
PROFILE = "/var/lib/iyclo/seccomp/deny-mkdir.json"  # the host's /var/lib/iyclo is root/iyclo
USERNS_BASE = 2**31  # the first ID of the daemon's default usernsRanges


def pod(name: str, *containers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "restart": {"policy": "no"},
        "containers": [{"image": IMAGE, "command": SLEEP, "stopTimeout": "1s", **c}
                       for c in containers],
        **fields,
    }  # fmt: skip


def apply(daemon: Daemon, manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = daemon.call("apply", manifest=json.dumps(manifest))
    return result


def sh(host: Host, container: str, script: str, check: bool = True) -> str:
    """Run a shell script inside a container; its stdout."""
    result = host.run(["podman", "exec", container, "sh", "-c", script], check=check)
    return result.stdout + result.stderr if not check else result.stdout


def proc_status(host: Host, container: str) -> dict[str, str]:
    """/proc/1/status of a container: its main process, as the kernel sees it."""
    out = sh(host, container, "cat /proc/1/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def read(host: Host, path: str) -> str:
    return host.run(["cat", path]).stdout.strip()


def cgroup_of(host: Host, pid: int, controller: str) -> str:
    for line in host.run(["cat", f"/proc/{pid}/cgroup"]).stdout.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"process {pid} has no {controller} cgroup")


def assert_nothing_made(daemon: Daemon, name: str) -> None:
    host = daemon.host
    with pytest.raises(NotFoundError):
        daemon.call("get", name=name)
    pods = host.run(["podman", "pod", "ps", "-q", "--filter", f"label=io.github.iyclo.pod={name}"])
    assert pods.stdout.strip() == ""
    units = host.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "iyclo[-_]*"])
    assert f"iyclo-pod-{name}.service" not in units.stdout
    assert naming.slice_name(name) not in units.stdout  # iyclo_sbx\x2drefused.slice


# -- the container layer: what a manifest gets without asking ------------------------------


@pytest.fixture(scope="module")
def defaults(daemon: Daemon) -> Iterator[str]:
    """A pod of default containers, one re-granting iyclo's baseline drops, one with a
    custom seccomp profile that denies mkdir."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    profile["syscalls"].append(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    )
    seccomp_dir = daemon.host.root / "iyclo" / "seccomp"  # /var/lib/iyclo/seccomp inside
    seccomp_dir.mkdir(exist_ok=True)
    (seccomp_dir / "deny-mkdir.json").write_text(json.dumps(profile))
    manifest = pod(
        "sbx-defaults",
        {"name": "plain"},
        {"name": "regrant", "security": {"capAdd": ["SETPCAP", "SETFCAP", "SYS_CHROOT"]}},
        {"name": "nomkdir", "security": {"seccompProfile": PROFILE}},
    )  # fmt: skip
    try:
        assert apply(daemon, manifest)["state"] == "running"
        yield "iyclo-sbx-defaults-g1"
    finally:
        remove(daemon, "sbx-defaults")
        (seccomp_dir / "deny-mkdir.json").unlink()


def test_default_capabilities_no_new_privileges_and_seccomp(daemon: Daemon, defaults: str) -> None:
    status = proc_status(daemon.host, naming.container_name(defaults, "plain"))
    assert int(status["CapEff"], 16) == IYCLO_DEFAULT_CAPS
    assert int(status["CapBnd"], 16) == IYCLO_DEFAULT_CAPS
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # Podman's default profile, in filter mode
    # Podman's masked and read-only paths
    masked = sh(
        daemon.host,
        naming.container_name(defaults, "plain"),
        "wc -c < /proc/keys; ls -A /sys/firmware",
    )
    assert masked.split() == ["0"]  # /proc/keys reads as /dev/null, /sys/firmware is empty
    mounts = sh(
        daemon.host, naming.container_name(defaults, "plain"), "cat /proc/mounts"
    ).splitlines()
    assert any(m.split()[1] == "/proc/sys" and "ro" in m.split()[3].split(",") for m in mounts)
    # capAdd of the baseline drops gives back exactly Podman's default set
    regrant = proc_status(daemon.host, naming.container_name(defaults, "regrant"))
    assert int(regrant["CapEff"], 16) == PODMAN_DEFAULT_CAPS


def test_custom_seccomp_profile_denies_its_syscall(daemon: Daemon, defaults: str) -> None:
    status = proc_status(daemon.host, naming.container_name(defaults, "nomkdir"))
    assert status["Seccomp"] == "2"
    denied = sh(
        daemon.host,
        naming.container_name(defaults, "nomkdir"),
        "mkdir /tmp/d; echo rc=$?",
        check=False,
    )
    assert "Operation not permitted" in denied
    assert "rc=1" in denied
    allowed = sh(daemon.host, naming.container_name(defaults, "plain"), "mkdir /tmp/d && echo made")
    assert allowed.strip() == "made"


def test_pod_and_its_containers_live_in_the_pod_slice(daemon: Daemon, defaults: str) -> None:
    host = daemon.host
    slice_path = "/iyclo_sbx\\x2ddefaults.slice/"
    unit = unit_show(host, "iyclo-pod-sbx-defaults.service", "Slice", "MainPID")
    assert unit["Slice"] == "iyclo_sbx\\x2ddefaults.slice"
    main_pid = inspect(host, naming.container_name(defaults, "plain"))["State"]["Pid"]
    for controller in ("memory", "pids", "cpu"):
        assert cgroup_of(host, main_pid, controller).startswith(slice_path)
        assert cgroup_of(host, int(unit["MainPID"]), controller).startswith(slice_path)


# -- the container layer: every setting of a locked-down pod --------------------------------


LOCKED_SYSTEMD = {
    "protectClock": True, "restrictRealtime": True, "lockPersonality": True,
    "restrictSuidSgid": True,
    "memoryMax": "200M", "memoryHigh": "150M", "cpuQuota": "150%", "tasksMax": 64,
    "ioWeight": 300, "cpuWeight": 50,
}  # fmt: skip


@pytest.fixture(scope="module")
def locked(daemon: Daemon) -> Iterator[str]:
    manifest = pod(
        "sbx-locked",
        {
            "name": "box",
            "user": "1000:1000",
            "resources": {"cpus": 0.5, "memory": "48M", "memorySwap": "64M", "pids": 40,
                          "ulimits": {"nofile": "512:1024", "nproc": "200:300"}},
            "security": {"capDrop": ["KILL"], "capAdd": ["SYS_CHROOT"], "readOnlyRootfs": True,
                         "maskedPaths": ["/proc/cpuinfo"]},
        },
        userns={"hostId": USERNS_BASE},
        systemd=LOCKED_SYSTEMD,
    )  # fmt: skip
    try:
        assert apply(daemon, manifest)["state"] == "running"
        yield "iyclo-sbx-locked-g1_box"
    finally:
        remove(daemon, "sbx-locked")


def test_user_and_user_namespace(daemon: Daemon, locked: str) -> None:
    host = daemon.host
    assert sh(host, locked, "id -u; id -g").split() == ["1000", "1000"]
    uid_map = ["0", str(USERNS_BASE), "65536"]
    assert sh(host, locked, "cat /proc/self/uid_map").split() == uid_map
    # on the host, the container's user 1000 is 2^31 + 1000: not a host user at all
    pid = inspect(host, locked)["State"]["Pid"]
    uids = read(host, f"/proc/{pid}/status").split("Uid:")[1].split()[:4]
    assert uids == [str(USERNS_BASE + 1000)] * 4


def test_capabilities_of_a_non_root_user(daemon: Daemon, locked: str) -> None:
    status = proc_status(daemon.host, locked)
    assert int(status["CapBnd"], 16) == (IYCLO_DEFAULT_CAPS & ~CAP_KILL) | CAP_SYS_CHROOT
    # user 1000 gets none of the default set, only what capAdd asked for (Podman grants
    # added capabilities to a non-root user too, as ambient ones)
    assert int(status["CapEff"], 16) == CAP_SYS_CHROOT
    assert status["NoNewPrivs"] == "1"


def test_container_limits_in_its_cgroup(daemon: Daemon, locked: str) -> None:
    values = sh(
        daemon.host, locked,
        "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes "
        "cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us pids/pids.max",
    ).split()  # fmt: skip
    assert values == [str(48 * 2**20), str(64 * 2**20), "50000", "100000", "40"]
    limits = sh(daemon.host, locked, "cat /proc/1/limits")
    assert "Max open files            512                  1024" in limits
    assert "Max processes             200                  300" in limits


def test_read_only_rootfs_with_writable_tmpfs_and_masked_path(daemon: Daemon, locked: str) -> None:
    out = sh(daemon.host, locked, "touch /probe; echo rc=$?", check=False)
    assert "Read-only file system" in out
    assert "rc=1" in out
    writable = sh(
        daemon.host, locked, "for d in /tmp /var/tmp /run; do touch $d/p && echo $d; done"
    )
    assert writable.split() == ["/tmp", "/var/tmp", "/run"]
    assert sh(daemon.host, locked, "wc -c < /proc/cpuinfo").strip() == "0"


# -- the unit and slice layer --------------------------------------------------------------


def test_unit_sandboxing_and_slice_limits(daemon: Daemon, locked: str) -> None:
    host = daemon.host
    directives = ("ProtectClock", "RestrictRealtime", "LockPersonality", "RestrictSUIDSGID")
    unit = unit_show(host, "iyclo-pod-sbx-locked.service", *directives, "MainPID", "ActiveState")
    assert unit.pop("ActiveState") == "active"
    main_pid = unit.pop("MainPID")
    assert unit == dict.fromkeys(directives, "yes")
    # the directives act on the running podman/conmon: systemd's seccomp filters are there
    conmon = read(host, f"/proc/{main_pid}/status")
    assert "Seccomp:\t2" in conmon
    sl = "iyclo_sbx\\x2dlocked.slice"
    assert unit_show(host, sl, "MemoryMax", "MemoryHigh", "CPUQuotaPerSecUSec", "TasksMax",
                "IOWeight", "CPUWeight") == {
        "MemoryMax": str(200 * 2**20), "MemoryHigh": str(150 * 2**20),
        "CPUQuotaPerSecUSec": "1.500000s", "TasksMax": "64", "IOWeight": "300", "CPUWeight": "50",
    }  # fmt: skip
    base = "/sys/fs/cgroup/{}/" + sl + "/{}"
    assert read(host, base.format("memory", "memory.limit_in_bytes")) == str(200 * 2**20)
    assert read(host, base.format("cpu", "cpu.cfs_quota_us")) == "150000"
    assert read(host, base.format("cpu", "cpu.shares")) == "512"  # CPUWeight 50 on cgroup v1
    assert read(host, base.format("pids", "pids.max")) == "64"


def test_slice_limits_change_in_place(daemon: Daemon, tmp_path: Path) -> None:
    host = daemon.host
    name, sl = "sbx-live", "iyclo_sbx\\x2dlive.slice"
    manifest = pod(name, {"name": "main"}, systemd={"memoryMax": "100M", "tasksMax": 30})
    memory = f"/sys/fs/cgroup/memory/{sl}/memory.limit_in_bytes"
    pids = f"/sys/fs/cgroup/pids/{sl}/pids.max"
    try:
        apply(daemon, manifest)
        before = inspect(host, "iyclo-sbx-live-g1_main")
        manifest["systemd"] = {"memoryMax": "150M", "cpuQuota": "50%"}
        path = tmp_path / "live.json"
        path.write_text(json.dumps(manifest))
        cli = daemon.cli("apply", "-f", str(path))
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == "pod/sbx-live configured (generation 2, updated in place)"
        assert read(host, memory) == str(150 * 2**20)
        assert read(host, pids) == "max"  # the dropped tasksMax is lifted
        after = inspect(host, "iyclo-sbx-live-g1_main")
        assert after["Id"] == before["Id"]
        assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
        status = daemon.call("get", name=name)
        assert (status["generation"], status["podmanPod"]) == (2, "iyclo-sbx-live-g1")
        assert [c["id"] for c in status["containers"]] == [before["Id"]]
        # the new limits outlive a restart: every start builds the slice from the manifest
        daemon.call("restart", name=name)
        assert read(host, memory) == str(150 * 2**20)
        # A container's own limit: Podman 5.4 keeps `podman update`, so the running container
        # takes it and keeps it across a restart; Podman 4.3 would forget it: a new pod.
        manifest["containers"][0]["resources"] = {"memory": "32M"}
        result = apply(daemon, manifest)
        if podman_major(host) >= 5:
            assert (result["generation"], result["state"]) == (3, "updated in place")
            updated = inspect(host, "iyclo-sbx-live-g1_main")
            assert updated["Id"] == before["Id"]
            assert updated["HostConfig"]["Memory"] == 32 * 2**20  # stored by Podman
            own = cgroup_of(host, updated["State"]["Pid"], "memory")
            limit = f"/sys/fs/cgroup/memory{own}/memory.limit_in_bytes"
            assert read(host, limit) == str(32 * 2**20)  # and in force
            daemon.call("restart", name=name)
            restarted = inspect(host, "iyclo-sbx-live-g1_main")
            assert restarted["State"]["StartedAt"] != updated["State"]["StartedAt"]
            assert restarted["HostConfig"]["Memory"] == 32 * 2**20
            own = cgroup_of(host, restarted["State"]["Pid"], "memory")
            assert read(host, f"/sys/fs/cgroup/memory{own}/memory.limit_in_bytes") == str(
                32 * 2**20
            )
        else:
            assert (result["generation"], result["state"]) == (3, "running")
            replaced = inspect(host, "iyclo-sbx-live-g3_main")
            assert replaced["HostConfig"]["Memory"] == 32 * 2**20
        assert read(host, memory) == str(150 * 2**20)
    finally:
        remove(daemon, name)
    assert "sbx\\x2dlive" not in host.run(["systemctl", "list-units", "--all", "iyclo[-_]*"]).stdout


def test_memory_hog_is_oom_killed_and_shown_in_status(daemon: Daemon) -> None:
    host = daemon.host
    hog = ["sh", "-c", "sleep 1; x=a; while :; do x=$x$x; done"]
    manifest = pod(
        "sbx-hog",
        {"name": "hog", "command": hog, "resources": {"memory": "16M", "memorySwap": "16M"}},
        {"name": "calm"},
    )
    try:
        apply(daemon, manifest)

        def killed() -> dict[str, Any] | None:
            status: dict[str, Any] = daemon.call("get", name="sbx-hog")
            rows = {c["name"]: c for c in status["containers"]}
            return status if rows["hog"]["oomKilled"] else None

        status = wait_for(killed, timeout=30, what="the hog's OOM kill in status")
        rows = {c["name"]: c for c in status["containers"]}
        assert rows["hog"]["oomKills"] == 1
        assert (rows["calm"]["oomKilled"], rows["calm"]["oomKills"]) == (False, 0)
        # the kernel killed it: exit 137, the cgroup limit it ran under, the unit failed
        wait_for(lambda: inspect(host, "iyclo-sbx-hog-g1_hog")["State"]["Status"] == "exited",
                 timeout=30, what="the hog to exit")  # fmt: skip
        assert inspect(host, "iyclo-sbx-hog-g1_hog")["State"]["ExitCode"] == 137
        unit = wait_for(
            lambda: (u := unit_show(host, "iyclo-pod-sbx-hog.service", "ActiveState",
                               "ExecMainStatus"))["ActiveState"] == "failed" and u,
            timeout=30, what="the unit to fail",
        )  # fmt: skip
        assert unit["ExecMainStatus"] == "137"
        wait_for(lambda: daemon.call("get", name="sbx-hog")["state"] == "failed",
                 timeout=30, what="status to follow the unit")  # fmt: skip
    finally:
        remove(daemon, "sbx-hog")


# -- refused settings ----------------------------------------------------------------------

REFUSED = [
    ({"containers": [{"name": "a", "security": {"privileged": True}}]},
     "containers[0].security.privileged: refused: the daemon does not allow privileged "
     "containers"),
    ({"containers": [{"name": "a", "security": {"seccompProfile": "unconfined"}}]},
     'containers[0].security.seccompProfile: refused: "unconfined" is not allowed by the daemon'),
    ({"containers": [{"name": "a", "security": {"seccompProfile": "/tmp/p.json"}}]},
     'containers[0].security.seccompProfile: refused: "/tmp/p.json" is outside the allowed '
     "profile directories (/etc/iyclo/seccomp, /var/lib/iyclo/seccomp)"),
    ({"containers": [{"name": "a", "security": {"capAdd": ["SYS_ADMIN"]}}]},
     'containers[0].security.capAdd[0]: refused: "SYS_ADMIN" is beyond Docker\'s default '
     "capability set and not allowed by the daemon"),
    ({"containers": [{"name": "a", "volumes": [{"source": "/etc", "target": "/e"}]}]},
     'containers[0].volumes[0].source: refused: host path "/etc" is outside the allowed roots '
     "(/srv, /var/lib/iyclo/volumes)"),
    ({"containers": [{"name": "a", "volumes": [{"source": "/opt", "target": "/o"}]}]},
     'containers[0].volumes[0].source: refused: host path "/opt" is outside the allowed roots '
     "(/srv, /var/lib/iyclo/volumes)"),
    ({"containers": [{"name": "a", "security": {
        "seccompProfile": "/etc/iyclo/seccomp/../../../srv/x/allow.json"}}]},
     'containers[0].security.seccompProfile: refused: "/etc/iyclo/seccomp/../../../srv/x/'
     'allow.json" has a ".." component'),
    ({"userns": {"hostId": 1000}},
     "userns.hostId: refused: host IDs 1000-66535 are outside the ranges the daemon allows "
     "(2147483648-4294967294)"),
    ({"labels": {"PODMAN_SYSTEMD_UNIT": "sshd.service"}},
     'labels.PODMAN_SYSTEMD_UNIT: refused: "PODMAN_SYSTEMD_UNIT" is a key Podman acts on'),
    ({"labels": {"io.containers.autoupdate": "registry"}},
     'labels["io.containers.autoupdate"]: refused: "io.containers.autoupdate" uses the prefix '
     '"io.containers.", which Podman or Docker-compatible tools act on'),
    ({"network": "host"}, 'network: refused: "host" is not allowed by the daemon'),
    ({"systemd": {"protectHostname": True}},
     "systemd.protectHostname: refused: it forbids sethostname(), which runc calls to name "
     "each container"),
    ({"systemd": {"protectKernelTunables": True}},
     "systemd.protectKernelTunables: refused: netavark writes /proc/sys (e.g. ip_forward) to set "
     "up the pod network"),
    ({"systemd": {"protectHome": "yes"}},
     "systemd.protectHome: refused: it gives podman a private mount namespace, which hides the "
     "pod's network namespace (/run/netns) from Podman's API"),
    ({"systemd": {"privateNetwork": True}},
     "systemd.privateNetwork: refused: it would cut podman off from the network it sets up for "
     "the pod"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), REFUSED, ids=[m.split(":")[0] for _, m in REFUSED])
def test_refused_settings_create_nothing(
    daemon: Daemon, change: dict[str, Any], message: str
) -> None:
    manifest = pod("sbx-refused", {"name": "a"})
    if "containers" in change:
        change = {
            **change,
            "containers": [{**manifest["containers"][0], **change["containers"][0]}],
        }
    manifest.update(change)
    with pytest.raises(InvalidError) as info:
        apply(daemon, manifest)
    assert info.value.message == message
    assert_nothing_made(daemon, "sbx-refused")


@pytest.mark.parametrize("link", ["sbx-root", "sbx-dir/root"])
def test_a_symlink_under_an_allowed_root_mounts_nothing(daemon: Daemon, link: str) -> None:
    """A container that may write under /var/lib/iyclo/volumes plants a link to /; a mount of
    it, or of a path through it, would hand another pod the host's /."""
    volumes = daemon.host.root / "iyclo" / "volumes"  # /var/lib/iyclo/volumes inside
    planted = volumes / link
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to("/")
    source = f"/var/lib/iyclo/volumes/{link}"
    try:
        for path, line in [
            (source, f'"{source}" is a symbolic link'),
            (f"{source}/etc", f'"{source}/etc" goes through the symbolic link "{source}"'),
        ]:
            manifest = pod("sbx-link", {"name": "a", "volumes": [{"source": path, "target": "/h"}]})
            with pytest.raises(InvalidError) as info:
                apply(daemon, manifest)
            assert info.value.details == [f"containers[0].volumes[0].source: refused: {line}"]
            assert daemon.call("validate", manifest=json.dumps(manifest)) == info.value.details
            assert_nothing_made(daemon, "sbx-link")
    finally:
        planted.unlink()
        if planted.parent != volumes:
            planted.parent.rmdir()


def test_protect_hostname_really_breaks_podman(daemon: Daemon) -> None:
    """The refusal's reason, measured: systemd's filter reaches runc's sethostname()."""

    def run_with(directive: str) -> subprocess.CompletedProcess[str]:
        argv = ["systemd-run", "--pipe", "--wait", "--collect", "--quiet", "-p", directive,
                "podman", "run", "--rm", "--network=none", IMAGE, "true"]  # fmt: skip
        return daemon.host.run(argv, check=False, timeout=60)

    broken = run_with("ProtectHostname=yes")
    assert broken.returncode != 0
    assert "sethostname: operation not permitted" in broken.stderr
    assert run_with("ProtectClock=yes").returncode == 0  # an accepted one, for contrast


def test_refused_setting_on_the_cli(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "priv.json"
    path.write_text(json.dumps(pod("sbx-priv", {"name": "a", "security": {"privileged": True}})))
    result = daemon.cli("apply", "-f", str(path))
    assert result.returncode == 2
    assert "containers[0].security.privileged: refused" in result.stderr
    assert_nothing_made(daemon, "sbx-priv")


def test_the_daemon_config_allows_what_defaults_refuse(daemon: Daemon) -> None:
    """An operator's config file and flags loosen the policy, and only they do."""
    host = daemon.host
    config = host.root / "iyclo" / "sbx-policy.json"  # /var/lib/iyclo/sbx-policy.json inside
    config.write_text(json.dumps({"policy": {"allowHostNetwork": True}}))
    manifest = pod("sbx-hostnet", {"name": "a"}, network="host")
    try:
        daemon.stop()
        with pytest.raises(AssertionError, match="no such file"):
            daemon.start("--config", "/var/lib/iyclo/absent.json")
        daemon.stop()
        daemon.start("--config", "/var/lib/iyclo/sbx-policy.json", "--allow-cap", "SYS_PTRACE")
        assert apply(daemon, manifest)["state"] == "running"
        pid = inspect(host, "iyclo-sbx-hostnet-g1_a")["State"]["Pid"]
        netns = [host.run(["readlink", f"/proc/{p}/ns/net"]).stdout for p in (1, pid)]
        assert netns[0] == netns[1]  # the host's network namespace
        ptrace = pod("sbx-ptrace", {"name": "a", "security": {"capAdd": ["SYS_PTRACE"]}})
        assert daemon.call("validate", manifest=json.dumps(ptrace)) == []
    finally:
        remove(daemon, "sbx-hostnet")
        daemon.stop()
        config.unlink()
        daemon.start()
    with pytest.raises(InvalidError, match="is not allowed by the daemon"):
        apply(daemon, manifest)
