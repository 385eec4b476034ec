"""Run records of scheduled jobs, from systemd's two accounts of a service invocation.

Pure functions, no I/O: what ``Jobs`` stores about a run is derived here from either

* the service's properties (``ActiveState``, ``InvocationID``, ``Inactive*Timestamp``,
  ``ExecMain*``, ``Result``), as a ``PropertiesChanged`` signal or ``GetAll`` carries
  them while that invocation is still the unit's current one, or
* systemd's own journal messages about the unit, which carry ``INVOCATION_ID`` and
  stay readable after the unit has moved on to the next run (or was collected), so a
  run whose end the daemon missed is still settled with its real result.

A run record (JSON, one per invocation, numbered by the store)::

    {"number": 7, "invocationId": "5c0f…", "generation": 2, "state": "failed",
     "startedAt": "2024-05-01T03:00:00.012Z", "startUsec": 1714532400012345,
     "finishedAt": "2024-05-01T03:00:04.220Z", "durationSec": 4.208,
     "exitCode": 3, "signal": null, "result": "exit-code"}

``state`` is running, succeeded, failed, stopped (the daemon stopped it: stop, remove
or an update) or lost (it never finished as far as systemd can still tell, e.g. the
host went down mid-run). ``exitCode`` is the exit status of the command that ended the
run, 128 + the signal number when a signal killed it (as a shell reports it), or -1
when nothing is known; ``result`` is systemd's ``Result=`` (``success``, ``exit-code``,
``timeout``, ``signal``, …) or ``unknown``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import frozen

# si_code values systemd reports in ExecMainCode (waitid(2)).
CLD_EXITED = 1
CLD_KILLED = 2
CLD_DUMPED = 3
_CODE_NAMES = {"exited": CLD_EXITED, "killed": CLD_KILLED, "dumped": CLD_DUMPED}

# systemd's catalog message IDs (sd-messages.h) for a unit's job start and its outcome.
MESSAGE_JOB_START = "7d4958e842da4a758f6c1cdc7b36dcc5"
MESSAGE_UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"
MESSAGE_UNIT_FAILURE_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"

UNKNOWN_EXIT = -1


@frozen
class RunEnd:
    """How one invocation of a job's service ended."""

    invocation_id: str
    start_usec: int
    end_usec: int
    exit_code: int
    signal: str | None
    result: str


@frozen
class JournalRun:
    """One invocation as systemd's journal tells it; ``end`` is None while it runs."""

    invocation_id: str
    start_usec: int
    end: RunEnd | None


def invocation_hex(value: Any) -> str:
    """``InvocationID`` (D-Bus ``ay``: 16 bytes, empty before the first start) as hex."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bytes | bytearray | list | tuple) and value:
        return bytes(value).hex()
    return ""


def usec_iso(usec: Any) -> str:
    """A realtime ``usec`` timestamp (as systemd and journald give them) as an ISO 8601 UTC
    string with milliseconds, the one spelling of a time iyclo reports; "" for none (0, or
    not a number)."""
    try:
        usec = int(usec)
    except (TypeError, ValueError):
        return ""
    if usec <= 0:
        return ""
    moment = datetime.fromtimestamp(usec / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exit_of(code: int, status: int) -> tuple[int, str | None]:
    """(exit code, signal name) of a process as systemd saw it end."""
    if code == CLD_EXITED:
        return status, None
    if code in (CLD_KILLED, CLD_DUMPED):
        try:
            name: str | None = signal.Signals(status).name
        except ValueError:
            name = str(status)
        return 128 + status, name
    return UNKNOWN_EXIT, None


def started(invocation_id: str, start_usec: int, generation: int) -> dict[str, Any]:
    """A new run record, still going."""
    return {
        "invocationId": invocation_id,
        "generation": generation,
        "state": "running",
        "startedAt": usec_iso(start_usec),
        "startUsec": start_usec,
    }


def finished(end: RunEnd, *, stopped: bool = False) -> dict[str, Any]:
    """The fields that close a run record."""
    if stopped:
        state = "stopped"
    elif end.result == "unknown":
        state = "lost"
    else:
        state = "succeeded" if end.result == "success" else "failed"
    duration = max(0, end.end_usec - end.start_usec) / 1_000_000 if end.end_usec else None
    return {
        "state": state,
        "finishedAt": usec_iso(end.end_usec) if end.end_usec else None,
        "durationSec": round(duration, 3) if duration is not None else None,
        "exitCode": end.exit_code,
        "signal": end.signal,
        "result": end.result,
    }


def lost(invocation_id: str, start_usec: int) -> RunEnd:
    """The end of a run neither systemd's state nor its journal can account for."""
    return RunEnd(invocation_id, start_usec, 0, UNKNOWN_EXIT, None, "unknown")


def end_from_properties(props: Mapping[str, Any]) -> RunEnd:
    """The end of the unit's current invocation, read from its (ended) properties.

    With several ``ExecStart=`` commands, ``ExecMain*`` describe the last one that ran,
    which is the one that failed or, on success, the last container.
    """
    exit_code, signame = exit_of(
        int(props.get("ExecMainCode", 0)), int(props.get("ExecMainStatus", 0))
    )
    result = str(props.get("Result") or "unknown")
    if result == "success" and exit_code == UNKNOWN_EXIT:
        exit_code = 0  # ended cleanly without a main process exit on record
    return RunEnd(
        invocation_id=invocation_hex(props.get("InvocationID")),
        start_usec=int(props.get("InactiveExitTimestamp", 0)),
        end_usec=int(props.get("InactiveEnterTimestamp", 0)),
        exit_code=exit_code,
        signal=signame,
        result=result,
    )


def runs_from_journal(entries: Iterable[Mapping[str, Any]]) -> list[JournalRun]:
    """Invocations in systemd's (PID 1's) journal messages about one unit, oldest first.

    The job start message gives the start, ``Main process exited`` (COMMAND=ExecStart)
    the exit status, and ``Deactivated successfully`` or ``Failed with result`` the
    result and the end. A successful exit is only logged at debug level, so a success
    without an exit message is exit code 0.
    """
    starts: dict[str, int] = {}
    exits: dict[str, tuple[int, str | None]] = {}
    results: dict[str, tuple[str, int]] = {}
    order: list[str] = []
    for entry in entries:
        invocation = str(entry.get("INVOCATION_ID") or "").lower()
        if not invocation:
            continue
        try:
            at = int(entry.get("__REALTIME_TIMESTAMP", 0))
        except (TypeError, ValueError):
            continue
        if invocation not in starts:
            starts[invocation] = at
            order.append(invocation)
        message_id = entry.get("MESSAGE_ID")
        if message_id == MESSAGE_JOB_START and entry.get("JOB_TYPE") == "start":
            starts[invocation] = at
        if entry.get("COMMAND") == "ExecStart" and "EXIT_CODE" in entry:
            code = _CODE_NAMES.get(str(entry.get("EXIT_CODE")), 0)
            try:
                status = int(entry.get("EXIT_STATUS", 0))
            except (TypeError, ValueError):
                status = 0
            exits[invocation] = exit_of(code, status)
        if message_id == MESSAGE_UNIT_SUCCESS:
            results[invocation] = ("success", at)
        elif message_id == MESSAGE_UNIT_FAILURE_RESULT and entry.get("UNIT_RESULT"):
            results[invocation] = (str(entry["UNIT_RESULT"]), at)
    runs = []
    for invocation in order:
        end = None
        if invocation in results:
            result, end_usec = results[invocation]
            exit_code, signame = exits.get(
                invocation, (0, None) if result == "success" else (UNKNOWN_EXIT, None)
            )
            end = RunEnd(invocation, starts[invocation], end_usec, exit_code, signame, result)
        runs.append(JournalRun(invocation, starts[invocation], end))
    return runs
