"""Scheduled jobs end to end: real systemd timers, real Podman, the real daemon (issue #5).

Assertions read the system back (systemctl, journalctl, podman, the timer's stamp file)
wherever the claim is about the system; the daemon's own report is checked where the
report is what is tested (run history, events, the CLI).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iyclo.errors import ConflictError, InvalidError, NotFoundError, PodmanError
from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, pod_manifest, pods_of, unit_show, wait_for
from tests.daemon_fixtures import remove as remove_deployment

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

BUSYBOX = "localhost/busybox:latest"
YEARLY = "*-01-01 00:00:00"  # never fires during a test
# A container that ends at once on SIGTERM (as PID 1, sh would otherwise ignore it).
INTERRUPTIBLE = "trap 'echo got-term; exit 143' TERM; "


def job(name: str, calendar: str, script: str, **schedule: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1",
        "kind": "Job",
        "name": name,
        "network": "none",
        "schedule": {"calendar": calendar, "accuracy": "1ms", **schedule},
        "containers": [
            {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script], "stopTimeout": "1s"}
        ],
    }


def loaded(host: Host, unit: str) -> bool:
    return unit_show(host, unit, "LoadState")["LoadState"] == "loaded"


def journal_of_run(host: Host, invocation: str) -> str:
    """What systemd's journal itself holds for one invocation: the issue's log pointer."""
    return host.run(
        ["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_INVOCATION_ID={invocation}"]
    ).stdout


def finished_runs(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [r for r in daemon.call("runs", name=name) if r["state"] != "running"]


def remove(daemon: Daemon, name: str, purge: bool = True) -> None:
    """Jobs' cleanup purges their run history too, unless a test keeps it."""
    remove_deployment(daemon, name, purge_history=purge)


class Events:
    """JSON socket event notifications, collected by a thread from `subscribe` on."""

    def __init__(self, daemon: Daemon) -> None:
        self.items: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(daemon.socket))
        self._file = self._sock.makefile("rwb")
        self._file.write(b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe"}\n')
        self._file.flush()
        assert json.loads(self._file.readline())["result"] == {"subscribed": True}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._file:
                message = json.loads(line)
                if message.get("method") == "event":
                    self.items.append(message["params"])

    def finished(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e["event"] == "JobFinished" and e["name"] == name]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


def test_job_fires_on_schedule_and_records_every_run(daemon: Daemon) -> None:
    host = daemon.host
    events = Events(daemon)
    ok = job("every3", "*:*:0/3", "echo run-output $(cat /proc/sys/kernel/random/uuid)")
    bad = job("failing", "*:*:0/3", "echo about-to-fail; exit 3", overlap="queue")
    try:
        started = time.monotonic()
        result = daemon.call("apply", manifest=json.dumps(ok))
        assert result == {
            "name": "every3", "kind": "Job", "generation": 1, "changed": True,
            "state": "scheduled",
        }  # fmt: skip
        daemon.call("apply", manifest=bad)
        assert time.monotonic() - started < 15

        # the units, as systemd has them
        timer = unit_show(
            host, "iyclo-job-every3.timer", "ActiveState", "TimersCalendar", "AccuracyUSec",
            "Persistent", "Triggers",
        )  # fmt: skip
        assert timer["ActiveState"] == "active"
        assert "OnCalendar=*-*-* *:*:00/3" in timer["TimersCalendar"]
        assert timer["AccuracyUSec"] == "1ms"
        assert timer["Persistent"] == "no"
        assert timer["Triggers"] == "iyclo-job-every3.service"
        service = unit_show(host, "iyclo-job-every3.service", "Type", "Slice", "KillMode")
        assert service == {"Type": "oneshot", "Slice": "iyclo_every3.slice", "KillMode": "process"}
        assert pods_of(host, "every3") == ["iyclo-every3-g1"]

        runs = wait_for(
            lambda: len(finished_runs(daemon, "every3")) >= 3 and finished_runs(daemon, "every3"),
            timeout=30, what="three runs of every3",
        )  # fmt: skip
        outputs = set()
        for run in runs[:3]:
            assert run["state"] == "succeeded"
            assert (run["exitCode"], run["result"], run["signal"]) == (0, "success", None)
            assert 0 < run["durationSec"] < 30  # an echo: 3.4 s was seen on a busy root
            assert re.fullmatch(r"[0-9a-f]{32}", run["invocationId"])
            # the run's output is in the journal under its invocation, exactly once
            journal = journal_of_run(host, run["invocationId"])
            (line,) = [x for x in journal.splitlines() if x.startswith("run-output ")]
            outputs.add(line)
            logs = daemon.call("logs", name="every3", run=run["number"])
            assert [e["message"] for e in logs["entries"] if "run-output" in e["message"]] == [line]
        assert len(outputs) == 3  # three runs, three different outputs
        starts = [r["startUsec"] for r in runs[:3]]
        assert all(b - a >= 2_500_000 for a, b in itertools.pairwise(starts))  # on the calendar

        failed = wait_for(
            lambda: finished_runs(daemon, "failing"), timeout=15, what="a run of failing"
        )[0]
        assert failed["state"] == "failed"
        assert (failed["exitCode"], failed["result"]) == (3, "exit-code")
        assert "about-to-fail" in journal_of_run(host, failed["invocationId"])

        # one JobFinished per finished run, with its number, exit code and result
        wait_for(lambda: len(events.finished("failing")) >= 1, timeout=10, what="JobFinished")
        event = events.finished("failing")[0]
        assert event["state"] == "failed"
        assert (event["run"], event["exitCode"], event["result"]) == (
            failed["number"], 3, "exit-code"
        )  # fmt: skip
        assert {e["run"] for e in events.finished("every3")} >= {r["number"] for r in runs[:3]}

        # the CLI's views of the same history
        listed = daemon.cli("jobs")
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"every3\s+\*:\*:0/3\s+(scheduled|running)", listed.stdout)
        # failing's last run: failed with exit 3, unless its next run began meanwhile (every
        # 3 s: on a busy host it has); that run's line in its history says so either way
        assert re.search(r"failing .*(failed \(exit 3\)|running)", listed.stdout), listed.stdout
        failures = daemon.cli("history", "failing")
        assert re.search(rf"^{failed['number']}\s.*failed \(exit 3\)", failures.stdout, re.M), (
            failures.stdout
        )
        history = daemon.cli("history", "every3")
        assert history.returncode == 0, history.stderr
        for run in runs[:3]:
            assert re.search(rf"^{run['number']}\s.*succeeded", history.stdout, re.M)
        shown = daemon.cli("logs", "failing", "--run", str(failed["number"]))
        assert shown.returncode == 0, shown.stderr
        assert "about-to-fail" in shown.stdout
        assert "status=3/NOTIMPLEMENTED" in shown.stdout  # systemd's own line about the run
        assert "container init" not in shown.stdout  # Podman's event records are not output
        status = daemon.call("get", name="every3")
        assert status["kind"] == "Job"
        assert status["schedule"]["calendar"] == "*:*:0/3"
        assert status["state"] in ("scheduled", "running")
        assert status["lastRun"]["number"] >= runs[2]["number"]
    finally:
        events.close()
        remove(daemon, "every3")
        remove(daemon, "failing")


def test_overlap_skip_drops_elapses_during_a_run_and_queue_runs_once_after(
    daemon: Daemon,
) -> None:
    """A 4 s run on a 3 s calendar: an elapse always falls inside each run."""
    script = INTERRUPTIBLE + "sleep 4 & wait"
    try:
        daemon.call("apply", manifest=job("skipper", "*:*:0/3", script, overlap="skip"))
        daemon.call("apply", manifest=job("queuer", "*:*:0/3", script, overlap="queue"))
        for name in ("skipper", "queuer"):
            wait_for(
                lambda name=name: len(finished_runs(daemon, name)) >= 2,
                timeout=30, what=f"two runs of {name}",
            )  # fmt: skip
        for name in ("skipper", "queuer"):
            runs = finished_runs(daemon, name)
            for before, after in itertools.pairwise(runs):
                assert "endUsec" in before, (name, runs)  # a finished run has an end
                # never two at once
                assert after["startUsec"] >= before["endUsec"], (name, before, after)
        skipper = finished_runs(daemon, "skipper")
        for before, after in itertools.pairwise(skipper):
            gap = (after["startUsec"] - before["endUsec"]) / 1e6
            # the elapse inside the run was dropped: the next run waits for the calendar's
            # next tick (queue starts it right after the end); a run that ended just
            # before a tick cannot tell the two apart, so the gap counts only otherwise
            assert (after["startUsec"] / 1e6) % 3 < 0.5, skipper
            assert 0 < gap < 3.5, skipper
            if (before["endUsec"] / 1e6) % 3 < 2.4:
                assert gap > 0.4, skipper
        queuer = finished_runs(daemon, "queuer")
        for before, after in itertools.pairwise(queuer):
            # the elapse inside the run is run right after it, once
            assert (after["startUsec"] - before["endUsec"]) / 1e6 < 0.3, queuer
    finally:
        remove(daemon, "skipper")
        remove(daemon, "queuer")


def test_run_now_while_running_does_not_start_a_second_run(daemon: Daemon) -> None:
    host = daemon.host
    manifest = job("manual", YEARLY, INTERRUPTIBLE + "echo started; sleep 3 & wait; echo done")
    try:
        daemon.call("apply", manifest=manifest)
        first = daemon.call("run_job", name="manual")
        assert first["run"] == 1
        assert first["state"] == "running"
        assert unit_show(host, "iyclo-job-manual.service", "ActiveState")["ActiveState"] == (
            "activating"
        )
        with pytest.raises(
            ConflictError, match=re.escape("job 'manual' is already running (run 1)")
        ):
            daemon.call("run_job", name="manual")
        refused = daemon.cli("run", "manual")
        assert refused.returncode == 4
        assert "already running (run 1)" in refused.stderr
        # an update would have to kill the run: refused, the timer stays as it was
        changed = json.loads(json.dumps(manifest))
        changed["containers"][0]["env"] = {"V": "2"}
        with pytest.raises(ConflictError, match="while run 1 is going"):
            daemon.call("apply", manifest=changed)
        assert loaded(host, "iyclo-job-manual.timer")
        assert daemon.call("get", name="manual")["generation"] == 1

        done = wait_for(lambda: finished_runs(daemon, "manual"), timeout=15, what="run 1 to finish")
        assert [r["number"] for r in daemon.call("runs", name="manual")] == [1]
        assert done[0]["state"] == "succeeded"
        starts = host.run(
            ["journalctl", "--no-pager", "-o", "cat", "_PID=1", "UNIT=iyclo-job-manual.service"]
        ).stdout
        assert starts.count("Starting iyclo-job-manual.service") == 1  # systemd started one

        shown = daemon.cli("run", "manual")
        assert shown.returncode == 0, shown.stderr
        assert "manual: run 2 started" in shown.stdout
    finally:
        remove(daemon, "manual")


def exits_logged_by_systemd(host: Host, unit: str) -> dict[str, int]:
    """invocation → exit status, from PID 1's own messages about ``unit`` (``INVOCATION_ID``
    set by systemd itself): "Main process exited, …status=N", or 0 for a run that ended
    "Deactivated successfully" (a clean exit is logged at debug level only)."""
    out = host.run(["journalctl", "--no-pager", "-o", "json", "_PID=1", f"UNIT={unit}"]).stdout
    exits: dict[str, int] = {}
    for line in out.splitlines():
        entry = json.loads(line)
        invocation = str(entry.get("INVOCATION_ID") or "")
        if not invocation:
            continue
        if entry.get("COMMAND") == "ExecStart" and "EXIT_STATUS" in entry:
            exits[invocation] = int(entry["EXIT_STATUS"])
        elif entry.get("MESSAGE_ID") == "7ad2d189f7e94e70a38c781354912448":  # success
            exits.setdefault(invocation, 0)
    return exits


def systemd_lines(host: Host, unit: str) -> list[str]:
    """PID 1's messages about ``unit``: time, invocation, message id, text (a diagnosis)."""
    out = host.run(["journalctl", "--no-pager", "-o", "json", "_PID=1", f"UNIT={unit}"]).stdout
    entries = [json.loads(line) for line in out.splitlines()]
    return [
        f"{int(e['__REALTIME_TIMESTAMP']) / 1e6 % 100:.3f} {str(e.get('INVOCATION_ID'))[:8]} "
        f"{str(e.get('MESSAGE_ID', ''))[:8]} {str(e.get('MESSAGE'))[:60]}"
        for e in entries
    ]


def test_runs_missed_while_the_daemon_was_down_are_settled_from_systemd(daemon: Daemon) -> None:
    """The daemon is SIGKILLed while a job keeps firing: systemd still runs it, and the
    restarted daemon records those runs with the results systemd logged.

    The reference is systemd's own account of each invocation: PID 1's messages carry the
    invocation id they are about (set by systemd, unlike ``_SYSTEMD_INVOCATION_ID`` on a
    container's output line, which journald attaches from its own, late, reading of the
    unit). What the runs themselves wrote to a host file (exit 7 and 0 by turns) is
    compared too and printed: systemd's exit status of a run is the one ``podman start
    --attach`` returned, so a difference there is Podman's, not iyclo's record. (Against
    that file, this test failed now and then on busy Debian 12 hosts.)
    """
    host = daemon.host
    tally = "/srv/iyclo-test-unseen"
    host.run(["rm", "-rf", tally])
    host.run(["mkdir", "-p", tally])
    # every run counts itself and exits 0 or 7 by turns, writing down which
    script = (
        "n=$(( $(cat /tally/n 2>/dev/null || echo 0) + 1 )); echo $n > /tally/n; "
        "code=$(( n % 2 * 7 )); echo $code >> /tally/codes; echo exiting $code; exit $code"
    )
    manifest = job("unseen", "*:*:0/2", script, overlap="queue")
    manifest["containers"][0]["volumes"] = [{"source": tally, "target": "/tally"}]
    unit = "iyclo-job-unseen.service"
    try:
        daemon.call("apply", manifest=manifest)
        wait_for(lambda: finished_runs(daemon, "unseen"), timeout=10, what="a first run")
        daemon.kill()
        time.sleep(5)  # two or three runs happen with nobody watching
        daemon.start()
        runs = wait_for(
            lambda: len(finished_runs(daemon, "unseen")) >= 4 and finished_runs(daemon, "unseen"),
            timeout=20, what="the runs made while the daemon was down",
        )  # fmt: skip
        assert [r["number"] for r in runs] == list(range(1, len(runs) + 1))
        ids = [r["invocationId"] for r in runs]
        logged = wait_for(
            lambda: (found := exits_logged_by_systemd(host, unit)).keys() >= set(ids) and found,
            timeout=10, what="systemd's messages about every recorded run",
        )  # fmt: skip
        seen = [(r["number"], r["invocationId"][:8], r["exitCode"], r["state"]) for r in runs]
        assert [r["exitCode"] for r in runs] == [logged[i] for i in ids], "\n".join(
            [str(seen), *systemd_lines(host, unit)]
        )
        for run in runs:
            assert run["state"] == ("succeeded" if run["exitCode"] == 0 else "failed"), run
            assert run["durationSec"] is not None
        assert {r["exitCode"] for r in runs} >= {7}
        written = [int(c) for c in host.run(["cat", f"{tally}/codes"]).stdout.split()]
        assert len(written) >= len(runs), (written, runs)
        differ = sum(1 for run, code in zip(runs, written, strict=False) if run["exitCode"] != code)
        print(f"\nmissed runs: {len(runs)} recorded, each as systemd logged it; exit codes the "
              f"runs wrote that Podman reported otherwise: {differ}")  # fmt: skip
        starts = [r["startUsec"] for r in runs]
        # no run recorded twice (a catch-up run may start right after a long one: not 2 s apart)
        assert all(b - a >= 500_000 for a, b in itertools.pairwise(starts))
    finally:
        remove(daemon, "unseen")
        host.run(["rm", "-rf", tally])


def test_timeout_stops_a_run_and_stop_interrupts_one(daemon: Daemon) -> None:
    host = daemon.host
    manifest = job(
        "slowpoke", YEARLY, INTERRUPTIBLE + "echo working; sleep 30 & wait", timeout="2s"
    )
    try:
        daemon.call("apply", manifest=manifest)
        daemon.call("run_job", name="slowpoke")
        run = wait_for(
            lambda: finished_runs(daemon, "slowpoke"), timeout=20, what="the run to time out"
        )[0]
        assert run["state"] == "failed"
        assert run["result"] == "timeout"
        assert 1.9 < run["durationSec"] < 10
        output = journal_of_run(host, run["invocationId"])
        assert "working" in output
        assert "got-term" in output  # podman passed systemd's SIGTERM to the container
        # nothing of the run is left going, and the pod can run again
        state = host.run(["podman", "inspect", "-f", "{{.State.Status}}", "iyclo-slowpoke-g1_main"])
        assert state.stdout.strip() == "exited"

        second = daemon.call("run_job", name="slowpoke")
        assert second["run"] == 2
        assert daemon.call("stop", name="slowpoke") == "stopped"
        assert not loaded(host, "iyclo-job-slowpoke.timer")
        assert not loaded(host, "iyclo-job-slowpoke.service")
        stopped = daemon.call("runs", name="slowpoke")[-1]
        assert (stopped["number"], stopped["state"]) == (2, "stopped")
        assert daemon.call("get", name="slowpoke")["state"] == "stopped"
        with pytest.raises(ConflictError, match="job 'slowpoke' is stopped"):
            daemon.call("run_job", name="slowpoke")
        assert daemon.call("start", name="slowpoke") == "scheduled"
        assert unit_show(host, "iyclo-job-slowpoke.timer", "ActiveState")["ActiveState"] == (
            "active"
        )
    finally:
        remove(daemon, "slowpoke")


def test_remove_keeps_history_unless_purged(daemon: Daemon) -> None:
    host = daemon.host
    stamp = "/var/lib/systemd/timers/stamp-iyclo-job-keeper.timer"
    manifest = job("keeper", YEARLY, "echo kept-output", persistent=True)
    try:
        daemon.call("apply", manifest=manifest)
        assert host.path(stamp).exists()  # systemd keeps Persistent= timers' last trigger here
        daemon.call("run_job", name="keeper")
        wait_for(lambda: finished_runs(daemon, "keeper"), timeout=15, what="run 1")

        removed = daemon.cli("rm", "keeper")
        assert removed.returncode == 0, removed.stderr
        for unit in ("iyclo-job-keeper.timer", "iyclo-job-keeper.service"):
            assert not loaded(host, unit)
        assert pods_of(host, "keeper") == []
        assert not host.path(stamp).exists()  # a new job of this name starts afresh
        with pytest.raises(NotFoundError):
            daemon.call("get", name="keeper")
        kept = daemon.call("runs", name="keeper")
        assert [(r["number"], r["state"]) for r in kept] == [(1, "succeeded")]
        history = daemon.cli("history", "keeper")
        assert history.returncode == 0, history.stderr
        assert re.search(r"^1\s.*succeeded", history.stdout, re.M)
        assert "kept-output" in daemon.cli("logs", "keeper", "--run", "1").stdout

        daemon.call("apply", manifest=manifest)  # numbering continues
        assert daemon.call("run_job", name="keeper")["run"] == 2
        wait_for(lambda: len(finished_runs(daemon, "keeper")) == 2, timeout=15, what="run 2")

        purged = daemon.cli("rm", "keeper", "--purge-history")
        assert purged.returncode == 0, purged.stderr
        with pytest.raises(NotFoundError, match="no pod or job named 'keeper'"):
            daemon.call("runs", name="keeper")
        assert not loaded(host, "iyclo-job-keeper.timer")
    finally:
        remove(daemon, "keeper")


def test_a_job_applied_again_after_a_purge_does_not_inherit_the_last_run(
    daemon: Daemon,
) -> None:
    """The journal outlives a purged history: the run a remove interrupted a moment ago
    is the old job's, not the first run of the job applied again under its name (found
    by running the overlap test twice in a row: the new queuer's "run 1" was the old
    queuer's interrupted run 3, failed, 1.4 s before anything ran)."""
    manifest = job("again", YEARLY, INTERRUPTIBLE + "sleep 30 & wait")
    try:
        daemon.call("apply", manifest=manifest)
        daemon.call("run_job", name="again")
        remove(daemon, "again")  # interrupts the run, purges its history
        daemon.call("apply", manifest=manifest)
        daemon.call("reconcile")  # settles every job's runs from the journal
        assert daemon.call("runs", name="again") == []
        # with a run stored, the journal is read from a second before its start
        assert daemon.call("run_job", name="again")["run"] == 1
        daemon.call("reconcile")
        assert [r["number"] for r in daemon.call("runs", name="again")] == [1]
    finally:
        remove(daemon, "again")


def test_invalid_calendar_is_rejected_and_nothing_is_made(daemon: Daemon) -> None:
    host = daemon.host
    with pytest.raises(InvalidError) as info:
        daemon.call("apply", manifest=job("badcal", "every tuesday-ish", "true"))
    assert str(info.value).startswith(
        'schedule.calendar: "every tuesday-ish" is not a valid calendar expression'
    )
    for unit in ("iyclo-job-badcal.timer", "iyclo-job-badcal.service"):
        assert not loaded(host, unit)
    assert pods_of(host, "badcal") == []
    with pytest.raises(NotFoundError):
        daemon.call("get", name="badcal")
    cli = daemon.cli("apply", "-f", "-", stdin=json.dumps(job("badcal", "every tuesday-ish", "x")))
    assert cli.returncode == 2
    assert '"every tuesday-ish" is not a valid calendar expression' in cli.stderr


def test_failed_apply_leaves_nothing_and_failed_update_keeps_the_timer(daemon: Daemon) -> None:
    host = daemon.host
    broken = job("ghostjob", YEARLY, "true")
    broken["containers"][0]["image"] = "localhost/does-not-exist:1"
    with pytest.raises(PodmanError, match='image "localhost/does-not-exist:1"'):
        daemon.call("apply", manifest=broken)
    assert not loaded(host, "iyclo-job-ghostjob.timer")
    assert not loaded(host, "iyclo-job-ghostjob.service")
    assert pods_of(host, "ghostjob") == []
    with pytest.raises(NotFoundError):
        daemon.call("get", name="ghostjob")

    good = job("steadyjob", "*-*-* 04:00:00", "true")
    try:
        daemon.call("apply", manifest=good)
        before = unit_show(host, "iyclo-job-steadyjob.timer", "NextElapseUSecRealtime")
        update = json.loads(json.dumps(good))
        update["containers"][0]["image"] = "localhost/does-not-exist:1"
        with pytest.raises(PodmanError):
            daemon.call("apply", manifest=update)
        timer = unit_show(
            host, "iyclo-job-steadyjob.timer", "ActiveState", "NextElapseUSecRealtime"
        )
        assert timer["ActiveState"] == "active"
        assert timer["NextElapseUSecRealtime"] == before["NextElapseUSecRealtime"]
        assert daemon.call("get", name="steadyjob")["generation"] == 1
        assert pods_of(host, "steadyjob") == ["iyclo-steadyjob-g1"]
        assert [h["generation"] for h in daemon.call("history", name="steadyjob")] == [1]
    finally:
        remove(daemon, "steadyjob")


def test_reboot_recreates_timers_and_a_persistent_job_catches_up_once(
    fresh_testhost_factory: Any,
) -> None:
    host = fresh_testhost_factory()
    first = Daemon(host, ("--no-dbus",))
    first.start()
    # A daily time a few seconds ahead: it passes while the host is down.
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    calendar = f"*-*-* {due:%H:%M:%S} UTC"
    first.call("apply", manifest=job("catchup", calendar, "echo caught-up", persistent=True))
    first.call("apply", manifest=job("nocatch", calendar, "echo never"))
    first.call("apply", manifest=job("parked", "*:*:0/2", "echo parked"))
    first.call("stop", name="parked")
    for name in ("catchup", "nocatch"):
        assert (
            first.call("get", name=name)["next"]
            == due.isoformat(timespec="milliseconds")[:23] + "Z"
        )
    assert first.call("runs", name="catchup") == []
    root = host.root
    host.shutdown()  # the whole PID namespace dies, as at a power cut

    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 1.5))
    rebooted = fresh_testhost_factory(root=root, name=host.name)
    assert not loaded(rebooted, "iyclo-job-catchup.timer")
    second = Daemon(rebooted, ("--no-dbus",))
    second.start()
    runs = wait_for(
        lambda: finished_runs(second, "catchup"), timeout=30, what="the missed run at boot"
    )
    assert [(r["number"], r["state"]) for r in runs] == [(1, "succeeded")]
    assert "caught-up" in journal_of_run(rebooted, runs[0]["invocationId"])
    tomorrow = (due + timedelta(days=1)).isoformat(timespec="milliseconds")[:23] + "Z"
    for name in ("catchup", "nocatch"):
        status = second.call("get", name=name)
        assert status["state"] == "scheduled"
        assert status["next"] == tomorrow
    time.sleep(1)
    assert second.call("runs", name="nocatch") == []  # not persistent: the missed run is gone
    assert len(second.call("runs", name="catchup")) == 1  # and the persistent one ran once
    assert second.call("get", name="parked")["state"] == "stopped"  # stays stopped
    assert not loaded(rebooted, "iyclo-job-parked.timer")
    second.stop()


def test_logs_of_a_pod_are_its_units_journal(daemon: Daemon) -> None:
    manifest = pod_manifest("chatty")
    manifest["containers"][0]["command"] = ["sh", "-c", "echo pod-says-hi; sleep 100000"]
    for container in manifest["containers"]:
        container["stopTimeout"] = "1s"
    try:
        daemon.call("apply", manifest=manifest)
        shown = wait_for(
            lambda: "pod-says-hi" in (out := daemon.cli("logs", "chatty", "-n", "50")).stdout
            and out,
            timeout=10, what="the pod's output in its journal",
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert daemon.call("logs", name="chatty")["unit"] == "iyclo-pod-chatty.service"
        with pytest.raises(InvalidError, match="pod 'chatty' has no runs"):
            daemon.call("logs", name="chatty", run=1)
        refused = daemon.cli("run", "chatty")
        assert refused.returncode == 2
        assert "pod 'chatty' is not a job" in refused.stderr
    finally:
        remove(daemon, "chatty")


def test_job_operations_agree_over_dbus_socket_and_cli(daemon: Daemon) -> None:
    """RunJob, Runs, Logs and Purge on D-Bus give what the JSON socket gives."""
    manifest = job("courier", "2099-01-01", "echo delivered-$((6*7))")
    daemon.call("apply", manifest=manifest)
    try:
        with daemon.dbus() as bus:
            started = bus.call("run_job", name="courier")
            assert started["run"] == 1
            wait_for(lambda: finished_runs(daemon, "courier"), timeout=20, what="the run")
            assert bus.call("runs", name="courier") == daemon.call("runs", name="courier")
            assert bus.call("runs", name="courier")[0]["result"] == "success"
            by_bus = bus.call("logs", name="courier", run=1)
            assert by_bus == daemon.call("logs", name="courier", run=1)
            assert "delivered-42" in json.dumps(by_bus)
            for via in ("socket", "dbus"):
                logs = daemon.cli("logs", "courier", "--run", "1", via=via)
                assert logs.returncode == 0, logs.stderr
                assert "delivered-42" in logs.stdout
                jobs = daemon.cli("jobs", via=via)
                assert "courier" in jobs.stdout
        purged = daemon.cli("rm", "courier", "--purge-history", via="dbus")
        assert purged.returncode == 0, purged.stderr
        with pytest.raises(NotFoundError):
            daemon.call("runs", name="courier")
    finally:
        remove(daemon, "courier")


def test_job_limits_bound_its_run_through_its_slice(daemon: Daemon) -> None:
    """The `systemd` block's limits sit on the job's own slice, which holds both its
    service and its containers (on the unit they would bound conmon only)."""
    host = daemon.host
    manifest = job("bounded", "2099-01-01", "cat /proc/self/cgroup")
    manifest["systemd"] = {"memoryMax": "96M", "tasksMax": 64}
    daemon.call("apply", manifest=manifest)
    try:
        props = unit_show(host, "iyclo_bounded.slice", "MemoryMax", "TasksMax", "ActiveState")
        assert props == {"MemoryMax": str(96 * 2**20), "TasksMax": "64", "ActiveState": "active"}
        service = unit_show(host, "iyclo-job-bounded.service", "Slice")
        assert service["Slice"] == "iyclo_bounded.slice"
        daemon.call("run_job", name="bounded")
        wait_for(lambda: finished_runs(daemon, "bounded"), timeout=20, what="the run")
        output = json.dumps(daemon.call("logs", name="bounded", run=1))
        assert "iyclo_bounded.slice" in output  # the container's own cgroup is in the slice
        remove(daemon, "bounded")
        # (a slice needs no unit file, so `systemctl show` loads one on the spot)
        assert unit_show(host, "iyclo_bounded.slice", "ActiveState")["ActiveState"] == "inactive"
    finally:
        remove(daemon, "bounded")
