"""The exact requests iyclo makes of Podman and systemd for a Job, and how a run's
record is derived from systemd's account of it (no host needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iyclo.core import naming
from iyclo.core.jobs import _began, state_word
from iyclo.core.journal import journal_lines, take_newest
from iyclo.core.plan import plan_pod
from iyclo.core.plan_job import plan_job
from iyclo.core.run_records import unaccounted
from iyclo.core.runs import (
    MESSAGE_JOB_START,
    MESSAGE_UNIT_FAILURE_RESULT,
    MESSAGE_UNIT_SUCCESS,
    RunEnd,
    end_from_properties,
    finished,
    invocation_hex,
    runs_from_journal,
    started,
    usec_iso,
)
from iyclo.core.steps import pod_of_unit
from iyclo.manifest.convert import manifest_digest, parse_manifest
from iyclo.manifest.model import Job, Pod
from iyclo.systemd.properties import USEC_INFINITY, prop

ROOT = Path(__file__).parent.parent
SEC = 1_000_000


def _backup(**schedule: Any) -> Job:
    data = json.loads((ROOT / "examples/backup-job.json").read_text())
    data["schedule"].update(schedule)
    manifest = parse_manifest(data)
    assert isinstance(manifest, Job)
    return manifest


def _two_step(**schedule: Any) -> Job:
    manifest = parse_manifest(
        {
            "apiVersion": "iyclo/v1",
            "kind": "Job",
            "name": "etl",
            "schedule": {"calendar": "*:0/15", **schedule},
            "containers": [
                {"name": "extract", "image": "localhost/busybox:latest", "stopTimeout": "3s"},
                {"name": "load", "image": "localhost/busybox:latest", "stopTimeout": "7s"},
            ],
        }
    )
    assert isinstance(manifest, Job)
    return manifest


def _argv(props: dict[str, Any], key: str) -> list[list[str]]:
    return [entry[1] for entry in props[key]]


def test_timer_properties_follow_the_schedule() -> None:
    plan = plan_job(_backup(), 4, "d")
    assert plan.timer == "iyclo-job-nightly-backup.timer"
    assert plan.service == "iyclo-job-nightly-backup.service"
    assert dict(plan.timer_properties) == {
        "Description": "iyclo job nightly-backup schedule",
        "OnCalendar": "*-*-* 03:00:00",
        "Persistent": True,
        "AccuracyUSec": 1 * SEC,
        "RandomizedDelayUSec": 600 * SEC,
        "RemainAfterElapse": True,
        "StartLimitIntervalUSec": 0,  # skip's restarts must not hit the start limit
    }
    no_delay = dict(plan_job(_two_step(), 1, "d").timer_properties)
    assert "RandomizedDelayUSec" not in no_delay
    assert no_delay["Persistent"] is False


def test_service_runs_each_container_in_order_to_completion() -> None:
    plan = plan_job(_two_step(timeout="90s", overlap="queue"), 2, "d")
    props = dict(plan.service_properties)
    podman = props["ExecStart"][0][0]
    assert _argv(props, "ExecStart") == [
        [podman, "start", "--attach", "iyclo-etl-g2_extract"],
        [podman, "start", "--attach", "iyclo-etl-g2_load"],
    ]
    assert [entry[2] for entry in props["ExecStart"]] == [False, False]  # a failure ends the run
    assert props["Type"] == "oneshot"
    assert props["KillMode"] == "process"
    assert props["Slice"] == "iyclo_etl.slice"  # the job's own slice holds its containers too
    assert props["TimeoutStartUSec"] == 90 * SEC
    assert props["TimeoutStopUSec"] == (7 + 10) * SEC  # the longest stop timeout + margin
    assert props["StartLimitIntervalUSec"] == 0
    assert props["CollectMode"] == "inactive-or-failed"
    assert props["Environment"] == [
        "PODMAN_SYSTEMD_UNIT=iyclo-job-etl.service",
        "PODMAN_IGNORE_CGROUPSV1_WARNING=1",
    ]
    # queue: only the pod's stop after a run; systemd itself queues one catch-up run
    (stop,) = props["ExecStopPost"]
    assert stop[2] is True
    assert stop[1][1:3] == ["-c", 'exec "$0" "$@" >/dev/null']
    assert stop[1][3:] == [podman, "pod", "stop", "--ignore", "--time=7", "iyclo-etl-g2"]


def test_skip_rearms_the_timer_after_each_run() -> None:
    props = dict(plan_job(_two_step(), 1, "d").service_properties)
    assert props["TimeoutStartUSec"] == USEC_INFINITY  # no timeout in the manifest
    stop_pod, rearm = _argv(props, "ExecStopPost")
    assert stop_pod[-1] == "iyclo-etl-g1"
    assert rearm[1:] == [
        "try-restart", "--no-ask-password", "--job-mode=ignore-dependencies", "iyclo-job-etl.timer"
    ]  # fmt: skip
    assert all(entry[2] for entry in props["ExecStopPost"])  # never fails a run
    # ... and before it: systemd 257 restarts a timer from its last trigger (see skip_rearm)
    assert props["ExecStartPre"] == props["ExecStopPost"][1:]
    queue = plan_job(_backup(overlap="queue"), 1, "d").service_properties
    assert "ExecStartPre" not in dict(queue)


def test_persistent_skip_touches_the_stamp_before_rearming() -> None:
    props = dict(plan_job(_backup(overlap="skip"), 1, "d").service_properties)
    _stop_pod, touch, rearm = _argv(props, "ExecStopPost")
    assert touch[1:] == ["/var/lib/systemd/timers/stamp-iyclo-job-nightly-backup.timer"]
    assert rearm[-1] == "iyclo-job-nightly-backup.timer"


def test_sandbox_block_applies_to_the_run() -> None:
    data = json.loads((ROOT / "examples/backup-job.json").read_text())
    data["systemd"] = {"memoryMax": "128M", "protectClock": True}
    manifest = parse_manifest(data)
    assert isinstance(manifest, Job)
    plan = plan_job(manifest, 1, "d")
    props = dict(plan.service_properties)
    assert props["ProtectClock"] is True
    assert "MemoryMax" not in props  # on the unit it would bound conmon only
    assert plan.slice == "iyclo_nightly\\x2dbackup.slice"
    assert dict(plan.slice_properties)["MemoryMax"] == 128 * 2**20


def test_every_property_has_a_known_signature() -> None:
    for overlap in ("skip", "queue"):
        plan = plan_job(_backup(overlap=overlap, timeout="30min"), 1, "d")
        for key, value in (*plan.timer_properties, *plan.service_properties):
            prop(key, value)  # raises ValueError for an unknown name or a wrong type


def test_containers_are_created_in_one_pod_with_pod_labels() -> None:
    manifest = _two_step()
    plan = plan_job(manifest, 3, manifest_digest(manifest))
    assert plan.pod_name == "iyclo-etl-g3"
    assert plan.pod_spec["labels"][naming.LABEL_KIND] == "Job"
    assert plan.pod_spec["labels"][naming.LABEL_GENERATION] == "3"
    assert plan.pod_spec["cgroup_parent"] == "iyclo_etl.slice"
    specs = [c.spec for c in plan.containers]
    assert [s["name"] for s in specs] == ["iyclo-etl-g3_extract", "iyclo-etl-g3_load"]
    for spec in specs:
        assert spec["pod"] == "iyclo-etl-g3"
        assert spec["log_config"] == {"Type": "none"}  # the attached podman is the one copy
        assert "conmon_pid_file" not in spec
        assert spec["labels"][naming.LABEL_KIND] == "Job"


def test_pod_of_unit_reads_the_stop_command() -> None:
    props = dict(plan_job(_two_step(), 5, "d").service_properties)
    exec_stop_post = [
        (path, argv, False, 0, 0, 0, 0, 0, 0, 0) for path, argv, _ in props["ExecStopPost"]
    ]
    assert pod_of_unit({"ExecStopPost": exec_stop_post}) == "iyclo-etl-g5"
    assert pod_of_unit(None) is None
    # one reading for both kinds: a pod's unit stops its pod the same way
    pod = parse_manifest(
        {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "web",
         "containers": [{"name": "a", "image": "localhost/busybox:latest"}]}
    )  # fmt: skip
    assert isinstance(pod, Pod)
    pod_props = dict(plan_pod(pod, 7, "d").unit_properties)
    stop_post = [
        (path, argv, False, 0, 0, 0, 0, 0, 0, 0) for path, argv, _ in pod_props["ExecStopPost"]
    ]
    assert pod_of_unit({"ExecStopPost": stop_post}) == "iyclo-web-g7"


# -- runs ------------------------------------------------------------------------------

START = 1_714_532_400_000_000
INVOCATION = "5c0f" * 8


def _ended(**overrides: Any) -> dict[str, Any]:
    props = {
        "ActiveState": "failed",
        "InvocationID": bytes.fromhex(INVOCATION),
        "InactiveExitTimestamp": START,
        "InactiveEnterTimestamp": START + 4_208_000,
        "ExecMainCode": 1,
        "ExecMainStatus": 3,
        "Result": "exit-code",
    }
    props.update(overrides)
    return props


def test_a_run_from_the_properties_of_its_ended_unit() -> None:
    end = end_from_properties(_ended())
    assert end == RunEnd(INVOCATION, START, START + 4_208_000, 3, None, "exit-code")
    record = {**started(INVOCATION, START, 2), **finished(end)}
    assert record == {
        "invocationId": INVOCATION,
        "generation": 2,
        "state": "failed",
        "startedAt": "2024-05-01T03:00:00.000Z",
        "startUsec": START,
        "finishedAt": "2024-05-01T03:00:04.208Z",
        "durationSec": 4.208,
        "exitCode": 3,
        "signal": None,
        "result": "exit-code",
    }


def test_killed_runs_report_the_signal_as_a_shell_would() -> None:
    end = end_from_properties(_ended(ExecMainCode=2, ExecMainStatus=9, Result="timeout"))
    assert (end.exit_code, end.signal, end.result) == (137, "SIGKILL", "timeout")
    assert finished(end)["state"] == "failed"
    assert finished(end, stopped=True)["state"] == "stopped"
    success = end_from_properties(
        _ended(ActiveState="inactive", ExecMainStatus=0, Result="success")
    )
    assert finished(success)["state"] == "succeeded"


def test_a_unit_that_never_ended_shows_no_end() -> None:
    from iyclo.core.run_records import end_shown

    assert end_shown(_ended()) == end_from_properties(_ended())
    assert end_shown(_ended(InactiveEnterTimestamp=0)) is None  # before its first run
    assert end_shown(_ended(ActiveState="activating")) is None
    assert end_shown(None) is None


def test_invocation_ids_and_times() -> None:
    assert invocation_hex(b"") == ""
    assert invocation_hex(list(bytes.fromhex(INVOCATION))) == INVOCATION
    assert invocation_hex(INVOCATION.upper()) == INVOCATION
    assert usec_iso(START + 12_345) == "2024-05-01T03:00:00.012Z"
    assert usec_iso(str(START)) == "2024-05-01T03:00:00.000Z"  # journald's JSON: strings
    assert usec_iso(0) == usec_iso(None) == usec_iso("x") == ""  # none


def _entry(at: int, invocation: str, **fields: str) -> dict[str, Any]:
    return {"__REALTIME_TIMESTAMP": str(at), "INVOCATION_ID": invocation, **fields}


def test_runs_from_systemds_journal_messages() -> None:
    ok, bad, going = "a" * 32, "b" * 32, "c" * 32
    entries = [
        _entry(START, ok, MESSAGE_ID=MESSAGE_JOB_START, JOB_TYPE="start"),
        _entry(START + 900_000, ok, MESSAGE_ID=MESSAGE_UNIT_SUCCESS),
        _entry(START + 3 * SEC, bad, MESSAGE_ID=MESSAGE_JOB_START, JOB_TYPE="start"),
        _entry(START + 5 * SEC, bad, COMMAND="ExecStart", EXIT_CODE="killed", EXIT_STATUS="9"),
        _entry(START + 5 * SEC + 1, bad, COMMAND="ExecStopPost", EXIT_CODE="exited",
               EXIT_STATUS="1"),
        _entry(START + 5 * SEC + 2, bad, MESSAGE_ID=MESSAGE_UNIT_FAILURE_RESULT,
               UNIT_RESULT="timeout"),
        _entry(START + 6 * SEC, going, MESSAGE_ID=MESSAGE_JOB_START, JOB_TYPE="start"),
        {"__REALTIME_TIMESTAMP": str(START), "MESSAGE": "no invocation: not about a run"},
    ]  # fmt: skip
    first, second, third = runs_from_journal(entries)
    assert first.end == RunEnd(ok, START, START + 900_000, 0, None, "success")
    assert second.end == RunEnd(
        bad, START + 3 * SEC, START + 5 * SEC + 2, 137, "SIGKILL", "timeout"
    )
    assert (third.invocation_id, third.start_usec, third.end) == (going, START + 6 * SEC, None)


def test_a_service_about_to_start_is_not_a_run_yet() -> None:
    # systemd shows the new InvocationID with the previous run's timestamps first
    before = _ended(InvocationID=bytes.fromhex("d" * 32))
    previous = INVOCATION
    assert not _began(before, previous, START)
    assert _began({**before, "ActiveState": "activating"}, previous, START)
    assert _began({**before, "InactiveExitTimestamp": START + 1}, previous, START)
    assert not _began(_ended(ActiveState="activating"), previous, START)


@pytest.mark.parametrize(
    ("timer", "service", "desired", "word"),
    [
        ({"ActiveState": "active"}, {"ActiveState": "inactive"}, "scheduled", "scheduled"),
        ({"ActiveState": "active"}, {"ActiveState": "activating"}, "scheduled", "running"),
        (None, {"ActiveState": "deactivating"}, "stopped", "running"),
        (None, None, "stopped", "stopped"),
        (None, None, "scheduled", "missing"),
        ({"ActiveState": "failed"}, None, "scheduled", "failed"),
    ],
)
def test_state_words(
    timer: dict[str, Any] | None, service: dict[str, Any] | None, desired: str, word: str
) -> None:
    assert state_word(timer, service, desired) == word


def test_journal_lines_drop_podman_events_and_decode_bytes() -> None:
    entries = [
        {"__REALTIME_TIMESTAMP": str(START), "SYSLOG_IDENTIFIER": "podman", "MESSAGE": "hello"},
        {"__REALTIME_TIMESTAMP": str(START), "PODMAN_EVENT": "init", "MESSAGE": "container init"},
        {"__REALTIME_TIMESTAMP": str(START + 1000), "MESSAGE": list(b"caf\xc3\xa9 \xff")},
    ]
    assert journal_lines(entries) == [
        {"at": "2024-05-01T03:00:00.000Z", "identifier": "podman", "message": "hello"},
        {"at": "2024-05-01T03:00:00.001Z", "identifier": "", "message": "café \ufffd"},
    ]


def test_the_newest_lines_do_not_count_podman_events() -> None:
    """A job run's journal as Debian 12's Podman writes it: the output line sits behind
    more event records than ``journalctl -n 10`` would take; it is among the last 3."""

    def entry(n: int, message: str, event: str | None = None) -> dict[str, Any]:
        base = {
            "__CURSOR": f"s=x;i={n}",
            "__REALTIME_TIMESTAMP": str(START + n),
            "MESSAGE": message,
        }
        return {**base, "PODMAN_EVENT": event} if event else base

    events = ["attach", "cleanup", "stop", "died", "cleanup", "cleanup"]
    journal = [entry(0, "Starting iyclo-job-j.service..."), entry(1, "first-run-line")]
    journal += [entry(2 + i, f"container {e}", e) for i, e in enumerate(events)]
    journal += [entry(8, "iyclo-job-j.service: Deactivated successfully."), entry(9, "Finished")]
    journal += [entry(10 + i, f"container {e}", e) for i, e in enumerate(events)]
    newest_first = journal[::-1]

    lines, cursor = take_newest(newest_first, 3)
    assert [line["message"] for line in lines] == [
        "first-run-line", "iyclo-job-j.service: Deactivated successfully.", "Finished"
    ]  # fmt: skip
    assert cursor == "s=x;i=15"  # the newest entry, an event: following goes on after it
    assert take_newest(newest_first, 0) == ([], "s=x;i=15")
    assert len(take_newest(newest_first, 50)[0]) == 4
    assert take_newest([], 10) == ([], None)


def test_a_sweep_reads_the_journal_only_for_what_it_cannot_place() -> None:
    recorded = {**started(INVOCATION, START, 1), **finished(end_from_properties(_ended()))}
    ended = _ended()
    assert not unaccounted(ended, [recorded])  # the last run, settled
    assert not unaccounted(None, [recorded])  # a stopped job
    live = {**ended, "ActiveState": "activating"}
    assert not unaccounted(live, [started(INVOCATION, START, 1)])  # the run going now
    # a run we recorded as going, but the service has moved on (its end was missed)
    newer = _ended(InvocationID=bytes.fromhex("e" * 32), InactiveExitTimestamp=START + 9 * SEC)
    assert unaccounted(newer, [started(INVOCATION, START, 1)])
    # a run that began after the newest recorded one and was never seen
    assert unaccounted(newer, [recorded])
    # a service about to start: new ID, the recorded run's timestamps
    assert not unaccounted(_ended(InvocationID=bytes.fromhex("e" * 32)), [recorded])


def test_the_next_runs_id_with_the_last_runs_timestamps_is_not_a_run() -> None:
    """systemd shows a service's next InvocationID a moment before that run's own values
    (measured on systemd 252): with the last run's start, end and Result they are not
    the new run's, whichever state they show; its own values, once there, are."""
    from iyclo.core.run_records import stale

    stored = [{"invocationId": "a" * 32, "startUsec": 1_000_000, "endUsec": 2_400_000}]
    early = {"InvocationID": bytes.fromhex("b" * 32), "ActiveState": "inactive",
             "Result": "success", "InactiveExitTimestamp": 1_000_000,
             "InactiveEnterTimestamp": 2_400_000}  # fmt: skip
    assert stale(early, stored)
    own = {**early, "ActiveState": "activating", "InactiveExitTimestamp": 3_000_000}
    assert not stale(own, stored)
    assert not stale(early, [])  # a first run has nothing before it
    assert not stale({**early, "InvocationID": bytes.fromhex("a" * 32)}, stored)  # its own
