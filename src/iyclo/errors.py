"""One error tree for every front.

Each error carries a stable D-Bus error name and a JSON-RPC code so the D-Bus
adapter, the JSON socket and the CLI translate it the same way, once, at their
boundary. Messages are one line and name what is wrong and where.
"""

from __future__ import annotations

from typing import ClassVar

DBUS_ERROR_PREFIX = "io.github.iyclo1.Error"


class IycloError(Exception):
    """Base of every error iyclo reports to a user.

    ``message`` says what is wrong, for every caller; ``hint`` (optional) says what to do
    about it in the CLI's words. Both fronts carry the hint beside the message (JSON-RPC
    ``data.hint``, a second D-Bus error argument), so only the CLI prints it and a D-Bus
    caller's message holds no advice about commands it does not use.
    """

    dbus_name: ClassVar[str] = f"{DBUS_ERROR_PREFIX}.Failed"
    rpc_code: ClassVar[int] = -32000
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidError(IycloError):
    """A manifest or a request is malformed; `details` lists every problem found."""

    dbus_name = f"{DBUS_ERROR_PREFIX}.Invalid"
    rpc_code = -32001
    exit_code = 2

    def __init__(
        self, message: str, details: list[str] | None = None, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.details = details or [message]


class NotFoundError(IycloError):
    dbus_name = f"{DBUS_ERROR_PREFIX}.NotFound"
    rpc_code = -32002
    exit_code = 3


class ConflictError(IycloError):
    dbus_name = f"{DBUS_ERROR_PREFIX}.Conflict"
    rpc_code = -32003
    exit_code = 4


class PodmanError(IycloError):
    dbus_name = f"{DBUS_ERROR_PREFIX}.Podman"
    rpc_code = -32004
    exit_code = 5


class SystemdError(IycloError):
    dbus_name = f"{DBUS_ERROR_PREFIX}.Systemd"
    rpc_code = -32005
    exit_code = 6


class PodmanUnreachableError(PodmanError):
    """Podman did not answer at all (its socket gone, no reply in time): the change it
    was part of may have been left half-made, since its undo needs Podman too. Same wire
    name and code as ``PodmanError``."""


class SystemdUnreachableError(SystemdError):
    """The bus to systemd failed under a call (not connected, no reply, connection lost);
    same wire name and code as ``SystemdError``."""


class AccessDeniedError(IycloError):
    dbus_name = f"{DBUS_ERROR_PREFIX}.AccessDenied"
    rpc_code = -32006
    exit_code = 7


class StoreError(IycloError):
    """The state directory cannot be read or written."""

    dbus_name = f"{DBUS_ERROR_PREFIX}.Store"
    rpc_code = -32007
    exit_code = 8


class UnavailableError(IycloError):
    """A dependency (Podman, systemd) is down: the daemon answers reads and refuses
    changes until it is back (``iyclo.core.health``)."""

    dbus_name = f"{DBUS_ERROR_PREFIX}.Unavailable"
    rpc_code = -32008
    exit_code = 9


class NotReadyError(IycloError):
    """A pod's new generation did not become ready (its health checks did not pass) in
    time: the apply failed, and says whether the previous generation was restored."""

    dbus_name = f"{DBUS_ERROR_PREFIX}.NotReady"
    rpc_code = -32009
    exit_code = 10
    kept: bool = False
    """The new generation stayed (``rollback: false``); otherwise the previous runs."""


INTERNAL = "internal error (see the daemon's log)"


class InternalError(IycloError):
    """What a client learns of a bug: an incident id to find the traceback in the daemon's
    log, never the exception's own text (it may hold paths, data or nonsense)."""

    dbus_name = f"{DBUS_ERROR_PREFIX}.Failed"
    rpc_code = -32603  # JSON-RPC's own "Internal error"
    exit_code = 1

    def __init__(self, incident: str) -> None:
        super().__init__(f"internal error (id {incident}; see the daemon's log)")
        self.incident = incident


def public_message(exc: BaseException) -> str:
    """The one line about ``exc`` that may leave the daemon (events, replies)."""
    return exc.message if isinstance(exc, IycloError) else INTERNAL


ALL_ERRORS: tuple[type[IycloError], ...] = (
    IycloError,
    InvalidError,
    NotFoundError,
    ConflictError,
    PodmanError,
    SystemdError,
    AccessDeniedError,
    StoreError,
    UnavailableError,
    NotReadyError,
)


def error_from_dbus_name(name: str, message: str) -> IycloError:
    """Map a D-Bus error name back to the typed error (used by clients)."""
    for cls in ALL_ERRORS:
        if cls.dbus_name == name:
            return cls(message)
    return IycloError(message)


def error_from_rpc_code(code: int, message: str) -> IycloError:
    for cls in ALL_ERRORS:
        if cls.rpc_code == code:
            return cls(message)
    return IycloError(message)
