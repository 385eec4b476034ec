"""How the CLI speaks to people: one line per failure, tracebacks only with --debug."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from iyclo.errors import IycloError

_debug = False


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def die(message: str, *, code: int = 1, hint: str | None = None) -> NoReturn:
    """Print one line (and an optional hint) to stderr and exit with `code`."""
    sys.stderr.write(f"iyclo: error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    raise SystemExit(code)


def fail(exc: IycloError) -> NoReturn:
    if _debug:
        raise exc
    die(exc.message, code=exc.exit_code)
