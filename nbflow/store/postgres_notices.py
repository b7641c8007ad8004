"""Wake-ups for idle PooledWorkers of a PostgreSQL store (``LISTEN``/``NOTIFY``).

Every commit that can make a unit ready for a worker — an instance saved in a runnable
state (submitted, unpaused, revived), a unit's claimed commit or release, a buffered
signal — sends ``NOTIFY nbflow_work`` with the instance id, in its own transaction (so
the notice arrives only once the change is visible). A worker holds one listening
session and waits on it between scans instead of sleeping out its poll interval; the
poll stays, for what sends no notice (a claim of a killed worker expiring, a delay
coming due) and for notices lost while the session was cut.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nbflow.core.errors import NbflowError
from nbflow.store.postgres_connect import ConnectionPool

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "PgWorkListener"]

CHANNEL = "nbflow_work"
log = logging.getLogger("nbflow.store.postgres")


class PgWorkListener:
    """One listening session; ``wait`` blocks until a notice or the timeout.

    The session is opened (and ``LISTEN`` issued) when the listener is made, so a
    worker that makes it before its first scan misses nothing committed after that
    scan began. A cut session is opened again at the next ``wait``; what was
    committed meanwhile is found by the worker's poll."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: psycopg.Connection[Any] | None = None
        self.received = 0  # notices taken, for whoever wants to know the wake-ups work
        self._open()

    def _open(self) -> None:
        conn = self._pool.take()
        try:
            conn.execute(f"LISTEN {CHANNEL}")  # a constant channel name
        except Exception:
            self._pool.discard(conn)
            raise
        self._conn = conn

    def wait(self, timeout: float) -> bool:
        """True when a notice arrived within ``timeout`` seconds (every notice already
        waiting is taken with it: one wake-up for a burst of commits)."""
        pg = self._pool.psycopg
        try:
            if self._conn is None:
                self._open()
            conn = self._conn
            assert conn is not None
            got = sum(1 for _ in conn.notifies(timeout=timeout, stop_after=1))
            if got:
                got += sum(1 for _ in conn.notifies(timeout=0))
        except (pg.Error, NbflowError) as exc:
            log.debug("work notices interrupted: %s", exc)
            self._drop()
            return False
        self.received += got
        return got > 0

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.discard(conn)

    def close(self) -> None:
        """End the listening session (it is never given back to the pool: it listens)."""
        self._drop()
