"""OOM kills from the kernel log: the records the test host's kernel wrote, parsed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from iyclo.core.oom import KmsgOomWatch, OomKill, oom_fields, parse_kmsg_line, record_kill

CID = "7f60084cf633d77376b5014aa9a9e67312b145af5e9810bc0d1279b4ccb8659a"
# Shape of a record measured on the test host's kernel (6.x), paths shortened; /dev/kmsg
# escapes the backslash of the pod slice's "\\x2d" (a "-" of the pod name) as "\\x5c".
POD_SLICE = "/process_api/33da/iyclo-testhost.t1/iyclo_big\\x5cx2dhog.slice"
POD = f"{POD_SLICE}/iyclo_big\\x5cx2dhog-libpod_pod_b4a5b1d2.slice"
CONTAINER_LIMIT = (
    f"6,3602,2419377883,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
    f"cpuset=libpod-{CID}.scope,mems_allowed=0,oom_memcg={POD}/libpod-{CID}.scope,"
    f"task_memcg={POD}/libpod-{CID}.scope,task=sh,pid=25943,uid=0"
)


def test_a_container_hitting_its_own_limit() -> None:
    assert parse_kmsg_line(CONTAINER_LIMIT) == OomKill(CID, "big-hog", "sh", 25943, "container")


def test_a_container_hitting_the_pod_slice_limit() -> None:
    line = CONTAINER_LIMIT.replace(f"oom_memcg={POD}/libpod-{CID}.scope", f"oom_memcg={POD_SLICE}")
    assert parse_kmsg_line(line) == OomKill(CID, "big-hog", "sh", 25943, "pod")


def test_records_that_are_not_container_kills() -> None:
    assert parse_kmsg_line("4,3524,2419377462,-;sh invoked oom-killer: gfp_mask=0xcc0") is None
    assert parse_kmsg_line(" SUBSYSTEM=memory") is None
    unit = f"task_memcg={POD_SLICE}/iyclo-pod-big-hog.service"  # conmon, not a container
    conmon = CONTAINER_LIMIT.replace(f"task_memcg={POD}/libpod-{CID}.scope", unit)
    assert parse_kmsg_line(conmon) is None
    elsewhere = CONTAINER_LIMIT.replace(POD, "/machine.slice")
    kill = parse_kmsg_line(elsewhere)
    assert kill is not None
    assert kill.pod is None  # a container outside any pod slice: found by its ID instead


def test_status_fields_follow_the_container_and_its_start() -> None:
    kill = OomKill(CID, "p", "sh", 1, "container")
    kills = record_kill({}, "main", kill, at=1000.5)
    kills = record_kill(kills, "main", kill, at=1001.0)
    assert kills["main"]["count"] == 2
    row = {"name": "main", "id": CID, "startedAt": 1000}
    assert oom_fields(row, kills) == {"oomKilled": True, "oomKills": 2}
    assert oom_fields({**row, "startedAt": 1002}, kills) == {"oomKilled": False, "oomKills": 2}
    # a new generation's container of the same name starts from nothing
    assert oom_fields({**row, "id": "0" * 64}, kills) == {"oomKilled": False, "oomKills": 0}
    assert (
        record_kill(kills, "main", OomKill("0" * 64, "p", "sh", 2, "pod"), 5)["main"]["count"] == 1
    )


def test_watch_reports_kills_written_to_the_log(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    seen: list[OomKill] = []
    arrived = threading.Event()

    def on_kill(kill: OomKill) -> None:
        seen.append(kill)
        arrived.set()

    watch = KmsgOomWatch(on_kill, str(fifo))
    assert watch.start()
    writer = os.open(fifo, os.O_WRONLY)
    try:
        os.write(writer, b"6,1,1,-;something else\n" + CONTAINER_LIMIT.encode() + b"\n")
        assert arrived.wait(5)
    finally:
        os.close(writer)
        watch.close()
    assert seen == [OomKill(CID, "big-hog", "sh", 25943, "container")]


def test_watch_without_a_log_reports_nothing(tmp_path: Path) -> None:
    assert not KmsgOomWatch(lambda kill: None, str(tmp_path / "missing")).start()
