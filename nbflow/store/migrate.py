"""Bring instances written by nbflow 0.1 into the current record format.

nbflow 0.1 stored instance and task records as pickles. The current format never
unpickles anything a store holds (see records.py), so those instances cannot be read
as they are — but what they finished must not be lost. :func:`migrate_store` converts
them once, explicitly: it *does* unpickle the old records, so run it only on a store you
trust (one your own nbflow 0.1 wrote). Outputs themselves are not decoded or rewritten;
they keep their codec and files, and gain the checksum the new format requires.

Called by ``nbflow migrate --dir PATH``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nbflow.store.base import CheckpointRecord, InstanceMeta
from nbflow.store.disk_layout import (
    CACHE_SETTINGS,
    CONTROL,
    GENERATION,
    META,
    RECORD_PREFIX,
    SIGNAL_PREFIX,
    STAMP,
)
from nbflow.store.records import (
    BLOB_NAME,
    checksum_bytes,
    checksum_of,
    encode_control,
    encode_meta,
    encode_record,
    encode_signals,
    new_hasher,
)
from nbflow.store.sqlite_rows import Rows

__all__ = ["MigrationReport", "is_old_format", "migrate_store"]

# CheckpointRecord's fields in nbflow 0.1, the order its records were pickled in.
_OLD_FIELDS = (
    "task_id",
    "fingerprint",
    "codec",
    "attempt",
    "started_at",
    "finished_at",
    "size",
    "payload",
    "blob",
    "preview",
    "stdout",
    "stderr",
    "worker",
    "extra",
)
_KNOWN = {f.name for f in fields(CheckpointRecord)}


def is_old_format(meta_row: bytes | str) -> bool:
    """Whether an instance record is a 0.1 pickle (current ones are JSON)."""
    return isinstance(meta_row, bytes) and meta_row[:1] == b"\x80"


@dataclass
class MigrationReport:
    """What :func:`migrate_store` did, instance by instance."""

    migrated: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)  # already in the current format
    failed: dict[str, str] = field(default_factory=dict)  # folder -> why


def migrate_store(directory: str | Path) -> MigrationReport:
    """Convert every 0.1 instance under ``directory`` (a DiskcacheBackend folder).

    Run it while nothing else uses the store. Each instance is converted in one SQLite
    transaction; one that fails is left exactly as it was and reported."""
    report = MigrationReport()
    instances = Path(directory).expanduser() / "instances"
    for path in sorted(p for p in instances.iterdir() if (p / "cache.db").is_file() and not p.is_symlink()):
        try:
            if _migrate_instance(path):
                report.migrated.append(path.name)
            else:
                report.current.append(path.name)
        except Exception as exc:  # noqa: BLE001 - reported per instance; the others go on
            report.failed[path.name] = f"{type(exc).__name__}: {exc}"
    return report


def _migrate_instance(path: Path) -> bool:
    import diskcache  # only a migration reads a store through diskcache's own API (the rest never loads it)

    old = diskcache.Cache(str(path), **CACHE_SETTINGS)  # the 0.1 API: unpickles (trusted store)
    try:
        raw_meta = old.get(META)
        if raw_meta is None or (not is_old_format(raw_meta) and not isinstance(raw_meta, dict)):
            return False
        meta_dict = pickle.loads(raw_meta) if isinstance(raw_meta, bytes) else raw_meta
        rows: dict[str, Any] = {}
        for key in list(old.iterkeys()):
            if isinstance(key, str):
                rows[key] = old.get(key)
    finally:
        old.close()
    meta = InstanceMeta.from_dict(meta_dict)
    meta.generation = os.urandom(16).hex()
    out: list[tuple[str, bytes | str]] = [(META, encode_meta(meta)), (GENERATION, meta.generation)]
    for key, value in rows.items():
        if key.startswith(RECORD_PREFIX):
            record = _old_record(value)
            record.generation = meta.generation
            record.checksum = _checksum(path, record)
            out.append((key, encode_record(record)))
        elif key.startswith(SIGNAL_PREFIX) and isinstance(value, list):
            out.append((key, encode_signals(bytes(v) for v in value)))
        elif key == CONTROL and isinstance(value, tuple | list) and len(value) == 2:
            out.append((key, encode_control(str(value[0]), str(value[1]))))
        elif key == STAMP:
            out.append((key, str(value)))
        # claims ("c:") are leases of workers long gone; they are dropped
    target = Rows(path, CACHE_SETTINGS)
    try:
        with target.transact():
            target.delete(rows)
            target.put_many(out)
    finally:
        target.close()
    return True


def _old_record(value: Any) -> CheckpointRecord:
    data = pickle.loads(value) if isinstance(value, bytes) else value
    if isinstance(data, tuple) and len(data) == 2 and data[0] == 1:
        data = dict(zip(_OLD_FIELDS, data[1], strict=False))
    if not isinstance(data, dict):
        raise ValueError(f"a 0.1 record is a {type(data).__name__}")
    record = CheckpointRecord(**{k: v for k, v in data.items() if k in _KNOWN})
    record.extra = dict(record.extra or {})
    return record


def _checksum(path: Path, record: CheckpointRecord) -> str:
    if record.blob is None:
        return checksum_bytes(record.payload or b"")
    if not BLOB_NAME.match(record.blob):
        raise ValueError(f"record {record.task_id!r} names the file {record.blob!r}")
    hasher = new_hasher()
    with open(path / "blobs" / record.blob, "rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
    return checksum_of(hasher)
