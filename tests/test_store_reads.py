"""The store parses its file once (issue #15): a read costs what the record costs, not
what the whole store costs. Counted, not timed: timings live in bench/."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from iyclo.errors import NotFoundError, StoreError
from iyclo.store import Store, off_loop

PODS = 200


def _fill(store: Store) -> None:
    for index in range(PODS):
        store.apply(f"pod-{index:03}", "pod", {"name": f"pod-{index:03}"}, f"d{index}")
        store.set_status(f"pod-{index:03}", desired="running")


def test_list_of_200_pods_parses_the_file_no_more(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        _fill(store)
        parsed = store.file_reads
        assert parsed == 1  # at open; every write since kept the parsed state
        for _ in range(3):
            records = store.list()
            assert len(records) == PODS
            for record in records:  # what `List` asks of each record
                store.get(record.name)
        assert store.file_reads == parsed


def test_a_new_store_sees_what_the_kept_state_wrote(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        _fill(store)
        store.set_status("pod-007", desired="stopped")
    with Store.open(tmp_path) as again:
        assert again.get("pod-007").status == {"desired": "stopped"}
        assert len(again.list()) == PODS


def test_a_failed_write_leaves_the_kept_state_as_the_file(tmp_path: Path) -> None:
    """TinyDB changes the kept state before the write: a write that fails must not
    leave that change readable, or a read would answer what is not on disk."""
    with Store.open(tmp_path) as store:
        store.apply("web", "pod", {"name": "web"}, "d1")
        with pytest.raises(ValueError, match="JSON"):  # NaN is not JSON: nothing written
            store.set_status("web", desired="stopped", ratio=float("nan"))
        assert store.get("web").status == {}
        assert store.file_reads == 2  # parsed again after the failed write


def test_a_record_is_made_once_per_change_and_every_change_is_seen(tmp_path: Path) -> None:
    """``Store._record``: reads between two writes get the same record; a read after any
    write, a failed one included, sees what the file holds."""
    with Store.open(tmp_path) as store:
        store.apply("web", "pod", {"name": "web"}, "d1")
        first = store.get("web")
        assert store.get("web") is first
        assert store.find("web") is first
        store.set_status("web", desired="stopped")
        assert store.get("web").status == {"desired": "stopped"}
        store.apply("web", "pod", {"name": "web", "v": 2}, "d2")
        assert (store.get("web").generation, store.get("web").manifest) == (
            2,
            {"name": "web", "v": 2},
        )
        store.drop_generation("web", 2)
        assert (store.get("web").generation, store.get("web").digest) == (1, "d1")
        with pytest.raises(ValueError, match="JSON"):
            store.set_status("web", desired="running", ratio=float("nan"))
        assert store.get("web").status == {"desired": "stopped"}
        store.remove("web")
        assert store.find("web") is None
        with pytest.raises(NotFoundError):
            store.get("web")
        store.apply("web", "pod", {"name": "web", "v": 3}, "d3")
        assert store.get("web").manifest == {"name": "web", "v": 3}


async def test_reads_stay_on_the_loop_unless_a_write_holds_the_store(tmp_path: Path) -> None:
    """``off_loop``: a read is answered on the event loop (no hop to a worker thread)
    while nothing writes; while a write holds the store it waits in a worker thread and
    sees the write; a write always goes to a thread."""
    with Store.open(tmp_path) as store:
        _fill(store)
        answered: list[tuple[str, bool]] = []
        real = store.read_if_free

        def spy(read: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
            done, value = real(read, *args, **kwargs)
            answered.append((read.__name__, done))
            return done, value

        store.read_if_free = spy  # type: ignore[method-assign]
        assert (await off_loop(store.get, "pod-001")).name == "pod-001"
        assert await off_loop(store.find, "pod-999") is None
        await off_loop(store.set_status, "pod-002", desired="stopped")  # a write: not tried
        assert answered == [("get", True), ("find", True)]

        holding, release = threading.Event(), threading.Event()

        def writer() -> None:
            with store._mutex:  # a write under way, e.g. waiting for fsync
                holding.set()
                release.wait(10)
                store.set_status("pod-003", desired="stopped")

        thread = threading.Thread(target=writer)
        thread.start()
        assert holding.wait(10)
        pending = asyncio.ensure_future(off_loop(store.get, "pod-003"))
        await asyncio.sleep(0.05)
        assert not pending.done()
        assert answered[-1] == ("get", False)
        release.set()
        assert (await pending).status == {"desired": "stopped"}
        thread.join(10)


def test_lookups_by_name_follow_removals_and_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name index never answers with a stale document: a name removed and applied
    again is the new document, a removed one is gone, and after a write that failed (the
    state parsed again from the file) every name is still found."""
    with Store.open(tmp_path) as store:
        _fill(store)
        store.remove("pod-010")
        assert store.find("pod-010") is None
        store.apply("pod-010", "job", {"name": "pod-010"}, "again")
        assert (store.get("pod-010").kind, store.get("pod-010").digest) == ("job", "again")
        store.add_run("pod-010", {"state": "running"})
        assert [r["number"] for r in store.runs("pod-010")] == [1]

        def full(*_: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("iyclo.store.os.fsync", full)
        with pytest.raises(StoreError):
            store.apply("pod-new", "pod", {"name": "pod-new"}, "d")
        monkeypatch.undo()
        assert store.find("pod-new") is None
        assert [store.get(f"pod-{i:03}").name for i in (0, 10, 199)] == [
            "pod-000", "pod-010", "pod-199",
        ]  # fmt: skip
