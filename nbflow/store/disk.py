"""DiskcacheBackend: the default, embedded, process-safe checkpoint store.

Layout under the store directory (default ``./.nbflow``), every folder 0700::

    instances/<instance>/        one diskcache database (SQLite, WAL) per instance
    instances/<instance>/blobs/  outputs too large to keep inline, one file each (0600)
    locks/<instance>.*           the instance's lock files (see file_locks.py)

``<instance>`` is a file name valid on Linux, macOS and Windows (see names.py).

One database per instance keeps instances independent: a damaged one never affects the
others, clearing one is removing a folder, and runners on different instances never
contend for one SQLite writer lock.

Atomicity: a checkpoint is one SQLite transaction, so a kill -9 at any moment leaves the
old record or the new one. A large output is first written to a temporary file,
fsync'd and renamed, and only then referenced by the record; a kill in between leaves
an orphan file, which the next runner to lock the instance removes.

Integrity: rows are data only (``records.py``) and every payload carries a checksum
checked when it is read. Each instance has a *generation*; a handle that loaded one
generation refuses to write into another (the instance was cleared or restarted by
another process meanwhile) instead of mixing the two, and a database file replaced
under an open handle is noticed and reopened.

Errors say what happened: damaged bytes (``CheckpointCorruptError``), a full disk
(``StoreFullError``), permissions or a read-only filesystem (``StoreUnreadableError``),
another holder (``InstanceLockedError``). A store folder this process cannot write is
opened read-only: it can be listed and inspected.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable
from pathlib import Path
from typing import IO, Any, Literal

from nbflow.core.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    NbflowError,
    StaleInstanceError,
    StoreFormatError,
    StoreFullError,
    StoreUnreadableError,
)
from nbflow.core.status import RunState
from nbflow.store.base import (
    DAMAGED_CODEC,
    CheckpointRecord,
    Claim,
    InstanceMeta,
    InstanceSummary,
    PayloadSink,
    damaged_record,
    matches,
    record_version,
    summarize,
    validate_instance_id,
)
from nbflow.store.disk_layout import (
    CACHE_SETTINGS,
    CLAIM_PREFIX,
    CONTROL,
    CONTROL_FLAG,
    GENERATION,
    INLINE_LIMIT,
    MAX_OPEN,
    META,
    RECORD_PREFIX,
    SIGNAL_PREFIX,
    STAMP,
    TASK_STATE_PREFIX,
    SpillSink,
    instance_dirname,
    make_private_dir,
    resolve_dirname,
)
from nbflow.store.file_locks import FileLease, FileLocks
from nbflow.store.file_locks import preload as preload_locks
from nbflow.store.migrate import is_old_format
from nbflow.store.os_errors import store_error
from nbflow.store.records import (
    BLOB_NAME,
    ChecksumReader,
    RecordFormatError,
    checksum_bytes,
    decode_claim,
    decode_control,
    decode_json,
    decode_meta,
    decode_record,
    decode_signals,
    encode_claim,
    encode_control,
    encode_json,
    encode_meta,
    encode_record,
    encode_signals,
    verify_inline,
)
from nbflow.store.sqlite_rows import Rows
from nbflow.store.store_index import StoreIndex, files_of

__all__ = ["INLINE_LIMIT", "DiskcacheBackend"]


_RECHECK_HELD = 1.0  # seconds between file checks of an instance this handle holds
CONTROL_POLL = 0.02  # seconds a control request from another process may go unseen
_control_epoch = 0  # moves with every control request set in this process
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted in the store is refused (ELOOP), not followed


class _Open:
    """An open instance database and the file identity it was opened on."""

    __slots__ = ("ino", "rows")

    def __init__(self, rows: Rows, ino: int) -> None:
        self.rows, self.ino = rows, ino


class _Translated:
    """Context manager: re-raise an exception as the NbflowError that says what it means
    (see os_errors.py); anything it cannot name propagates unchanged."""

    __slots__ = ("instance_id", "path", "task_id")

    def __init__(self, path: str, instance_id: str, task_id: str | None) -> None:
        self.path, self.instance_id, self.task_id = path, instance_id, task_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None or isinstance(exc, NbflowError) or not isinstance(exc, Exception):
            return False
        err = store_error(exc, self.path, self.instance_id, self.task_id)
        if err is None:
            return False
        raise err from None


class DiskcacheBackend:
    """Checkpoints in a directory on disk; safe to share between processes.

    Args:
        directory: the store folder; created (0700) if missing. Default ``./.nbflow``.

    A backend pickles as its directory, so worker processes reopen it themselves.

    >>> import tempfile
    >>> b = DiskcacheBackend(tempfile.mkdtemp())
    >>> b.list_instances()
    []
    """

    def __init__(self, directory: str | os.PathLike[str] = ".nbflow") -> None:
        if not isinstance(directory, str | os.PathLike):
            raise ConfigurationError("directory", directory, "a folder path such as './.nbflow'")
        self.directory = Path(directory).expanduser().absolute()
        self.read_only = False
        try:
            if not self.directory.exists():  # a folder nbflow creates is private; a user's own is left as it is
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                make_private_dir(self.directory)
            make_private_dir(self.directory / "instances")
            make_private_dir(self.directory / "locks")
            for sub in ("instances", "locks"):  # folders of older stores followed the umask
                os.chmod(self.directory / sub, 0o700)  # POSIX only; on Windows it just keeps them writable
        except OSError as exc:
            instances = str(self.directory / "instances")
            if not (os.path.isdir(instances) and os.access(instances, os.R_OK | os.X_OK)):
                err = store_error(exc, str(self.directory))
                if err is None:
                    raise ConfigurationError(
                        "directory", str(directory), f"a folder nbflow can create and write ({exc.strerror})"
                    ) from None
                raise err from None
            self.read_only = True  # an existing store nbflow may not write: inspect only
        if not self.read_only and not os.access(self.directory / "instances", os.W_OK):
            self.read_only = True
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._open_lock = threading.Lock()
        self._dirs: dict[str, Path] = {}
        self._gens: dict[str, str] = {}  # the generation this handle last saw, per instance
        self._flags: dict[str, str] = {}
        self._control_seen: dict[str, tuple[int | None, tuple[str, str] | None, float, int]] = {}
        self._locks = FileLocks(self.directory / "locks")
        # Instances this handle holds exclusively: nobody else writes or replaces them
        # meanwhile, which lets a checkpoint skip re-checking the file (see _rows).
        self._held: dict[str, FileLease] = {}
        self._checked_at: dict[str, float] = {}
        # Per instance, the tasks whose current record has a blob file, once known (a
        # full read of the records, or a fresh generation): a record written over one
        # of them must delete that file; over any other, nothing needs reading first.
        self._blobbed: dict[str, set[str]] = {}
        self._index = StoreIndex(self.directory, self.read_only)
        self._indexed: dict[str, tuple[InstanceSummary, str]] = {}  # rows this handle wrote, per folder

    def __repr__(self) -> str:
        return f"DiskcacheBackend({str(self.directory)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    def close(self) -> None:
        """Close every open database (they reopen on demand)."""
        with self._open_lock:
            entries = list(self._open.items())
            self._open.clear()
        for folder, entry in entries:
            self._close_entry(folder, entry)
        self._index.close()

    def _close_entry(self, folder: str, entry: _Open) -> None:
        """Close an instance database. Closing folds its write-ahead log into the file,
        which changes the files an index row was written against: a row this handle
        wrote, with nothing written since, is carried over to the closed files so the
        next listing need not open the instance again."""
        path = self.directory / "instances" / folder
        indexed = self._indexed.pop(folder, None)
        current = files_of(path) if indexed is not None else None
        entry.rows.close()
        if indexed is not None and indexed[1] == current:
            self._index.put({folder: (indexed[0], files_of(path))})

    # -- paths, databases, errors -------------------------------------------------------
    def _instance_dir(self, instance_id: str) -> Path:
        path = self._dirs.get(instance_id)
        if path is None:  # cached: this is on the path of every checkpoint write
            instances = self.directory / "instances"
            path = instances / resolve_dirname(instances, validate_instance_id(instance_id))
            self._dirs[instance_id] = path
        return path

    def _rows(self, instance_id: str, create: bool = True) -> Rows | None:
        path = self._instance_dir(instance_id)
        if self._holds(instance_id):
            # Held exclusively: only a hand-made deletion could replace the file, so it
            # is looked at once a second rather than before every checkpoint.
            entry = self._open.get(path.name)
            now = time.monotonic()
            if entry is not None and now - self._checked_at.get(instance_id, 0.0) < _RECHECK_HELD:
                return entry.rows
            self._checked_at[instance_id] = now
        return self._rows_at(path, instance_id, create)

    def _holds(self, instance_id: str) -> bool:
        lease = self._held.get(instance_id)
        return lease is not None and lease.held

    def _rows_at(self, path: Path, instance_id: str, create: bool) -> Rows | None:
        """The open database of the instance folder ``path``; None if it has none and
        ``create`` is false. A file replaced since it was opened (another process
        cleared the instance) is reopened; the generation check then refuses writes
        meant for the old one."""
        db = path / "cache.db"
        try:
            with self._errors(instance_id, path=path):
                if path.is_symlink():  # nbflow never makes one; following it could leave the store
                    raise CheckpointCorruptError(instance_id, "its folder is a symbolic link", str(path))
                st = os.stat(db)
            ino: int | None = st.st_ino
        except FileNotFoundError:
            ino = None
        else:
            if st.st_size == 0 and not create:
                # SQLite would take an emptied file for a new, empty database.
                raise CheckpointCorruptError(instance_id, "its database file is empty", str(db))
        key = path.name
        with self._open_lock:
            entry = self._open.get(key)
            if entry is not None:
                if entry.ino == ino:
                    self._open.move_to_end(key)
                    return entry.rows
                entry.rows.close()
                del self._open[key]
            if ino is None:
                if not create:
                    return None
                if self.read_only:
                    raise StoreUnreadableError(str(self.directory), "the store is open read-only", instance_id)
                make_private_dir(path)
            rows = self._connect(path, instance_id, create)
            with self._errors(instance_id, path=path):
                self._open[key] = _Open(rows, os.stat(db).st_ino)
            while len(self._open) > MAX_OPEN:
                folder, old = self._open.popitem(last=False)
                self._close_entry(folder, old)
            self._checked_at.pop(instance_id, None)
            return rows

    def _connect(self, path: Path, instance_id: str, create: bool) -> Rows:
        """Open an instance database, read-write where possible. A reader (``create``
        false) that cannot write there — a full disk, another user's folder — reads it
        read-only instead; the next write reopens it (see _writable)."""
        read_only = self.read_only or not os.access(path, os.W_OK)
        try:
            with self._errors(instance_id, path=path):
                return Rows(path, CACHE_SETTINGS, read_only=read_only)
        except (StoreFullError, StoreUnreadableError):
            if create or read_only:
                raise
        with self._errors(instance_id, path=path):
            return Rows(path, CACHE_SETTINGS, read_only=True)

    def _errors(self, instance_id: str, task_id: str | None = None, path: Path | None = None) -> _Translated:
        """A ``with`` block whose OS and SQLite errors come out as what they mean."""
        return _Translated(str(path or self._instance_dir(instance_id)), instance_id, task_id)

    def _get(self, instance_id: str, key: str) -> bytes | str | None:
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return None
        with self._errors(instance_id):
            return rows.get(key)

    def _writable(self, instance_id: str, create: bool = True) -> Rows | None:
        if self.read_only:
            raise StoreUnreadableError(str(self.directory), "the store is open read-only", instance_id)
        rows = self._rows(instance_id, create)
        if rows is not None and rows.read_only:  # opened for reading while it could not be written
            with self._open_lock:
                entry = self._open.pop(self._instance_dir(instance_id).name, None)
            if entry is not None:
                entry.rows.close()
            rows = self._rows(instance_id, create)
            if rows is not None and rows.read_only:
                raise StoreUnreadableError(str(self._instance_dir(instance_id)), "it cannot be written", instance_id)
        return rows

    def _check_generation(self, rows: Rows, instance_id: str) -> str:
        """Inside a write transaction: the instance's generation, refusing a write from a
        handle that saw another one."""
        current = self._generation(rows, instance_id)
        known = self._gens.get(instance_id)
        if current is None:
            if known is not None:
                raise StaleInstanceError(instance_id, "it was cleared")
            return ""
        if known is None:
            self._gens[instance_id] = current
        elif known != current:
            raise StaleInstanceError(instance_id, "it was restarted")
        return current

    # -- instances ----------------------------------------------------------------------
    def load_instance(self, instance_id: str) -> InstanceMeta | None:
        rows = self._rows(instance_id, create=False)
        data, generated = None, False
        if rows is not None:
            with self._errors(instance_id):
                data, generated = _meta_snapshot(rows)
        if data is None:
            path = self._instance_dir(instance_id)
            damage = _missing_record_damage(path, rows is not None, generated)
            if damage:
                raise CheckpointCorruptError(instance_id, damage, str(path))
            self._gens.pop(instance_id, None)
            return None
        if is_old_format(data):
            raise StoreFormatError(instance_id, str(self._instance_dir(instance_id)))
        try:
            meta = decode_meta(data)
        except RecordFormatError as exc:
            raise CheckpointCorruptError(instance_id, str(exc), str(self._instance_dir(instance_id))) from None
        self._gens[instance_id] = meta.generation
        return meta

    def save_instance(self, meta: InstanceMeta) -> None:
        instance_id = meta.instance_id
        rows = self._writable(instance_id)
        assert rows is not None
        path = self._instance_dir(instance_id)
        with self._errors(instance_id, path=path), rows.transact():
            stored = rows.get(GENERATION)
            if not meta.generation:  # a new instance (first run or a start-over)
                meta.generation = os.urandom(16).hex()
                if stored is not None:  # replaces an instance: nothing of the old one stays visible
                    rows.delete([k for k, _ in rows.scan(RECORD_PREFIX)] + [k for k, _ in rows.scan("a:")])
                    rows.put(STAMP, os.urandom(16).hex())
            elif stored != meta.generation:
                raise StaleInstanceError(instance_id, "it was cleared" if stored is None else "it was restarted")
            fresh = stored != meta.generation
            rows.put_many([(META, encode_meta(meta)), (GENERATION, meta.generation)])
        self._gens[instance_id] = meta.generation
        if fresh:
            self._blobbed[instance_id] = set()
        self._index_instance(path, rows, meta)

    def _index_instance(self, path: Path, rows: Rows, meta: InstanceMeta) -> None:
        """Bring the instance's index row up to date (after its commit). The index is
        derived data: if it cannot be written the next listing reads the instance."""
        try:
            files = files_of(path)  # before reading: a write after this makes the row untrusted
            with self._errors(meta.instance_id, path=path):
                done = [key[len(RECORD_PREFIX) :] for key in rows.keys(RECORD_PREFIX)]
            row = (summarize(meta, done), files)
            if self._index.put({path.name: row}):
                self._indexed[path.name] = row
        except (NbflowError, OSError, sqlite3.Error):
            pass

    def delete_instance(self, instance_id: str) -> bool:
        path = self._instance_dir(instance_id)
        key = path.name
        self._control_seen.pop(instance_id, None)
        self._gens.pop(instance_id, None)
        self._blobbed.pop(instance_id, None)
        with self._open_lock:
            entry = self._open.pop(key, None)
            if entry is not None:
                entry.rows.close()
        if not path.exists():
            return False
        if self.read_only:
            raise StoreUnreadableError(str(self.directory), "the store is open read-only", instance_id)
        with self._errors(instance_id, path=path):
            if path.is_symlink():  # not nbflow's: remove the link, never what it points at
                path.unlink()
            else:
                import shutil  # only a deletion needs it

                shutil.rmtree(path)
        self._dirs.pop(instance_id, None)  # a cleared legacy-named folder is not reused
        self._flags.pop(instance_id, None)
        self._index.drop([key])
        self._indexed.pop(key, None)
        return True

    def list_instances(self) -> list[InstanceMeta]:
        """Every instance of the store, oldest folder name first. One that cannot be
        read is listed with state ``damaged`` or ``unreadable`` and its reason in
        ``message``; it never hides the others. Opens every instance: a listing reads
        ``list_summaries`` instead."""
        with self._errors("", path=self.directory):
            folders = sorted((self.directory / "instances").iterdir())
        metas = (self._meta_at(path) for path in folders if path.is_dir())
        return [meta for meta in metas if meta is not None]

    def _meta_at(self, path: Path) -> InstanceMeta | None:
        """The meta of the instance folder ``path``; None for a folder being created;
        for one that cannot be read, a stand-in whose state says so."""
        try:
            rows = self._rows_at(path, path.name, create=False)
            data, generated = (None, False) if rows is None else _meta_snapshot(rows)
            if data is None:
                damage = _missing_record_damage(path, rows is not None, generated)
                if damage:
                    raise RecordFormatError(damage)
                return None
            if is_old_format(data):
                raise StoreFormatError(path.name, str(path))
            return decode_meta(data)
        except Exception as exc:  # noqa: BLE001 - one bad instance must not hide the rest
            err = store_error(exc, str(path), path.name)
            # Only bytes that are not valid are damage; a full disk, a refused access, an
            # I/O error or an old format leave the instance as it is.
            readable = not isinstance(
                err, StoreUnreadableError | StoreFullError | PermissionError | StoreFormatError | OSError
            )
            state = RunState.DAMAGED if readable else RunState.UNREADABLE
            return InstanceMeta(
                instance_id=path.name,
                workflow="?",
                definition_hash="",
                state=state.value,
                message=str(err or exc),
            )

    def list_summaries(self, workflow: str | None = None, state: str | None = None) -> list[InstanceSummary]:
        """The store index (see store_index.py): one read of the index and two ``stat``
        calls per instance; only instances changed since their row was written (a run
        in progress, a killed one) are opened, and their rows rewritten."""
        return [row for row in self._listing(counts=True) if matches(row, workflow, state)]

    def list_states(self) -> list[InstanceSummary]:
        """The store index as ``list_summaries`` gives it, except that an instance
        changed since its row was written is summarised from its instance record
        alone: its state, workflow and times are current, its ``tasks_done`` is not
        counted (0, or every task once completed), and its row is not rewritten.

        What a PooledWorker lists to find runnable instances: counting an instance's
        finished tasks means decoding every record of it, and the instances a pool
        works on are exactly the ones whose rows are never current (hundreds of records
        each for maps: most of a worker's listing time)."""
        return self._listing(counts=False)

    def _listing(self, *, counts: bool) -> list[InstanceSummary]:
        with self._errors("", path=self.directory):
            entries = sorted(os.scandir(self.directory / "instances"), key=lambda e: e.name)
        indexed = self._index.rows() or {}
        out, fresh = [], {}
        names = set()
        for entry in entries:
            if not entry.is_dir():
                continue
            names.add(entry.name)
            files = files_of(entry.path)  # plain strings and the scan's own facts: this runs per instance
            known = indexed.get(entry.name)
            if known is not None and known[1] == files and not entry.is_symlink():
                out.append(known[0])
                continue
            if not counts:
                meta = self._meta_at(Path(entry.path))
                if meta is not None:
                    out.append(summarize(meta, ()))
                continue
            summary, trusted = self._summary_of(Path(entry.path))
            if summary is None:
                continue  # a folder being created
            if trusted:
                fresh[entry.name] = (summary, files)
            out.append(summary)
        self._index.put(fresh)
        self._index.drop([name for name in indexed if name not in names])
        return out

    def _summary_of(self, path: Path) -> tuple[InstanceSummary | None, bool]:
        """Read one instance folder for its index row: (summary, whether the index may
        keep it). One that cannot be read is summarised as such (damaged, unreadable),
        never kept: it is looked at again next time."""
        meta = self._meta_at(path)
        if meta is None:
            return None, False
        if meta.state in (RunState.DAMAGED.value, RunState.UNREADABLE.value):
            return summarize(meta, ()), False
        try:
            records = self._read_records(meta.instance_id)
        except (CheckpointCorruptError, StoreUnreadableError) as exc:
            meta.state = (RunState.UNREADABLE if isinstance(exc, StoreUnreadableError) else RunState.DAMAGED).value
            meta.message = str(exc)
            return summarize(meta, ()), False
        damaged = [tid for tid, record in records.items() if record.codec == DAMAGED_CODEC]
        if damaged:
            meta.state = RunState.DAMAGED.value
            meta.message = f"the checkpoint of {damaged[0]!r} is damaged: " + str(
                records[damaged[0]].extra.get("damage", "")
            )
            return summarize(meta, records), False
        return summarize(meta, records), True

    # -- checkpoints --------------------------------------------------------------------
    def new_sink(self, instance_id: str) -> PayloadSink:
        return SpillSink(self._instance_dir(instance_id), instance_id)

    def put_record(self, instance_id: str, record: CheckpointRecord, sink: PayloadSink) -> CheckpointRecord:
        return self.put_records(instance_id, [(record, sink)])[0]

    def _seal(self, items: list[tuple[CheckpointRecord, PayloadSink]], instance_id: str) -> None:
        """Make each sink's bytes durable and note payload, file, size and checksum."""
        for record, sink in items:
            assert isinstance(sink, SpillSink)
            try:
                with self._errors(instance_id, record.task_id):
                    record.payload, record.blob = sink.commit()
            except BaseException:
                sink.discard()
                raise
            record.size, record.checksum = sink.size, sink.checksum

    def put_records(
        self, instance_id: str, items: list[tuple[CheckpointRecord, PayloadSink]]
    ) -> list[CheckpointRecord]:
        records = [record for record, _ in items]
        if len(records) == 1 and self._put_fast(instance_id, items[0]):
            return records
        rows = self._writable(instance_id, create=instance_id not in self._gens)
        if rows is None:
            self._drop_blobs(instance_id, records)
            raise StaleInstanceError(instance_id, "it was cleared")
        self._seal(items, instance_id)
        try:
            with self._errors(instance_id, records[0].task_id), rows.transact():  # one commit: batch and stamp
                replaced = self._store_records(rows, instance_id, records)
        except BaseException:
            self._drop_blobs(instance_id, records)
            raise
        self._unlink(instance_id, replaced)
        return records

    def _put_fast(self, instance_id: str, item: tuple[CheckpointRecord, PayloadSink]) -> bool:
        """The checkpoint of one task as one statement: the record row, written only
        while the instance's generation is the one this handle knows. Taken when this
        handle holds the instance and knows no blob file is being replaced; False (the
        caller takes the checked path) when it cannot be taken."""
        record = item[0]
        generation = self._gens.get(instance_id)
        blobbed = self._blobbed.get(instance_id)
        if not generation or blobbed is None or record.task_id in blobbed or not self._holds(instance_id):
            return False
        rows = self._rows(instance_id)
        if rows is None or rows.read_only:
            return False
        self._seal([item], instance_id)
        record.generation = generation
        try:
            with self._errors(instance_id, record.task_id):
                written = rows.put_if(RECORD_PREFIX + record.task_id, encode_record(record), GENERATION, generation)
        except BaseException:
            self._drop_blobs(instance_id, [record])
            raise
        if not written:  # another process cleared or restarted the instance under our lease
            self._drop_blobs(instance_id, [record])
            current = self._generation(rows, instance_id)
            raise StaleInstanceError(instance_id, "it was cleared" if current is None else "it was restarted")
        if record.blob:
            blobbed.add(record.task_id)
        return True

    def _store_records(self, rows: Rows, instance_id: str, records: list[CheckpointRecord]) -> list[str]:
        """Write records and a new change stamp (inside a transaction); returns the blob
        files of the records they replace, to delete once the transaction committed."""
        generation = self._check_generation(rows, instance_id)
        replaced = []
        blobbed = self._blobbed.get(instance_id)
        held = self._holds(instance_id)
        # Only a record that names a blob file can leave one behind; while this handle
        # holds the instance it knows which records do, and the others are not read
        # back first. The rest are read back in one query.
        unknown = [
            RECORD_PREFIX + r.task_id
            for r in records
            if not (held and blobbed is not None and r.task_id not in blobbed)
        ]
        stored = rows.get_many(unknown) if unknown else {}
        for record in records:
            record.generation = generation
            old = stored.get(RECORD_PREFIX + record.task_id)
            if old is not None:
                blob = _blob_of(old)
                if blob and blob != record.blob:
                    replaced.append(blob)
            if blobbed is not None:
                (blobbed.add if record.blob else blobbed.discard)(record.task_id)
        rows.replace_many([(RECORD_PREFIX + r.task_id, encode_record(r)) for r in records])  # moves the high water
        return replaced

    def _blob_path(self, instance_id: str, name: str) -> Path:
        if not BLOB_NAME.match(name):  # records are checked on decode; this is the last guard
            raise CheckpointCorruptError(instance_id, f"a record names the file {name!r}", "")
        return self._instance_dir(instance_id) / "blobs" / name

    def _unlink(self, instance_id: str, names: Iterable[str]) -> None:
        for name in names:
            try:
                self._blob_path(instance_id, name).unlink(missing_ok=True)
            except OSError:
                pass  # left for the sweep at the next lock

    def _drop_blobs(self, instance_id: str, records: list[CheckpointRecord]) -> None:
        self._unlink(instance_id, [r.blob for r in records if r.blob])

    def change_stamp(self, instance_id: str) -> str | None:
        """A token that changes whenever a record of the instance is written or deleted.

        Records are written as new rows (see ``Rows.replace_many``), so the database's
        high water moves with each; deletions renew the ``stamp`` row; the generation
        tells a resubmitted instance from the old one. All three are read in one
        statement, in the same snapshot, before the records: a stamp can never be paired
        with records older than it (at worst with newer ones: the reader re-reads once
        more). Other writes (claims, task state) may move it too; it never stays put
        across a record change."""
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return None
        with self._errors(instance_id):
            high, (generation, deleted) = rows.marks(GENERATION, STAMP)
        if generation is None and deleted is None and not rows.get(META):
            return None
        return _stamp(generation, high, deleted)

    def get_records(self, instance_id: str) -> dict[str, CheckpointRecord]:
        return self._read_records(instance_id)

    def records_since(
        self, instance_id: str, stamp: Hashable | None, skip: Collection[str] = ()
    ) -> tuple[str | None, dict[str, CheckpointRecord], bool]:
        """The change stamp and records of the instance read in one snapshot: only the
        records written since ``stamp`` (a value this store's ``change_stamp`` or
        ``records_since`` returned; ``complete`` False), or every record (``complete``
        True) when ``stamp`` is None, of another generation, or older than a deletion.
        The records of ``skip`` are left out of a partial answer without being decoded:
        a reader that wrote them itself since the stamp has them already.

        A PooledWorker keeps an instance's records between scans; bringing them up to
        date after other workers' commits cost decoding every record of the instance
        (hundreds for a map) where a few changed. Every record write is a new row with
        a rowid above the stamp's high water, and every deletion that could let a rowid
        be taken again renews the stamp row (see sqlite_rows.py), so "the rows above
        the high water" are exactly the records written since."""
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return None, {}, True
        since = _high_of(stamp)
        with self._errors(instance_id):
            kept = False
            if since is not None:  # the rows above its high water, and whether it still holds
                high, (generation, deleted, meta), found = rows.since(RECORD_PREFIX, since[1], GENERATION, STAMP, META)
                kept = since[0] == generation and since[2] == deleted
            if not kept:  # another generation, or a deletion since: every record
                high, (generation, deleted, meta), found = rows.since(RECORD_PREFIX, None, GENERATION, STAMP, META)
        if generation is not None and not isinstance(generation, str):
            raise CheckpointCorruptError(
                instance_id, "its generation row is not text", str(self._instance_dir(instance_id))
            )
        if generation is None and deleted is None and not meta:
            return None, {}, True
        if kept and skip:
            found = [(key, data) for key, data in found if key[len(RECORD_PREFIX) :] not in skip]
        records: dict[str, CheckpointRecord] = {}
        blobbed = set()
        for key, data in found:
            record = self._decode_or_stand_in(instance_id, key, data)
            task_id = key[len(RECORD_PREFIX) :]
            if record.blob or record.codec == DAMAGED_CODEC:
                blobbed.add(task_id)  # a damaged row may name a file too
            if record.generation in ("", generation):
                records[task_id] = record
        known = self._blobbed.get(instance_id)
        if not kept and generation and generation == self._gens.get(instance_id):
            self._blobbed[instance_id] = blobbed
        elif kept and known is not None:
            known.difference_update(key[len(RECORD_PREFIX) :] for key, _ in found)
            known.update(blobbed)
        return _stamp(generation, high, deleted), records, not kept

    def _read_records(self, instance_id: str) -> dict[str, CheckpointRecord]:
        """Every record of the instance's current generation (also what the index reads
        to summarise an instance that changed)."""
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return {}
        out = {}
        with self._errors(instance_id):
            generation = self._generation(rows, instance_id)
            blobbed = set()
            for key, data in rows.scan(RECORD_PREFIX):
                record = self._decode_or_stand_in(instance_id, key, data)
                if record.blob or record.codec == DAMAGED_CODEC:
                    blobbed.add(key[len(RECORD_PREFIX) :])  # a damaged row may name a file too
                if record.generation in ("", generation):
                    out[key[len(RECORD_PREFIX) :]] = record
        if generation and generation == self._gens.get(instance_id):
            self._blobbed[instance_id] = blobbed
        return out

    def get_record(self, instance_id: str, task_id: str) -> CheckpointRecord | None:
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return None
        with self._errors(instance_id, task_id):
            data = rows.get(RECORD_PREFIX + task_id)
            if data is None:
                return None
            record = self._decode_or_stand_in(instance_id, RECORD_PREFIX + task_id, data)
            if record.generation and record.generation != self._generation(rows, instance_id):
                return None
        return record

    def _generation(self, rows: Rows, instance_id: str) -> str | None:
        value = rows.get(GENERATION)
        if value is not None and not isinstance(value, str):
            raise CheckpointCorruptError(
                instance_id, "its generation row is not text", str(self._instance_dir(instance_id))
            )
        return value

    def _decode_or_stand_in(self, instance_id: str, key: str, data: bytes | str) -> CheckpointRecord:
        """A record, or for one that cannot be decoded a stand-in that says so: one bad
        record must not hide the instance's others (nor the repair of it)."""
        try:
            record = self._decode(instance_id, key, data)
        except CheckpointCorruptError as exc:
            return damaged_record(key[len(RECORD_PREFIX) :], exc.detail)
        if record.blob is not None:  # a stat per large output: a cut or lost file shows as damage at once
            try:
                size = os.lstat(self._blob_path(instance_id, record.blob)).st_size
            except FileNotFoundError:
                return damaged_record(record.task_id, f"the output file of task {record.task_id!r} is missing")
            if size != record.size:
                return damaged_record(
                    record.task_id,
                    f"the output file of task {record.task_id!r} has {size} bytes, its record says {record.size}",
                )
        return record

    def _decode(self, instance_id: str, key: str, data: bytes | str) -> CheckpointRecord:
        task_id = key[len(RECORD_PREFIX) :]
        try:
            if not isinstance(data, bytes):
                raise RecordFormatError(f"the record of {task_id!r} is text, not bytes")
            record = decode_record(data)
        except RecordFormatError as exc:
            raise CheckpointCorruptError(instance_id, str(exc), str(self._instance_dir(instance_id)), task_id) from None
        if record.task_id != task_id:
            raise CheckpointCorruptError(
                instance_id,
                f"the record stored for {task_id!r} says it is {record.task_id!r}",
                str(self._instance_dir(instance_id)),
                task_id,
            )
        return record

    def open_payload(self, instance_id: str, record: CheckpointRecord) -> IO[bytes]:
        """The record's payload as a stream; a blob's checksum is verified as it is
        read (call ``verify()`` on the stream after decoding), an inline one up front."""
        if record.blob is None:
            if not verify_inline(record):
                raise CheckpointCorruptError(
                    instance_id,
                    f"the output of task {record.task_id!r} fails its checksum",
                    str(self._instance_dir(instance_id)),
                    record.task_id,
                )
            return io.BytesIO(record.payload or b"")
        path = self._blob_path(instance_id, record.blob)
        if not record.checksum:  # every payload nbflow writes has one
            raise CheckpointCorruptError(
                instance_id, f"the output of task {record.task_id!r} has no checksum", str(path), record.task_id
            )
        try:
            with self._errors(instance_id, record.task_id, path=path):
                raw = os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0)), "rb")
        except FileNotFoundError:
            raise CheckpointCorruptError(
                instance_id, f"the output file of task {record.task_id!r} is missing", str(path), record.task_id
            ) from None
        return ChecksumReader(raw, record.checksum)  # type: ignore[return-value]

    def delete_records(self, instance_id: str, task_ids: Iterable[str]) -> None:
        rows = self._writable(instance_id, create=False)
        if rows is None:
            return
        task_ids = list(task_ids)
        keys = [RECORD_PREFIX + tid for tid in task_ids]
        blobs = []
        with self._errors(instance_id), rows.transact():
            for key in keys:
                data = rows.get(key)
                blob = _blob_of(data) if data is not None else None
                if blob:
                    blobs.append(blob)
            rows.delete(keys)
            rows.put(STAMP, os.urandom(16).hex())  # deletions do not move the high water
        blobbed = self._blobbed.get(instance_id)
        if blobbed is not None:
            blobbed.difference_update(task_ids)
        self._unlink(instance_id, blobs)

    def sweep_blobs(self, instance_id: str) -> int:
        """Delete output files no record references (left by a kill between writing a
        file and committing its record, or by a failed unlink). Only safe while this
        process holds the instance exclusively, as a runner does when it calls it."""
        blob_dir = self._instance_dir(instance_id) / "blobs"
        if self.read_only or blob_dir.is_symlink() or not blob_dir.is_dir():
            return 0  # a symlinked folder is not nbflow's: never delete through it
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return 0
        referenced = {_blob_of(data) for _, data in rows.scan(RECORD_PREFIX)}
        removed = 0
        for path in blob_dir.iterdir():
            if path.is_symlink():
                continue
            if path.name not in referenced and (BLOB_NAME.match(path.name) or path.name.startswith(".tmp-")):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- task state ---------------------------------------------------------------------
    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None:
        rows = self._writable(instance_id)
        assert rows is not None
        with self._errors(instance_id, task_id), rows.transact():
            self._check_generation(rows, instance_id)
            if state is None:
                rows.delete([TASK_STATE_PREFIX + task_id], mark=STAMP)
            else:
                rows.put(TASK_STATE_PREFIX + task_id, encode_json(state))

    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]:
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return {}
        out = {}
        with self._errors(instance_id):
            for key, data in rows.scan(TASK_STATE_PREFIX):
                value = decode_json(data, "task state")
                if not isinstance(value, dict):
                    raise RecordFormatError(f"the task state {key!r} is not an object")
                out[key[len(TASK_STATE_PREFIX) :]] = value
        return out

    # -- exclusivity --------------------------------------------------------------------
    def _lock_name(self, instance_id: str) -> str:
        return instance_dirname(validate_instance_id(instance_id))

    def lock(self, instance_id: str, holder: str) -> FileLease:
        lease = self._acquire(instance_id, holder, shared=False)
        self._held[instance_id] = lease
        self._checked_at.pop(instance_id, None)
        try:
            self.sweep_blobs(instance_id)
        except Exception:  # noqa: BLE001 - tidying never stops a run; the next lock tries again
            pass
        return lease

    def share(self, instance_id: str, holder: str) -> FileLease:
        return self._acquire(instance_id, holder, shared=True)

    def _acquire(self, instance_id: str, holder: str, shared: bool) -> FileLease:
        if self.read_only:
            raise StoreUnreadableError(str(self.directory), "the store is open read-only", instance_id)
        with self._errors(instance_id, path=self.directory / "locks"):
            return self._locks.acquire(self._lock_name(instance_id), instance_id, holder, shared=shared)

    def warm_up(self) -> None:
        """Load what locking and claiming need, for a process that is about to claim (a
        PooledWorker, when it is made): the native file locks' module, which loads at
        the first lock or probe, would otherwise cost the first unit it claims."""
        preload_locks()

    def is_locked(self, instance_id: str) -> bool:
        try:
            return self._locks.probe(self._lock_name(instance_id)) == "exclusive"
        except OSError:
            return False  # a read-only store: nobody can be running it from here

    # -- signals and control ------------------------------------------------------------
    def push_signal(self, instance_id: str, name: str, payload: bytes) -> None:
        rows = self._writable(instance_id)
        assert rows is not None
        with self._errors(instance_id), rows.transact():
            queue = self._queue(rows, name)
            queue.append(bytes(payload))
            rows.put(SIGNAL_PREFIX + name, encode_signals(queue))

    @staticmethod
    def _queue(rows: Rows, name: str) -> list[bytes]:
        data = rows.get(SIGNAL_PREFIX + name)
        if data is None:
            return []
        if not isinstance(data, bytes):
            raise RecordFormatError(f"the queue of signal {name!r} is text, not bytes")
        return decode_signals(data)

    def pop_signal(self, instance_id: str, name: str) -> bytes | None:
        rows = self._writable(instance_id, create=False)
        if rows is None:
            return None
        with self._errors(instance_id), rows.transact():
            queue = self._queue(rows, name)
            if not queue:
                return None
            first = queue.pop(0)
            rows.put(SIGNAL_PREFIX + name, encode_signals(queue))
            return first

    def consume_signal(self, instance_id: str, name: str, record: CheckpointRecord) -> CheckpointRecord | None:
        """Atomically take the oldest ``name`` signal and store it as ``record``: one
        transaction, so a kill can neither lose the signal nor deliver it twice."""
        rows = self._writable(instance_id)
        assert rows is not None
        with self._errors(instance_id, record.task_id), rows.transact():
            queue = self._queue(rows, name)
            if not queue:
                return None
            record.payload = queue.pop(0)
            record.size, record.blob = len(record.payload), None
            record.checksum = checksum_bytes(record.payload)
            rows.put(SIGNAL_PREFIX + name, encode_signals(queue))
            self._store_records(rows, instance_id, [record])
        return record

    def set_control(self, instance_id: str, action: str | None, reason: str = "") -> None:
        path = self._instance_dir(instance_id)
        if action is None and not self.read_only and not os.path.lexists(path / CONTROL_FLAG):
            # Nothing was ever requested (a request always leaves the flag file, and
            # readers look at the flag first): every run clears the control on start,
            # and a first run need not write anything for it.
            return
        rows = self._writable(instance_id)
        assert rows is not None
        with self._errors(instance_id, path=path):
            with rows.transact():
                if action is None:
                    rows.delete([CONTROL], mark=STAMP)
                else:
                    rows.put(CONTROL, encode_control(action, reason))
            # Then touch the flag file: readers stat it (a microsecond) instead of querying
            # SQLite at every task boundary, and re-read the row only when it changed.
            flag = path / CONTROL_FLAG
            fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
            try:
                os.write(fd, str(time.time_ns()).encode("ascii"))
            finally:
                os.close(fd)
        global _control_epoch
        _control_epoch += 1  # every handle of this process sees the request at once

    def get_control(self, instance_id: str) -> tuple[str, str] | None:
        """The pending control request. Asked at every task boundary, so it costs no
        file system call within ``CONTROL_POLL`` seconds of the last look (a request
        from another process is seen that much later); one set in this process is seen
        at once."""
        now = time.monotonic()
        seen = self._control_seen.get(instance_id)
        if seen is not None and now - seen[2] < CONTROL_POLL and seen[3] == _control_epoch:
            return seen[1]
        flag = self._flags.get(instance_id)
        if flag is None:
            flag = self._flags[instance_id] = str(self._instance_dir(instance_id) / CONTROL_FLAG)
        try:
            stamp = os.stat(flag).st_mtime_ns
        except FileNotFoundError:
            self._control_seen[instance_id] = (None, None, now, _control_epoch)
            return None  # never set
        if seen is not None and seen[0] == stamp:
            self._control_seen[instance_id] = (stamp, seen[1], now, _control_epoch)
            return seen[1]
        raw = self._get(instance_id, CONTROL)
        try:
            value = None if raw is None else decode_control(raw)
        except RecordFormatError as exc:
            raise CheckpointCorruptError(instance_id, str(exc), str(self._instance_dir(instance_id))) from None
        self._control_seen[instance_id] = (stamp, value, now, _control_epoch)
        return value

    # -- claims (PooledWorker) ----------------------------------------------------------
    # Each call is one SQLite transaction (BEGIN IMMEDIATE: writers across processes are
    # serialised), so "check, then write" cannot interleave with another worker's.
    def _claim_of(self, rows: Rows, task_id: str) -> Claim | None:
        data = rows.get(CLAIM_PREFIX + task_id)
        return None if data is None else decode_claim(data)

    def claim(self, instance_id: str, task_id: str, worker: str, ttl: float, seen: float | None = None) -> str | None:
        rows = self._writable(instance_id)
        assert rows is not None
        with self._errors(instance_id, task_id), rows.transact():
            now = time.time()
            current = self._claim_of(rows, task_id)
            if current is not None and current.expires_at > now:
                return None
            stored = rows.get(RECORD_PREFIX + task_id)
            record = None if stored is None else self._decode(instance_id, RECORD_PREFIX + task_id, stored)
            if record_version(record) != seen:
                return None
            token = os.urandom(16).hex()
            rows.put(CLAIM_PREFIX + task_id, encode_claim(Claim(task_id, worker, token, now + ttl)))
        return token

    def renew_claim(self, instance_id: str, task_id: str, token: str, ttl: float) -> bool:
        def extend(rows: Rows, claim: Claim) -> None:
            claim.expires_at = time.time() + ttl
            rows.put(CLAIM_PREFIX + task_id, encode_claim(claim))

        return self._on_own_claim(instance_id, task_id, token, extend)

    def release_claim(self, instance_id: str, task_id: str, token: str) -> bool:
        return self._on_own_claim(
            instance_id, task_id, token, lambda rows, _: rows.delete([CLAIM_PREFIX + task_id], mark=STAMP)
        )

    def _on_own_claim(self, instance_id: str, task_id: str, token: str, change: Callable[[Rows, Claim], None]) -> bool:
        """Apply ``change`` in one transaction while the claim still carries ``token``;
        False (nothing changed) once it is someone else's or gone."""
        rows = self._writable(instance_id, create=False)
        if rows is None:
            return False
        with self._errors(instance_id, task_id), rows.transact():
            current = self._claim_of(rows, task_id)
            if current is None or current.token != token:
                return False
            change(rows, current)
        return True

    def commit_claimed(
        self,
        instance_id: str,
        task_id: str,
        token: str,
        items: list[tuple[CheckpointRecord, PayloadSink]],
        *,
        release: bool = False,
    ) -> list[CheckpointRecord] | None:
        records = [record for record, _ in items]
        rows = self._writable(instance_id, create=False)
        if rows is None:
            for _, sink in items:
                getattr(sink, "discard", lambda: None)()
            return None
        self._seal(items, instance_id)  # large outputs become files first (outside the transaction)
        replaced: list[str] = []
        try:
            with self._errors(instance_id, task_id), rows.transact():
                current = self._claim_of(rows, task_id)
                ours = current is not None and current.token == token
                if ours:
                    replaced = self._store_records(rows, instance_id, records)
                    if release:  # the unit is done: drop the claim in the same transaction
                        # the records just written are new rows above the claim's: the
                        # deletion cannot lower the high water unless there were none
                        rows.delete([CLAIM_PREFIX + task_id], mark=None if records else STAMP)
        except BaseException:
            self._drop_blobs(instance_id, records)
            raise
        if not ours:  # a rejected commit leaves no orphan file behind
            self._drop_blobs(instance_id, records)
            return None
        self._unlink(instance_id, replaced)
        return records

    def get_claims(self, instance_id: str) -> dict[str, Claim]:
        rows = self._rows(instance_id, create=False)
        if rows is None:
            return {}
        with self._errors(instance_id):
            return {key[len(CLAIM_PREFIX) :]: decode_claim(data) for key, data in rows.scan(CLAIM_PREFIX)}


def _meta_snapshot(rows: Rows) -> tuple[bytes | str | None, bool]:
    """The instance record, and whether the instance has a generation, in one statement
    (one snapshot). Read one after the other, the two could straddle the commit that
    creates the instance — no record yet, then a generation — and a reader would call a
    new instance damaged (and advise discarding it)."""
    found = rows.get_many([META, GENERATION])
    return found.get(META), GENERATION in found


def _missing_record_damage(path: Path, has_database: bool, generated: bool) -> str | None:
    """Why a folder without an instance record is a damaged instance rather than none:
    its database lost the record but kept others, or the database is gone but output
    files remain. ``generated``: the same snapshot that lacks the record holds a
    generation (see ``_meta_snapshot``)."""
    if not has_database:
        blobs = path / "blobs"
        if blobs.is_dir() and any(blobs.iterdir()):
            return "its database file is missing, though output files remain"
        return None
    # The instance record and its generation are written together; a new instance's
    # input record comes just before them, so records without a generation are an
    # instance being created (a reader must not call it damaged), not a lost record.
    if generated:
        return "the instance record is missing from its database"
    return None


def _stamp(generation: str | None, high: int, deleted: str | None) -> str:
    """The change stamp of an instance (``change_stamp``, ``records_since``): its
    generation, the database's high water and the deletion token, read in one snapshot."""
    return f"{generation}:{high}:{deleted}"


def _high_of(stamp: Hashable | None) -> tuple[str | None, int, str | None] | None:
    """(generation, high water, deletion token) of a stamp :func:`_stamp` made; None for
    anything else (a reader then reads every record)."""
    if not isinstance(stamp, str):
        return None
    parts = stamp.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    generation, high, deleted = parts
    return (None if generation == "None" else generation), int(high), (None if deleted == "None" else deleted)


def _blob_of(data: bytes | str) -> str | None:
    """The blob file a stored record names (None for inline or undecodable records)."""
    if not isinstance(data, bytes):
        return None
    try:
        return decode_record(data).blob
    except RecordFormatError:
        return None
