"""The events iyclod publishes, as every front carries them.

One definition serves the core (which publishes them), the JSON socket (one JSON
object per event), the D-Bus interface (one signal per event type, one argument per
field, in field order) and both clients. A field therefore cannot be spelled one way
by its producer and another way by an adapter, and ``iyclo events --json`` prints the
same object whichever transport it used.

Spelling rules, applied here and nowhere else:

* the event type's name is the class name, the D-Bus signal's member and the JSON
  ``"event"`` value (``JobFinished``);
* a field's D-Bus argument name is its Python name (``exit_code``), its JSON key is that
  name in camelCase (``exitCode``), as the rest of the JSON socket spells keys;
* D-Bus has no null, so nothing here is optional: ``generation`` 0 means none,
  ``error`` "" means none, ``exit_code`` and ``duration_sec`` -1 mean unknown (a run
  systemd lost track of), as in the run records;
* ``at`` is the daemon's clock (seconds since the epoch) when the event was published,
  carried on both transports so they agree on it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

UNKNOWN = -1


def _arg(dbus: str, **kwargs: Any) -> Any:
    return dataclasses.field(metadata={"dbus": dbus}, **kwargs)


def _at() -> Any:
    return _arg("d", default_factory=time.time)


def camel(name: str) -> str:
    """``exit_code`` → ``exitCode``: the JSON socket's spelling of a field."""
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


_DECODE: dict[str, type] = {"s": str, "u": int, "t": int, "i": int, "d": float, "b": bool}


class _Record:
    """Encoding and decoding shared by every event type (fields carry their D-Bus type)."""

    MEMBER: ClassVar[str]

    @classmethod
    def _fields(cls) -> tuple[dataclasses.Field[Any], ...]:
        return dataclasses.fields(cls)  # type: ignore[arg-type]

    @classmethod
    def dbus_signature(cls) -> str:
        return "".join(f.metadata["dbus"] for f in cls._fields())

    @classmethod
    def dbus_arg_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls._fields())

    def dbus_args(self) -> list[Any]:
        return [getattr(self, f.name) for f in self._fields()]

    @classmethod
    def from_dbus(cls, body: Sequence[Any]) -> Self:
        fields = cls._fields()
        if len(body) != len(fields):
            raise ValueError(f"{cls.MEMBER}: {len(body)} arguments, expected {len(fields)}")
        values = {f.name: _DECODE[f.metadata["dbus"]](v) for f, v in zip(fields, body, strict=True)}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.MEMBER}
        for f in self._fields():
            out[camel(f.name)] = getattr(self, f.name)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        values = {}
        for f in cls._fields():
            key = camel(f.name)
            if key not in data:
                raise ValueError(f"{cls.MEMBER}: no {key!r}")
            values[f.name] = _DECODE[f.metadata["dbus"]](data[key])
        return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _StateChanged(_Record):
    """The fields a pod's and a job's state changes share, in their D-Bus order."""

    name: str = _arg("s")
    state: str = _arg("s")
    generation: int = _arg("u", default=0)
    error: str = _arg("s", default="")
    at: float = _at()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodChanged(_StateChanged):
    """A pod's state changed: applying, running, starting, restarting, stopping, stopped,
    failed, missing, removing, removed."""

    MEMBER: ClassVar[str] = "PodChanged"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobChanged(_StateChanged):
    """A job's state changed: applying, scheduled, running (a run began), stopped,
    failed, missing, removing, removed."""

    MEMBER: ClassVar[str] = "JobChanged"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobFinished(_Record):
    """A run of a job ended. ``state`` is iyclo's word for it (succeeded, failed,
    stopped, lost); ``exit_code`` the container's exit status (128 + N when signal N
    killed it); ``result`` systemd's ``Result=`` of the run (success, exit-code,
    timeout, signal, …, or unknown)."""

    MEMBER: ClassVar[str] = "JobFinished"
    name: str = _arg("s")
    run: int = _arg("u")
    state: str = _arg("s")
    exit_code: int = _arg("i")
    result: str = _arg("s")
    duration_sec: float = _arg("d")
    at: float = _at()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PullProgress(_Record):
    """A step of an image pull, as Podman's pull stream reports it: ``name`` is the pod
    or job the pull is for ("" for ``iyclo pull IMAGE``), ``layer`` Podman's short layer
    ID, ``status`` its words for the step ("Copying blob", "Downloading", "Pull
    complete", …), ``current`` and ``total`` bytes (0 when Podman does not say: Podman
    4.3 names each layer but sends no sizes). Sent on the event stream, so a client
    sees a pull that ``apply`` or ``pull`` makes while the call is under way, over
    either front; at most a few per second per layer."""

    MEMBER: ClassVar[str] = "PullProgress"
    name: str = _arg("s")
    image: str = _arg("s")
    layer: str = _arg("s")
    status: str = _arg("s")
    current: int = _arg("t", default=0)
    total: int = _arg("t", default=0)
    at: float = _at()


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthChanged(_Record):
    """A checked container's health changed: ``health`` is starting, healthy, unhealthy
    (Podman's words for its health check), or started (its startup check passed) or
    failed-start (it did not). ``action`` is what iyclo did about it (restart, kill, stop,
    or "" for nothing); ``output`` the last check's output, at most 300 characters."""

    MEMBER: ClassVar[str] = "HealthChanged"

    name: str = _arg("s")
    container: str = _arg("s")
    health: str = _arg("s")
    generation: int = _arg("u", default=0)
    action: str = _arg("s", default="")
    output: str = _arg("s", default="")
    at: float = _at()


Event = PodChanged | JobChanged | JobFinished | PullProgress | HealthChanged
EventType = (
    type[PodChanged] | type[JobChanged] | type[JobFinished] | type[PullProgress]
    | type[HealthChanged]
)  # fmt: skip
EVENT_TYPES: tuple[EventType, ...] = (
    PodChanged, JobChanged, JobFinished, PullProgress, HealthChanged
)  # fmt: skip
_BY_MEMBER: dict[str, EventType] = {cls.MEMBER: cls for cls in EVENT_TYPES}


def event_from_json(data: Mapping[str, Any]) -> Event:
    """An event as the JSON socket sends it; ValueError for anything else."""
    cls = _BY_MEMBER.get(str(data.get("event")))
    if cls is None:
        raise ValueError(f"not an iyclo event: {data.get('event')!r}")
    return cls.from_json(data)


def event_from_signal(member: str, signature: str, body: Sequence[Any]) -> Event | None:
    """An event as the D-Bus interface signals it; None for any other signal."""
    cls = _BY_MEMBER.get(member)
    if cls is None or signature != cls.dbus_signature():
        return None
    return cls.from_dbus(body)
