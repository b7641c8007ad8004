"""How the disk store lays things out: cache keys, record and instance bytes, folder
names, the spill-to-file payload sink and the flock lease.

``disk.py`` (the backend) composes these pieces; this module holds no backend state.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pickle
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import diskcache

from nbflow.store.base import CheckpointRecord

__all__ = [
    "CACHE_SETTINGS",
    "CLAIM_PREFIX",
    "CONTROL",
    "CONTROL_FLAG",
    "FileLease",
    "INLINE_LIMIT",
    "MAX_OPEN",
    "META",
    "RECORD_PREFIX",
    "SAFE",
    "SIGNAL_PREFIX",
    "STAMP",
    "SpillSink",
    "ckey",
    "instance_dirname",
    "meta_dict",
    "pack_record",
    "rkey",
    "scan_prefix",
    "skey",
    "unpack_record",
]

INLINE_LIMIT = 256 * 1024  # larger encoded outputs go to their own file
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CACHE_SETTINGS: dict[str, Any] = {
    # Checkpoints must never be evicted or culled, whatever their size.
    "eviction_policy": "none",
    "size_limit": 2**62,
    "cull_limit": 0,
    # Records stay in SQLite; nbflow writes large outputs to files itself.
    "disk_min_file_size": 2**24,
    "statistics": 0,
    "tag_index": 0,
}
META = "meta"
CONTROL = "control"
CONTROL_FLAG = "control.flag"
STAMP = "stamp"  # a fresh token at every record write: see change_stamp
RECORD_PREFIX, SIGNAL_PREFIX, CLAIM_PREFIX = "t:", "s:", "c:"


def rkey(task_id: str) -> str:
    """The cache key of a task's record. A str, not a tuple: diskcache pickles tuple
    keys, and pickle's memo makes ("t", "t") encode differently depending on whether the
    two strings are one object, so one record could end up under two keys."""
    return RECORD_PREFIX + task_id


def pack_record(record: CheckpointRecord) -> bytes:
    """A record as bytes: a version tag and the fields in declaration order.

    diskcache stores bytes as they are, whereas a dict would be pickled *and* run
    through pickletools.optimize on every write (~100 us); a tuple also decodes in a
    third of the time of a dict on resume. New fields are only ever appended, so old
    tuples still load."""
    return pickle.dumps((1, record.as_tuple()), protocol=5)


def unpack_record(data: Any) -> CheckpointRecord:
    """Inverse of pack_record; also reads records stored as dicts."""
    if isinstance(data, bytes):
        data = pickle.loads(data)
    if isinstance(data, tuple) and len(data) == 2 and data[0] == 1:
        return CheckpointRecord(*data[1])
    if not isinstance(data, dict):
        raise ValueError(f"a record is a {type(data).__name__}, not a dict")
    return CheckpointRecord.from_dict(data)


def meta_dict(data: Any) -> Any:
    """An instance record as a dict (stored as pickled bytes; dicts from older stores)."""
    return pickle.loads(data) if isinstance(data, bytes) else data


def scan_prefix(cache: diskcache.Cache, prefix: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of every str key starting with ``prefix``, in ONE query.

    Resume reads all of an instance's records; one ``get`` per key would cost two
    queries each. This reads diskcache's table directly (its layout is stable since
    diskcache 4) and decodes values with diskcache's own ``Disk.fetch``; should that
    layout ever change, it falls back to the public, slower iteration.
    """
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    try:
        rows = cache._sql(
            "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?",
            (prefix, upper),
        ).fetchall()
        fetch = cache._disk.fetch
    except (AttributeError, sqlite3.OperationalError):
        for key in cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                value = cache.get(key)
                if value is not None:
                    yield key, value
        return
    for key, mode, filename, value in rows:
        yield key, fetch(mode, filename, value, False)


def ckey(task_id: str) -> str:
    """The cache key of a PooledWorker's claim on a step."""
    return CLAIM_PREFIX + task_id


def skey(name: str) -> str:
    """The cache key of a signal's FIFO queue (a str, for the same reason)."""
    return SIGNAL_PREFIX + name


MAX_OPEN = 64


def instance_dirname(instance_id: str) -> str:
    """A folder name for an instance id: the id itself when safe, else a safe
    prefix plus a digest (so distinct ids never share a folder)."""
    if SAFE.match(instance_id):
        return instance_id
    digest = hashlib.sha256(instance_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", instance_id)[:80].lstrip("._-") or "id"
    return f"{safe}~{digest}"


class SpillSink(io.RawIOBase):
    """Buffers in memory up to INLINE_LIMIT, then streams to a temp file in ``blobs/``."""

    def __init__(self, instance_dir: Path, limit: int = INLINE_LIMIT) -> None:
        super().__init__()
        self._instance_dir, self._limit = instance_dir, limit
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self.tmp_path: Path | None = None
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        self.size += n
        if self._file is None:
            if len(self._buf) + n <= self._limit:
                self._buf += data
                return n
            # Over the limit: spill what is buffered, then write `data` straight through
            # (never copy a large buffer into memory first).
            blob_dir = self._instance_dir / "blobs"
            blob_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_path = blob_dir / f".tmp-{uuid.uuid4().hex}"
            self._file = open(self.tmp_path, "wb")  # noqa: SIM115 - closed in commit()
            self._file.write(self._buf)
            self._buf = bytearray()
        self._file.write(data)
        return n

    def commit(self) -> tuple[bytes | None, str | None]:
        """Make the bytes durable; returns (inline payload, blob file name)."""
        if self._file is None:
            return bytes(self._buf), None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        assert self.tmp_path is not None
        name = self.tmp_path.name[len(".tmp-") :] + ".bin"
        os.replace(self.tmp_path, self.tmp_path.with_name(name))
        return None, name

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            if self.tmp_path is not None:
                self.tmp_path.unlink(missing_ok=True)


class FileLease:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
