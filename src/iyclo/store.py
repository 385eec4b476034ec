"""The desired-state record: what the user asked iyclo to run, kept in TinyDB.

The daemon trusts this file after a crash or a reboot to know what should
exist, so two guarantees matter more than speed:

* a write is on disk when the call returns, and a crash at any instant leaves
  either the old or the new file, never a torn one (`AtomicJSONStorage`);
* only one process writes at a time (an exclusive `flock` held by `Store`).

Every public write is a single TinyDB operation, so it is a single atomic file
replacement. Values are plain JSON; callers get frozen attrs records back.

On disk (`<state_dir>/state.json`, TinyDB layout, one document per name)::

    {"meta": {"1": {"schemaVersion": 1}},
     "deployments": {"1": {"name": "web", "kind": "pod", "lastGeneration": 3,
                           "createdAt": "2024-04-30T09:00:00.000Z",
                           "generations": [{"generation": 3, "digest": "...",
                                            "manifest": {...},
                                            "appliedAt": "2024-05-01T12:00:00.000Z",
                                            "podGeneration": 2}],
                           "status": {"unit": "...", "state": "running"}}},
     "runs": {"1": {"job": "backup", "lastRun": 7,
                    "runs": [{"number": 7, "state": "succeeded"}]}}}

`podGeneration` is present only on a generation applied in place (its resources changed
on the running pod): it names the generation whose Podman pod it runs in.

`createdAt` is when the name was first applied (since its last remove): what happened
to a unit of that name before then was an earlier deployment's. Stores written before
it was kept read the oldest generation's `appliedAt` instead.

`lastGeneration` and `lastRun` are counters kept apart from the lists so that
numbers are never reused after old entries are trimmed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import attrs
from tinydb import TinyDB, where
from tinydb.storages import Storage
from tinydb.table import Document, Table

from iyclo.errors import ConflictError, NotFoundError, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "AtomicJSONStorage",
    "Deployment",
    "Generation",
    "Store",
    "off_loop",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_READS = "_iyclo_reads_kept_state"


def reads(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Marks a `Store` method that only looks at the kept state (`off_loop` may run it
    on the event loop)."""
    setattr(method, _READS, True)
    return method


async def off_loop(call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """A `Store` call from the event loop: a write in a worker thread (it waits for
    fsync); a read right here when no write holds the store, else in a thread too.

    A read is a lookup in the parsed state the store keeps (about 25 µs); the hop to a
    worker thread and back cost about 200 µs of each `get` on two busy cores, most of
    a read's time through either front.
    """
    store = getattr(call, "__self__", None)
    if getattr(call, _READS, False) and isinstance(store, Store):
        done, value = store.read_if_free(call, *args, **kwargs)
        if done:
            return value  # type: ignore[return-value]
    return await asyncio.to_thread(call, *args, **kwargs)


#: Bump when the on-disk layout changes; `Store.open` refuses any other version.
SCHEMA_VERSION = 1

STATE_FILE = "state.json"
LOCK_FILE = "iyclo.lock"

JSONDict = dict[str, Any]


def _no_such(name: str) -> NotFoundError:
    return NotFoundError(f"no pod or job named '{name}'")


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable; without it a power cut can undo it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces the whole file atomically on every write.

    TinyDB's own `JSONStorage` rewrites the file in place, so a crash mid-write
    leaves truncated JSON. Here the new content goes to a temporary file in the
    same directory, is fsynced, renamed over the target and the directory is
    fsynced: readers (and the next boot) see the old file or the new one.

    Temporary files left by a crash are deleted when the storage is opened, so
    the caller must be the only writer of the directory (`Store` holds a lock).

    Being the only writer, it parses the file once and keeps the parsed state, changed
    only by its own writes (write-through): re-parsing the whole file on each read made
    every read cost as much as the store is large, and `List` cost that once per record.
    The records handed out share that state, which is why they are frozen: read-only.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = Path(path)
        self._dir = self._path.parent
        self._tmp_prefix = f".{self._path.name}."
        self._data: dict[str, dict[str, Any]] | None = None
        self.file_reads = 0
        """How often the file was parsed: once per open, again only after a failed write."""
        self.changes = 0
        """Writes begun: whatever was made from the kept state before one may be stale."""
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for stale in self._dir.glob(f"{self._tmp_prefix}*.tmp"):
                stale.unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"cannot prepare {self._dir}: {err.strerror}") from err

    @property
    def kept(self) -> bool:
        """Whether the parsed state is at hand (a read does no file I/O)."""
        return self._data is not None

    def read(self) -> dict[str, dict[str, Any]]:
        """The parsed state: parsed from the file once, then kept (this process is the
        only writer, so the file holds nothing the kept state does not)."""
        if self._data is None:
            self._data = self._parse()
        return self._data

    def _parse(self) -> dict[str, dict[str, Any]]:
        self.file_reads += 1
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise StoreError(f"cannot read {self._path}: {err.strerror}") from err
        if not text.strip():
            return {}
        try:
            data: dict[str, dict[str, Any]] = json.loads(text)
        except json.JSONDecodeError as err:
            raise StoreError(f"{self._path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self._path} does not hold a JSON object")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        # TinyDB changed the kept state in place before calling this: until the file holds
        # it too, the kept state is not trusted, and a failed write forgets it (the next
        # read parses the file again, which still holds the state before the change).
        self._data = None
        self.changes += 1
        # Serialise first: a value that is not JSON must fail before any file is touched.
        # Compact: with an indent, json falls back from its C encoder to pure Python,
        # several times slower on every write of a store with hundreds of pods.
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=self._tmp_prefix, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp creates it 0600
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            tmp = None
            _fsync_dir(self._dir)
            self._data = data
        except OSError as err:
            raise StoreError(f"cannot write {self._path}: {err.strerror}") from err
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


@attrs.frozen
class Generation:
    """One applied version of a deployment's manifest."""

    generation: int
    digest: str
    manifest: JSONDict
    applied_at: datetime
    pod_generation: int
    images: JSONDict
    """Per container, the image it was made from: ``{"image", "id", "digest"}``; empty
    for generations recorded before iyclo recorded them."""
    rolled_back: str = ""
    """Why this generation was rolled back (it never became ready); "" if it was not."""


@attrs.frozen
class Deployment:
    """A pod or job as the user last asked for it, plus the daemon's status notes."""

    name: str
    kind: str
    generation: int
    digest: str
    manifest: JSONDict
    applied_at: datetime
    status: JSONDict
    generations: list[int]
    pod_generation: int
    """The generation whose Podman pod runs this one: itself, unless updated in place."""
    images: JSONDict
    """The current generation's images (``Generation.images``)."""
    created_at: datetime
    """When this name was first applied since it was last removed: a job's runs come
    after it (the journal still holds the runs of a removed job of the same name)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _generation(entry: Mapping[str, Any]) -> Generation:
    return Generation(
        generation=entry["generation"],
        digest=entry["digest"],
        manifest=entry["manifest"],
        applied_at=datetime.fromisoformat(entry["appliedAt"]),
        pod_generation=entry.get("podGeneration", entry["generation"]),
        images=entry.get("images") or {},
        rolled_back=entry.get("rolledBack", ""),
    )


def _deployment(doc: Mapping[str, Any]) -> Deployment:
    # the newest generation that was not rolled back; the newest at all if each one was
    standing = [entry for entry in doc["generations"] if not entry.get("rolledBack")]
    current = _generation((standing or doc["generations"])[-1])
    return Deployment(
        name=doc["name"],
        kind=doc["kind"],
        generation=current.generation,
        digest=current.digest,
        manifest=current.manifest,
        applied_at=current.applied_at,
        status=doc["status"],
        generations=[entry["generation"] for entry in doc["generations"]],
        pod_generation=current.pod_generation,
        images=current.images,
        created_at=datetime.fromisoformat(
            doc.get("createdAt") or doc["generations"][0]["appliedAt"]
        ),
    )


def _numbers(numbers: builtins.list[int]) -> str:
    return ", ".join(map(str, numbers)) or "none"


def _no_generation(doc: Mapping[str, Any], generation: int) -> NotFoundError:
    stored = [entry["generation"] for entry in doc["generations"]]
    return NotFoundError(
        f"{doc['kind']} '{doc['name']}' has no generation {generation} (stored: {_numbers(stored)})"
    )


def _lock(state_dir: Path) -> int:
    """Take the single-writer lock, or say which process holds it.

    `flock` belongs to the open file description, so the lock lives exactly as
    long as the returned descriptor and is released by the kernel if we die.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise StoreError(f"cannot open state directory {state_dir}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"state directory {state_dir} is in use by another iyclo (pid {holder})"
        ) from None
    except OSError as err:
        os.close(fd)
        raise StoreError(f"cannot lock {state_dir / LOCK_FILE}: {err.strerror}") from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Store:
    """Deployments (with bounded generation history) and job runs, one writer at a time.

    Methods are synchronous and return only after the change is durable; a
    mutex makes them safe to call from worker threads (`asyncio.to_thread`).
    """

    def __init__(
        self, state_dir: Path, db: TinyDB, lock_fd: int, history_limit: int, run_limit: int
    ) -> None:
        """Use `Store.open`; this only wires already-acquired resources together."""
        self.state_dir = state_dir
        self._db: TinyDB | None = db
        self._lock_fd = lock_fd
        self._history_limit = history_limit
        self._run_limit = run_limit
        self._mutex = threading.RLock()
        self._indexes: dict[str, dict[str, int]] = {}
        """table → field value → doc id, for ``_lookup``."""
        self._records: dict[str, Deployment] = {}
        """name → its record, as made since the store last changed (``_record``)."""
        self._records_at = -1
        """``AtomicJSONStorage.changes`` when ``_records`` were made."""

    @classmethod
    def open(cls, state_dir: Path, *, history_limit: int = 10, run_limit: int = 50) -> Store:
        """Lock `state_dir`, clean up after any crash and check the schema version.

        `history_limit` is at least 2 so that the generation before a failed
        apply is always still there for `drop_generation` to fall back to.
        """
        if history_limit < 2:
            raise ValueError("history_limit must be at least 2")
        if run_limit < 1:
            raise ValueError("run_limit must be at least 1")
        lock_fd = _lock(state_dir)
        try:
            db = TinyDB(state_dir / STATE_FILE, storage=AtomicJSONStorage)
            store = cls(state_dir, db, lock_fd, history_limit, run_limit)
            store._check_schema()
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def close(self) -> None:
        """Release the lock; the store cannot be used afterwards. Safe to call twice."""
        with self._mutex:
            if self._db is None:
                return
            self._db.close()
            self._db = None
            os.close(self._lock_fd)  # releases the flock

    @property
    def file_reads(self) -> int:
        """How often the state file was parsed since `open` (`AtomicJSONStorage`)."""
        if self._db is None:
            return 0
        storage = self._db.storage
        assert isinstance(storage, AtomicJSONStorage)
        return storage.file_reads

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- deployments -------------------------------------------------------

    def apply(
        self,
        name: str,
        kind: str,
        manifest: JSONDict,
        digest: str,
        *,
        pod_generation: int | None = None,
        images: JSONDict | None = None,
    ) -> Deployment:
        """Record `manifest` as the newest generation of `name`.

        Re-applying the current digest with the same `images` writes nothing, so the
        daemon can apply on every reconcile without growing the history; the same
        manifest with an image pulled anew (a tag pushed again) is a new generation.
        `pod_generation` is given for a generation that keeps running in an earlier
        generation's Podman pod; `images` are what its containers were made from.
        """
        with self._mutex:
            table = self._table("deployments")
            doc = self._lookup("deployments", "name", name)
            if doc is not None and doc["kind"] != kind:
                raise ConflictError(
                    f"cannot apply {kind} '{name}': a {doc['kind']} with that name exists"
                )
            # the current generation: a rolled-back one after it is tried again, as new
            last = None
            if doc is not None:
                standing = [e for e in doc["generations"] if not e.get("rolledBack")]
                last = (standing or doc["generations"])[-1]
            if (
                doc is not None
                and last is not None
                and last["digest"] == digest
                and (images is None or (last.get("images") or {}) == images)
            ):
                return _deployment(doc)
            number = 1 if doc is None else doc["lastGeneration"] + 1
            entry = {
                "generation": number,
                "digest": digest,
                "manifest": manifest,
                "appliedAt": _now(),
            }
            if pod_generation is not None:
                entry["podGeneration"] = pod_generation
            if images:
                entry["images"] = images
            if doc is None:
                table.insert(
                    {
                        "name": name,
                        "kind": kind,
                        "lastGeneration": number,
                        "createdAt": entry["appliedAt"],
                        "generations": [entry],
                        "status": {},
                    }
                )
            else:
                every = [*doc["generations"], entry]
                # The oldest ones leave only once this generation stands: until then they
                # wait in "trimmed", which a failed apply's drop_generation puts back.
                table.update(
                    {"lastGeneration": number, "generations": every[-self._history_limit :],
                     "trimmed": every[: -self._history_limit]},
                    doc_ids=[doc.doc_id],
                )  # fmt: skip
            # Read back so the caller holds what is on disk, not its own mutable dict.
            return self.get(name)

    def read_if_free(
        self, read: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> tuple[bool, _T | None]:
        """``(True, read(...))`` when no write holds the store and the parsed state is
        kept (after a failed write it is parsed again, which is file I/O); else
        ``(False, None)`` at once, without waiting."""
        storage = self._db.storage if self._db is not None else None
        if not isinstance(storage, AtomicJSONStorage) or not storage.kept:
            return False, None
        if not self._mutex.acquire(blocking=False):
            return False, None
        try:
            return True, read(*args, **kwargs)
        finally:
            self._mutex.release()

    @reads
    def get(self, name: str) -> Deployment:
        with self._mutex:
            record = self._record(name)
            if record is None:
                raise _no_such(name)
            return record

    @reads
    def find(self, name: str) -> Deployment | None:
        with self._mutex:
            return self._record(name)

    def _record(self, name: str) -> Deployment | None:
        """``name``'s record, made once per change of the store and then handed out again.

        A ``get`` made it anew each time (its lookup, the current generation picked out,
        its time parsed): ~10 µs of each read through either front. Records are frozen and
        share the kept state already, so the same one can go to every reader until any
        write begins (``AtomicJSONStorage.changes``), failed writes included."""
        storage = self._db.storage if self._db is not None else None
        changes = storage.changes if isinstance(storage, AtomicJSONStorage) else -1
        if changes != self._records_at or changes < 0:
            self._records.clear()
            self._records_at = changes
        record = self._records.get(name)
        if record is None:
            doc = self._lookup("deployments", "name", name)
            if doc is None:
                return None
            record = self._records[name] = _deployment(doc)
        return record

    @reads
    def list(self) -> builtins.list[Deployment]:
        """Every deployment, sorted by name."""
        with self._mutex:
            docs = self._table("deployments").all()
            return [_deployment(doc) for doc in sorted(docs, key=lambda doc: doc["name"])]

    @reads
    def history(self, name: str) -> builtins.list[Generation]:
        """Stored generations of `name`, oldest first."""
        with self._mutex:
            return [_generation(entry) for entry in self._doc(name)["generations"]]

    @reads
    def manifest(self, name: str, generation: int) -> JSONDict:
        with self._mutex:
            doc = self._doc(name)
            for entry in doc["generations"]:
                if entry["generation"] == generation:
                    manifest: JSONDict = entry["manifest"]
                    return manifest
            raise _no_generation(doc, generation)

    def set_status(self, name: str, **fields: Any) -> None:
        """Merge daemon-owned facts (unit, state, restarts, ...) into the status dict."""
        with self._mutex:
            doc = self._doc(name)
            status = {**doc["status"], **fields}
            if status != doc["status"]:
                self._table("deployments").update({"status": status}, doc_ids=[doc.doc_id])

    def drop_generation(self, name: str, generation: int) -> None:
        """Forget one generation, typically the one whose apply failed part-way.

        The previous generation becomes current again, and the oldest generation that
        apply trimmed to keep the history bounded comes back: nine failed applies in a row
        must not leave only the current generation. Dropping the only
        generation removes the whole record (and its runs), so a first apply
        that failed leaves nothing half-made behind. Numbers are not reused.
        """
        with self._mutex:
            doc = self._doc(name)
            kept = [entry for entry in doc["generations"] if entry["generation"] != generation]
            if len(kept) == len(doc["generations"]):
                raise _no_generation(doc, generation)
            if not kept:
                self.remove(name)
                return
            if generation == doc["generations"][-1]["generation"]:
                # the newest failed: what its apply trimmed is history again
                kept = [*doc.get("trimmed", []), *kept]
            self._table("deployments").update(
                {"generations": kept, "trimmed": []}, doc_ids=[doc.doc_id]
            )

    def mark_rolled_back(self, name: str, generation: int, reason: str) -> None:
        """Keep ``generation`` in the history, marked as rolled back for ``reason``: the
        generation before it is current again (``_deployment``), and the history shows
        what was tried and why it did not stand."""
        with self._mutex:
            doc = self._doc(name)
            entries = [dict(entry) for entry in doc["generations"]]
            for entry in entries:
                if entry["generation"] == generation:
                    entry["rolledBack"] = reason or "not ready"
                    break
            else:
                raise _no_generation(doc, generation)
            self._table("deployments").update(
                {"generations": entries, "trimmed": []}, doc_ids=[doc.doc_id]
            )

    def remove(self, name: str, *, purge_runs: bool = True) -> None:
        """Delete `name`; with `purge_runs=False` its run history stays (and numbering continues).

        Runs go first: a crash in between leaves the deployment still listed,
        so the removal is visibly unfinished rather than silently leaking runs.
        """
        with self._mutex:
            doc = self._doc(name)
            if purge_runs:
                self._table("runs").remove(where("job") == name)
            self._table("deployments").remove(doc_ids=[doc.doc_id])

    # -- runs of scheduled jobs --------------------------------------------

    def add_run(self, name: str, run: JSONDict) -> int:
        """Append a run of job `name` and return its number (the store sets `run["number"]`)."""
        with self._mutex:
            self._doc(name)
            table = self._table("runs")
            doc = self._lookup("runs", "job", name)
            number = 1 if doc is None else doc["lastRun"] + 1
            entry = {**run, "number": number}
            if doc is None:
                table.insert({"job": name, "lastRun": number, "runs": [entry]})
            else:
                runs = [*doc["runs"], entry][-self._run_limit :]
                table.update({"lastRun": number, "runs": runs}, doc_ids=[doc.doc_id])
            return number

    def update_run(self, name: str, number: int, **fields: Any) -> None:
        with self._mutex:
            doc, index = self._run_doc(name, number)
            runs = list(doc["runs"])
            runs[index] = {**runs[index], **fields}
            self._table("runs").update({"runs": runs}, doc_ids=[doc.doc_id])

    @reads
    def runs(self, name: str) -> builtins.list[JSONDict]:
        """Stored runs of `name`, newest last; empty if it never ran."""
        with self._mutex:
            doc = self._lookup("runs", "job", name)
            return [] if doc is None else list(doc["runs"])

    @reads
    def run(self, name: str, number: int) -> JSONDict:
        with self._mutex:
            doc, index = self._run_doc(name, number)
            run: JSONDict = doc["runs"][index]
            return run

    # -- internals ---------------------------------------------------------

    def _table(self, name: str) -> Table:
        if self._db is None:
            raise StoreError(f"the store in {self.state_dir} is closed")
        return self._db.table(name, cache_size=0)

    def _lookup(self, table_name: str, field: str, value: str) -> Document | None:
        """The document whose ``field`` is ``value``, through an index of doc ids.

        TinyDB finds a document by evaluating a query on each one in turn: at 200 pods a
        lookup cost ~200 query calls, several per apply and per read, which made a pod's
        apply slower the more pods there were. An index entry is checked against the
        document it names, so a removed or re-made one, or the state parsed again after
        a failed write, is found by one scan that indexes every document again.
        """
        table = self._table(table_name)
        index = self._indexes.setdefault(table_name, {})
        doc_id = index.get(value)
        if doc_id is not None:
            doc = table.get(doc_id=doc_id)
            if doc is not None and doc.get(field) == value:
                return doc
        index.clear()
        for doc in table:
            index[doc[field]] = doc.doc_id
        doc_id = index.get(value)
        return None if doc_id is None else table.get(doc_id=doc_id)

    def _doc(self, name: str) -> Document:
        doc = self._lookup("deployments", "name", name)
        if doc is None:
            raise _no_such(name)
        return doc

    def _run_doc(self, name: str, number: int) -> tuple[Document, int]:
        doc = self._lookup("runs", "job", name)
        if doc is not None:
            for index, run in enumerate(doc["runs"]):
                if run["number"] == number:
                    return doc, index
        deployment = self._lookup("deployments", "name", name)
        if deployment is None and doc is None:
            raise _no_such(name)
        kind = "job" if deployment is None else deployment["kind"]
        stored = [] if doc is None else [run["number"] for run in doc["runs"]]
        raise NotFoundError(f"{kind} '{name}' has no run {number} (stored: {_numbers(stored)})")

    def _check_schema(self) -> None:
        meta = self._table("meta")
        docs = meta.all()
        if not docs:
            meta.insert({"schemaVersion": SCHEMA_VERSION})
            return
        version = docs[0].get("schemaVersion")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.state_dir / STATE_FILE} has schema version {version};"
                f" this iyclo reads version {SCHEMA_VERSION}"
            )
