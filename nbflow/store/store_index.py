"""The index of a disk store: one row per instance folder, so listing reads one file.

Listing used to open every instance's database (a connection, pragmas, the meta row
and every record header): tens of seconds for a few thousand instances. The index
keeps, per instance folder, the :class:`~nbflow.store.base.InstanceSummary` a listing
shows and when it was written. It is *derived* data, never the truth:

- A row is trusted only while the instance's database files are exactly as they were
  when the row was written: their sizes and modification times (two ``stat`` calls,
  far cheaper than opening the database) are stored with the row and compared. A run
  in progress, a process killed between its checkpoint and the index write, or a
  writer that does not keep the index (an older nbflow) all change them, so the next
  listing reads that instance itself and rewrites its row. (A file's time has the
  clock tick's resolution — a few ms — so a commit landing in the same tick as the
  row *and* rewriting the log from its start could pass unseen; nbflow's own runs
  write the row after their last commit, so this needs a foreign writer.)
- A row whose folder is gone is dropped; a folder without a row is read and indexed.
- The file is plain SQLite with nbflow's own table, read with nbflow's own SQL; its
  rows are strict JSON checked field by field. A row that does not parse is ignored
  (the instance is read instead). An index that cannot be opened, read or written —
  damaged, on a read-only mount, a full disk — only makes listing slower: it never
  makes listing fail, and it is rebuilt from the instances (the damaged file is kept
  beside it, not deleted).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from nbflow.core.process_id import current_pid
from nbflow.store.base import InstanceSummary

__all__ = ["INDEX_FILE", "StoreIndex", "files_of"]

INDEX_FILE = "index.db"
_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS instances ( folder TEXT PRIMARY KEY, summary TEXT NOT NULL, files TEXT NOT NULL)"
_STR = ("instance_id", "workflow", "state", "generation", "message")
_NUM = ("created_at", "updated_at")
_INT = ("tasks_done", "tasks_total")


class StoreIndex:
    """The index file of one store folder; every method swallows what the index cannot
    do (see the module docstring) and says so by returning None / False."""

    def __init__(self, directory: Path, read_only: bool) -> None:
        self.path = directory / INDEX_FILE
        self.read_only = read_only
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._pid = current_pid()
        self._broken = False

    # -- connection -----------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection | None:
        """The writable connection, or None while the index cannot be opened for writing.
        Only damage sets the file aside; a full disk, an I/O or permission error is
        tried again at the next call (the disk may have room by then)."""
        if self._pid != current_pid():  # a forked child opens its own
            self._con, self._pid = None, current_pid()
        if self._con is not None:
            return self._con
        if self._broken:
            return None
        try:
            self._con = self._open()
        except sqlite3.DatabaseError as exc:
            self._con = self._set_aside_and_reopen() if _is_damage(exc) else None
        except OSError:
            self._con = None
        return self._con

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            if not self.path.exists():
                raise OSError("no index")
            con = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            con.execute("SELECT count(*) FROM instances").fetchall()
            return con
        if not self.path.exists():
            _create(self.path)
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            # Derived data (a row is trusted only while its instance's files are as it
            # says, a damaged index is set aside and rebuilt): no sync is worth paying for
            # it. A process crash loses nothing either way; a power loss may cost a rebuild.
            con.execute("PRAGMA synchronous = OFF")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            mode = con.execute("PRAGMA journal_mode").fetchone()[0]
            if version != _VERSION or mode != "wal":
                raise _WrongFormat(f"index version {version} in {mode} mode")
            con.execute("SELECT count(*) FROM instances").fetchall()
        except BaseException:
            con.close()
            raise
        return con

    def _read_as_is(self) -> list[Any] | None:
        """The rows of an index that cannot be opened for writing (a full disk: SQLite
        cannot make the shared-memory file a write-ahead-log database needs), read as an
        unchanging file. A row that a log not yet folded in replaced is an older one,
        and an older row never matches the instance's files of now: nothing untrue is
        trusted, those instances are read."""
        if not self.path.exists():
            return None
        try:
            con = sqlite3.connect(f"{self.path.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        except sqlite3.Error:
            return None
        try:
            return con.execute("SELECT folder, summary, files FROM instances").fetchall()
        except sqlite3.Error:
            return None
        finally:
            con.close()

    def _set_aside_and_reopen(self) -> sqlite3.Connection | None:
        """A damaged index (or one of another version) is derived data: keep it beside
        for inspection and start a new one."""
        if self.read_only:
            self._broken = True
            return None
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{self.path}.damaged-{time.time_ns()}{suffix}")
            return self._open()
        except sqlite3.DatabaseError as exc:
            self._broken = _is_damage(exc)  # a new index damaged at once: give up on it here
            return None
        except OSError:  # no room for a new one yet: the next call makes it
            return None

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._con.close()
            self._con = None

    # -- rows -----------------------------------------------------------------------------
    def rows(self) -> dict[str, tuple[InstanceSummary, str]] | None:
        """Every row that parses: folder -> (summary, files as in ``files_of``); None
        if the index cannot be read at all."""
        with self._lock:
            con = self._connection()
            if con is None:
                raw = None if self._broken else self._read_as_is()
                if raw is None:
                    return None
            else:
                try:
                    raw = con.execute("SELECT folder, summary, files FROM instances").fetchall()
                except sqlite3.DatabaseError as exc:
                    self._con = None
                    with contextlib.suppress(sqlite3.Error):
                        con.close()
                    if _is_damage(exc):
                        self._con = self._set_aside_and_reopen()
                    return None
        out = {}
        for folder, text, files in raw:
            summary = _parse(text)
            if summary is not None and isinstance(folder, str) and isinstance(files, str):
                out[folder] = (summary, files)
        return out

    def put(self, rows: dict[str, tuple[InstanceSummary, str]]) -> bool:
        """Write rows — folder -> (summary, ``files_of`` the folder taken after the
        instance's commit) — in one transaction."""
        if self.read_only or not rows:
            return False
        values = [(folder, json.dumps(s.to_dict(), allow_nan=False), files) for folder, (s, files) in rows.items()]
        return self._write("INSERT OR REPLACE INTO instances(folder, summary, files) VALUES (?, ?, ?)", values)

    def drop(self, folders: list[str]) -> bool:
        if self.read_only or not folders:
            return False
        return self._write("DELETE FROM instances WHERE folder = ?", [(f,) for f in folders])

    def _write(self, sql: str, values: list[tuple[Any, ...]]) -> bool:
        with self._lock:
            con = self._connection()
            if con is None:
                return False
            try:
                con.execute("BEGIN IMMEDIATE")
                con.executemany(sql, values)
                con.execute("COMMIT")
                return True
            except (sqlite3.Error, ValueError):
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                return False


class _WrongFormat(sqlite3.DatabaseError):
    """An index that SQLite opens but nbflow did not write in this form."""


# SQLite's primary result codes that mean the file's bytes are not a valid database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the index file is damaged — not that the disk is full, an
    I/O or permission error, or a lock: those leave the file as it is."""
    if isinstance(exc, _WrongFormat):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised without a result code: judge by SQLite's words
        text = str(exc).lower()
        return "malformed" in text or "not a database" in text
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _create(path: Path) -> None:
    """Make the index file appear whole and private: the bytes of an empty index (built
    once per process: making one with SQLite costs several synced commits) are written
    to a scratch file and linked into place, never over an existing one."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}-{time.time_ns()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            data = memoryview(_empty_index())
            while data:  # a nearly full disk may take part of a write: never link a torn file
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


@functools.cache
def _empty_index() -> bytes:
    import tempfile  # only a store's first index needs it (its imports cost a listing ~3 ms)

    from nbflow.store.sqlite_rows import scratch_dir

    with tempfile.TemporaryDirectory(prefix="nbflow-index-", dir=scratch_dir()) as scratch:
        target = Path(scratch) / INDEX_FILE
        con = sqlite3.connect(target, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute(_SCHEMA)
            con.execute(f"PRAGMA user_version = {_VERSION}")
        finally:
            con.close()  # the last connection folds the log into the file
        return target.read_bytes()


# What _parse accepts for each field of a row (the exact types nbflow writes; a bool is
# not a number). Built once: the check runs for every instance of every listing.
_NUMBER = (int, float)
_KINDS: dict[str, tuple[tuple[type, ...], bool]] = {  # field -> (types, may be None)
    **{k: ((str,), False) for k in _STR},
    **{k: (_NUMBER, False) for k in _NUM},
    **{k: ((int,), False) for k in _INT},
    "wake_at": (_NUMBER, True),
    "signal": ((str,), True),
    "error": ((dict,), True),
}
_FIELDS = frozenset(f.name for f in fields(InstanceSummary))


def _parse(text: Any) -> InstanceSummary | None:
    """A summary from a row, or None for anything but the exact shape nbflow writes."""
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("instance_id"), str):
        return None
    for key, value in data.items():
        kind = _KINDS.get(key)
        if kind is None:
            continue  # a field this version does not know: left out below
        if value is None:
            if not kind[1]:
                return None
        elif not isinstance(value, kind[0]) or isinstance(value, bool):
            return None
    # InstanceSummary.from_dict, without looking its fields up again for every row
    if data.keys() <= _FIELDS:
        return InstanceSummary(**data)
    return InstanceSummary(**{k: v for k, v in data.items() if k in _FIELDS})


def files_of(folder: str | os.PathLike[str]) -> str:
    """Size and modification time of the instance's database and its write-ahead log:
    changes with every commit (see the module docstring)."""
    base = os.path.join(folder, "cache.db")  # plain strings: this runs for every instance listed
    parts = []
    for name in (base, base + "-wal"):
        try:
            st = os.stat(name)
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{st.st_size}@{st.st_mtime_ns}")
    return " ".join(parts)
