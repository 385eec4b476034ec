"""The desired-state store, against real files and real processes (no mocks)."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import pytest

import iyclo
from iyclo.errors import ConflictError, NotFoundError, StoreError
from iyclo.store import AtomicJSONStorage, Store
from tests.crash_writer import generation, record

CRASH_WRITER = Path(__file__).with_name("crash_writer.py")
SRC_DIR = Path(iyclo.__file__).parent.parent


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC_DIR)}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    with Store.open(state_dir) as opened:
        yield opened


def inode(path: Path) -> int:
    """Every write replaces the file, so an unchanged inode proves nothing was written."""
    return path.stat().st_ino


# -- deployments ---------------------------------------------------------------


def test_apply_creates_first_generation(store: Store) -> None:
    dep = store.apply("web", "pod", {"image": "nginx"}, "d1")

    assert (dep.name, dep.kind, dep.generation, dep.digest) == ("web", "pod", 1, "d1")
    assert dep.manifest == {"image": "nginx"}
    assert dep.applied_at.tzinfo == UTC
    assert dep.status == {}
    assert dep.generations == [1]
    assert store.get("web") == dep
    assert store.find("web") == dep


def test_same_digest_is_a_no_op(store: Store, state_dir: Path) -> None:
    first = store.apply("web", "pod", {"image": "nginx"}, "d1")
    before = inode(state_dir / "state.json")

    again = store.apply("web", "pod", {"image": "nginx"}, "d1")

    assert again == first
    assert inode(state_dir / "state.json") == before


def test_new_digest_appends_generation(store: Store) -> None:
    store.apply("web", "pod", {"image": "nginx:1"}, "d1")
    dep = store.apply("web", "pod", {"image": "nginx:2"}, "d2")

    assert (dep.generation, dep.digest, dep.manifest) == (2, "d2", {"image": "nginx:2"})
    assert dep.generations == [1, 2]
    assert store.manifest("web", 1) == {"image": "nginx:1"}
    assert [(g.generation, g.digest) for g in store.history("web")] == [(1, "d1"), (2, "d2")]


def test_history_is_bounded_and_numbers_are_never_reused(state_dir: Path) -> None:
    with Store.open(state_dir, history_limit=3) as store:
        for n in range(1, 6):
            store.apply("web", "pod", {"n": n}, f"d{n}")
        assert store.get("web").generations == [3, 4, 5]
        with pytest.raises(NotFoundError) as err:
            store.manifest("web", 1)
        assert str(err.value) == "pod 'web' has no generation 1 (stored: 3, 4, 5)"

        dep = store.apply("web", "pod", {"n": 1}, "d1")  # an old digest is still a change

        assert dep.generation == 6
        assert dep.generations == [4, 5, 6]


def test_the_first_apply_is_kept_past_trimmed_generations_until_a_remove(
    state_dir: Path,
) -> None:
    """A job's runs are told from a removed job's of the same name by this moment."""
    with Store.open(state_dir, history_limit=2) as store:
        first = store.apply("nightly", "job", {"n": 1}, "d1")
        assert first.created_at == first.applied_at
        time.sleep(0.01)
        for n in range(2, 5):
            store.apply("nightly", "job", {"n": n}, f"d{n}")
        assert store.get("nightly").generations == [3, 4]
        assert store.get("nightly").created_at == first.created_at
        store.remove("nightly", purge_runs=False)
        time.sleep(0.01)
        again = store.apply("nightly", "job", {"n": 1}, "d1")
        assert again.created_at > first.created_at


def test_a_store_without_the_first_apply_reads_the_oldest_generation(state_dir: Path) -> None:
    with Store.open(state_dir) as store:
        store.apply("web", "pod", {}, "d1")
        time.sleep(0.01)  # times are kept to the millisecond
        store.apply("web", "pod", {}, "d2")
    path = state_dir / "state.json"
    data = json.loads(path.read_text())
    (doc,) = data["deployments"].values()
    del doc["createdAt"]
    path.write_text(json.dumps(data))
    with Store.open(state_dir) as store:
        web = store.get("web")
        assert web.created_at == store.history("web")[0].applied_at < web.applied_at


def test_history_limit_must_leave_a_generation_to_fall_back_to(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="history_limit"):
        Store.open(state_dir, history_limit=1)


def test_kind_conflict(store: Store) -> None:
    store.apply("web", "pod", {"image": "nginx"}, "d1")

    with pytest.raises(ConflictError) as err:
        store.apply("web", "job", {"image": "nginx"}, "d2")

    assert str(err.value) == "cannot apply job 'web': a pod with that name exists"
    assert store.get("web").generations == [1]


def test_not_found_messages(store: Store) -> None:
    store.apply("nightly", "job", {"image": "backup"}, "d1")
    store.add_run("nightly", {"state": "succeeded"})
    store.add_run("nightly", {"state": "failed"})

    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: store.get("ghost"), "no pod or job named 'ghost'"),
        (lambda: store.history("ghost"), "no pod or job named 'ghost'"),
        (lambda: store.manifest("ghost", 1), "no pod or job named 'ghost'"),
        (lambda: store.set_status("ghost", state="x"), "no pod or job named 'ghost'"),
        (lambda: store.remove("ghost"), "no pod or job named 'ghost'"),
        (lambda: store.add_run("ghost", {}), "no pod or job named 'ghost'"),
        (lambda: store.run("ghost", 1), "no pod or job named 'ghost'"),
        (lambda: store.manifest("nightly", 9), "job 'nightly' has no generation 9 (stored: 1)"),
        (
            lambda: store.drop_generation("nightly", 9),
            "job 'nightly' has no generation 9 (stored: 1)",
        ),
        (lambda: store.run("nightly", 3), "job 'nightly' has no run 3 (stored: 1, 2)"),
        (
            lambda: store.update_run("nightly", 3, state="x"),
            "job 'nightly' has no run 3 (stored: 1, 2)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(NotFoundError) as err:
            call()
        assert str(err.value) == message
    assert store.find("ghost") is None


def test_list_is_sorted_by_name(store: Store) -> None:
    for name in ["zeta", "alpha", "mid"]:
        store.apply(name, "pod", {}, "d")

    assert [dep.name for dep in store.list()] == ["alpha", "mid", "zeta"]


def test_set_status_merges_and_skips_unchanged(store: Store, state_dir: Path) -> None:
    store.apply("web", "pod", {}, "d1")
    store.set_status("web", unit="iyclo-web.service", state="starting")
    store.set_status("web", state="running", restarts=0)
    before = inode(state_dir / "state.json")

    store.set_status("web", state="running")

    assert inode(state_dir / "state.json") == before
    assert store.get("web").status == {
        "unit": "iyclo-web.service",
        "state": "running",
        "restarts": 0,
    }


def test_status_survives_a_new_generation(store: Store) -> None:
    store.apply("web", "pod", {}, "d1")
    store.set_status("web", state="running")

    assert store.apply("web", "pod", {"x": 1}, "d2").status == {"state": "running"}


def test_drop_generation_goes_back_to_the_previous_one(store: Store) -> None:
    store.apply("web", "pod", {"v": 1}, "d1")
    store.apply("web", "pod", {"v": 2}, "d2")

    store.drop_generation("web", 2)

    dep = store.get("web")
    assert (dep.generation, dep.digest, dep.manifest, dep.generations) == (1, "d1", {"v": 1}, [1])
    assert store.apply("web", "pod", {"v": 3}, "d3").generation == 3  # 2 is not reused


def test_generation_updated_in_place_names_the_pod_it_runs_in(store: Store) -> None:
    assert store.apply("web", "pod", {"v": 1}, "d1").pod_generation == 1
    store.apply("web", "pod", {"v": 2}, "d2")
    updated = store.apply("web", "pod", {"v": 3}, "d3", pod_generation=2)
    assert (updated.generation, updated.pod_generation) == (3, 2)
    assert [g.pod_generation for g in store.history("web")] == [1, 2, 2]
    store.drop_generation("web", 3)  # a failed update in place
    assert store.get("web").pod_generation == 2
    assert store.apply("web", "pod", {"v": 4}, "d4").pod_generation == 4


def test_drop_the_only_generation_removes_everything(store: Store) -> None:
    store.apply("nightly", "job", {}, "d1")
    store.add_run("nightly", {"state": "failed"})

    store.drop_generation("nightly", 1)

    assert store.find("nightly") is None
    assert store.runs("nightly") == []
    assert store.list() == []


def test_remove(store: Store) -> None:
    store.apply("web", "pod", {}, "d1")
    store.apply("other", "pod", {}, "d1")

    store.remove("web")

    assert [dep.name for dep in store.list()] == ["other"]


def test_remove_keeping_runs_continues_numbering(store: Store) -> None:
    store.apply("nightly", "job", {}, "d1")
    store.add_run("nightly", {"state": "succeeded"})

    store.remove("nightly", purge_runs=False)
    assert store.runs("nightly") == [{"state": "succeeded", "number": 1}]
    store.apply("nightly", "job", {}, "d1")

    assert store.get("nightly").generation == 1
    assert store.add_run("nightly", {}) == 2


def test_remove_purges_runs(store: Store) -> None:
    store.apply("nightly", "job", {}, "d1")
    store.add_run("nightly", {"state": "succeeded"})

    store.remove("nightly")
    store.apply("nightly", "job", {}, "d1")

    assert store.runs("nightly") == []
    assert store.add_run("nightly", {}) == 1


# -- runs ----------------------------------------------------------------------


def test_run_numbering_bound_and_update(state_dir: Path) -> None:
    with Store.open(state_dir, run_limit=3) as store:
        store.apply("nightly", "job", {}, "d1")
        store.apply("hourly", "job", {}, "d1")

        numbers = [store.add_run("nightly", {"state": "running", "i": i}) for i in range(5)]
        store.update_run("nightly", 5, state="succeeded", exitCode=0)

        assert numbers == [1, 2, 3, 4, 5]
        assert [run["number"] for run in store.runs("nightly")] == [3, 4, 5]
        assert store.run("nightly", 5) == {
            "state": "succeeded",
            "i": 4,
            "number": 5,
            "exitCode": 0,
        }
        assert store.run("nightly", 4)["state"] == "running"
        assert store.add_run("hourly", {"number": 99}) == 1  # the store owns the number
        assert store.run("hourly", 1) == {"number": 1}


# -- files, locking, durability --------------------------------------------------


def test_round_trip_through_a_new_store(state_dir: Path) -> None:
    manifest = {"image": "nginx", "ports": [80, 443], "env": {"A": "ü"}, "ok": True, "x": None}
    with Store.open(state_dir) as store:
        store.apply("web", "pod", {"old": True}, "d0")
        written = store.apply("web", "pod", manifest, "d1")
        store.set_status("web", state="running")
        written = store.get("web")
        history = store.history("web")
        store.apply("nightly", "job", {}, "d1")
        store.add_run("nightly", {"state": "succeeded"})

    with Store.open(state_dir) as store:
        assert store.get("web") == written
        assert store.history("web") == history
        assert store.manifest("web", 2) == manifest
        assert store.runs("nightly") == [{"state": "succeeded", "number": 1}]


def test_on_disk_format_and_modes(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    with Store.open(state_dir) as store:
        store.apply("web", "pod", {"image": "nginx"}, "d1")

    data = json.loads((state_dir / "state.json").read_text())
    assert data["meta"] == {"1": {"schemaVersion": 1}}
    (doc,) = data["deployments"].values()
    assert doc["lastGeneration"] == 1
    assert doc["generations"][0]["appliedAt"].endswith("Z")
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "iyclo.lock").stat().st_mode) == 0o600


def test_unknown_schema_version_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "state.json").write_text('{"meta": {"1": {"schemaVersion": 99}}}')

    for _ in range(2):  # the failed open must release its lock
        with pytest.raises(StoreError) as err:
            Store.open(state_dir)
        assert str(err.value) == (
            f"{state_dir}/state.json has schema version 99; this iyclo reads version 1"
        )


def test_corrupt_file_is_a_store_error(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "state.json").write_text('{"meta": ')

    with pytest.raises(StoreError, match=r"state\.json is not valid JSON"):
        Store.open(state_dir)


def test_storage_reads_missing_and_empty_files_as_empty(tmp_path: Path) -> None:
    assert AtomicJSONStorage(tmp_path / "db.json").read() == {}
    (tmp_path / "db.json").write_text("")  # a new storage: one storage keeps what it parsed
    assert AtomicJSONStorage(tmp_path / "db.json").read() == {}


def test_unserialisable_value_leaves_file_and_directory_untouched(
    store: Store, state_dir: Path
) -> None:
    store.apply("web", "pod", {}, "d1")
    before = (state_dir / "state.json").read_bytes()

    with pytest.raises(TypeError):
        store.set_status("web", when=object())

    assert (state_dir / "state.json").read_bytes() == before
    assert sorted(p.name for p in state_dir.iterdir()) == ["iyclo.lock", "state.json"]


def test_closed_store_refuses_use(state_dir: Path) -> None:
    store = Store.open(state_dir)
    store.close()
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.list()


def test_stale_temp_files_are_cleaned_at_open(state_dir: Path) -> None:
    with Store.open(state_dir) as store:
        store.apply("web", "pod", {}, "d1")
    (state_dir / ".state.json.k3j9x_1.tmp").write_text('{"half": ')
    (state_dir / "unrelated.tmp").write_text("keep me")

    with Store.open(state_dir) as store:
        assert store.get("web").digest == "d1"
        assert sorted(p.name for p in state_dir.iterdir()) == [
            "iyclo.lock",
            "state.json",
            "unrelated.tmp",
        ]


TRY_OPEN = """
import sys
from pathlib import Path
from iyclo.errors import StoreError
from iyclo.store import Store
try:
    Store.open(Path(sys.argv[1])).close()
except StoreError as err:
    print(f"StoreError: {err}")
else:
    print("opened")
"""


def try_open_in_child(state_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", TRY_OPEN, str(state_dir)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_second_open_in_another_process_names_the_holder(state_dir: Path) -> None:
    with Store.open(state_dir):
        message = try_open_in_child(state_dir)
    assert message == (
        f"StoreError: state directory {state_dir} is in use by another iyclo (pid {os.getpid()})"
    )
    assert try_open_in_child(state_dir) == "opened"  # closing released it


def test_second_open_in_the_same_process_fails_too(state_dir: Path) -> None:
    with Store.open(state_dir), pytest.raises(StoreError, match=r"in use .*pid"):
        Store.open(state_dir)


# -- crash safety ---------------------------------------------------------------

CRASH_ITERATIONS = 40
CRASH_MAX_ITERATIONS = 400
"""Kills go on past CRASH_ITERATIONS until each kind of moment was hit at least once: on a
fast disk (Debian 13's test host, measured) 40 kills did not land inside a write."""
CRASH_BUDGET_SECONDS = 60.0


def read_ack(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        pytest.fail(f"writer died early: {proc.stderr.read()}")
    return int(line.split()[1])


def test_sigkill_at_random_moments_never_loses_an_acked_write(tmp_path: Path) -> None:
    """SIGKILL a writer at random points; every acked write must survive, intact.

    Each outcome is classified so the test can show the kills really landed
    mid-write and were not all in the quiet gap between two writes.
    """
    rng = random.Random(20240501)
    started = time.monotonic()
    outcomes = {"temp file left (killed inside write)": 0, "write landed, not acked": 0}
    acked_total = 0

    kills = 0
    between = 0
    while kills < CRASH_ITERATIONS or (
        kills < CRASH_MAX_ITERATIONS
        and time.monotonic() - started < CRASH_BUDGET_SECONDS / 2
        and not (between and all(outcomes.values()))
    ):
        state_dir = tmp_path / f"crash-{kills}"
        kills += 1
        with subprocess.Popen(
            [sys.executable, str(CRASH_WRITER), str(state_dir)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            try:
                acked = [read_ack(proc) for _ in range(rng.randint(1, 12))]
                time.sleep(rng.uniform(0, 0.030))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            # Acks printed before the kill but not read yet count as acked too.
            acked += [int(line.split()[1]) for line in proc.stdout.read().splitlines()]
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        last_ack = acked[-1]
        assert acked == list(range(last_ack + 1))
        acked_total += last_ack + 1

        raw = (state_dir / "state.json").read_text()
        assert isinstance(json.loads(raw), dict)
        inside = bool(list(state_dir.glob(".state.json.*.tmp")))
        if inside:
            outcomes["temp file left (killed inside write)"] += 1

        with Store.open(state_dir) as store:
            assert not list(state_dir.glob(".state.json.*.tmp"))
            for seq in range(last_ack + 1):
                name, manifest, digest = record(seq)
                assert store.manifest(name, generation(seq)) == manifest
                stored = store.history(name)[generation(seq) - 1]
                assert (stored.generation, stored.digest) == (generation(seq), digest)
            stored_writes = sum(len(dep.generations) for dep in store.list())
        assert stored_writes in (last_ack + 1, last_ack + 2), "more than one write in flight"
        if stored_writes == last_ack + 2:
            outcomes["write landed, not acked"] += 1
        elif not inside:
            between += 1

    elapsed = time.monotonic() - started
    print(
        f"\ncrash test: {kills} kills, {acked_total} acked writes verified,"
        f" {elapsed:.1f}s; {outcomes}, between writes: {between}"
    )
    assert elapsed < CRASH_BUDGET_SECONDS
    assert outcomes["temp file left (killed inside write)"] > 0
    assert between > 0, "no kill fell between two writes"


def test_failed_applies_do_not_eat_the_history(state_dir: Path) -> None:
    """Each apply trims the oldest generation only once it stands: an apply that fails
    and is dropped gives it back, so failures in a row keep the history whole."""
    with Store.open(state_dir, history_limit=3) as store:
        for n in range(3):
            store.apply("web", "Pod", {"n": n}, f"d{n}")
        for n in range(9):
            failed = store.apply("web", "Pod", {"bad": n}, f"bad{n}")
            assert [g.generation for g in store.history("web")] == [2, 3, failed.generation]
            store.drop_generation("web", failed.generation)
            assert [g.generation for g in store.history("web")] == [1, 2, 3]
        assert store.manifest("web", 1) == {"n": 0}
        assert store.get("web").generation == 3
        store.apply("web", "Pod", {"n": 3}, "d3")  # and one that stands trims for good
        store.apply("web", "Pod", {"n": 4}, "d4")
        assert [g.generation for g in store.history("web")] == [3, 13, 14]
