"""The CLI stays lean: it must not pull in what only the daemon needs.

A structural check, not a timing assertion (timings live in bench/): importing the
CLI must not import podman, the daemon's core, the store or cattrs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "web.json"

DAEMON_ONLY = ("podman", "requests", "tinydb", "cattrs", "structlog", "iyclo.core", "iyclo.store",
               "iyclo.systemd", "iyclo.api", "iyclo.manifest")  # fmt: skip


def _imported(code: str, *argv: str, check: bool = True) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *argv],
        capture_output=True, text=True, check=check,
    )  # fmt: skip
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_cli_start_up_imports_nothing_the_daemon_needs() -> None:
    names = _imported("import iyclo.cli.main")
    assert "iyclo.cli.main" in names
    leaked = sorted(n for n in names if n.split(".")[0] in DAEMON_ONLY or n.startswith(DAEMON_ONLY))
    assert leaked == []


def test_dbus_transport_stays_lean() -> None:
    names = _imported("import iyclo.client.dbus")
    assert "dbus_fast" in names
    leaked = sorted(n for n in names if n.startswith(DAEMON_ONLY))
    assert leaked == []


START = "import sys; from iyclo.cli.start import start; sys.argv[0] = 'iyclo'; start()"


def test_version_is_answered_before_click_is_imported() -> None:
    names = _imported(START, "--version")
    assert "iyclo.cli.start" in names
    assert sorted(n for n in names if n.startswith(("click", "rich", "iyclo.cli.main"))) == []


@pytest.mark.parametrize("argv", [["ps"], ["inspect", "web"], ["apply", "-f", str(EXAMPLE)]])
def test_commands_import_nothing_the_daemon_needs(argv: list[str], tmp_path: Path) -> None:
    """The command runs as far as reaching the daemon (there is none: it exits 1)."""
    socket = str(tmp_path / "none.sock")
    names = _imported(START, "--socket", socket, *argv, check=False)
    assert "iyclo.cli.commands" in names
    leaked = sorted(n for n in names if n.split(".")[0] in DAEMON_ONLY or n.startswith(DAEMON_ONLY))
    assert leaked == []
    assert sorted(n for n in names if n.split(".")[0] in ("rich", "rich_click")) == []
    if argv[0] in ("ps", "inspect"):  # nothing streamed: the event classes stay unmade
        assert "iyclo.contract.events" not in names


@pytest.mark.parametrize("argv", [[], ["--help"], ["ps", "-h"]])
def test_help_is_still_rendered_by_rich_click(argv: list[str]) -> None:
    names = _imported(START, *argv, check=False)
    assert "rich_click.patch" in names


def test_the_daemon_starts_without_rich() -> None:
    """iyclod logs JSON lines: structlog must not load rich for console tracebacks."""
    code = "import sys; from iyclo.daemon import main; main(['--help'])"
    names = _imported(code, check=False)
    assert "structlog.dev" in names
    assert sorted(n for n in names if n.startswith("rich.")) == []
