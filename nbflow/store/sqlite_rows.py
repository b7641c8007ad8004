"""Rows of one instance's SQLite file, read and written as plain bytes.

diskcache creates the database — its schema, WAL journal and settings — so every
instance folder stays a valid ``diskcache.Cache``, less the triggers and the index that
only diskcache's own API reads (``_UNUSED_SCHEMA``). nbflow then reads and writes the
``Cache`` table through one connection of its own, with its own statements:

- *Safety.* ``Cache.get`` unpickles a row whose mode column says "pickle", and follows a
  row's ``filename`` column to a file anywhere on the machine; a planted row would run
  code or read outside the store. Here a row is only ever a raw value (mode 1, the form
  diskcache itself uses for ``bytes`` and short ``str``), and anything else is
  reported as a foreign row, never decoded. Writes never delete a file a row names.
  The pragmas are nbflow's, never read from the database's Settings table.
- *Speed.* One statement per row, without diskcache's read-before-write. A task's
  checkpoint is one statement (the record row, guarded by the instance generation) and
  one commit.
- *Change marks.* ``replace`` writes a row as a new row (a new, larger rowid, where an
  update would keep the old one), so the high water of ``marks()`` — the largest rowid —
  moves with every such write, read in O(1) without a separate stamp row to keep up to date.
  SQLite gives a new row the largest rowid plus one, so deleting the row at the top would
  let the next write take its rowid again and leave the high water where a reader saw it:
  ``delete(..., mark=key)`` renews the row ``key`` whenever it lowered the high water.
  The rows written since a high water are then found by rowid alone (``since``).
- *Closing.* diskcache keeps a connection per thread and closes only the calling
  thread's; one connection (serialised by a lock) closes for real, so a store can be
  unmounted or deleted after ``close()``.

A database this process cannot write (a read-only mount, another user's files, a full
disk) is opened read-only, so it can still be listed and inspected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nbflow.core.process_id import current_pid

__all__ = ["ForeignRowError", "Rows"]

_MODE_RAW = 1  # diskcache.core.MODE_RAW: the value column holds the value itself
_BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction (as diskcache)
_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",  # WAL + NORMAL: a commit survives a process crash
    "PRAGMA cache_size = 8192",
    "PRAGMA mmap_size = 67108864",
)

_UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, 1, NULL, ?)"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, size = excluded.size,"
    " mode = 1, filename = NULL, value = excluded.value"
)


_GUARDED_REPLACE = (
    "INSERT OR REPLACE INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) SELECT ?, 1, ?, NULL, ?, 0, NULL, ?, 1, NULL, ?"
    " WHERE (SELECT value FROM Cache WHERE key = ? AND raw = 1) IS ?"
)

_REPLACE = (
    "INSERT OR REPLACE INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, 1, NULL, ?)"
)


class ForeignRowError(ValueError):
    """A row that nbflow did not write in this form (damaged or planted)."""


def _value(key: str, mode: Any, value: Any) -> bytes | str:
    if mode != _MODE_RAW or not isinstance(value, bytes | str):
        raise ForeignRowError(f"row {key!r} holds a value of storage mode {mode!r}, not raw bytes")
    return value


class Rows:
    """Byte-valued rows under ``str`` keys in one instance's database."""

    def __init__(
        self,
        directory: Path,
        settings: dict[str, Any],
        *,
        read_only: bool = False,
    ) -> None:
        self.directory = directory
        self.read_only = read_only
        db = directory / "cache.db"
        created = not read_only and not db.exists()
        if created:
            _create(directory, settings)
        self._db = db
        self._lock = threading.RLock()
        self._depth = 0
        self._pid = current_pid()
        # The first write to a database made just now (the instance's creation) runs
        # without syncs: SQLite would otherwise sync the new write-ahead log and its
        # folder (two syncs, ~20 ms on a busy disk, for every new instance). That
        # changes nothing a process crash could do (the bytes are with the OS either
        # way); a power loss may lose that write, as it may lose any commit since the
        # last checkpoint under synchronous=NORMAL, and the log's checksums keep a torn
        # one out. Every later write syncs as usual.
        self._relaxed = created
        self._con = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return _connect_read_only(self._db)
        con = sqlite3.connect(self._db, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            con.execute(pragma)
        if self._relaxed:
            con.execute("PRAGMA synchronous = OFF")
        return con

    def _wrote(self) -> None:
        """A write committed (call with the lock held): from now on, syncs as usual."""
        if self._relaxed and not self._depth:
            self._relaxed = False
            self._con.execute(_PRAGMAS[0])

    def _live(self) -> sqlite3.Connection:
        """The connection (call with the lock held); a forked child opens its own."""
        if self._pid != current_pid():
            self._pid, self._con, self._depth = current_pid(), self._connect(), 0
        return self._con

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._live().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """One SQLite transaction (BEGIN IMMEDIATE: writers across processes queue).
        Threads of this process take turns; a nested call joins the open transaction."""
        if self.read_only:
            raise PermissionError(13, "the database is open read-only", str(self._db))
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._rows("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
                raise
            self._depth = 0
            self._rows("COMMIT")
            self._wrote()

    # -- reads ------------------------------------------------------------------------
    def get(self, key: str) -> bytes | str | None:
        rows = self._rows("SELECT mode, value FROM Cache WHERE key = ? AND raw = 1", (key,))
        if not rows:
            return None
        return _value(key, *rows[0])

    def get_many(self, keys: list[str]) -> dict[str, bytes | str]:
        """The rows of ``keys`` that exist, in one query per 500 keys (SQLite's limit on
        bound parameters is far above that)."""
        found: dict[str, bytes | str] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._rows(f"SELECT key, mode, value FROM Cache WHERE raw = 1 AND key IN ({marks})", tuple(part))
            found.update((key, _value(key, mode, value)) for key, mode, value in rows if isinstance(key, str))
        return found

    def scan(self, prefix: str) -> list[tuple[str, bytes | str]]:
        """Every row whose key starts with ``prefix``, in one query."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._rows("SELECT key, mode, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (prefix, upper))
        return [(key, _value(key, mode, value)) for key, mode, value in rows if isinstance(key, str)]

    def keys(self, prefix: str) -> list[str]:
        """The keys of every row starting with ``prefix`` (no values read)."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._rows("SELECT key FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (prefix, upper))
        return [key for (key,) in rows if isinstance(key, str)]

    # -- writes (call inside transact() when several must land together) --------------
    def put(self, key: str, value: bytes | str) -> None:
        now = time.time()
        with self._lock:
            self._rows(_UPSERT, (key, now, now, len(value), value))
            self._wrote()

    def replace_many(self, items: Iterable[tuple[str, bytes | str]]) -> None:
        """Write rows as new rows, moving the high water of ``marks()`` (see the module docstring)."""
        now = time.time()
        with self._lock:
            self._live().executemany(_REPLACE, [(key, now, now, len(value), value) for key, value in items])
            self._wrote()

    def marks(self, *keys: str) -> tuple[int, list[Any]]:
        """In one snapshot: the high water — the largest rowid, which grows with every
        ``replace``/``put_if`` (and every new row), so an unchanged value means no such
        write happened in between — and the values of ``keys`` (None where absent)."""
        sub = "".join(", (SELECT value FROM Cache WHERE key = ? AND raw = 1)" for _ in keys)
        (row,) = self._rows(f"SELECT (SELECT max(rowid) FROM Cache){sub}", keys)
        return int(row[0] or 0), list(row[1:])

    def since(self, prefix: str, high: int | None, *keys: str) -> tuple[int, list[Any], list[tuple[str, bytes | str]]]:
        """In one snapshot (one read transaction): ``marks(*keys)`` and the rows under
        ``prefix`` written as new rows after the high water ``high`` (every such row
        when ``high`` is None). A reader that kept the rows it read at ``high`` brings
        them up to date with these, reading only what changed since: a row replaced
        since has a rowid above ``high`` (see the module docstring), while deletions
        are for the caller to notice (a mark row renewed with them)."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with self._lock:
            con = self._live()
            own = not self._depth  # inside our own write transaction, that is the snapshot
            if own:
                con.execute("BEGIN")
            try:
                top, values = self.marks(*keys)
                if high is None:
                    sql = "SELECT key, mode, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?"
                    found = con.execute(sql, (prefix, upper)).fetchall()
                else:  # by rowid (the unary + keeps SQLite off the key index): O(rows since)
                    sql = "SELECT key, mode, value FROM Cache WHERE rowid > ? AND raw = 1 AND +key >= ? AND +key < ?"
                    found = con.execute(sql, (high, prefix, upper)).fetchall()
            finally:
                if own:
                    con.execute("COMMIT")
        return top, values, [(key, _value(key, mode, value)) for key, mode, value in found if isinstance(key, str)]

    def put_if(self, key: str, value: bytes | str, guard: str, expected: str | None) -> bool:
        """Write one row as a new row (see ``replace_many``) in its own transaction, only
        while row ``guard`` holds ``expected`` (None: absent); False (nothing written)
        otherwise."""
        now = time.time()
        with self._lock:
            cursor = self._live().execute(_GUARDED_REPLACE, (key, now, now, len(value), value, guard, expected))
            self._wrote()
            return cursor.rowcount == 1

    def put_many(self, items: Iterable[tuple[str, bytes | str]]) -> None:
        now = time.time()
        with self._lock:
            self._live().executemany(_UPSERT, [(key, now, now, len(value), value) for key, value in items])
            self._wrote()

    def delete(self, keys: Iterable[str], *, mark: str | None = None) -> None:
        """Delete rows; with ``mark``, in one transaction with a renewal of the row
        ``mark`` (a fresh random token) if the deletion lowered the high water, so the
        high water and that row together never return to a state a reader saw before
        (see the module docstring)."""
        params = [(key,) for key in keys]
        if mark is None:
            with self._lock:
                self._live().executemany("DELETE FROM Cache WHERE key = ? AND raw = 1", params)
                self._wrote()
            return
        with self.transact():
            con = self._live()
            (before,) = con.execute("SELECT max(rowid) FROM Cache").fetchone()
            con.executemany("DELETE FROM Cache WHERE key = ? AND raw = 1", params)
            (after,) = con.execute("SELECT max(rowid) FROM Cache").fetchone()
            if (after or 0) < (before or 0):
                self.put(mark, os.urandom(16).hex())


def _create(directory: Path, settings: dict[str, Any]) -> None:
    """Make ``directory/cache.db`` appear whole: a private scratch file with the bytes of
    an empty diskcache database (schema, WAL mode, settings) is linked into place in one
    step. A reader never meets a half-made, empty file (which it would have to call
    damaged), and of two processes creating one instance at once the second simply finds
    the first one's database. Building that empty database with diskcache costs ~70 ms
    of small commits, so it is built once per process and settings, then copied."""
    scratch = directory / f".new-{os.urandom(16).hex()}.db"  # uuid4's randomness, without uuid's imports
    target = directory / "cache.db"
    try:
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            # No fsync: this is an empty database, and SQLite syncs the file itself at its
            # first checkpoint; a kill -9 cannot lose bytes already written.
            os.write(fd, _empty_database(tuple(sorted(settings.items()))))
        finally:
            os.close(fd)
        try:
            os.link(scratch, target)  # never replaces an existing database
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a rename, unless another process won
            if not target.exists():
                os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)


@functools.cache
def _empty_database(settings: tuple[tuple[str, Any], ...]) -> bytes:
    """The bytes of a new, empty diskcache database made with ``settings``.

    diskcache and tempfile (~10 ms of imports) load here, at the first instance a
    process creates: reading a store, as a listing does, needs neither."""
    import tempfile

    import diskcache

    with tempfile.TemporaryDirectory(prefix="nbflow-db-", dir=scratch_dir()) as scratch:
        diskcache.Cache(scratch, **dict(settings)).close()
        con = sqlite3.connect(Path(scratch) / "cache.db", isolation_level=None)
        try:
            for statement in _UNUSED_SCHEMA:
                con.execute(statement)
        finally:
            con.close()  # closing the last connection folds the WAL in
        return (Path(scratch) / "cache.db").read_bytes()


# Parts of diskcache's schema that only diskcache's own API reads: the triggers keeping
# its row count and total size in the Settings table (two extra row updates, and one
# more page in every commit), and the index of expiry times (nbflow never sets one).
# Together they were ~40% of a checkpoint's SQLite time. Rows never reads them; a
# ``diskcache.Cache`` opened on the folder re-creates them and still reads every row
# (only its ``len()`` would start from the count it finds).
_UNUSED_SCHEMA = (
    "DROP TRIGGER IF EXISTS Settings_count_insert",
    "DROP TRIGGER IF EXISTS Settings_count_delete",
    "DROP TRIGGER IF EXISTS Settings_size_insert",
    "DROP TRIGGER IF EXISTS Settings_size_update",
    "DROP TRIGGER IF EXISTS Settings_size_delete",
    "DROP INDEX IF EXISTS Cache_expire_time",
)


def scratch_dir() -> str | None:
    """Where a throw-away database is built: a memory filesystem where there is one
    (Linux), so SQLite's syncs while building it cost nothing; else the default
    temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection; where SQLite cannot even create its shared-memory file
    beside a WAL database (a read-only folder), it reads the file as immutable."""
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        con.execute("SELECT count(*) FROM Cache").fetchall()
        return con
    except sqlite3.OperationalError:
        con.close()
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    con.execute("SELECT count(*) FROM Cache").fetchall()
    return con
