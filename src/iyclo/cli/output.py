"""How the CLI speaks to people: one line per failure (and its hint), tracebacks only
with --debug, JSON for scripts, and rich on the console, imported on first use (importing
rich.console costs ~20 ms the CLI need not pay up front)."""

from __future__ import annotations

import functools
import json
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from iyclo.errors import IycloError

if TYPE_CHECKING:
    from rich.console import Console

_debug = False

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
"""The one ``--json`` flag every command that prints data takes."""


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


# C0 controls but the tab, DEL and C1 controls (U+0080-U+009F: "\x9b" is CSI to many
# terminals): what makes a terminal act instead of print.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    r"""``text`` safe to write to a terminal: each control character as ``\xNN``, tabs kept.

    Journal lines are written by whatever ran in a unit, and error messages quote them
    (the reason a start failed): raw, "\x1b]0;...\x07" or "\x1b[2J" would act on the
    terminal of whoever reads them, root's included, and a "\r" or "\n" could forge a line.
    Every path that prints text from the daemon goes through here (``--json`` escapes on
    its own)."""
    return _CONTROL_RE.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def error_line(message: str) -> None:
    """One ``iyclo: error:`` line on stderr, its text made safe for a terminal."""
    sys.stderr.write(f"iyclo: error: {terminal_text(message)}\n")


def die(message: str, *, code: int = 1, hint: str | None = None) -> NoReturn:
    """Print one line (and an optional hint) to stderr and exit with `code`."""
    error_line(message)
    if hint:
        sys.stderr.write(f"hint: {terminal_text(hint)}\n")
    raise SystemExit(code)


def fail(exc: IycloError) -> NoReturn:
    """An error from the daemon or a client: its message, then its hint (only the CLI
    prints hints; see ``IycloError``)."""
    if _debug:
        raise exc
    die(exc.message, code=exc.exit_code, hint=exc.hint)


@functools.cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def out() -> Console:
    """Where results go (stdout)."""
    return _console(False)


def console() -> Console:
    """Where progress goes (stderr), so that stdout stays the result."""
    return _console(True)


def escape(text: str) -> str:
    """rich markup escaping, imported on use like the rest of rich."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)
