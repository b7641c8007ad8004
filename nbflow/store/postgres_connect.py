"""Connections of a PostgreSQL store: a small pool, reconnection, and errors that say
what is wrong.

psycopg is imported here and only when a store is opened, so ``import nbflow`` never
needs it; without it, opening a store raises ``MissingDependencyError`` with the
install command.

A call runs on a pooled connection. When the connection breaks (the server restarted,
the network dropped) the call is retried on a new one, with backoff, for up to
``reconnect_timeout`` seconds; every write nbflow makes is safe to repeat (records are
upserts, claims and signals carry the caller's own token), so a retry after a commit
whose answer was lost changes nothing. A bad address, wrong credentials, or a missing
database are not retried: they raise at once with what to do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nbflow.core.errors import (
    MissingDependencyError,
    StoreAccessError,
    StoreAddressError,
    StoreAuthError,
    StoreConnectionError,
    StoreDatabaseMissingError,
    StoreSchemaError,
)
from nbflow.store.postgres_schema import CHECK_VERSION, CREATE, SCHEMA_LOCK, SCHEMA_VERSION, UPGRADES

if TYPE_CHECKING:
    import psycopg

__all__ = ["ConnectionPool", "describe", "import_psycopg", "redact_password"]

T = TypeVar("T")
_MAX_IDLE = 8
_AUTH_STATES = {"28P01", "28000"}
_NO_DATABASE = "3D000"
_UNDEFINED_TABLE = "42P01"


def import_psycopg() -> Any:
    """psycopg 3, or a MissingDependencyError naming the extra to install."""
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError(
            "psycopg", "a PostgreSQL store (PostgresBackend)", 'pip install "nbflow[postgres]"'
        ) from None
    return psycopg


def describe(dsn: str) -> str:
    """``user@host:port/database`` of an address, without its password (for messages)."""
    psycopg = import_psycopg()
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise StoreAddressError(redact_password(dsn), str(exc).strip()) from None
    host = parts.get("host") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    user = parts.get("user") or os.environ.get("PGUSER") or ""
    database = parts.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{database}"


def redact_password(dsn: str) -> str:
    """``dsn`` with the password of a ``scheme://user:password@…`` address replaced by ``***``.

    >>> redact_password("postgresql://ada:secret@db/x")
    'postgresql://ada:***@db/x'
    """
    if "://" in dsn and "@" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, _, tail = rest.rpartition("@")
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}" if ":" in creds else dsn
    return dsn


class ConnectionPool:
    """Idle connections to one database, shared by the threads of one process.

    A connection is taken for one call (or one lease) and given back after; at most a
    few idle ones are kept. After a fork the child never touches its parent's
    connections (closing one would cut the parent's session): it starts a pool of
    its own."""

    def __init__(self, dsn: str, reconnect_timeout: float) -> None:
        self.psycopg = import_psycopg()
        self.dsn, self.where = dsn, describe(dsn)
        self.reconnect_timeout = reconnect_timeout
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inherited: list[Any] = []
        self._schema_checked = False
        self._ever_connected = False
        self._bad = int(self.psycopg.pq.ConnStatus.BAD)
        self._idle_tx = int(self.psycopg.pq.TransactionStatus.IDLE)

    # -- connections --------------------------------------------------------------------
    def take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._pid != os.getpid():
                self._inherited.extend(self._idle)  # keep them referenced: never closed here
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._retrying(self._connect)

    def give(self, conn: psycopg.Connection[Any]) -> None:
        """Return a connection after a call; a broken or mid-transaction one is closed."""
        # libpq's own states, read once, against ints looked up once (a call per task):
        # not BAD is neither closed nor broken; ``conn.info`` builds a new object per call
        pgconn = conn.pgconn
        healthy = pgconn.status != self._bad and pgconn.transaction_status == self._idle_tx and os.getpid() == self._pid
        if healthy:
            with self._lock:
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append(conn)
                    return
        self.discard(conn)

    def discard(self, conn: psycopg.Connection[Any]) -> None:
        if os.getpid() != self._pid:
            self._inherited.append(conn)
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
            pass

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self.psycopg
        try:
            conn: psycopg.Connection[Any] = pg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except pg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except pg.ProgrammingError as exc:
            raise StoreAddressError(redact_password(self.dsn), str(exc).strip()) from None
        self._ever_connected = True
        if not self._schema_checked:
            try:
                self._ensure_schema(conn)
            except pg.errors.InsufficientPrivilege as exc:
                conn.close()
                raise self._access_error(exc) from None
            except BaseException:
                conn.close()
                raise
            self._schema_checked = True
        return conn

    def _connect_error(self, exc: Exception) -> Exception:
        """The NbflowError a failed connection attempt means; a retryable one is
        returned as the psycopg error itself (see ``_retrying``)."""
        state = getattr(exc, "sqlstate", None)
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        message = str(exc)
        if state in _AUTH_STATES or "password authentication failed" in message or "no password supplied" in message:
            return StoreAuthError(self.where, text)
        if state == _NO_DATABASE or ("database" in message and "does not exist" in message):
            return StoreDatabaseMissingError(self.where, self.where.rsplit("/", 1)[1], text)
        return exc

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create the tables on first use, upgrade a store of a version ``UPGRADES``
        knows, and refuse a store of any other schema version."""
        version = _read_version(conn, self.psycopg)
        if version is None or version in UPGRADES:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                version = _read_version(conn, self.psycopg)  # another process may have made it meanwhile
                if version is None:
                    conn.execute(CREATE)  # constant DDL
                    conn.execute(
                        "INSERT INTO nbflow_schema (version, written_by) VALUES (%s, %s)",
                        (SCHEMA_VERSION, "nbflow"),
                    )
                    version = SCHEMA_VERSION
                elif version in UPGRADES:  # in this one transaction: all of it or nothing
                    conn.execute(UPGRADES[version])  # constant DDL
                    conn.execute("UPDATE nbflow_schema SET version = %s", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise StoreSchemaError(self.where, version, SCHEMA_VERSION)

    # -- running calls ------------------------------------------------------------------
    def run(self, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``call(conn)`` on a pooled connection, retried on a new one while the
        connection keeps breaking (up to ``reconnect_timeout``)."""
        result, conn = self._run(call, self.give)
        self.give(conn)
        return result

    def run_keeping(self, call: Callable[[psycopg.Connection[Any]], T]) -> tuple[T, psycopg.Connection[Any]]:
        """Like :meth:`run`, but the connection stays the caller's (a lease holds its
        lock in that session): ``give`` or ``discard`` it when done. On an error the
        connection is closed, so a lock it may hold goes with it."""
        return self._run(call, self.discard)

    def _run(
        self, call: Callable[[psycopg.Connection[Any]], T], drop: Callable[[psycopg.Connection[Any]], None]
    ) -> tuple[T, psycopg.Connection[Any]]:
        def attempt() -> tuple[T, psycopg.Connection[Any]]:
            conn = self.take()
            try:
                return call(conn), conn
            except self.psycopg.OperationalError as exc:
                gone = conn.broken or conn.closed
                drop(conn)
                if gone:
                    raise  # the connection is gone: retried on a new one
                raise _AnsweredError(exc) from exc  # the server answered (e.g. its disk is full)
            except BaseException:
                drop(conn)
                raise

        try:
            return self._retrying(attempt)
        except _AnsweredError as wrapped:
            raise wrapped.error from None
        except self.psycopg.errors.InsufficientPrivilege as exc:
            raise self._access_error(exc) from None

    def _access_error(self, exc: Exception) -> StoreAccessError:
        user = self.where.split("://", 1)[1].split("@", 1)[0] if "@" in self.where else "?"
        return StoreAccessError(self.where, user, _first_line(exc))

    def _retrying(self, attempt: Callable[[], T]) -> T:
        psycopg = self.psycopg
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                return attempt()
            except psycopg.OperationalError as exc:
                if not self._ever_connected:  # a store never reached: say so now, do not wait
                    raise StoreConnectionError(self.where, _first_line(exc)) from None
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.reconnect_timeout
                if now >= deadline:
                    raise StoreConnectionError(
                        self.where, f"{_first_line(exc)}; gave up after {self.reconnect_timeout:g} s of retries"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 1.0)


class _AnsweredError(Exception):
    """Carries an error the server itself answered with past the retry loop."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _read_version(conn: psycopg.Connection[Any], psycopg: Any) -> int | None:
    try:
        with conn.transaction():
            row = conn.execute(CHECK_VERSION).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else int(row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
