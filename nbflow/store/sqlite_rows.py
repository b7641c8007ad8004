"""Rows of one instance's SQLite file, read and written as plain bytes.

diskcache creates and tunes the database (schema, WAL, pragmas) and hands out a
connection per thread and its ``transact()``; nbflow then reads and writes the ``Cache``
table with its own statements. Two reasons:

- *Safety.* ``Cache.get`` unpickles a row whose mode column says "pickle", and follows a
  row's ``filename`` column to a file anywhere on the machine; a planted row would run
  code or read outside the store. Here a row is only ever a raw value (mode 1, the form
  diskcache itself uses for ``bytes`` and short ``str``), and anything else is
  reported as a foreign row, never decoded. Writes never delete a file a row names.
- *Speed.* One statement per row, without diskcache's read-before-write.

This is the one module that touches diskcache's private ``_sql`` (the connection's
``execute``); it is wrapped here and tested by the store's contract suite.

A store whose folder cannot be written (a read-only mount, another user's files) is
opened read-only through the standard sqlite3 module instead, so it can still be listed
and inspected.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import diskcache

__all__ = ["ForeignRowError", "Rows"]

_MODE_RAW = 1  # diskcache.core.MODE_RAW: the value column holds the value itself

_UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, 1, NULL, ?)"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, size = excluded.size,"
    " mode = 1, filename = NULL, value = excluded.value"
)


class ForeignRowError(ValueError):
    """A row that nbflow did not write in this form (damaged or planted)."""


def _value(key: str, mode: Any, value: Any) -> bytes | str:
    if mode != _MODE_RAW or not isinstance(value, bytes | str):
        raise ForeignRowError(f"row {key!r} holds a value of storage mode {mode!r}, not raw bytes")
    return value


class Rows:
    """Byte-valued rows under ``str`` keys in one diskcache database."""

    def __init__(self, directory: Path, settings: dict[str, Any], *, read_only: bool = False) -> None:
        self.directory = directory
        self.read_only = read_only
        self.cache: diskcache.Cache | None = None
        self._ro: sqlite3.Connection | None = None
        if read_only:
            self._ro = _connect_read_only(directory / "cache.db")
            self._execute: Callable[..., sqlite3.Cursor] = self._ro.execute
        else:
            self.cache = diskcache.Cache(str(directory), **settings)
            cache = self.cache

            def execute(*args: Any) -> sqlite3.Cursor:
                cursor: sqlite3.Cursor = cache._sql(*args)  # this thread's connection (see module doc)
                return cursor

            self._execute = execute

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self._ro is not None:
            self._ro.close()

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """One SQLite transaction (BEGIN IMMEDIATE: writers across processes queue)."""
        if self.cache is None:
            raise PermissionError(f"the store at {self.directory} is open read-only")
        with self.cache.transact(retry=True):
            yield

    # -- reads ------------------------------------------------------------------------
    def get(self, key: str) -> bytes | str | None:
        rows = self._execute("SELECT mode, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
        if not rows:
            return None
        return _value(key, *rows[0])

    def scan(self, prefix: str) -> list[tuple[str, bytes | str]]:
        """Every row whose key starts with ``prefix``, in one query."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._execute(
            "SELECT key, mode, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (prefix, upper)
        ).fetchall()
        return [(key, _value(key, mode, value)) for key, mode, value in rows if isinstance(key, str)]

    # -- writes (call inside transact() when several must land together) --------------
    def put(self, key: str, value: bytes | str) -> None:
        now = time.time()
        self._execute(_UPSERT, (key, now, now, len(value), value))

    def put_many(self, items: Iterable[tuple[str, bytes | str]]) -> None:
        now = time.time()
        for key, value in items:
            self._execute(_UPSERT, (key, now, now, len(value), value))

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._execute("DELETE FROM Cache WHERE key = ? AND raw = 1", (key,))


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
