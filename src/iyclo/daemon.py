"""``iyclod``: the asyncio daemon.

Start-up order matters: the store first (it holds the lock that keeps a second
daemon away), then systemd and Podman, then a reconcile so the host matches the
store before any client is served, then the fronts, then READY=1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import attrs

from iyclo import __version__
from iyclo.core import naming
from iyclo.errors import IycloError

if TYPE_CHECKING:
    from iyclo.config import DaemonConfig
    from iyclo.core.service import Service
    from iyclo.core.steps import Survey
    from iyclo.manifest.policy import Policy
    from iyclo.podman.client import PodmanClient
    from iyclo.podman.platform import Platform
    from iyclo.store import Store

DEFAULT_SOCKET = Path("/run/iyclo/iyclo.sock")
DEFAULT_STATE_DIR = Path("/var/lib/iyclo")
DEFAULT_PODMAN_URL = "unix:///run/podman/podman.sock"


class StartupError(IycloError):
    """A directory, file or socket the daemon needs cannot be made or opened."""


def _reason(exc: OSError) -> str:
    """The OS's one-word reason ("Permission denied", "Not a directory")."""
    return exc.strerror or str(exc)


START_EXTENSION_USEC = 30_000_000
"""After each pod or job the start-up reconcile has done, systemd's start timeout is
pushed this far out again: making 50 pods anew after a reboot takes longer than a
``TimeoutStartSec=`` sized for a quick start (measured: over 90 s on a loaded 2-core
test host), and a start that keeps making progress is not a hung one."""


def _starting(done: int, total: int) -> None:
    sd_notify(f"EXTEND_TIMEOUT_USEC={START_EXTENSION_USEC}\nSTATUS=reconciling {done}/{total}")


def sd_notify(message: str) -> bool:
    """Tell systemd about our state when it started us with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def without_rich() -> None:
    """Keep rich out of the daemon's process.

    structlog imports rich, when it is installed (rich-click brings it, for the CLI's
    help), to render tracebacks on a console: ~100 ms of every start of a daemon that
    logs JSON lines and never renders one, more on a busy host. Hidden from the import
    system before structlog is first imported, it is not loaded; a process that has
    rich already keeps it. Hence the imports of structlog here are inside functions.
    """
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "not importable"


def configure_logging(log_file: Path | None, level: str) -> TextIO:
    """Structured JSON lines, to a file or to stderr (which journald captures).

    The log file's directory is made if it is missing: on a fresh host `/var/lib/iyclo`
    does not exist before the daemon's first start (and the store, which makes it, opens
    after logging is set up).
    """
    import structlog

    stream: TextIO = sys.stderr
    if log_file:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            stream = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as we do)
        except OSError as exc:
            raise StartupError(f"cannot open log file {log_file}: {_reason(exc)}") from None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    return stream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iyclod", description="The iyclo daemon.")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the desired state (TinyDB) lives [%(default)s]",
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, help="JSON-lines log file [stderr, i.e. the journal]"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--socket", type=Path, default=DEFAULT_SOCKET, help="JSON-RPC socket path [%(default)s]"
    )
    parser.add_argument(
        "--bus",
        choices=["system", "session"],
        default="system",
        help="bus for iyclo's own D-Bus interface [%(default)s]",
    )
    parser.add_argument(
        "--systemd-bus-address",
        default=None,
        help="D-Bus address of systemd's bus [the system bus]",
    )
    parser.add_argument(
        "--podman-url", default=DEFAULT_PODMAN_URL, help="Podman REST socket [%(default)s]"
    )
    parser.add_argument(
        "--no-dbus",
        action="store_true",
        help="do not export the D-Bus interface (JSON socket only)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="drop JSON socket clients silent this long (seconds)",
    )
    policy = parser.add_argument_group(
        "policy",
        "what manifests may ask for beyond the secure defaults (flags only loosen "
        "what the config file says)",
    )
    policy.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON config file [/etc/iyclo/iyclo.json, if it exists]",
    )
    policy.add_argument("--allow-privileged", action="store_true", help="allow security.privileged")
    policy.add_argument(
        "--allow-unconfined", action="store_true", help='allow security.seccompProfile "unconfined"'
    )
    policy.add_argument("--allow-host-network", action="store_true", help='allow network "host"')
    policy.add_argument(
        "--bind-mount-root",
        action="append",
        default=[],
        type=_abs_path,
        metavar="PATH",
        help="allow bind mounts of host paths under PATH",
    )
    policy.add_argument(
        "--seccomp-profile-root",
        action="append",
        default=[],
        type=_abs_path,
        metavar="PATH",
        help="allow seccomp profiles under PATH",
    )
    policy.add_argument(
        "--allow-cap",
        action="append",
        default=[],
        type=_capability,
        metavar="CAP",
        help="allow capAdd of CAP beyond Docker's default set",
    )
    parser.add_argument("--version", action="version", version=f"iyclod {__version__}")
    return parser  # fmt: skip


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(f'"{value}" is not an absolute path')
    return value.rstrip("/") or "/"


def _capability(value: str) -> str:
    from iyclo.manifest.values import VALUE_RULES, Capability

    try:
        VALUE_RULES[Capability].check(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_config(args: argparse.Namespace) -> DaemonConfig:
    """The config file, its policy loosened by the flags; InvalidError if the file is bad."""
    from iyclo.config import DEFAULT_CONFIG, load_config, loosen

    config = load_config(args.config or DEFAULT_CONFIG, required=args.config is not None)
    policy = loosen(
        config.policy,
        allow_privileged=args.allow_privileged,
        allow_unconfined=args.allow_unconfined,
        allow_host_network=args.allow_host_network,
        bind_mount_roots=args.bind_mount_root,
        seccomp_profile_roots=args.seccomp_profile_root,
        allow_caps=args.allow_cap,
    )
    return attrs.evolve(config, policy=policy)


def build_policy(args: argparse.Namespace) -> Policy:
    return build_config(args).policy


def socket_group(group: str) -> str | None:
    """The JSON socket's group: the deploy group if the host has it, else None (root's)."""
    import grp

    import structlog

    try:
        grp.getgrnam(group)
    except KeyError:
        structlog.get_logger("iyclo.daemon").warning(
            "the deploy group does not exist: only root may deploy "
            "(`iyclo system install` creates it)", group=group,
        )  # fmt: skip
        return None
    return group


def prepare(state_dir: Path, socket_path: Path) -> Store:
    """Blocking start-up work, done before the event loop serves anyone: every directory
    the daemon needs is made (or named in one line) before it connects to anything."""
    from iyclo.store import Store

    for directory in (Path(naming.RUN_DIR), socket_path.parent):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create directory {directory}: {_reason(exc)}") from None
    return Store.open(state_dir)


async def _platform_and_survey(podman: PodmanClient, service: Service) -> tuple[Platform, Survey]:
    """What Podman is, and what it and systemd hold for the start-up reconcile, asked at
    once (``podman info`` alone took half a second at 200 pods); the survey only reads.
    A Podman iyclo does not support is refused first, whatever the survey met."""
    platform, survey = await asyncio.gather(
        podman.platform(), service.survey(), return_exceptions=True
    )
    if isinstance(platform, BaseException):
        raise platform
    if problems := platform.problems():
        raise StartupError("; ".join(problems))
    if isinstance(survey, BaseException):
        raise survey
    return platform, survey


async def run(args: argparse.Namespace) -> int:
    # Imported here so `iyclo --help` never pays for podman and dbus-fast.
    import structlog

    from iyclo.api.jsonrpc import JsonRpcServer
    from iyclo.core.service import Service
    from iyclo.podman.client import PodmanClient
    from iyclo.systemd.manager import SystemdManager

    log = structlog.get_logger("iyclo.daemon")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    from iyclo.core.access import Gate

    config = build_config(args)
    policy = config.policy
    gate = Gate(config.deploy_group)
    store = prepare(args.state_dir, args.socket)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(store.close)
        systemd = await SystemdManager.connect(args.systemd_bus_address)
        stack.push_async_callback(systemd.close)
        podman = PodmanClient(args.podman_url)
        stack.callback(podman.close)
        service = Service(store, systemd, podman, policy=policy)
        # Runs and pods are followed from systemd's signals: watch before the first reconcile.
        await service.start_watching()
        stack.push_async_callback(service.close)
        try:
            await podman.ping()
            platform, survey = await _platform_and_survey(podman, service)
            log.info("podman", platform=attrs.asdict(platform),
                     features=attrs.asdict(platform.features))  # fmt: skip
            report = await service.reconcile(progress=_starting, survey=survey)
        except StartupError:
            raise  # an unsupported Podman: refuse to run rather than half-work
        except IycloError as exc:
            # Serve anyway: clients get clear errors per call, and `iyclo reconcile`
            # retries once Podman is back (socket activation may just be slow).
            log.error("start-up reconcile failed", error=exc.message)
        else:
            log.info("reconciled at start", **report.to_json())
        # From here on, a Podman or systemd that goes away is reported, not fatal.
        await service.dependencies.start()
        stack.push_async_callback(service.dependencies.close)
        log.info("started", version=__version__, state_dir=str(args.state_dir),
                 deploy_group=config.deploy_group, policy=attrs.asdict(policy))  # fmt: skip

        server = JsonRpcServer(
            service, args.socket, gate=gate, group=socket_group(config.deploy_group),
            idle_timeout=args.idle_timeout,
        )  # fmt: skip
        await server.start()
        stack.push_async_callback(server.close)
        if not args.no_dbus:
            from iyclo.api.dbus import export_service

            unexport = await export_service(service, args.bus, gate=gate)
            stack.push_async_callback(unexport)
            log.info("access", deploy_group=gate.deploy_group,
                     polkit=gate.authority is not None)  # fmt: skip

        sd_notify(f"READY=1\nSTATUS=serving {len(store.list())} pods and jobs")
        await stop.wait()
        sd_notify("STOPPING=1")
        log.info("stopping")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Every failure to start is one line on stderr (the journal) and a non-zero status
    that `systemctl status` shows; a traceback would bury the one fact that matters."""
    without_rich()
    import structlog

    args = build_parser().parse_args(argv)
    # Everything iyclod creates is root's alone unless it widens it on purpose (the JSON
    # socket, 0660 to the deploy group, is renamed into place only once it is so).
    os.umask(0o077)
    try:
        configure_logging(args.log_file, args.log_level)
    except IycloError as exc:
        sys.stderr.write(f"iyclod: error: {exc.message}\n")
        sys.exit(exc.exit_code)
    try:
        code = asyncio.run(run(args))
    except IycloError as exc:
        structlog.get_logger("iyclo.daemon").error("fatal", error=exc.message)
        sys.stderr.write(f"iyclod: error: {exc.message}\n")
        code = exc.exit_code
    sys.exit(code)


if __name__ == "__main__":
    main()
