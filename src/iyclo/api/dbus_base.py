"""What every object of iyclo's D-Bus interface shares: names, paths, reply types, the
error boundary and the protocol of the service behind it."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, ClassVar, ParamSpec, TypeVar

import structlog
from dbus_fast import DBusError, Message, MessageType
from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface

from iyclo.api.incident import incident
from iyclo.api.protocol import ServiceApi
from iyclo.errors import DBUS_ERROR_PREFIX, InvalidError, IycloError

log = structlog.get_logger("iyclo.dbus")

BUS_NAME = "io.github.iyclo1"
MANAGER_PATH = "/io/github/iyclo1"
MANAGER_INTERFACE = "io.github.iyclo1.Manager"
POD_INTERFACE = "io.github.iyclo1.Pod"
JOB_INTERFACE = "io.github.iyclo1.Job"
FAILED = f"{DBUS_ERROR_PREFIX}.Failed"

__all__ = ["ServiceApi"]

# D-Bus types of the replies, spelled once. ``NoReply``: dbus-fast reads a bare ``None``
# return annotation as a missing signature, so an empty reply is spelled out.
NoReply = Annotated[None, DBusSignature("")]


# -- names ------------------------------------------------------------------------------


def bus_label_escape(text: str) -> str:
    """sd-bus's ``bus_label_escape``: object path elements allow only [A-Za-z0-9_].

    Every other byte (and a leading digit, and ``_`` itself) becomes ``_xx`` in lower-case
    hex; the empty string becomes ``_``. The same rule systemd uses for unit paths, so
    ``busctl`` users already know it.
    """
    if not text:
        return "_"
    out: list[str] = []
    for index, byte in enumerate(text.encode()):
        char = chr(byte)
        if ("a" <= char <= "z") or ("A" <= char <= "Z") or (index > 0 and "0" <= char <= "9"):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def object_path(kind: str, name: str) -> str:
    """``/io/github/iyclo1/<kind>/<label>``: the collection is the kind (pod, job)."""
    return f"{MANAGER_PATH}/{kind.lower()}/{bus_label_escape(name)}"


def pod_path(name: str) -> str:
    return object_path("pod", name)


def job_path(name: str) -> str:
    return object_path("job", name)


# -- errors -----------------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")


def error_text(exc: IycloError) -> str:
    """The D-Bus error message: one line, or for ``Invalid`` one line per problem."""
    if not isinstance(exc, InvalidError):
        return exc.message
    details = exc.details[1:] if exc.details[:1] == [exc.message] else exc.details
    return "\n".join([exc.message, *details])


class HintedDBusError(DBusError):
    """An error reply with the hint as a second argument: busctl, gdbus and every other
    caller show the first (the message); iyclo's own client gives the CLI the hint."""

    def __init__(self, type_: str, text: str, hint: str) -> None:
        super().__init__(type_, text)
        self.hint = hint

    def _as_message(self, msg: Message) -> Message:
        return Message(
            message_type=MessageType.ERROR,
            reply_serial=msg.serial,
            destination=msg.sender,
            error_name=self.type,
            signature="ss",
            body=[self.text, self.hint],
        )


def dbus_error(exc: IycloError) -> DBusError:
    """The D-Bus error of a typed error: its name, its text, and its hint if it has one."""
    if exc.hint:
        return HintedDBusError(exc.dbus_name, error_text(exc), exc.hint)
    return DBusError(exc.dbus_name, error_text(exc))


def translated(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place errors cross to D-Bus: typed errors by name; anything else is a bug,
    logged with its traceback and answered as ``Failed`` with an incident id only.

    Applied under ``@dbus_method()``; ``functools.wraps`` keeps the signature dbus-fast
    reads the D-Bus types from.
    """

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except IycloError as exc:
            raise dbus_error(exc) from None
        except DBusError:
            raise
        except Exception:  # a bug must not take the daemon down, nor reach the caller
            internal = incident("D-Bus method failed", method=fn.__qualname__)
            raise DBusError(internal.dbus_name, internal.message) from None

    return wrapper


def as_json(value: Any) -> str:
    """Encoded as the JSON socket encodes its results, so both fronts return the same."""
    return json.dumps(value, default=str)


class Interface(ServiceInterface):
    """Names out-arguments in the introspection data (dbus-fast leaves them unnamed)."""

    OUT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def introspect(self) -> intr.Interface:
        interface = super().introspect()
        for method in interface.methods:
            names = self.OUT_ARGS.get(method.name, ())
            for arg, name in zip(method.out_args, names, strict=True):
                arg.name = name
        for signal in interface.signals:
            names = self.OUT_ARGS.get(signal.name, ())
            for arg, name in zip(signal.args, names, strict=True):
                arg.name = name
        return interface
