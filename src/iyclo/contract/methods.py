"""The methods iyclod serves, defined once for every front.

Each ``Method`` names the JSON socket's method and its parameters (name, accepted JSON
types, default), and the ``io.github.iyclo1.Manager`` member that serves it on D-Bus with
its in- and out-arguments. From this table:

* the JSON socket checks a request's parameters before it calls anything (``bind``), so a
  ``TypeError`` raised inside a method is a bug, never "invalid params";
* the D-Bus client builds each call (member, signature, arguments) and checks its
  parameters the same way, so both clients refuse the same mistakes with the same words;
* tests hold the JSON socket's handlers, the exported D-Bus interface and
  ``dbus/io.github.iyclo1.Manager.xml`` to it.

Stdlib only: the CLI's clients import it, on every call (``bind``). Its value types are
``NamedTuple``s, not dataclasses: making the three frozen dataclasses (and importing
``dataclasses``) cost ~3.5 ms of each ``iyclo ps``, a named tuple's class ~0.3 ms.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

REQUIRED: Any = object()


class Access(enum.Enum):
    """What a call does, as far as permission goes; each verb but ``READ`` is a polkit
    action (``packaging/io.github.iyclo1.policy``) named ``io.github.iyclo1.<value>``.

    ``READ`` is open to every local user, who sees ``env`` values as "<redacted>" unless
    they may ``DEPLOY``: whoever may write a manifest may read one back whole.
    """

    READ = "read"
    DEPLOY = "deploy"
    """Create, change or remove pods and jobs (apply, remove)."""
    MANAGE = "manage"
    """Act on what is deployed without changing it (start, stop, restart, run, reconcile),
    and pull images."""
    READ_LOGS = "read-logs"
    """Read the journal of pods and job runs: output is as sensitive as the journal."""
    EXEC = "exec"
    """Run a command inside a running container: as much as the container's own user
    may do, which is more than managing it."""

    @property
    def action_id(self) -> str:
        return f"io.github.iyclo1.{self.value}"


READ, DEPLOY, MANAGE, READ_LOGS, EXEC = (
    Access.READ, Access.DEPLOY, Access.MANAGE, Access.READ_LOGS, Access.EXEC,
)  # fmt: skip


class Param(NamedTuple):
    name: str
    types: tuple[type, ...]
    """JSON types accepted on the socket (``bool`` is never taken for ``int``)."""
    dbus: str
    """Its D-Bus argument's signature; "" when D-Bus says it another way (see Method)."""
    default: Any = REQUIRED
    doc: str = ""
    dbus_name: str = ""
    """Its D-Bus argument's name when that differs (``manifest_json``)."""

    @property
    def dbus_arg(self) -> str:
        return self.dbus_name or self.name

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) and bool not in self.types:
            return False
        return isinstance(value, self.types)


class Out(NamedTuple):
    name: str
    dbus: str


class Method(NamedTuple):
    name: str
    """The JSON socket's method name, also what ``Transport.call`` takes."""
    params: tuple[Param, ...]
    member: str
    """The Manager member serving it; "" for ``version``, the ``Version`` property."""
    out: tuple[Out, ...]
    access: Access
    """Who may call it: the daemon checks this on both fronts (``iyclo.core.access``)."""
    doc: str
    fds: tuple[str, ...] = ()
    """The caller's own file descriptors the method takes (exec's stdio, a pipe for
    logs that follow), by name. D-Bus: ``h`` in-arguments after the parameters. JSON
    socket: not parameters; once the daemon has checked the call it sends the
    notification ``{"method": "fds", "params": {"id": <the request's id>, "count": N}}``
    and the client answers with one byte carrying the N descriptors (``SCM_RIGHTS``),
    in this order, sending nothing else until the reply."""

    @property
    def dbus_in(self) -> str:
        return "".join(p.dbus for p in self.params) + "h" * len(self.fds)

    @property
    def dbus_out(self) -> str:
        return "".join(o.dbus for o in self.out)


class ParamsError(ValueError):
    """A request's parameters do not fit the method: refused before anything is called."""


def _manifest() -> Param:
    return Param("manifest", (str, dict), "s", doc="the manifest, as JSON text or an object",
                 dbus_name="manifest_json")  # fmt: skip


def _name() -> Param:
    return Param("name", (str,), "s", doc="a pod's or job's name")


def _json(name: str) -> tuple[Out]:
    return (Out(f"{name}_json", "s"),)


_STATE = (Out("state", "s"),)

METHODS: tuple[Method, ...] = (
    Method("apply",
           (_manifest(),
            Param("wait_timeout", (int, float, type(None)), "", None,
                  "seconds to wait for readiness (default: the manifest's "
                  "update.readyTimeout; D-Bus: the ApplyWithin member)")),
           "Apply",
           (Out("path", "o"), Out("generation", "u"), Out("changed", "b"), Out("state", "s")),
           DEPLOY, "Create or update a pod or job; waits until it runs or is scheduled."),
    Method("rollback", (_name(), Param("to", (int,), "u", 0, "0: the generation before")),
           "Rollback",
           (Out("path", "o"), Out("generation", "u"), Out("changed", "b"), Out("state", "s")),
           DEPLOY, "Apply a stored generation's manifest again, as a new generation."),
    Method("validate", (_manifest(),), "Validate", (Out("errors", "as"),), READ,
           "Every problem of a manifest (empty: valid)."),
    Method("diff", (_manifest(),), "Diff", (Out("diff", "s"),), READ,
           "A unified diff of the stored manifest against this one (empty: no change)."),
    Method("remove",
           (_name(), Param("purge_history", (bool,), "", False,
                           "also drop a job's run history (D-Bus: the Purge member)"),
            Param("volumes", (bool,), "", False,
                  "also the named volumes it owns (D-Bus: the RemoveWith member)")),
           "Remove", (), DEPLOY,
           "Remove a pod, job or network: units, containers and records (volumes stay)."),
    Method("start", (_name(),), "Start", _STATE, MANAGE, "Start a pod, or schedule a job."),
    Method("stop", (_name(),), "Stop", _STATE, MANAGE, "Stop a pod, or a job and its run."),
    Method("restart", (_name(),), "Restart", _STATE, MANAGE,
           "Restart a pod, or a job's timer."),
    Method("list", (), "List", (Out("pods", "a(sssuuus)"),), READ,
           "The status of every pod and job (D-Bus: one struct each, then Get)."),
    Method("get", (_name(),), "Get", _json("status"), READ, "Everything known about one."),
    Method("get_manifest", (_name(), Param("generation", (int,), "u", 0, "0: the current")),
           "GetManifest", _json("manifest"), READ, "A stored manifest."),
    Method("history", (_name(),), "History", _json("history"), READ,
           "The stored generations."),
    Method("runs", (_name(),), "Runs", _json("runs"), READ,
           "A job's run history, oldest first (kept after remove)."),
    Method("logs",
           (_name(), Param("run", (int,), "u", 0, "0: the newest"),
            Param("lines", (int, type(None)), "u", None, "only the last N (D-Bus: 0 all)")),
           "Logs", _json("logs"), READ_LOGS,
           "A job run's output, or a pod unit's journal."),
    Method("reconcile", (), "Reconcile", _json("report"), MANAGE,
           "Make systemd and Podman match the store now."),
    Method("run_job", (_name(),), "RunJob", _json("run"), MANAGE, "Run a job now."),
    # MANAGE, not DEPLOY: a pull changes no pod or job (what runs stays), but it makes
    # the host fetch and store images, as a start may; READ would let anyone fill the disk.
    Method("pull",
           (Param("manifest", (str, dict), "s", "", "a manifest: its images, as each "
                  "container's pullPolicy says", dbus_name="manifest_json"),
            Param("image", (str,), "s", "", "one image reference, pulled always")),
           "Pull", _json("pull"), MANAGE,
           "Pull images ahead of an apply; progress as PullProgress events."),
    Method("exec",
           (_name(), Param("container", (str,), "s", "", "a container of the pod; \"\": "
                           "its first"),
            Param("command", (list,), "as", doc="the command and its arguments"),
            Param("tty", (bool,), "b", False, "give the command a terminal (podman -t)"),
            Param("interactive", (bool,), "b", False, "keep its stdin open (podman -i)")),
           "Exec", (Out("exit_code", "i"),), EXEC,
           "Run a command in a running container of a pod with the caller's stdin, stdout "
           "and stderr; its exit code. Ended (and killed) when the caller goes away.",
           fds=("stdin", "stdout", "stderr")),
    Method("follow_logs",
           (_name(), Param("lines", (int,), "u", 10, "the last N lines first, then new ones")),
           "FollowLogs", (), READ_LOGS,
           "A pod's or job's journal as it grows, one JSON object a line ({at, "
           "identifier, message}) into the caller's pipe, until the caller goes away.",
           fds=("out",)),
    Method("stats", (Param("names", (list,), "as", [], "pods (none: every pod)"),),
           "Stats", _json("stats"), READ,
           "CPU, memory and tasks per pod (systemd's accounting of its slice) and per "
           "container (Podman's); null where the host cannot say."),
    Method("version", (), "", (Out("version", "s"),), READ, "The daemon's version."),
    Method("volumes", (), "Volumes", _json("volumes"), READ,
           "The named volumes iyclo made: name, owner, in use (by whom), mountpoint."),
    Method("health", (), "Health", _json("health"), READ,
           "Whether Podman and systemd are there: ok, or degraded with the reasons."),
)  # fmt: skip

BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
DBUS_ONLY: dict[str, str] = {
    "Purge": "remove with purge_history",
    "ApplyWithin": "apply with wait_timeout",
    "RemoveWith": "remove with purge_history and volumes",
}
"""Manager members that are another spelling of a method above."""


def method(name: str) -> Method:
    found = BY_NAME.get(name)
    if found is None:
        raise ParamsError(f"unknown method '{name}'")
    return found


def bind(name: str, params: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """The parameters of a call to ``name`` by name, defaults filled in; ``ParamsError``
    naming the first mistake (an unknown method or parameter, a missing one, a wrong
    type)."""
    found = method(name)
    if isinstance(params, Mapping):
        given = dict(params)
    else:
        if len(params) > len(found.params):
            raise ParamsError(f"{name}: takes {len(found.params)} parameters, {len(params)} given")
        given = {p.name: v for p, v in zip(found.params, params, strict=False)}
    known = {p.name for p in found.params}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ParamsError(f"{name}: unknown parameter '{unknown[0]}'")
    bound: dict[str, Any] = {}
    for param in found.params:
        if param.name not in given:
            if param.required:
                raise ParamsError(f"{name}: missing parameter '{param.name}'")
            bound[param.name] = param.default
            continue
        value = given[param.name]
        if not param.accepts(value):
            wanted = " or ".join(_JSON_NAMES[t] for t in param.types)
            raise ParamsError(f"{name}: parameter '{param.name}' must be {wanted}")
        bound[param.name] = value
    return bound


_JSON_NAMES: dict[type, str] = {
    str: "a string", dict: "an object", int: "an integer", float: "a number",
    bool: "true or false",
    type(None): "null", list: "an array",
}  # fmt: skip
