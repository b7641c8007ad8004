"""DiskcacheBackend: the default, embedded, process-safe checkpoint store.

Layout under the store directory (default ``./.nbflow``)::

    instances/<instance>/        one diskcache.Cache (SQLite, WAL) per instance
    instances/<instance>/blobs/  outputs too large to keep inline, one file each
    locks/<instance>.lock        flock'd while a runner holds the instance

One cache per instance keeps instances independent: a damaged one never affects the
others, clearing one is removing a folder, and runners on different instances never
contend for one SQLite writer lock.

Atomicity: a checkpoint is one SQLite transaction (``Cache.set``), so a kill -9 at any
moment leaves the old record or the new one. A large output is first written to a
temporary file, fsync'd and renamed, and only then referenced by the record; a kill in
between leaves an orphan file (removed with the instance), never a broken record.

The instance lock is ``fcntl.flock``: the kernel releases it when the holding process
dies, so a crashed runner never leaves an instance locked.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pickle
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import diskcache

from nbflow.core.errors import CheckpointCorruptError, ConfigurationError, InstanceLockedError
from nbflow.store.base import CheckpointRecord, Claim, InstanceMeta, PayloadSink, record_version, validate_instance_id
from nbflow.store.disk_layout import (
    CACHE_SETTINGS,
    CLAIM_PREFIX,
    CONTROL,
    CONTROL_FLAG,
    INLINE_LIMIT,
    MAX_OPEN,
    META,
    RECORD_PREFIX,
    STAMP,
    FileLease,
    SpillSink,
    ckey,
    instance_dirname,
    meta_dict,
    pack_record,
    rkey,
    scan_prefix,
    skey,
    unpack_record,
)

TASK_STATE_PREFIX = "a:"

__all__ = ["INLINE_LIMIT", "DiskcacheBackend"]


class DiskcacheBackend:
    """Checkpoints in a directory on disk; safe to share between processes.

    Args:
        directory: the store folder; created if missing. Default ``./.nbflow``.

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
        try:
            (self.directory / "instances").mkdir(parents=True, exist_ok=True)
            (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                "directory", str(directory), f"a folder nbflow can create and write ({exc.strerror})"
            ) from None
        if not os.access(self.directory, os.W_OK):
            raise ConfigurationError("directory", str(directory), "a folder nbflow can write to")
        self._caches: OrderedDict[str, diskcache.Cache] = OrderedDict()
        self._caches_lock = threading.Lock()
        self._dirs: dict[str, Path] = {}
        self._keys: dict[str, str] = {}
        self._flags: dict[str, str] = {}
        self._control_seen: dict[str, tuple[int, tuple[str, str] | None]] = {}

    def __repr__(self) -> str:
        return f"DiskcacheBackend({str(self.directory)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    def close(self) -> None:
        """Close every open cache (they reopen on demand)."""
        with self._caches_lock:
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()

    # -- paths and caches ---------------------------------------------------------------
    def _instance_dir(self, instance_id: str) -> Path:
        path = self._dirs.get(instance_id)
        if path is None:  # cached: this is on the path of every checkpoint write
            path = self.directory / "instances" / instance_dirname(validate_instance_id(instance_id))
            self._dirs[instance_id] = path
        return path

    def _cache(self, instance_id: str, create: bool = True) -> diskcache.Cache | None:
        key = self._keys.get(instance_id)
        if key is None:  # cached: this runs on every checkpoint write
            key = self._keys[instance_id] = instance_dirname(validate_instance_id(instance_id))
        return self._open(key, instance_id, create)

    def _open(self, key: str, instance_id: str, create: bool) -> diskcache.Cache | None:
        """The open cache of instance folder ``key`` (kept in a small LRU: opening one
        runs a dozen SQLite statements, far more than a read)."""
        with self._caches_lock:
            cache = self._caches.get(key)
            if cache is not None:
                self._caches.move_to_end(key)
                return cache
            path = self.directory / "instances" / key
            if not create and not (path / "cache.db").exists():
                return None
            try:
                cache = diskcache.Cache(str(path), **CACHE_SETTINGS)
            except sqlite3.DatabaseError as exc:
                raise CheckpointCorruptError(instance_id, f"SQLite says: {exc}", str(path)) from None
            self._caches[key] = cache
            while len(self._caches) > MAX_OPEN:
                _, old = self._caches.popitem(last=False)
                old.close()
            return cache

    def _read(self, instance_id: str, key: Any, cache: diskcache.Cache | None = None) -> Any:
        if cache is None:  # not `cache or ...`: a Cache's truth value runs a COUNT query
            cache = self._cache(instance_id, create=False)
        if cache is None:
            return None
        try:
            return cache.get(key)
        except (sqlite3.DatabaseError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
            raise CheckpointCorruptError(instance_id, f"{type(exc).__name__}: {exc}", cache.directory) from None
        except Exception as exc:
            if "pickle" in type(exc).__name__.lower() or isinstance(exc, IndexError | KeyError):
                raise CheckpointCorruptError(instance_id, f"{type(exc).__name__}: {exc}", cache.directory) from None
            raise

    # -- instances ----------------------------------------------------------------------
    def load_instance(self, instance_id: str) -> InstanceMeta | None:
        data = self._read(instance_id, META)
        if data is None:
            return None
        data = meta_dict(data)
        if not isinstance(data, dict):
            raise CheckpointCorruptError(
                instance_id, "the instance record is not a dict", str(self._instance_dir(instance_id))
            )
        return InstanceMeta.from_dict(data)

    def save_instance(self, meta: InstanceMeta) -> None:
        cache = self._cache(meta.instance_id)
        assert cache is not None
        # Bytes, like records: a dict value would go through pickletools.optimize, which
        # is slow on a 10,000-task workflow's shape.
        cache.set(META, pickle.dumps(meta.to_dict(), protocol=5))

    def delete_instance(self, instance_id: str) -> bool:
        path = self._instance_dir(instance_id)
        key = path.name
        self._control_seen.pop(instance_id, None)
        with self._caches_lock:
            cache = self._caches.pop(key, None)
            if cache is not None:
                cache.close()
        if not path.exists():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def list_instances(self) -> list[InstanceMeta]:
        out = []
        for path in sorted((self.directory / "instances").iterdir()):
            if not (path / "cache.db").exists():
                continue
            # Through the same open caches as reads: a worker lists the store at every
            # poll, and reopening each instance's SQLite file was most of its time.
            try:  # opening can fail too (a damaged cache.db): one bad instance must not hide the rest
                cache = self._open(path.name, path.name, create=False)
                data = None if cache is None else meta_dict(cache.get(META))
            except Exception:  # noqa: BLE001 - a damaged instance is listed as such
                data = {"instance_id": path.name, "workflow": "?", "definition_hash": "", "state": "damaged"}
            if isinstance(data, dict):
                out.append(InstanceMeta.from_dict(data))
        return out

    # -- checkpoints --------------------------------------------------------------------
    def new_sink(self, instance_id: str) -> PayloadSink:
        return SpillSink(self._instance_dir(instance_id))

    def put_record(self, instance_id: str, record: CheckpointRecord, sink: PayloadSink) -> CheckpointRecord:
        return self.put_records(instance_id, [(record, sink)])[0]

    def put_records(
        self, instance_id: str, items: list[tuple[CheckpointRecord, PayloadSink]]
    ) -> list[CheckpointRecord]:
        cache = self._cache(instance_id)
        assert cache is not None
        for record, sink in items:
            assert isinstance(sink, SpillSink)
            record.payload, record.blob = sink.commit()
            record.size = sink.size
        with cache.transact():  # one commit for the whole batch and its change stamp
            self._store_records(cache, [record for record, _ in items])
        return [record for record, _ in items]

    @staticmethod
    def _store_records(cache: diskcache.Cache, records: list[CheckpointRecord]) -> None:
        """Write records and then a new change stamp; call inside ``cache.transact()``."""
        for record in records:
            cache.set(rkey(record.task_id), pack_record(record))
        cache.set(STAMP, uuid.uuid4().hex)

    def change_stamp(self, instance_id: str) -> str | None:
        """A token that changes whenever a record of the instance is written or deleted.

        Set in the same transaction as the records, so a reader that reads the stamp
        and *then* the records can never pair a stamp with records older than it (at
        worst with newer ones: it re-reads once more). A random token, not a counter,
        so a deleted and resubmitted instance never repeats an old stamp."""
        raw = self._read(instance_id, STAMP)
        return None if raw is None else str(raw)

    def get_records(self, instance_id: str) -> dict[str, CheckpointRecord]:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return {}
        out = {}
        try:
            for key, data in scan_prefix(cache, RECORD_PREFIX):
                out[key[len(RECORD_PREFIX) :]] = self._record(instance_id, data)
        except sqlite3.DatabaseError as exc:
            raise CheckpointCorruptError(instance_id, f"SQLite says: {exc}", cache.directory) from None
        return out

    def get_record(self, instance_id: str, task_id: str) -> CheckpointRecord | None:
        data = self._read(instance_id, rkey(task_id))
        return None if data is None else self._record(instance_id, data)

    def _record(self, instance_id: str, data: Any) -> CheckpointRecord:
        try:
            return unpack_record(data)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a damaged record
            raise CheckpointCorruptError(
                instance_id,
                f"a checkpoint record cannot be decoded ({type(exc).__name__}: {exc})",
                str(self._instance_dir(instance_id)),
            ) from None

    def open_payload(self, instance_id: str, record: CheckpointRecord) -> IO[bytes]:
        if record.blob is None:
            return io.BytesIO(record.payload or b"")
        path = self._instance_dir(instance_id) / "blobs" / record.blob
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise CheckpointCorruptError(
                instance_id, f"the output file of task {record.task_id!r} is missing", str(path)
            ) from None

    def delete_records(self, instance_id: str, task_ids: Iterable[str]) -> None:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return
        blobs = []
        with cache.transact():
            for tid in task_ids:
                data = cache.get(rkey(tid))
                if data is not None:
                    try:
                        blob = unpack_record(data).blob
                    except Exception:  # noqa: BLE001 - a damaged record is deleted all the same
                        blob = None
                    if blob:
                        blobs.append(blob)
                cache.delete(rkey(tid))
            cache.set(STAMP, uuid.uuid4().hex)
        for name in blobs:
            (self._instance_dir(instance_id) / "blobs" / name).unlink(missing_ok=True)

    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None:
        cache = self._cache(instance_id)
        assert cache is not None
        if state is None:
            cache.delete(TASK_STATE_PREFIX + task_id)
        else:
            cache.set(TASK_STATE_PREFIX + task_id, json.dumps(state).encode())

    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return {}
        return {
            key[len(TASK_STATE_PREFIX) :]: json.loads(value) for key, value in scan_prefix(cache, TASK_STATE_PREFIX)
        }

    # -- exclusivity --------------------------------------------------------------------
    def _lock_path(self, instance_id: str) -> Path:
        return self.directory / "locks" / (instance_dirname(validate_instance_id(instance_id)) + ".lock")

    def lock(self, instance_id: str, holder: str) -> FileLease:
        path = self._lock_path(instance_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                try:
                    who = json.loads(path.read_text() or "{}")
                    desc = f"pid {who.get('pid')} on {who.get('host')}: {who.get('holder')}"
                except (OSError, ValueError):
                    desc = ""
                raise InstanceLockedError(instance_id, desc) from None
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "holder": holder, "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        return FileLease(fd)

    def is_locked(self, instance_id: str) -> bool:
        path = self._lock_path(instance_id)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    # -- signals and control ------------------------------------------------------------
    def push_signal(self, instance_id: str, name: str, payload: bytes) -> None:
        cache = self._cache(instance_id)
        assert cache is not None
        with cache.transact():
            queue = list(cache.get(skey(name), []))
            queue.append(payload)
            cache.set(skey(name), queue)

    def pop_signal(self, instance_id: str, name: str) -> bytes | None:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return None
        with cache.transact():
            queue = list(cache.get(skey(name), []))
            if not queue:
                return None
            first = queue.pop(0)
            cache.set(skey(name), queue)
            return bytes(first)

    def consume_signal(self, instance_id: str, name: str, record: CheckpointRecord) -> CheckpointRecord | None:
        """Atomically take the oldest ``name`` signal and store it as ``record``: one
        transaction, so a kill can neither lose the signal nor deliver it twice."""
        cache = self._cache(instance_id)
        assert cache is not None
        with cache.transact():
            queue = list(cache.get(skey(name), []))
            if not queue:
                return None
            record.payload = bytes(queue.pop(0))
            record.size, record.blob = len(record.payload), None
            cache.set(skey(name), queue)
            self._store_records(cache, [record])
        return record

    def set_control(self, instance_id: str, action: str | None, reason: str = "") -> None:
        cache = self._cache(instance_id)
        assert cache is not None
        if action is None:
            cache.delete(CONTROL)
        else:
            cache.set(CONTROL, (action, reason))
        # Then touch the flag file: readers stat it (a microsecond) instead of querying
        # SQLite at every task boundary, and re-read the cache only when it changed.
        flag = self._instance_dir(instance_id) / CONTROL_FLAG
        flag.write_text(str(time.time_ns()))

    def get_control(self, instance_id: str) -> tuple[str, str] | None:
        flag = self._flags.get(instance_id)
        if flag is None:
            flag = self._flags[instance_id] = str(self._instance_dir(instance_id) / CONTROL_FLAG)
        try:
            stamp = os.stat(flag).st_mtime_ns
        except FileNotFoundError:
            return None  # never set
        seen = self._control_seen.get(instance_id)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        raw = self._read(instance_id, CONTROL)
        value = (str(raw[0]), str(raw[1])) if raw else None
        self._control_seen[instance_id] = (stamp, value)
        return value

    # -- claims (PooledWorker) ----------------------------------------------------------
    # Each call is one SQLite transaction (BEGIN IMMEDIATE: writers across processes are
    # serialised), so "check, then write" cannot interleave with another worker's.
    def claim(self, instance_id: str, task_id: str, worker: str, ttl: float, seen: float | None = None) -> str | None:
        cache = self._cache(instance_id)
        assert cache is not None
        with cache.transact():
            now = time.time()
            current = cache.get(ckey(task_id))
            if isinstance(current, dict) and current.get("expires_at", 0.0) > now:
                return None
            stored = cache.get(rkey(task_id))
            if record_version(None if stored is None else self._record(instance_id, stored)) != seen:
                return None
            token = uuid.uuid4().hex
            cache.set(ckey(task_id), Claim(task_id, worker, token, now + ttl).to_dict())
        return token

    def renew_claim(self, instance_id: str, task_id: str, token: str, ttl: float) -> bool:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return False
        with cache.transact():
            current = cache.get(ckey(task_id))
            if not isinstance(current, dict) or current.get("token") != token:
                return False
            current["expires_at"] = time.time() + ttl
            cache.set(ckey(task_id), current)
        return True

    def release_claim(self, instance_id: str, task_id: str, token: str) -> bool:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return False
        with cache.transact():
            current = cache.get(ckey(task_id))
            if not isinstance(current, dict) or current.get("token") != token:
                return False
            cache.delete(ckey(task_id))
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
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return None
        for record, sink in items:  # large outputs become files first (outside the transaction)
            assert isinstance(sink, SpillSink)
            record.payload, record.blob = sink.commit()
            record.size = sink.size
        with cache.transact():
            current = cache.get(ckey(task_id))
            ours = isinstance(current, dict) and current.get("token") == token
            if ours:
                self._store_records(cache, [record for record, _ in items])
                if release:  # the unit is done: drop the claim in the same transaction
                    cache.delete(ckey(task_id))
        if not ours:
            for record, _ in items:  # a rejected commit leaves no orphan file behind
                if record.blob:
                    (self._instance_dir(instance_id) / "blobs" / record.blob).unlink(missing_ok=True)
            return None
        return [record for record, _ in items]

    def get_claims(self, instance_id: str) -> dict[str, Claim]:
        cache = self._cache(instance_id, create=False)
        if cache is None:
            return {}
        out = {}
        for key in list(cache.iterkeys()):
            if isinstance(key, str) and key.startswith(CLAIM_PREFIX):
                data = cache.get(key)
                if isinstance(data, dict):
                    out[key[len(CLAIM_PREFIX) :]] = Claim.from_dict(data)
        return out
