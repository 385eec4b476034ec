"""The CLI stays lean: it must not pull in what only the daemon needs.

A structural check, not a timing assertion (timings live in bench/): importing the
CLI must not import podman, the daemon's core, the store or cattrs, and the commands that
reach the daemon must not import what they do not use before it answers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "web.json"

DAEMON_ONLY = ("podman", "requests", "tinydb", "cattrs", "structlog", "iyclo.core", "iyclo.store",
               "iyclo.systemd", "iyclo.api", "iyclo.manifest")  # fmt: skip


NOT_BEFORE_THE_REPLY = ("pathlib", "urllib", "dataclasses", "asyncio", "attr", "attrs")
"""What none of ``ps``, ``inspect`` and ``apply`` uses to reach the daemon, measured in
``iyclo ps`` (Debian 12, Python 3.11): pathlib with the urllib.parse it imports ~3 ms, the
method table's classes made as dataclasses ~3.5 ms; asyncio and attrs 15 ms and more each
(the JSON client is a blocking socket, and the manifest's types are the daemon's)."""


def _imported(code: str, *argv: str, check: bool = True) -> set[str]:
    return _imported_by(["-c", code, *argv], check=check)


def _imported_by(args: list[str], *, check: bool = True) -> set[str]:
    """The modules ``python -X importtime args…`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, check=check
    )
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
"""What the ``iyclo`` console script runs."""
ENTRIES = pytest.mark.parametrize(
    "entry", [["-c", START], ["-m", "iyclo.cli"]], ids=["script", "python -m"]
)
"""The console script, and ``python -m iyclo.cli``, which bench/ times from a checkout."""


@ENTRIES
def test_version_is_answered_before_click_is_imported(entry: list[str]) -> None:
    names = _imported_by([*entry, "--version"])
    assert "iyclo.cli.start" in names
    assert sorted(n for n in names if n.startswith(("click", "rich", "iyclo.cli.main"))) == []


@ENTRIES
@pytest.mark.parametrize("argv", [["ps"], ["inspect", "web"], ["apply", "-f", str(EXAMPLE)]])
def test_commands_import_nothing_the_daemon_needs(
    entry: list[str], argv: list[str], tmp_path: Path
) -> None:
    """The command runs as far as reaching the daemon (there is none: it exits 1)."""
    socket = str(tmp_path / "none.sock")
    names = _imported_by([*entry, "--socket", socket, *argv], check=False)
    assert "iyclo.cli.commands" in names
    assert "iyclo.client.jsonrpc" in names  # it did get as far as the client
    leaked = sorted(n for n in names if n.split(".")[0] in DAEMON_ONLY or n.startswith(DAEMON_ONLY))
    assert leaked == []
    assert sorted(n for n in names if n.split(".")[0] in ("rich", "rich_click")) == []
    assert sorted(n for n in names if n.split(".")[0] in NOT_BEFORE_THE_REPLY) == []
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
