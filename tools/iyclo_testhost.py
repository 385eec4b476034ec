#!/usr/bin/env python3
"""A real systemd + Podman host for tests, booted inside private namespaces.

Why this exists: iyclo supervises Podman pods through systemd transient units, and the only
honest test of that is a real systemd and a real Podman. The machines the tests run on do
not run systemd as PID 1, so this module boots one: `unshare` gives new PID, mount, network,
UTS, IPC and cgroup namespaces, a small shell script prepares the mounts, and
`/lib/systemd/systemd` becomes PID 1 there. The host side reaches inside with `nsenter`
(commands) and through `/proc/<pid>/root/...` (files and unix sockets: the system bus and the
Podman API socket).

What is private to a host, and why:
- `/run`, `/tmp`, `/var/tmp` and `/dev/shm` (Podman's lock table) are fresh tmpfs each boot.
  `/tmp` must be mounted *before* systemd starts: `systemd-tmpfiles --boot` would otherwise
  empty the machine's real `/tmp`.
- `/etc/systemd/system`, `/etc/dbus-1/system.d` and `/etc/containers` are tmpfs filled from
  files staged under `root/boot/` on every boot, so the machine's real `/etc` is never edited.
  (`/etc/containers/containers.conf` does not exist on Debian, so a file bind mount over it
  would have to create it in the real `/etc`; the whole directory is overlaid instead.)
- `/var/lib/containers`, `/var/lib/iyclo` and `/etc/containers/networks` are bind mounts of
  directories under `root/`: they survive a "reboot" (kill the host, boot another on the same
  root) like a disk does, while `/run` does not, so Podman sees a real reboot. So is
  `/var/lib/systemd/timers`, where systemd keeps `Persistent=` timers' last trigger times:
  without it they would land on the machine's real disk and be shared by every host.
- The network namespace is private, so netavark's bridge and iptables rules never touch the
  machine's network. Never send test traffic to the 10.88.0.0/16 bridge anyway.
- Each host gets its own cgroup (`iyclo-testhost.<name>`) under the launching process's cgroup
  in every hierarchy, so two hosts booted at once do not manage the same `system.slice`, and
  a cgroup namespace rooted there, so systemd sees itself at "/" in every hierarchy. It also
  gets a private `/sys/fs/cgroup` tmpfs: systemd remounts that read-only, which on the
  machine's shared tmpfs would make it read-only for everyone.
- UTS is private because systemd sets the hostname from `/etc/hostname` at boot.
- Units and generators that would write to the machine's real `/etc`, `/var`, `/dev` or
  kernel settings (sysusers, ldconfig, sysctl, binfmt, tmpfiles cleaning, the SysV generator
  that would start the machine's own services, ...) are masked; journald is volatile.

Only the standard library is imported: the CLI must start fast and the module must be usable
before any of iyclo's dependencies are.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "BUSYBOX_APPLETS",
    "DEFAULT_BASE",
    "DEFAULT_NAME",
    "Host",
    "HostCommandError",
    "TestHostError",
    "TestHostUnavailable",
    "boot",
    "busybox_rootfs_tar",
    "check_available",
    "default_root",
    "ensure_busybox_image",
    "main",
]

DEFAULT_NAME: Final = "iyclo-testhost"
DEFAULT_BASE: Final = Path("/var/lib/iyclo-testhost")
SYSTEMD: Final = Path("/lib/systemd/systemd")
BUSYBOX: Final = Path("/bin/busybox")
PODMAN_SOCKET: Final = "/run/podman/podman.sock"
SYSTEM_BUS_SOCKET: Final = "/run/dbus/system_bus_socket"

# A clean, predictable environment for commands run inside: the caller's environment (pytest's
# TMPDIR, a venv's PATH, XDG_RUNTIME_DIR, ...) means nothing in there.
INNER_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

BUSYBOX_APPLETS: Final = (
    "sh", "ash", "sleep", "httpd", "cat", "echo", "id", "ls", "grep", "wget", "nc", "true",
    "false", "env", "ps", "kill", "killall", "touch", "mkdir", "rm", "cp", "mv", "ln", "dd",
    "head", "tail", "yes", "printf", "test", "[", "date", "hostname", "ip", "ping", "top",
    "free", "df", "du", "mount", "umount", "stat", "wc", "sed", "awk", "tr", "cut", "sort",
    "uniq", "find", "xargs", "vi", "tee", "timeout", "chmod", "chown", "pwd", "basename",
    "dirname", "uname", "whoami", "nslookup", "netstat", "seq", "expr", "readlink", "realpath",
    "md5sum", "sha256sum", "base64", "gzip", "gunzip", "tar", "which", "nohup", "watch",
    "usleep", "ifconfig", "route", "hexdump", "od", "less", "more", "diff", "sync", "trap",
)  # fmt: skip

# Units that must not run in a test host: each would write to the machine's real /etc, /var,
# /dev or kernel settings (the namespaces do not isolate those), or fails without a console.
MASKED_UNITS: Final = (
    "systemd-sysusers.service",  # adds users to the real /etc/passwd
    "ldconfig.service",  # rewrites the real /etc/ld.so.cache
    "systemd-update-done.service",  # writes /etc/.updated and /var/.updated
    "systemd-hwdb-update.service",  # writes /etc/udev/hwdb.bin
    "systemd-journal-catalog-update.service",  # writes /var/lib/systemd/catalog
    "systemd-tmpfiles-setup-dev.service",  # creates nodes in the shared /dev
    "kmod-static-nodes.service",  # same
    "systemd-tmpfiles-clean.timer",  # ages out files in the real /var (e.g. /var/cache/man)
    "systemd-sysctl.service",  # kernel.*/vm.* sysctls are machine-wide
    "systemd-binfmt.service",  # binfmt_misc registrations are machine-wide
    "systemd-modules-load.service",  # kernel modules are machine-wide
    "systemd-random-seed.service",  # writes /var/lib/systemd/random-seed
    "systemd-update-utmp.service",  # writes the real /var/log/wtmp
    "systemd-update-utmp-runlevel.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-repart.service",
    "getty.target",  # no terminal: /dev/console is a log file here
    "console-getty.service",
)

# systemd-tmpfiles-setup.service normally runs `--create --remove --boot` over the whole tree,
# which deletes e.g. /etc/passwd.lock and empties /var/lib/cni/networks on the real disk. Keep
# it to the filesystems that belong to the test host.
TMPFILES_DROPIN: Final = """\
# Written by iyclo_testhost: only touch filesystems private to the test host.
[Service]
ExecStart=
ExecStart=systemd-tmpfiles --create --remove --boot --prefix=/run --prefix=/tmp \
--prefix=/var/tmp --prefix=/var/lib/containers --prefix=/var/lib/iyclo
"""

JOURNALD_CONF: Final = """\
# Written by iyclo_testhost: keep the journal in the private /run, never in /var/log/journal.
[Journal]
Storage=volatile
"""

CONTAINERS_CONF: Final = """\
# Written by iyclo_testhost.
[containers]
# The sandbox lacks CAP_SYS_RESOURCE and caps nofile at 20000: Podman's defaults fail there.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
# crun 1.8 refuses hybrid cgroups; runc works.
runtime = "runc"
cgroup_manager = "systemd"
"""

# Mounts every cgroup hierarchy this process is in (cgroup v1 "hybrid" or v2) on a private
# /sys/fs/cgroup, so that the work below happens in the caller's private mount namespace. v1
# hierarchies mounted again with the same controllers are the same hierarchies. A private
# tmpfs matters: systemd as PID 1 creates mount points in /sys/fs/cgroup and remounts it
# read-only, which on the machine's own tmpfs would turn it read-only for everyone.
CGROUP_MOUNT_FN: Final = r"""
cgroup_mount_all() {
    if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
        return
    fi
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
    while IFS=: read -r _ ctrl _path; do
        dir=$(cgroup_dir "$ctrl")
        mkdir -p "$dir"
        case "$ctrl" in
            "") mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$dir" ;;
            name=*) mount -t cgroup -o nosuid,nodev,noexec,none,"$ctrl" cgroup "$dir" ;;
            *) mount -t cgroup -o nosuid,nodev,noexec,"$ctrl" cgroup "$dir" ;;
        esac
    done < /proc/self/cgroup
}
cgroup_dir() {
    if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then echo /sys/fs/cgroup; return; fi
    case "$1" in
        "") echo /sys/fs/cgroup/unified ;;
        name=*) echo "/sys/fs/cgroup/${1#name=}" ;;
        *) echo "/sys/fs/cgroup/$1" ;;
    esac
}
"""

# Runs as PID 1 of the new namespaces until it execs systemd, in two steps, each staged as
# a file under root/boot/ (readable in `ps` and on disk). Arguments: name, root. Order
# matters: /run and /tmp first (see the module docstring).
#
# Step one makes the host's own cgroup (see `_cgroup_specs`) in every hierarchy, including v1
# ones the machine never mounted (here hugetlb, perf_event, net_cls), and joins it. Step two
# runs in a new cgroup namespace rooted there and mounts the hierarchies again: systemd then
# sees itself at "/" in every hierarchy. Without that, systemd assumes its path in the
# name=systemd hierarchy holds in all of them, which is false here (this sandbox puts
# processes in /process_api/<id> of the memory hierarchy only), and `MemoryMax=` on a unit
# silently does nothing.
SETUP_SCRIPT: Final = (
    CGROUP_MOUNT_FN
    + r"""
set -eu
name=$1 root=$2 rootfs=$3  # rootfs "": the host runs on the machine's own filesystem
tab=$(printf '\t')
# Bind sources are staged first: a checkout under /tmp is hidden once the host's /tmp is up.
n=0
while IFS=$tab read -r src dst; do
    mkdir -p "$root/boot/binds/$n"
    mount --rbind "$src" "$root/boot/binds/$n"
    n=$((n + 1))
done < "$root/boot/binds.tsv"
R=$rootfs
if [ -n "$R" ]; then mount --bind "$R" "$R"; fi  # pivot_root and containers/storage need it
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/var/tmp"
cgroup_mount_all
while IFS=: read -r _ ctrl path; do
    parent=$(cgroup_dir "$ctrl")${path%/}
    own=$parent/iyclo-testhost.$name
    mkdir "$own"
    for knob in cpuset.cpus cpuset.mems; do  # v1 cpuset starts empty: no task could join
        if [ -f "$parent/$knob" ]; then cat "$parent/$knob" > "$own/$knob"; fi
    done
    echo $$ > "$own/cgroup.procs"
done < /proc/self/cgroup
umount -R /sys/fs/cgroup
exec unshare --cgroup sh "$root/boot/setup-2.sh" "$name" "$root" "$rootfs"
"""
)

# Step two. On the machine's filesystem, private overlays and bind mounts (see the module
# docstring). On a fresh root, only the kernel's /sys (with the private cgroup tree just
# mounted on it) and /dev come from the machine; then `pivot_root`, not `chroot`: under a
# chroot, /proc/PID/exe of a process in a nested mount namespace reads as the path outside
# the root, and a test host booted inside would look as if its systemd never started.
SETUP_SCRIPT_2: Final = (
    CGROUP_MOUNT_FN
    + r"""
set -eu
name=$1 root=$2 rootfs=$3
tab=$(printf '\t')
cgroup_mount_all
R=$rootfs
if [ -z "$R" ]; then
    mount -t proc -o nosuid,nodev,noexec proc /proc
    overlay_dir() {
        mount -t tmpfs -o mode=0755 tmpfs "$2"
        cp -a "$1/." "$2/"
    }
    overlay_dir "$root/boot/run" /run
    overlay_dir "$root/boot/systemd-system" /etc/systemd/system
    overlay_dir "$root/boot/dbus-system.d" /etc/dbus-1/system.d
    overlay_dir "$root/boot/containers-etc" /etc/containers
    overlay_dir "$root/boot/empty" /etc/iyclo
    overlay_dir "$root/boot/empty" /usr/local/share/dbus-1/system-services
    overlay_dir "$root/boot/polkit-actions" /usr/share/polkit-1/actions
    overlay_dir "$root/boot/polkit-rules" /etc/polkit-1/rules.d
    mount --bind "$root/containers-networks" /etc/containers/networks
    mount --bind "$root/containers" /var/lib/containers
    mount --bind "$root/iyclo" /var/lib/iyclo
    mount --bind "$root/systemd-timers" /var/lib/systemd/timers
    # journalctl would also read the machine's persistent journal (same machine id): hide it.
    if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=0755 tmpfs /var/log/journal; fi
else
    mount --rbind /sys "$R/sys"
    mount --rbind /dev "$R/dev"
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
fi
# Podman keeps its lock table (2048 locks) in /dev/shm: shared, a few hosts' pods exhaust it
# ("allocating lock for new pod: exceeded num_locks") and one host's leftovers block another's.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount --bind "$root/boot/console.log" "$R/dev/console"
n=0
while IFS=$tab read -r src dst; do
    mkdir -p "$R$dst"
    mount --rbind "$root/boot/binds/$n" "$R$dst"
    n=$((n + 1))
done < "$root/boot/binds.tsv"
ip link set lo up 2>/dev/null || busybox ip link set lo up
export container="$name"
if [ -n "$R" ]; then
    cd "$R"
    mkdir -p .oldroot
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
fi
exec /lib/systemd/systemd --system --unit=multi-user.target
"""
)

# Run in a private mount namespace after a host died: removes its cgroup trees, bottom-up.
# Arguments: "controllers:path" specs as in /proc/<pid>/cgroup. Exits 1 if one stays busy.
CGROUP_CLEANUP_SCRIPT: Final = (
    CGROUP_MOUNT_FN
    + r"""
set -u
cgroup_mount_all
rc=0
for spec in "$@"; do
    top=$(cgroup_dir "${spec%%:*}")${spec#*:}
    tries=0
    while [ -d "$top" ]; do
        find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
        tries=$((tries + 1))
        if [ -d "$top" ] && [ $tries -ge 100 ]; then echo "busy: $top"; rc=1; break; fi
        if [ -d "$top" ]; then sleep 0.02; fi
    done
done
exit $rc
"""
)

# Run in a private mount namespace by a command about to enter a host: joins the host's
# cgroups ("controllers:path" specs, then "--"), then execs the rest.
JOIN_CGROUPS_SCRIPT: Final = (
    CGROUP_MOUNT_FN
    + r"""
set -eu
cgroup_mount_all
while [ "$1" != "--" ]; do
    echo $$ > "$(cgroup_dir "${1%%:*}")${1#*:}/cgroup.procs"
    shift
done
shift
exec "$@"
"""
)

GENERATOR_DIRS: Final = (
    Path("/lib/systemd/system-generators"),
    Path("/usr/local/lib/systemd/system-generators"),
)
SUITES: Final = {"bookworm": "Debian 12", "trixie": "Debian 13"}
"""Debian releases a fresh root can be made of (`boot(suite=...)`)."""
FRESH_PACKAGES: Final = "systemd,systemd-sysv,dbus,python3,git,ca-certificates"
"""What a newcomer's minimal Debian has before the README's commands: a booting systemd and
git to clone with. Everything else must come from the project's own install steps."""
CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
POLKIT_DIRS: Final = ("/usr/share/polkit-1/actions", "/etc/polkit-1/rules.d")
# Passed into a fresh root's commands so its apt and pip reach the package registries the
# way the machine does (through its proxy, trusting its CA bundle, copied in at boot).
NETWORK_ENV: Final = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                      "NO_PROXY", "PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")  # fmt: skip
# Units of a fresh root that would act on what it shares with the machine: the kernel's
# settings, /dev, and the console.
FRESH_MASKED_UNITS: Final = (
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-firstboot.service",
    "getty.target",
    "console-getty.service",
)
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HIDDEN_PREFIXES: Final = ("/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev")


class TestHostError(RuntimeError):
    """The test host could not be booted, reached, or torn down."""

    __test__ = False


class TestHostUnavailable(TestHostError):
    """This machine cannot boot a test host at all; `str()` is a one-line reason to skip."""

    __test__ = False


class HostCommandError(TestHostError):
    """A command run inside the host failed; the message carries argv, exit code and stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = why or f"exit code {returncode}"
        detail = stderr.strip() or stdout.strip() or "(no output)"
        super().__init__(f"command {_quote(argv)} failed in test host: {what}: {detail}")


@dataclasses.dataclass(frozen=True)
class _Record:
    """What `root/host.json` holds so another process can attach to and tear down a host."""

    name: str
    pid: int
    unshare_pid: int
    pid_ns: str
    cgroups: tuple[str, ...]
    suite: str = ""  # a fresh root of this Debian release; "" for the machine's filesystem
    slirp_pid: int = 0  # a fresh root's user-mode network (slirp4netns), 0 if none

    @classmethod
    def load(cls, path: Path) -> _Record:
        data = json.loads(path.read_text())
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            unshare_pid=int(data["unshare_pid"]),
            pid_ns=str(data["pid_ns"]),
            cgroups=tuple(str(c) for c in data["cgroups"]),
            suite=str(data.get("suite", "")),
            slirp_pid=int(data.get("slirp_pid", 0)),
        )

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)


class Host:
    """A running test host: systemd as PID 1 of private namespaces, with Podman configured.

    Named `Host`, not `TestHost`, so pytest never tries to collect it from a test module.
    Create one with `boot()` or `Host.attach()` (not directly); end it with `shutdown()` or a
    `with` block. `boot_seconds` and `boot_state` ("running" or "degraded") describe the boot
    of a host made by `boot()`.
    """

    def __init__(
        self,
        root: Path,
        record: _Record,
        process: subprocess.Popen[bytes] | None = None,
        boot_seconds: float | None = None,
    ) -> None:
        self.root = root
        self.name = record.name
        self.pid = record.pid
        self.boot_seconds = boot_seconds
        self.boot_state = ""
        self._record = record
        self._process = process
        self._down = False

    # -- addresses -------------------------------------------------------------------------

    def path(self, p: str) -> Path:
        """Where path `p` of the host is seen from outside: through `/proc/<pid>/root`.

        This is how the host side reaches files and unix sockets in the private `/run`.
        """
        return Path(f"/proc/{self.pid}/root") / p.lstrip("/")

    @property
    def system_bus_address(self) -> str:
        """D-Bus address of the host's system bus, usable from outside (dbus-fast, busctl)."""
        return f"unix:path={self.path(SYSTEM_BUS_SOCKET)}"

    @property
    def podman_url(self) -> str:
        """Podman API URL usable from outside: `PodmanClient(base_url=host.podman_url)`."""
        return f"unix://{self.path(PODMAN_SOCKET)}"

    # -- running things inside -------------------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        """The host-side argv that runs `argv` inside every namespace of this host.

        On a fresh root the command also joins the host's cgroups first, in every
        hierarchy, as `docker exec` does: a test host booted by that command (the suite
        run inside a fresh root) makes its own cgroup below the one it is in, and outside
        the host's cgroup namespace that would read as "/.." (measured).
        """
        self._check_alive()
        join = (
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", JOIN_CGROUPS_SCRIPT,
             "iyclo-testhost-join", *self._record.cgroups, "--"]
            if self._record.suite
            else []
        )  # fmt: skip
        return [
            *join,
            "nsenter",
            "-t",
            str(self.pid),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-C",
            "--wd",  # the target's cwd: "--wd=/" would be opened in *our* mount namespace
            "--",
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the host and capture its output as text.

        The environment is `INNER_ENV` plus `env`, never the caller's. The command runs in all
        the host's namespaces but keeps the caller's cgroups (use `systemd-run` to get a unit's).
        On timeout the whole process group is killed: killing only `nsenter` would leave its
        child running inside. Failures raise `HostCommandError` unless `check=False`.
        """
        full = self.nsenter_argv(argv)
        with subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.environment(), **(env or {})},
            cwd="/",
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                raise HostCommandError(
                    argv, None, out, err, f"timed out after {timeout:g} s"
                ) from None
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and result.returncode != 0:
            raise HostCommandError(argv, result.returncode, out, err)
        return result

    def environment(self) -> dict[str, str]:
        """`INNER_ENV`, and on a fresh root what its apt and pip need to reach the network."""
        if not self._record.suite:
            return {**INNER_ENV}
        passed = {key: os.environ[key] for key in NETWORK_ENV if key in os.environ}
        return {**INNER_ENV, **passed}

    def podman_ping(self, timeout: float = 1.0) -> bool:
        """True when the Podman API answers `GET /_ping` on its socket, from outside."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.path(PODMAN_SOCKET)))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]

    def install_dbus_policy(self, policy: Path) -> None:
        """Add a bus policy file to the running host and make dbus-daemon reload its config.

        The host's `/etc/dbus-1/system.d` is a private tmpfs, so this never touches the real
        one. Prefer `boot(extra_dbus_policies=...)` when the policy is known up front.
        """
        shutil.copyfile(policy, self.path("/etc/dbus-1/system.d") / policy.name)
        self.run(
            ["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus", "ReloadConfig"]
        )  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def attach(cls, root: Path) -> Host:
        """A handle on a host already running on `root` (booted by another process)."""
        root = root.resolve()
        try:
            record = _Record.load(root / "host.json")
        except FileNotFoundError:
            raise TestHostError(f"no test host is running on {root}") from None
        if not _is_our_systemd(record):
            raise TestHostError(f"the test host on {root} is not running (pid {record.pid} gone)")
        return cls(root, record)

    def is_running(self) -> bool:
        """True while this host's systemd is alive."""
        return not self._down and _is_our_systemd(self._record)

    def shutdown(self, timeout: float = 15) -> None:
        """SIGKILL the host's systemd; the kernel then kills everything in its PID namespace.

        Waits for `unshare` to exit and for no process of the host to remain (in its PID
        namespace or its cgroups), removes its cgroup tree, which a killed systemd cannot do,
        then the pid files. Safe to call twice.
        """
        if self._down:
            return
        record = self._record
        deadline = time.monotonic() + timeout
        began = _ticks_now()
        _stop_slirp(record.slirp_pid)
        was_running = _is_our_systemd(record)
        if was_running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        if self._process is not None:
            try:
                self._process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise TestHostError(f"unshare (pid {record.unshare_pid}) did not exit") from None
        if was_running:
            try:
                _wait_for(
                    lambda: (
                        not _pid_alive(record.unshare_pid, "unshare")
                        and not _host_pids(record, began)
                    ),
                    deadline,
                    f"processes of test host {self.name} did not exit",
                )
            except TestHostError as exc:
                raise TestHostError(f"{exc}: {_describe(_host_pids(record, began))}") from None
            _remove_cgroups(record.cgroups)
        else:
            # It died earlier. A new host of the same name may have booted since: its
            # processes are in the same cgroups, and those are not ours to remove.
            _wait_for(
                lambda: (
                    not _pid_alive(record.unshare_pid, "unshare")
                    and not _pids_in_cgroups((), record.pid_ns, began)
                ),
                deadline,
                f"processes of test host {self.name} did not exit",
            )
            if not _pids_in_cgroups(record.cgroups):
                _remove_cgroups(record.cgroups)
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if _Record.load(self.root / "host.json").pid_ns == record.pid_ns:
                for leftover in ("host.json", "host.pid"):
                    (self.root / leftover).unlink(missing_ok=True)
        self._down = True

    def detach(self) -> None:
        """Leave the host running after this process exits (the CLI's `up`).

        Dropping the `Popen` of a running child makes Python warn at garbage collection; the
        host is meant to outlive us, so drop it quietly. `unshare` runs in its own session.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._process = None

    def _check_alive(self) -> None:
        if self._down or not _is_our_systemd(self._record):
            raise TestHostError(f"test host {self.name} is not running")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Host(name={self.name!r}, pid={self.pid}, root={str(self.root)!r})"


# -- booting ------------------------------------------------------------------------------


def hidden_binds(*paths: Path) -> list[tuple[Path, str]]:
    """Binds that keep `paths` visible inside a host at the same place: those under a
    prefix the host makes private (a checkout or its venv under /tmp, say)."""
    hidden = set()
    for path in paths:
        resolved = path.resolve()
        directory = resolved if resolved.is_dir() else resolved.parent  # binds are of dirs
        if any(directory.is_relative_to(prefix) for prefix in HIDDEN_PREFIXES):
            hidden.add(directory)
    outermost = [d for d in hidden if not any(d != o and d.is_relative_to(o) for o in hidden)]
    return [(d, str(d)) for d in sorted(outermost)]


def default_root(name: str = DEFAULT_NAME) -> Path:
    """Where a host named `name` keeps its disk when the caller does not choose."""
    return DEFAULT_BASE / name


def check_available(*, fresh_root: bool = False) -> None:
    """Raise `TestHostUnavailable` with a one-line reason if this machine cannot boot a host.

    A host on a fresh root brings its own systemd and has no Podman yet: it needs only the
    namespace tools here.
    """
    if sys.platform != "linux":
        raise TestHostUnavailable("test host needs Linux namespaces")
    if os.geteuid() != 0:
        raise TestHostUnavailable("test host needs root (it mounts and unshares namespaces)")
    tools = [("unshare", "util-linux"), ("nsenter", "util-linux")]
    if not fresh_root:
        tools += [("podman", "podman"), ("runc", "runc"), ("ip", "iproute2")]
    for tool, package in tools:
        if shutil.which(tool, path=INNER_ENV["PATH"]) is None:
            raise TestHostUnavailable(f"{tool} not found (apt-get install {package})")
    if fresh_root:
        return
    if not os.access(SYSTEMD, os.X_OK):
        raise TestHostUnavailable(f"{SYSTEMD} not found (apt-get install systemd)")
    if not Path("/lib/systemd/system/podman.socket").exists():
        raise TestHostUnavailable("podman.socket unit not found (apt-get install podman)")
    if not Path("/sys/fs/cgroup").is_dir() or not Path("/proc/self/cgroup").exists():
        raise TestHostUnavailable("no cgroup filesystem under /sys/fs/cgroup")


def boot(
    root: Path,
    *,
    name: str = DEFAULT_NAME,
    timeout: float = 30,
    extra_dbus_policies: Sequence[Path] = (),
    binds: Sequence[tuple[Path, str]] = (),
    suite: str = "",
) -> Host:
    """Boot a test host whose disk is `root` and return once systemd and Podman answer.

    `root` must lie outside the paths that are private inside (`/tmp`, `/run`, ...) because the
    setup script reads it from inside. Booting again on the same root after `shutdown()` is
    a reboot: Podman storage and `/var/lib/iyclo` persist, `/run` does not.

    `binds` are (path here, path inside) pairs, bind-mounted after the host's private
    mounts, so a checkout under `/tmp` stays visible inside at the same path.

    With `suite` ("bookworm", "trixie"), the host runs on a fresh copy of a minimal Debian root
    (see `fresh_base`) instead of the machine's filesystem, with systemd as PID 1 and the
    user-mode network of its own, as a newcomer's machine: no Podman, no iyclo, nothing installed.
    """
    if suite and suite not in SUITES:
        raise TestHostError(f"unknown Debian suite {suite!r} (one of {', '.join(SUITES)})")
    check_available(fresh_root=bool(suite))
    if not NAME_RE.fullmatch(name):
        raise TestHostError(f"invalid test host name {name!r} (letters, digits, '_.-')")
    root = root.resolve()
    if any(str(root) == p or str(root).startswith(p + "/") for p in HIDDEN_PREFIXES):
        raise TestHostError(f"test host root {root} is hidden inside the host; use e.g. /var/lib")
    try:
        running = Host.attach(root)
    except TestHostError:
        _cleanup_stale(root)  # a host that died without shutdown() (e.g. the machine rebooted)
    else:
        raise TestHostError(f"a test host is already running on {root} (pid {running.pid})")

    started = time.monotonic()
    deadline = started + timeout
    cgroups = _cgroup_specs(name)
    if busy := _pids_in_cgroups(cgroups):
        raise TestHostError(f"a test host named {name!r} is running (pids {sorted(busy)[:5]})")
    _remove_cgroups(cgroups)  # a crashed host's empty tree
    _stage(root, extra_dbus_policies, binds)
    rootfs = ""
    if suite:
        rootfs = str(_fresh_rootfs(root, suite, name))
        deadline = time.monotonic() + timeout  # copying the root is not booting
    log = (root / "boot" / "unshare.log").open("wb")
    with log:
        process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
             "--net", "--uts", "--ipc",
             "sh", str(root / "boot" / "setup-1.sh"), name, str(root), rootfs],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**INNER_ENV},
            cwd="/",
            start_new_session=True,
        )  # fmt: skip
    slirp = 0
    try:
        pid = _wait_for_systemd(process, root, deadline)
        if suite:
            slirp = _start_slirp(pid, deadline)
        record = _Record(
            name, pid, process.pid, os.readlink(f"/proc/{pid}/ns/pid"), cgroups, suite, slirp
        )
        record.dump(root / "host.json")
        (root / "host.pid").write_text(f"{pid}\n")
        host = Host(root, record, process)
        _wait_until_up(host, deadline)
    except BaseException:
        _stop_slirp(slirp)
        _abort_boot(process, root, cgroups)
        raise
    host.boot_seconds = time.monotonic() - started
    return host


def _stage(
    root: Path, extra_dbus_policies: Sequence[Path], binds: Sequence[tuple[Path, str]] = ()
) -> None:
    """Create root's persistent dirs and regenerate `root/boot/`, the files this boot mounts."""
    for d in ("containers", "iyclo", "containers-networks", "systemd-timers"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # Mount points on the real filesystem. /var/lib/containers exists wherever Podman is
    # installed; /var/lib/iyclo and /var/lib/systemd/timers (systemd's own place for timer
    # stamps) are directories this may have to create on the machine, empty; so are
    # /etc/iyclo and /usr/local/share/dbus-1/system-services, where `iyclo system
    # install` writes its config and D-Bus activation file (empty tmpfs in every host), and
    # /usr/share/polkit-1/actions, where it adds its polkit actions, and
    # /etc/polkit-1/rules.d, where tests add polkit rules (tmpfs holding copies of the
    # machine's).
    for mountpoint in ("/var/lib/containers", "/var/lib/iyclo", "/var/lib/systemd/timers",
                       "/etc/iyclo", "/usr/local/share/dbus-1/system-services",
                       *POLKIT_DIRS):  # fmt: skip
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
    boot_dir = root / "boot"
    shutil.rmtree(boot_dir, ignore_errors=True)
    boot_dir.mkdir()
    (boot_dir / "console.log").touch()
    (boot_dir / "empty").mkdir()
    for directory, staged in zip(POLKIT_DIRS, ("polkit-actions", "polkit-rules"), strict=True):
        shutil.copytree(directory, boot_dir / staged, symlinks=True)  # maybe empty
        # and its owner: polkitd reads its rules directory as itself (mode 0700 polkitd)
        owner = os.stat(directory)
        os.chown(boot_dir / staged, owner.st_uid, owner.st_gid)
    (boot_dir / "setup-1.sh").write_text(SETUP_SCRIPT)
    (boot_dir / "setup-2.sh").write_text(SETUP_SCRIPT_2)
    lines = []
    for given, inside in binds:
        source = given.resolve()
        if (
            not source.exists()
            or not inside.startswith("/")
            or any(c in f"{source}{inside}" for c in "\t\n")
        ):
            raise TestHostError(f"cannot bind {given} to {inside!r} in the test host")
        lines.append(f"{source}\t{inside}\n")
    (boot_dir / "binds.tsv").write_text("".join(lines))

    system = boot_dir / "systemd-system"
    system.mkdir()
    for unit in MASKED_UNITS:
        (system / unit).symlink_to("/dev/null")
    dropin = system / "systemd-tmpfiles-setup.service.d"
    dropin.mkdir()
    (dropin / "iyclo-testhost.conf").write_text(TMPFILES_DROPIN)
    wants = system / "sockets.target.wants"
    wants.mkdir()
    (wants / "podman.socket").symlink_to("/lib/systemd/system/podman.socket")

    run = boot_dir / "run"
    journald = run / "systemd" / "journald.conf.d"
    journald.mkdir(parents=True)
    (journald / "iyclo-testhost.conf").write_text(JOURNALD_CONF)
    # Generators turn the machine's /etc/fstab, /etc/init.d (e.g. its PostgreSQL) and
    # rc.local into units; none belong in a test host. A /dev/null link in /run disables one.
    generators = run / "systemd" / "system-generators"
    generators.mkdir()
    for gen_dir in GENERATOR_DIRS:
        if gen_dir.is_dir():
            for gen in gen_dir.iterdir():
                with contextlib.suppress(FileExistsError):
                    (generators / gen.name).symlink_to("/dev/null")

    dbus = boot_dir / "dbus-system.d"
    _copy_tree(Path("/etc/dbus-1/system.d"), dbus)
    for policy in extra_dbus_policies:
        shutil.copyfile(policy, dbus / policy.name)

    containers = boot_dir / "containers-etc"
    _copy_tree(Path("/etc/containers"), containers, skip=("networks",))
    (containers / "networks").mkdir()
    (containers / "containers.conf").write_text(CONTAINERS_CONF)


def _need(tool: str, package: str) -> None:
    """Install a tool only the fresh-root harness needs, saying so, when it is missing."""
    if shutil.which(tool, path=INNER_ENV["PATH"]) is not None:
        return
    print(f"iyclo-testhost: installing {package}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def _start_slirp(pid: int, deadline: float) -> int:
    """Give the network namespace of `pid` a user-mode network (slirp4netns) to the outside.

    A fresh root needs the package registries, yet must not share the machine's network
    namespace: its Podman would put its bridge and firewall rules there, and its pods'
    ports would clash with the machine's (measured: two fresh roots' web pods on
    127.0.0.1:18080). slirp4netns forwards the namespace's traffic through ordinary sockets
    of this process, so nothing changes on the machine; `--disable-host-loopback` keeps the
    machine's own 127.0.0.1 out of reach.
    """
    _need("slirp4netns", "slirp4netns")
    ready_r, ready_w = os.pipe()
    try:
        slirp = subprocess.Popen(
            ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
             f"--ready-fd={ready_w}", str(pid), "tap0"],
            pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], max(deadline - time.monotonic(), 1))
        if not readable or os.read(ready_r, 1) != b"1":
            slirp.kill()
            slirp.wait(5)
            raise TestHostError("slirp4netns did not set up the fresh root's network")
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    with warnings.catch_warnings():  # it outlives this handle, as the host does
        warnings.simplefilter("ignore", ResourceWarning)
        return slirp.pid


def _stop_slirp(pid: int) -> None:
    if pid and _pid_alive(pid, "slirp4netns"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def fresh_base(suite: str, *, refresh: bool = False) -> Path:
    """A minimal Debian root of `suite` (see `FRESH_PACKAGES`), made once by mmdebstrap.

    Cached under `DEFAULT_BASE/fresh/<suite>/` (about 300 MB, 20-30 s to make) and copied
    anew for every boot, so each run starts from what a newcomer has.
    """
    base = DEFAULT_BASE / "fresh" / suite
    made = base / "made"
    if made.exists() and not refresh:
        return base / "root"
    _need("mmdebstrap", "mmdebstrap")
    made.unlink(missing_ok=True)
    shutil.rmtree(base / "root", ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    log = base / "mmdebstrap.log"
    with log.open("wb") as out:
        result = subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={FRESH_PACKAGES}", suite,
             str(base / "root")],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").splitlines()[-3:])
        raise TestHostError(f"mmdebstrap {suite} failed (exit {result.returncode}): {tail}")
    made.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    return base / "root"


def _fresh_rootfs(root: Path, suite: str, name: str) -> Path:
    """A throw-away copy of the cached fresh root for one boot of the host on `root`."""
    base = fresh_base(suite)
    rootfs = root / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(rootfs)], check=True)
    if CA_BUNDLE.exists():  # the machine's trust store: its proxy may sign what it forwards
        shutil.copyfile(CA_BUNDLE, rootfs / CA_BUNDLE.relative_to("/"))
    (rootfs / "etc" / "hostname").write_text(f"{name}\n")
    system = rootfs / "etc" / "systemd" / "system"
    for unit in FRESH_MASKED_UNITS:
        (system / unit).unlink(missing_ok=True)
        (system / unit).symlink_to("/dev/null")
    return rootfs


def _copy_tree(src: Path, dst: Path, skip: Sequence[str] = ()) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore=lambda _d, names: [*skip])
    else:
        dst.mkdir(parents=True)


def _wait_for_systemd(process: subprocess.Popen[bytes], root: Path, deadline: float) -> int:
    """The host PID of the new PID 1: unshare's only child, once it has exec'd systemd."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while True:
        if process.poll() is not None:
            raise TestHostError(
                f"test host setup exited with {process.returncode}: {_log_tail(root)}"
            )
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(children.read_text().split()[0])
            if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(SYSTEMD):
                return pid
        if time.monotonic() > deadline:
            raise TestHostError(f"systemd did not start in the test host: {_log_tail(root)}")
        time.sleep(0.01)


def _wait_until_up(host: Host, deadline: float) -> None:
    """Wait until systemd finished booting and the Podman socket answers.

    "degraded" (some unit failed) is accepted, as on a real machine; `host.boot_state` keeps
    it so that tests can insist on "running".
    """
    state = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestHostError(
                f"test host {host.name} did not finish booting (state {state or 'unknown'!r}): "
                f"{_log_tail(host.root)}"
            )
        # Before systemd has set up its bus, `--wait` returns "offline" at once: poll then.
        result = host.run(
            ["systemctl", "is-system-running", "--wait"], check=False, timeout=remaining
        )
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(0.02)
    host.boot_state = state
    if host._record.suite:
        return  # the machine's network, and no Podman before the project installs it
    lo = host.run(["ip", "-o", "link", "show", "lo"]).stdout
    if "UP" not in lo.partition("<")[2].partition(">")[0].split(","):
        raise TestHostError(f"loopback is down in test host {host.name}: {lo.strip()}")
    _wait_for(host.podman_ping, deadline, f"the Podman socket of test host {host.name}")


def _abort_boot(process: subprocess.Popen[bytes], root: Path, cgroups: Sequence[str]) -> None:
    """Kill a half-booted host: its PID 1 first (that ends the namespace), then unshare."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    with contextlib.suppress(OSError, ValueError):
        for child in children.read_text().split():
            os.kill(int(child), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    _remove_cgroups(cgroups)
    for leftover in ("host.json", "host.pid"):
        with contextlib.suppress(FileNotFoundError):
            (root / leftover).unlink()


def _log_tail(root: Path) -> str:
    lines: list[str] = []
    for log in ("unshare.log", "console.log"):
        with contextlib.suppress(OSError):
            lines += (root / "boot" / log).read_text(errors="replace").splitlines()
    return " | ".join(line.strip() for line in lines[-8:] if line.strip()) or "(no output)"


def _wait_for(ready: Callable[[], bool], deadline: float, what: str) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise TestHostError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- processes and cgroups ----------------------------------------------------------------


def _pid_alive(pid: int, comm: str | None = None) -> bool:
    """True if `pid` exists and is not a zombie (and is named `comm`, when given)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.rpartition(")")
    if rest.split()[0] in ("Z", "X"):
        return False
    return comm is None or name.partition("(")[2] == comm


def _is_our_systemd(record: _Record) -> bool:
    """True if `record.pid` is still the systemd that record describes (not a reused pid)."""
    try:
        return os.readlink(f"/proc/{record.pid}/ns/pid") == record.pid_ns and _pid_alive(
            record.pid, "systemd"
        )
    except OSError:
        return False


def _read_cgroups(pid: int | str) -> list[tuple[str, str]]:
    """(controllers, path) of each hierarchy `pid` is in, as `/proc/<pid>/cgroup` lists them."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return [(ctrl, path) for _, ctrl, path in (line.split(":", 2) for line in lines)]


def _cgroup_specs(name: str) -> tuple[str, ...]:
    """The host's cgroup in each hierarchy, as "controllers:path": one level below ours.

    A host gets a cgroup of its own so that two hosts booted at once do not both manage
    `system.slice` of the same cgroup. The setup script creates exactly these (it inherits
    our cgroups), so they are known here without asking the host.
    """
    return tuple(
        f"{ctrl}:{path.rstrip('/')}/iyclo-testhost.{name}" for ctrl, path in _read_cgroups("self")
    )


def _ticks_now() -> float:
    """Now, in the clock of /proc/<pid>/stat's start times (clock ticks since boot)."""
    return float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: str) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return float(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime


def _pids_in_cgroups(
    specs: Sequence[str], pid_ns: str = "", born_before: float | None = None
) -> dict[int, list[str]]:
    """Live processes in (or below) the cgroups `specs`, or in PID namespace `pid_ns`.

    Returns host PID -> that process's own cgroup specs. Both tests are needed: containers
    run in PID namespaces nested in the host's, processes entered with nsenter keep the
    caller's cgroups. The kernel hands a dead namespace's inode number to the next one
    made (measured: a shutdown waited on another test run's new host), so with
    `born_before` (ticks, `_ticks_now`) a process that started later is not one of ours.
    """
    trees = {}
    for spec in specs:
        ctrl, _, path = spec.partition(":")
        trees[ctrl] = path
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cgroups = _read_cgroups(entry.name)
            ours = any(
                ctrl in trees and (path == trees[ctrl] or path.startswith(trees[ctrl] + "/"))
                for ctrl, path in cgroups
            ) or (
                pid_ns != ""
                and os.readlink(f"/proc/{entry.name}/ns/pid") == pid_ns
                and (born_before is None or _start_ticks(entry.name) <= born_before)
            )
            if ours and _pid_alive(int(entry.name)):
                found[int(entry.name)] = [f"{ctrl}:{path}" for ctrl, path in cgroups]
    return found


def _describe(pids: Mapping[int, list[str]]) -> str:
    """``pid (command, state) in cgroup`` for each, so a stuck process can be named."""
    parts = []
    for pid, cgroups in sorted(pids.items())[:10]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command, state = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                stat.split(")")[-1].split()[0],
            )
        except (OSError, ValueError, IndexError):
            command, state = "?", "?"
        parts.append(f"{pid} ({command}, {state}) in {cgroups[:1]}")
    return "; ".join(parts) or "none left"


def _host_pids(record: _Record, born_before: float | None = None) -> dict[int, list[str]]:
    """Live processes of a host: host PID -> their cgroup specs."""
    return _pids_in_cgroups(record.cgroups, record.pid_ns, born_before)


def _remove_cgroups(specs: Sequence[str]) -> None:
    """Remove cgroup trees once their processes are gone; busy ones raise `TestHostError`.

    This runs in a mount namespace of its own because some hierarchies (those only a host's
    systemd mounted) are not mounted on the machine at all.
    """
    if not specs:
        return
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         "sh", "-c", CGROUP_CLEANUP_SCRIPT, "iyclo-testhost-cleanup", *specs],
        capture_output=True,
        text=True,
        check=False,
        env={**INNER_ENV},
    )  # fmt: skip
    if result.returncode != 0:
        raise TestHostError(
            f"cannot remove test host cgroups: {(result.stdout + result.stderr).strip()}"
        )


# -- images -------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("IYCLO_TESTHOST_CACHE", str(DEFAULT_BASE / "cache")))


def busybox_rootfs_tar(cache: Path | None = None) -> Path:
    """A tarball of a minimal rootfs: static busybox, applet links, root and nobody.

    No registry is reachable, so this is the image tests run. The tar is deterministic and
    named by a hash of its inputs, so a new busybox or applet list builds a new one and an
    unchanged one is reused across sessions.
    """
    cache = cache or _cache_dir()
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256(busybox + "\0".join(BUSYBOX_APPLETS).encode()).hexdigest()[:16]
    target = cache / f"busybox-rootfs-{digest}.tar"
    if target.exists():
        return target

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777),
                        ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755), ("www", 0o755),
                        ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):  # fmt: skip
            add(d, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox)
        for applet in BUSYBOX_APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("usr/bin/env", tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        group = "root:x:0:\nnogroup:x:65534:\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd.encode())
        add("etc/group", tarfile.REGTYPE, 0o644, group.encode())
        add("www/index.html", tarfile.REGTYPE, 0o644, b"iyclo testhost\n")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(target)
    return target


def ensure_busybox_image(host: Host, tag: str = "localhost/busybox:latest") -> str:
    """Make `tag` a busybox image in the host's Podman storage; a no-op if it is there."""
    if host.run(["podman", "image", "exists", tag], check=False).returncode == 0:
        return tag
    return import_image(host, busybox_rootfs_tar(), tag, "CMD=/bin/sh")


def import_image(host: Host, tar: Path, tag: str, *changes: str, timeout: float = 300) -> str:
    """`podman import` a rootfs tar as `tag` in the host, with Dockerfile-style `changes`."""
    # The cache is on the real disk, so the host sees it at the same path, unless the cache
    # was put under a prefix that is private inside: then copy it into the host's /run.
    inner = str(tar)
    if any(inner.startswith(p + "/") for p in HIDDEN_PREFIXES):
        staged = host.path("/run/iyclo-testhost") / tar.name
        staged.parent.mkdir(exist_ok=True)
        shutil.copyfile(tar, staged)
        inner = f"/run/iyclo-testhost/{tar.name}"
    argv = ["podman", "import", "--quiet"]
    for change in changes:
        argv += ["--change", change]
    host.run([*argv, inner, tag], timeout=timeout)
    return tag


REDIS_PACKAGES: Final = ("redis-server", "redis-tools")
REDIS_CMD: Final = 'CMD ["redis-server", "--protected-mode", "no", "--save", ""]'
"""Redis's own default is protected mode, which refuses clients from other addresses than
loopback; a published port reaches the container from the pod's bridge, not loopback."""
# Documentation, manuals and translations are a third of a minimal root, and every test
# that pushes the image compresses them again.
_SLIM_DPKG = ("path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*",
              "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/info/*")  # fmt: skip


def debian_rootfs_tar(packages: Sequence[str], suite: str = "", cache: Path | None = None) -> Path:
    """A tar of a minimal Debian root with `packages` installed, made once by mmdebstrap.

    A real image built from Debian's packages, without a registry to pull one from: the
    tar is cached per machine under `DEFAULT_BASE/cache/` (`IYCLO_TESTHOST_CACHE`), named
    by the suite and the packages, so the second run costs nothing (the first: ~30-60 s
    from the Debian mirror). `suite` defaults to this machine's release.
    """
    suite = suite or _machine_suite()
    cache = cache or _cache_dir()
    key = hashlib.sha256("\0".join([suite, *packages, *_SLIM_DPKG]).encode()).hexdigest()[:16]
    target = cache / f"debian-{suite}-{key}.tar"
    if target.exists():
        return target
    _need("mmdebstrap", "mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"debian-{suite}-{key}.{os.getpid()}.tmp.tar"
    log = target.with_suffix(".log")
    with log.open("wb") as out:
        result = subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
             *(f"--dpkgopt={opt}" for opt in _SLIM_DPKG), suite, str(tmp)],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = " | ".join(log.read_text(errors="replace").splitlines()[-3:])
        raise TestHostError(f"mmdebstrap {suite} failed (exit {result.returncode}): {tail}")
    tmp.replace(target)
    return target


def _machine_suite() -> str:
    """This machine's Debian release (bookworm, trixie), from /etc/os-release."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"') in SUITES:
            return value.strip('"')
    raise TestHostError("this machine is neither Debian 12 nor 13 (no known VERSION_CODENAME)")


def ensure_redis_image(host: Host, tag: str = "localhost/iyclo-redis:latest") -> str:
    """Make `tag` a Debian image running `redis-server` (and holding `redis-cli`) in the
    host's Podman storage; a no-op if it is there."""
    if host.run(["podman", "image", "exists", tag], check=False).returncode == 0:
        return tag
    return import_image(host, debian_rootfs_tar(REDIS_PACKAGES), tag, REDIS_CMD)


EXAMPLE_PACKAGES: Final = ("redis-server", "redis-tools", "busybox")
"""The example app's one image (examples/shop): redis-server for its database, redis-cli
and busybox's httpd (CGI) and wget for its app and web fronts."""
EXAMPLE_TAG: Final = "localhost/iyclo-example:latest"


def example_rootfs_tar() -> Path:
    """The example app's image as a rootfs tar, made once per machine (mmdebstrap)."""
    return debian_rootfs_tar(EXAMPLE_PACKAGES)


def ensure_example_image(host: Host, tag: str = EXAMPLE_TAG) -> str:
    """Make `tag` the example app's Debian image in the host's Podman storage; a no-op if
    it is there."""
    if host.run(["podman", "image", "exists", tag], check=False).returncode == 0:
        return tag
    return import_image(host, example_rootfs_tar(), tag, 'CMD ["/bin/sh"]')


REGISTRY_CONFIG: Final = """\
# Written by iyclo's test harness: Debian's docker-registry for pull tests, in a test host.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
REGISTRY_AUTH: Final = """\
auth:
  htpasswd:
    realm: iyclo-test
    path: {htpasswd}
"""
REGISTRIES_DROPIN: Final = """\
# Written by iyclo's test harness: the test registry speaks plain HTTP, on loopback only.
[[registry]]
location = "127.0.0.1:{port}"
insecure = true
"""


def registry_unit(port: int) -> str:
    return f"iyclo-test-registry-{port}.service"


def _bcrypt(password: str) -> str:
    """A bcrypt hash, the only kind docker-registry's htpasswd takes, from the system's
    libcrypt (libxcrypt on Debian 12 and 13): Python 3.13 has no ``crypt`` module."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = lib.crypt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 10, None, 0)
    hashed: bytes | None = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise TestHostError("libcrypt made no bcrypt hash for the test registry's htpasswd")
    return hashed.decode()


def start_registry(
    host: Host, port: int = 5000, users: Mapping[str, str] | None = None, timeout: float = 30
) -> str:
    """Run Debian's `docker-registry` inside `host` on 127.0.0.1:`port`, known to the
    host's Podman as an insecure (plain HTTP) registry; its location, `127.0.0.1:port`.
    With `users` (name → password) it refuses anyone else (htpasswd basic auth).

    A transient unit of the host's systemd (the package's own service is never used: on
    the machine it would listen on every address), its storage under the host's root so
    it lasts as long as the host's disk, and a drop-in in the host's
    `/etc/containers/registries.conf.d/` (a tmpfs of the host: the machine's is untouched)
    marking only this address insecure. Podman's service is stopped once the drop-in is
    new, to be socket-activated again with it; clients of its event stream reconnect.
    """
    _need("docker-registry", "docker-registry")
    base = host.root / f"registry-{port}"
    (base / "storage").mkdir(parents=True, exist_ok=True)
    config = REGISTRY_CONFIG.format(storage=base / "storage", port=port)
    if users:
        htpasswd = base / "htpasswd"
        htpasswd.write_text("".join(f"{user}:{_bcrypt(pw)}\n" for user, pw in users.items()))
        config += REGISTRY_AUTH.format(htpasswd=htpasswd)
    (base / "config.yml").write_text(config)
    dropin = host.path("/etc/containers/registries.conf.d") / f"50-iyclo-test-{port}.conf"
    if not dropin.exists():
        dropin.write_text(REGISTRIES_DROPIN.format(port=port))
        # Podman's service keeps the registries.conf it read first (measured: its pulls
        # still spoke HTTPS to this address while `podman push` used the drop-in), so
        # stop it; the next API call starts it again from its socket.
        host.run(["systemctl", "stop", "podman.service"])
    unit = registry_unit(port)
    if host.run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active":
        host.run(["systemd-run", f"--unit={unit}", "--collect", "-p", "Type=exec",
                  "docker-registry", "serve", str(base / "config.yml")])  # fmt: skip
    probe = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
    _wait_for(lambda: host.run(probe, check=False).returncode == 0, time.monotonic() + timeout,
              f"the test registry on 127.0.0.1:{port}")  # fmt: skip
    return f"127.0.0.1:{port}"


# -- CLI ----------------------------------------------------------------------------------


def _quote(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iyclo-testhost",
        description="Boot and use a private systemd + Podman host for iyclo's tests.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=DEFAULT_NAME, help="host name (default: %(default)s)")
    common.add_argument(
        "--root", type=Path, help=f"host disk (default: {DEFAULT_BASE}/NAME; not under /tmp)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="boot a host and leave it running")
    up.add_argument("--timeout", type=float, default=30)
    up.add_argument("--dbus-policy", type=Path, action="append", default=[], metavar="FILE")
    up.add_argument(
        "--no-busybox", action="store_true", help="do not import localhost/busybox:latest"
    )
    up.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="",
        help="boot a fresh minimal Debian root of this release instead of this machine's "
        "filesystem (nothing installed; a user-mode network of its own)",
    )
    up.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="PATH[:INSIDE]",
        help="bind-mount PATH into the host (at INSIDE, default the same path)",
    )
    ex = sub.add_parser("exec", parents=[common], help="run a command inside (default: bash)")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    sub.add_parser("down", parents=[common], help="kill the host")
    sub.add_parser("busybox-tar", help="print the path of the busybox rootfs tar (made once)")
    sub.add_parser(
        "example-tar", help="print the path of the example app's Debian rootfs tar (made once)"
    )
    sub.add_parser("status", parents=[common], help="exit 0 if the host runs, 3 if not")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`iyclo-testhost up|exec|down|status`: one-line errors, exit codes like systemctl."""
    args = _parser().parse_args(argv)
    name = getattr(args, "name", DEFAULT_NAME)
    root: Path = (getattr(args, "root", None) or default_root(name)).resolve()
    try:
        if args.command == "up":
            binds = []
            for spec in args.bind:
                source, _, inside = spec.partition(":")
                binds.append((Path(source), inside or str(Path(source).resolve())))
            host = boot(
                root,
                name=args.name,
                timeout=args.timeout,
                extra_dbus_policies=args.dbus_policy,
                binds=binds,
                suite=args.suite,
            )
            try:
                if not args.no_busybox and not args.suite:
                    ensure_busybox_image(host)
            except BaseException:
                host.shutdown()
                raise
            host.detach()
            print(
                f"test host {host.name} up in {host.boot_seconds:.2f} s: pid {host.pid}, "
                f"root {root}\n  DBUS_SYSTEM_BUS_ADDRESS={host.system_bus_address}\n"
                f"  CONTAINER_HOST={host.podman_url}"
            )
            return 0
        if args.command == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            host = Host.attach(root)
            sys.stdout.flush()
            env = {
                **host.environment(),
                **({"TERM": os.environ["TERM"]} if "TERM" in os.environ else {}),
            }
            argv = host.nsenter_argv(cmd or ["bash"])
            os.execvpe(argv[0], argv, env)
        if args.command == "busybox-tar":
            print(busybox_rootfs_tar())
            return 0
        if args.command == "example-tar":
            print(example_rootfs_tar())
            return 0
        if args.command == "down":
            try:
                host = Host.attach(root)
            except TestHostError:
                _cleanup_stale(root)
                print(f"no test host running on {root}")
                return 0
            host.shutdown()
            print(f"test host {host.name} (pid {host.pid}) is down")
            return 0
        # status
        try:
            host = Host.attach(root)
        except TestHostError as e:
            print(e)
            return 3
        state = host.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        print(f"test host {host.name}: pid {host.pid}, systemd {state}, root {root}")
        return 0
    except TestHostUnavailable as e:
        print(f"iyclo-testhost: unavailable: {e}", file=sys.stderr)
        return 2
    except TestHostError as e:
        print(f"iyclo-testhost: error: {e}", file=sys.stderr)
        return 1


def _cleanup_stale(root: Path) -> None:
    """After a host died without `down` (e.g. the machine's own reboot), drop its leftovers."""
    with contextlib.suppress(FileNotFoundError):
        record = _Record.load(root / "host.json")
        if not _is_our_systemd(record):
            Host(root, record).shutdown()


if __name__ == "__main__":
    sys.exit(main())
