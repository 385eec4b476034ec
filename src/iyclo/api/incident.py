"""What both fronts do with a bug: log it whole, tell the client only where to look.

The exception's text can hold anything (paths, data, a half-written message), so it
stays in the daemon's log with its traceback, under an incident id; the client gets
``internal error (id …; see the daemon's log)`` and can quote the id.
"""

from __future__ import annotations

import secrets
from typing import Any

import structlog

from iyclo.errors import InternalError

log = structlog.get_logger("iyclo.incident")


def incident(what: str, **context: Any) -> InternalError:
    """Log the exception being handled, with its traceback, and return what the client
    sees of it. Call from inside an ``except`` block."""
    number = secrets.token_hex(4)
    log.exception(what, incident=number, **context)
    return InternalError(number)
