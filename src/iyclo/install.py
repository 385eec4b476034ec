"""`iyclo system install`: put iyclod on a host the way its packages would.

What a systemd host needs to run iyclod as a service: its unit, the D-Bus policy that
lets it own `io.github.iyclo1` (without it root is refused the name),
the D-Bus activation file (a call to `io.github.iyclo1` starts `iyclod.service`), the
polkit actions (read by polkit from /usr/share/polkit-1/actions only, so that one file
goes under /usr/share), a sample config, and the deploy group `iyclo` (a system group, made
with `groupadd --system` when missing and kept by uninstall, as Debian's packages keep
theirs: members stay members). The unit's `ExecStart=` names the `iyclod` of this
installation (a venv's or /usr/local/bin's), not a path it may not have.

Files go under the local administrator's trees (`/etc`, `/usr/local`), never over files
a distribution package owns; `--prefix DIR` puts the same tree under DIR (for packaging,
or to look) and then nothing is reloaded.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import attrs

from iyclo.core.access import DEFAULT_DEPLOY_GROUP
from iyclo.errors import IycloError

UNIT_DIR = Path("etc/systemd/system")
DBUS_POLICY_DIR = Path("etc/dbus-1/system.d")
DBUS_SERVICE_DIR = Path("usr/local/share/dbus-1/system-services")
CONFIG = Path("etc/iyclo/iyclo.json")
POLKIT_ACTIONS_DIR = Path("usr/share/polkit-1/actions")
SHIPPED_EXEC_START = "ExecStart=/usr/bin/iyclod "


@attrs.frozen
class InstallFile:
    """One file to write: where (relative to the prefix), what, and with which mode."""

    path: Path
    content: str
    mode: int = 0o644
    keep_existing: bool = False  # the operator's config is theirs once it exists


def data_dir() -> Path:
    """Where the shipped unit, policy and sample config are.

    A wheel carries them as `iyclo/data/`; an editable install (a checkout's venv) reads
    them from the checkout's `packaging/` and `dbus/`, where they are maintained.
    """
    packaged = Path(str(resources.files("iyclo") / "data"))
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "packaging" / "iyclod.service").is_file():
        return checkout
    raise IycloError(f"iyclo's data files are missing (looked in {packaged} and {checkout})")


def iyclod_path() -> Path:
    """The iyclod beside the running iyclo (a venv's bin), else the one on PATH."""
    beside = Path(sys.argv[0]).resolve().with_name("iyclod")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("iyclod")
    if found is None:
        raise IycloError("iyclod not found beside iyclo or on PATH: install iyclo first")
    return Path(found).resolve()


def _systemd_quote(path: Path) -> str:
    """A path as one ExecStart= word: quoted when it has a space, "%" doubled."""
    text = str(path).replace("%", "%%")
    if any(c in text for c in ' "\\\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render_unit(shipped: str, iyclod: Path) -> str:
    """The shipped unit with `ExecStart=` pointing at this installation's iyclod."""
    if SHIPPED_EXEC_START not in shipped:
        raise IycloError("the shipped iyclod.service has no ExecStart=/usr/bin/iyclod line")
    return shipped.replace(SHIPPED_EXEC_START, f"ExecStart={_systemd_quote(iyclod)} ", 1)


def planned_files(iyclod: Path) -> list[InstallFile]:
    data = data_dir()
    try:
        return _files(data / "packaging", data / "dbus", iyclod)
    except OSError as exc:
        raise IycloError(f"cannot read iyclo's data file {exc.filename}: {exc.strerror}") from None


def _files(packaging: Path, dbus: Path, iyclod: Path) -> list[InstallFile]:
    return [
        InstallFile(
            UNIT_DIR / "iyclod.service",
            render_unit((packaging / "iyclod.service").read_text(), iyclod),
        ),
        InstallFile(
            DBUS_POLICY_DIR / "io.github.iyclo1.conf", (dbus / "io.github.iyclo1.conf").read_text()
        ),
        InstallFile(
            DBUS_SERVICE_DIR / "io.github.iyclo1.service",
            (dbus / "io.github.iyclo1.service").read_text(),
        ),
        InstallFile(
            POLKIT_ACTIONS_DIR / "io.github.iyclo1.policy",
            (packaging / "io.github.iyclo1.policy").read_text(),
        ),
        InstallFile(CONFIG, (packaging / "iyclo.json").read_text(), mode=0o640, keep_existing=True),
    ]


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@attrs.frozen
class Step:
    """What install did or, with --dry-run, would do: one line each."""

    text: str


def _write(target: Path, item: InstallFile) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.iyclo-tmp")
    tmp.write_text(item.content)
    os.chmod(tmp, item.mode)
    tmp.replace(target)


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        raise IycloError(f"{' '.join(argv)} failed: {detail}")


RELOAD_DBUS = ["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "ReloadConfig"]  # fmt: skip


def install(prefix: Path = Path("/"), *, dry_run: bool = False, enable: bool = False) -> list[Step]:
    """Write the files, then make systemd and the bus read them (only when prefix is /)."""
    live = prefix.resolve() == Path("/")
    steps: list[Step] = []
    for item in planned_files(iyclod_path()):
        target = prefix / item.path
        if item.keep_existing and target.exists():
            steps.append(Step(f"keep {target} (exists)"))
            continue
        steps.append(Step(f"write {target}"))
        if not dry_run:
            try:
                _write(target, item)
            except OSError as exc:
                raise IycloError(f"cannot write {target}: {exc.strerror or exc}") from None
    commands = [["systemctl", "daemon-reload"], RELOAD_DBUS]
    if live and not _group_exists(DEFAULT_DEPLOY_GROUP):
        commands.insert(0, ["groupadd", "--system", DEFAULT_DEPLOY_GROUP])
    if enable:
        commands.append(["systemctl", "enable", "--now", "iyclod.service"])
    for argv in commands if live else []:
        steps.append(Step("run " + " ".join(argv)))
        if not dry_run:
            _run(argv)
    return steps


def uninstall(prefix: Path = Path("/"), *, dry_run: bool = False) -> list[Step]:
    """Stop iyclod and remove what install wrote, except the config (the operator's).

    Pods and jobs keep running: they are not iyclod's children, and the next iyclod
    adopts them.
    """
    live = prefix.resolve() == Path("/")
    steps: list[Step] = []
    if live:
        steps.append(Step("run systemctl disable --now iyclod.service"))
        if not dry_run:
            subprocess.run(
                ["systemctl", "disable", "--now", "iyclod.service"],
                capture_output=True,
                check=False,
            )
    for item in planned_files(iyclod_path()):
        target = prefix / item.path
        if item.keep_existing or not target.exists():
            continue
        steps.append(Step(f"remove {target}"))
        if not dry_run:
            target.unlink()
    for argv in [["systemctl", "daemon-reload"], RELOAD_DBUS] if live else []:
        steps.append(Step("run " + " ".join(argv)))
        if not dry_run:
            _run(argv)
    return steps
