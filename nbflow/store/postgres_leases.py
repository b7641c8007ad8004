"""Instance locks of a PostgreSQL store, kept across connection loss.

A lease is an advisory lock held by one database session: exclusive for a runner,
shared for PooledWorkers. A session ends with its connection — the holder died (which
frees the lock, as it should) or the server restarted or the network dropped (which
frees it too, while the holder goes on). So a keeper thread probes every live lease of
the process every ``PROBE_INTERVAL`` seconds; a lease whose session is gone takes its
lock again on a new session, or — when someone else holds it by then — is marked
*lost*, and the store refuses that runner's further writes to the instance
(``InstanceLockedError``) rather than let two runners drive it.

The probe alone would leave a gap: between a cut and the next probe another runner
can take the lock while this one still writes. So an exclusive lease also carries a
token, written into the instance's row whenever its lock is taken, and every write of
its runner names it: the server refuses it in the writing statement once another
lease's token is there (``postgres_schema.py``), and the lease is then marked lost.
A lease whose session was cut takes its lock again only while its own token is still
the instance's: had another runner held it meanwhile (even released again), the
instance may have moved on under it, so the lease is lost.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.core.errors import NbflowError
from nbflow.store.postgres_connect import ConnectionPool

if TYPE_CHECKING:
    import psycopg

__all__ = ["PROBE_INTERVAL", "WRITE_PROBE", "LeaseKeeper", "PgLease"]

PROBE_INTERVAL = 2.0  # the keeper thread's round over the leases
WRITE_PROBE = 1.0  # a runner's write probes its lease first when it was not checked for this long


class PgLease:
    """Proof that this process holds an instance; ``release()`` is idempotent."""

    def __init__(
        self,
        pool: ConnectionPool,
        instance_id: str,
        conn: psycopg.Connection[Any],
        relock: Callable[[], tuple[bool, psycopg.Connection[Any]]],
        unlock_sql: str,
        shared: bool,
        token: str | None = None,
    ) -> None:
        self.instance_id, self.shared = instance_id, shared
        self.token = token  # an exclusive lease's token in the instance row (None: shared)
        self.lost = False
        self._pool, self._relock, self._unlock_sql = pool, relock, unlock_sql
        self._conn: psycopg.Connection[Any] | None = conn
        self._released = False
        self.checked_at = time.monotonic()
        self._lock = threading.Lock()
        self.on_release: Callable[[PgLease], None] | None = None

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            conn, self._conn = self._conn, None
        if self.on_release is not None:
            self.on_release(self)
        if conn is None:
            return
        try:
            conn.execute(self._unlock_sql)  # built from constants by the backend
        except Exception:  # noqa: BLE001 - a broken session has dropped the lock already
            self._pool.discard(conn)
            return
        self._pool.give(conn)

    def check(self) -> None:
        """Make sure the lock is still held: probe the session; if it is gone, take the
        lock again on a new one, or mark the lease lost when another holder has it."""
        with self._lock:
            self.checked_at = time.monotonic()
            if self._released or self.lost:
                return
            if self._conn is not None:
                try:
                    self._conn.execute("SELECT 1")
                    return
                except Exception:  # noqa: BLE001 - the session is gone (and the lock with it)
                    self._pool.discard(self._conn)
                    self._conn = None
            try:
                got, conn = self._relock()
            except NbflowError:
                return  # the server is still away: try again at the next probe
            if got:
                self._conn = conn
            else:
                self._pool.give(conn)
                self.lost = True


class LeaseKeeper:
    """The leases of one backend handle, and the thread that probes them (it runs only
    while there are leases)."""

    def __init__(self, interval: float = PROBE_INTERVAL) -> None:
        """``interval``: seconds between the keeper thread's rounds."""
        self.interval = interval
        self._leases: weakref.WeakSet[PgLease] = weakref.WeakSet()
        # the exclusive ones by instance, looked up at every write of a runner (once per
        # task): a dictionary lookup instead of a walk over a WeakSet (~12 us a write)
        self._exclusive: dict[str, list[weakref.ref[PgLease]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, lease: PgLease) -> None:
        lease.on_release = self._forget
        with self._lock:
            self._leases.add(lease)
            if not lease.shared:
                live = [ref for ref in self._exclusive.get(lease.instance_id, ()) if ref() is not None]
                self._exclusive[lease.instance_id] = [*live, weakref.ref(lease)]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nbflow-pg-leases", daemon=True)
                self._thread.start()

    def _forget(self, lease: PgLease) -> None:
        with self._lock:
            self._leases.discard(lease)
            kept = [ref for ref in self._exclusive.pop(lease.instance_id, ()) if ref() not in (None, lease)]
            if kept:
                self._exclusive[lease.instance_id] = kept
            if not self._leases:
                self._wake.set()  # the thread ends instead of sleeping out its interval

    def lost(self, instance_id: str) -> bool:
        """Whether an exclusive lease of this handle on ``instance_id`` was lost; one not
        checked for ``WRITE_PROBE`` seconds is probed first."""
        mine = self._mine(instance_id)
        now = time.monotonic()
        for lease in mine:
            if now - lease.checked_at > WRITE_PROBE:
                lease.check()
        return any(lease.lost for lease in mine)

    def for_write(self, instance_id: str) -> tuple[bool, str | None]:
        """What a write of ``instance_id`` needs, in one look at the leases (a runner
        writes once per task): whether an exclusive lease of this handle on it was lost
        (``lost``), and the token of its live one (``token``)."""
        mine = self._mine(instance_id)
        if not mine:
            return False, None
        now = time.monotonic()
        lost, token = False, None
        for lease in mine:
            if now - lease.checked_at > WRITE_PROBE:
                lease.check()
            if lease.lost:
                lost = True
            elif token is None:
                token = lease.token
        return lost, token

    def token(self, instance_id: str) -> str | None:
        """The token of this handle's live exclusive lease on ``instance_id``: what its
        writes carry, so the server refuses them once another runner took the lock."""
        return next((lease.token for lease in self._mine(instance_id) if not lease.lost), None)

    def mark_lost(self, instance_id: str) -> None:
        """The server refused a write: another runner's lease has the instance now."""
        for lease in self._mine(instance_id):
            lease.lost = True

    def _mine(self, instance_id: str) -> list[PgLease]:
        """The live exclusive leases of this handle on ``instance_id``."""
        with self._lock:
            refs = self._exclusive.get(instance_id, ())
            return [lease for ref in refs if (lease := ref()) is not None]

    def release_all(self) -> None:
        with self._lock:
            leases = list(self._leases)
        for lease in leases:
            lease.release()

    def check_all(self) -> None:
        with self._lock:
            leases = list(self._leases)
        for lease in leases:
            lease.check()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                if not self._leases:
                    self._thread = None
                    return
            self.check_all()
