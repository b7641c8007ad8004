"""PostgresBackend: one store on a PostgreSQL server, shared by runners, clients and
PooledWorkers on many machines.

It keeps what the disk store keeps, in tables (``postgres_schema.py``), in the same
data-only record format (``records.py``: JSON headers, XXH3 checksums, generations),
and passes the same contract suites. What differs is where exclusivity and time come
from:

* **Claims run on the server's clock** (``clock_timestamp()``), so workers on hosts
  whose clocks disagree still agree on when a claim expires. A commit under a claim
  checks the claim's token in the same transaction: a worker whose claim was taken
  over cannot commit a second result.
* **The instance lock is the server's**: an advisory lock held by a connection of the
  lease — exclusive for a runner (``lock``), shared for PooledWorkers (``share``) — so
  a runner and a pool on different machines exclude each other as two processes on
  one machine do. A holder that dies loses its connection, and with it the lock; a
  holder whose connection was cut takes it again (``postgres_leases.py``), or, if
  someone else was faster, is refused its further writes — by the server, in the
  statement that writes (the lease's token in the instance row), so not even a write
  sent before the runner noticed the cut lands.
* **Every commit is one transaction**, most of them one round trip (one statement,
  or a server-side function): a checkpoint writes the record and the change stamp and
  reads the pending control request together, so a runner needs no extra query per
  task to notice a cancel. Every write is safe to repeat after a lost answer.

* **A ready index for PooledWorkers** (``ReadyIndex``): one row per instance a worker
  may find work in, kept in the transaction of every write that can make a unit ready,
  so a free worker asks one indexed table which instances to look at instead of reading
  every instance at every scan (``postgres_schema.py`` says how it is kept).

Connection loss is survived: calls are retried on a new connection with backoff (see
``postgres_connect.py``). A backend pickles as its address, so worker processes
reconnect themselves.

    backend = PostgresBackend("postgresql://nbflow@db.example:5432/nbflow")
"""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, TypeVar

import xxhash

from nbflow.core.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    InstanceLockedError,
    NbflowError,
    StaleInstanceError,
)
from nbflow.core.status import RunState
from nbflow.store.base import (
    CheckpointRecord,
    Claim,
    InstanceMeta,
    InstanceSummary,
    PayloadSink,
    ReadyInstances,
    damaged_record,
    matches,
    summarize,
    validate_instance_id,
)
from nbflow.store.postgres_connect import ConnectionPool
from nbflow.store.postgres_leases import PROBE_INTERVAL, LeaseKeeper, PgLease
from nbflow.store.postgres_notices import CHANNEL, PgWorkListener
from nbflow.store.postgres_payloads import ChunkReader, PgSink
from nbflow.store.postgres_prepared import Prepared
from nbflow.store.postgres_schema import (
    LEASE_TAKEN_SQLSTATE,
    LIST_SUMMARIES,
    PUT_ONE,
    READY_DELETE,
    READY_INSTANCES,
    READY_TOUCH,
    READY_UPSERT,
    SETTLE_READY,
    STALE_SQLSTATE,
)
from nbflow.store.records import (
    ChecksumReader,
    RecordFormatError,
    checksum_bytes,
    decode_control,
    decode_json,
    decode_meta,
    decode_record,
    encode_control,
    encode_json,
    encode_meta,
    encode_record,
    verify_inline,
)

# A checkpoint's one statement, run through libpq's prepared-statement call (see
# postgres_prepared.py): text, text, text, text, float8, bytea.
_PUT_ONE = Prepared(
    "nbflow_put_one", PUT_ONE, ("iid", "gen", "lease", "tid", "fin", "data"), (25, 25, 25, 25, 701, 17), ("data",)
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresBackend"]

T = TypeVar("T")

# How long a control request read with a checkpoint answers get_control: long enough
# to serve the poll right after the task boundary, short enough to be "now".
_CONTROL_FRESH = 0.02
_LOCK_SEED = b"nbflow-instance-lock\x00"
_LOST = "this runner's lock was lost when its connection to the database broke, and another holder has it now"
# States in which a PooledWorker may find work in an instance: saving one puts it in the
# ready index and wakes them.
_WORKABLE = frozenset(s.value for s in (RunState.PENDING, RunState.RUNNING, RunState.WAITING, RunState.AWAITING_SIGNAL))
# Of those, the ones that keep a worker told to stop when idle going.
_BUSY = [s.value for s in (RunState.PENDING, RunState.RUNNING, RunState.WAITING)]
_NEW_STAMP = "UPDATE nbflow_instances SET stamp = nextval('nbflow_stamps') WHERE instance_id = %s"


class _AlreadyStored(Exception):  # noqa: N818 - a signal inside consume_signal, not an error
    """A retried consume finds its first attempt committed."""


class PostgresBackend:
    """Checkpoints in a PostgreSQL database; safe to share between machines.

    Args:
        dsn: a libpq address, ``postgresql://user:password@host:port/database`` (or
            ``"host=… dbname=…"``). The database must exist; nbflow creates its tables
            in it on first use.
        reconnect_timeout: how long a call keeps retrying while the server cannot be
            reached (a restart, a network cut) before it raises StoreConnectionError.
        lease_probe_interval: how often the sessions holding this handle's instance
            locks are checked (and a cut one's lock taken again).

    Needs the ``postgres`` extra: ``pip install "nbflow[postgres]"``.
    """

    def __init__(
        self, dsn: str, *, reconnect_timeout: float = 30.0, lease_probe_interval: float = PROBE_INTERVAL
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigurationError("dsn", dsn, "a PostgreSQL address such as 'postgresql://user@host/database'")
        if not isinstance(reconnect_timeout, int | float) or reconnect_timeout < 0:
            raise ConfigurationError("reconnect_timeout", reconnect_timeout, "a number of seconds, 0 or more")
        self.dsn = dsn
        self.reconnect_timeout = float(reconnect_timeout)
        self._pool = ConnectionPool(dsn, self.reconnect_timeout)
        self.where = self._pool.where
        self._gens: dict[str, str] = {}  # the generation this handle last saw, per instance
        self._control_seen: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._host = f"{socket.gethostname()} pid {os.getpid()}"
        self._leases = LeaseKeeper(lease_probe_interval)

    def __repr__(self) -> str:
        return f"PostgresBackend({self.where!r})"

    @property
    def directory(self) -> str:
        """The address the store was opened with: what ``open_store`` (and ``--dir``)
        take to open it again, as a disk store's ``directory`` is its folder."""
        return self.dsn

    def __getstate__(self) -> dict[str, Any]:
        return {"dsn": self.dsn, "reconnect_timeout": self.reconnect_timeout, "lease_probe": self._leases.interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["dsn"],
            reconnect_timeout=state["reconnect_timeout"],
            lease_probe_interval=state.get("lease_probe", PROBE_INTERVAL),
        )

    def close(self) -> None:
        """Close the idle connections (calls reconnect on demand; leases keep theirs)."""
        self._pool.close()

    def release_leases(self) -> None:
        """Release every lock this handle holds (a process that is shutting down)."""
        self._leases.release_all()

    # -- helpers ------------------------------------------------------------------------
    def _fetchone(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = (), *, binary: bool = False) -> Any:
        def call(conn: psycopg.Connection[Any]) -> Any:
            return conn.cursor(binary=binary).execute(sql, params).fetchone()

        return self._pool.run(call)

    def _fetchall(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = (), *, binary: bool = False) -> list[Any]:
        def call(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.cursor(binary=binary).execute(sql, params).fetchall()

        return self._pool.run(call)

    def _execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        def call(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(sql, params).rowcount

        return self._pool.run(call)

    def _refusable(self, instance_id: str, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run a write of ``instance_id`` on the pool; a refusal by the server (another
        generation, another lease) comes out as the NbflowError that says so."""
        try:
            return self._pool.run(call)
        except self._pool.psycopg.Error as exc:
            refused = self._refused(instance_id, exc)
            if refused is not None:
                raise refused from None
            raise

    def _refused(self, instance_id: str, exc: Exception) -> NbflowError | None:
        """What a write the server refused means: the instance is of another generation
        now, or another runner's lease took it; None for any other error."""
        if getattr(exc, "sqlstate", None) == LEASE_TAKEN_SQLSTATE:
            return self._lease_taken(instance_id)
        if getattr(exc, "sqlstate", None) != STALE_SQLSTATE:
            return None
        self._gens.pop(instance_id, None)
        detail = "it was cleared" if "cleared" in str(exc) else "it was restarted"
        return StaleInstanceError(instance_id, detail)

    def _lease_taken(self, instance_id: str) -> InstanceLockedError:
        self._leases.mark_lost(instance_id)
        return InstanceLockedError(instance_id, _LOST)

    def _corrupt(self, instance_id: str, detail: str, task_id: str | None = None) -> CheckpointCorruptError:
        return CheckpointCorruptError(instance_id, detail, self.where, task_id)

    # -- instances ----------------------------------------------------------------------
    def load_instance(self, instance_id: str) -> InstanceMeta | None:
        row = self._fetchone("SELECT meta FROM nbflow_instances WHERE instance_id = %s", (instance_id,))
        if row is None or row[0] is None:
            self._gens.pop(instance_id, None)
            return None
        try:
            meta = decode_meta(row[0])
        except RecordFormatError as exc:
            raise self._corrupt(instance_id, str(exc)) from None
        self._gens[instance_id] = meta.generation
        return meta

    def save_instance(self, meta: InstanceMeta) -> None:
        instance_id = validate_instance_id(meta.instance_id)
        given = meta.generation
        lease = self._writer(instance_id)

        def call(conn: psycopg.Connection[Any]) -> str:
            meta.generation = given  # a retry starts from what the caller gave
            with conn.transaction():
                row = conn.execute(
                    "SELECT generation, lease FROM nbflow_instances WHERE instance_id = %s FOR UPDATE", (instance_id,)
                ).fetchone()
                stored = None if row is None else row[0]
                if lease is not None and row is not None and row[1] is not None and row[1] != lease:
                    raise self._lease_taken(instance_id)
                if not meta.generation:  # a new instance: nothing of an older one stays visible
                    meta.generation = uuid.uuid4().hex
                    if stored is not None:
                        for table in ("nbflow_chunks", "nbflow_records", "nbflow_task_states"):
                            conn.execute(f"DELETE FROM {table} WHERE instance_id = %s", (instance_id,))
                        conn.execute(_NEW_STAMP, (instance_id,))  # its records are gone: a change like any other
                    done: list[str] = []
                    if stored is None:  # records written before the first meta stay (as on disk)
                        done = [
                            r[0]
                            for r in conn.execute(
                                "SELECT task_id FROM nbflow_records WHERE instance_id = %s AND generation = ''",
                                (instance_id,),
                            )
                        ]
                elif stored != meta.generation:
                    raise StaleInstanceError(instance_id, "it was cleared" if stored is None else "it was restarted")
                else:
                    done = [
                        r[0]
                        for r in conn.execute(
                            "SELECT task_id FROM nbflow_records WHERE instance_id = %s AND generation IN ('', %s)",
                            (instance_id, meta.generation),
                        )
                    ]
                conn.execute(
                    "INSERT INTO nbflow_instances (instance_id, meta, generation) VALUES (%s, %s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE SET meta = excluded.meta, generation = excluded.generation",
                    (instance_id, encode_meta(meta).decode("ascii"), meta.generation),
                )
                summary = summarize(meta, done)
                conn.execute(
                    "INSERT INTO nbflow_index (instance_id, workflow, state, summary, steps) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE SET workflow = excluded.workflow, state = excluded.state, "
                    "summary = excluded.summary, steps = excluded.steps",
                    (
                        instance_id,
                        meta.workflow,
                        meta.state,
                        encode_json(summary.to_dict()).decode("ascii"),
                        [line.split("|", 1)[0] for line in meta.shape],
                    ),
                )
                ready = {"iid": instance_id, "w": meta.workflow, "s": str(meta.state)}
                if str(meta.state) in _WORKABLE:  # due in the ready index, and idle workers look
                    conn.execute(READY_UPSERT, ready)
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, instance_id))
                else:
                    conn.execute(READY_DELETE, ready)
            return meta.generation

        self._gens[instance_id] = self._pool.run(call)

    def delete_instance(self, instance_id: str) -> bool:
        self._gens.pop(instance_id, None)
        self._control_seen.pop(instance_id, None)
        row = self._fetchone("SELECT nbflow_delete_instance(%s)", (instance_id,))
        return bool(row[0])

    def list_instances(self) -> list[InstanceMeta]:
        """Every instance of the store, by id. One whose record cannot be read is listed
        with state ``damaged`` and the reason in ``message``; it never hides the others."""
        out = []
        rows = self._fetchall(
            "SELECT instance_id, meta FROM nbflow_instances WHERE meta IS NOT NULL ORDER BY instance_id"
        )
        for instance_id, data in rows:
            try:
                out.append(decode_meta(data))
            except RecordFormatError as exc:
                out.append(
                    InstanceMeta(
                        instance_id=instance_id,
                        workflow="?",
                        definition_hash="",
                        state=RunState.DAMAGED.value,
                        message=str(self._corrupt(instance_id, str(exc))),
                    )
                )
        return out

    def list_summaries(self, workflow: str | None = None, state: str | None = None) -> list[InstanceSummary]:
        """The store index, read from its table (filtered by the server); the finished
        steps of an instance still running are counted as they are now."""
        rows = self._fetchall(LIST_SUMMARIES, {"w": workflow, "s": None if state is None else str(state)})
        out = []
        for instance_id, data, done in rows:
            try:
                raw = decode_json(data, "index row")
                if not isinstance(raw, dict):
                    raise RecordFormatError("the index row is not an object")
                summary = InstanceSummary.from_dict(raw)
                if done is not None:
                    summary.tasks_done = int(done)
                out.append(summary)
            except (RecordFormatError, TypeError) as exc:
                out.append(
                    InstanceSummary(
                        instance_id, "?", RunState.DAMAGED.value, message=str(self._corrupt(instance_id, str(exc)))
                    )
                )
        return [row for row in out if matches(row, workflow, state)]

    # -- checkpoints --------------------------------------------------------------------
    def new_sink(self, instance_id: str) -> PayloadSink:
        return PgSink()

    def put_record(self, instance_id: str, record: CheckpointRecord, sink: PayloadSink) -> CheckpointRecord:
        return self.put_records(instance_id, [(record, sink)])[0]

    def put_records(
        self, instance_id: str, items: list[tuple[CheckpointRecord, PayloadSink]]
    ) -> list[CheckpointRecord]:
        validate_instance_id(instance_id)
        records, sinks = self._seal(items)
        try:
            self._write(instance_id, records, sinks, claim=None)
        finally:
            for sink in sinks:
                sink.discard()
        return records

    def _seal(self, items: list[tuple[CheckpointRecord, PayloadSink]]) -> tuple[list[CheckpointRecord], list[PgSink]]:
        records, sinks = [], []
        for record, sink in items:
            assert isinstance(sink, PgSink)
            record.payload, record.blob = sink.inline, sink.blob
            record.size, record.checksum = sink.size, sink.checksum
            records.append(record)
            sinks.append(sink)
        return records, sinks

    def _write(
        self,
        instance_id: str,
        records: list[CheckpointRecord],
        sinks: list[PgSink],
        claim: tuple[str, str, bool] | None,
        before: Any = None,
    ) -> bool:
        """Store ``records`` in one transaction (under ``claim`` = (step, token, release)
        if given); False if the claim was not ours. ``before(conn)`` runs first in the
        same transaction (a signal pop)."""
        pg = self._pool.psycopg
        lease = self._writer(instance_id)

        def call(conn: psycopg.Connection[Any]) -> bool:
            known = self._gens.get(instance_id)

            def params() -> tuple[Any, ...]:
                for record in records:
                    record.generation = known or ""
                latest = {r.task_id: r for r in records}  # a batch naming one task twice keeps its last record
                return (
                    list(latest),
                    [float(r.finished_at) for r in latest.values()],
                    [r.blob for r in latest.values()],
                    [encode_record(r) for r in latest.values()],
                )

            spilled = [s for s in sinks if s.blob is not None]
            if claim is None and before is None and not spilled and len(records) == 1 and known:
                record = records[0]
                record.generation = known
                params_one = {
                    "iid": instance_id,
                    "gen": known,
                    "lease": lease,
                    "tid": record.task_id,
                    "fin": float(record.finished_at),
                    "data": encode_record(record),
                }
                if _PUT_ONE.usable(conn):
                    one = _PUT_ONE.fetchone(conn, params_one)
                else:
                    one = conn.execute(PUT_ONE, params_one).fetchone()
                if one is not None:
                    self._remember_control(instance_id, one[1])
                    return True
            head: tuple[Any, ...]
            if claim is None:
                sql = "SELECT true, * FROM nbflow_put(%s, %s, %s, %s::text[], %s::float8[], %s::text[], %s::bytea[])"
                head = (instance_id, known, lease)
            else:
                sql = (
                    "SELECT * FROM nbflow_commit_claimed(%s, %s, %s, %s, %s, "
                    "%s::text[], %s::float8[], %s::text[], %s::bytea[])"
                )
                head = (instance_id, claim[0], claim[1], claim[2], known)
            if spilled or before is not None:
                with conn.transaction() as tx:
                    if before is not None and not before(conn):
                        return False
                    for sink in spilled:
                        with conn.cursor() as cur:
                            for seq, chunk in enumerate(sink.chunks()):
                                cur.execute(
                                    "INSERT INTO nbflow_chunks (instance_id, blob, seq, data) VALUES (%s, %s, %s, %s) "
                                    "ON CONFLICT DO NOTHING",  # a repeated call writes the same chunks
                                    (instance_id, sink.blob, seq, chunk),
                                )
                    row = conn.execute(sql, (*head, *params())).fetchone()
                    if row is None or not row[0]:
                        raise pg.Rollback(tx)  # not our claim: the chunks go too
            else:
                row = conn.execute(sql, (*head, *params())).fetchone()
            if row is None or not row[0]:
                return False
            generation, control = row[1] or known or "", row[2]
            for record in records:
                record.generation = generation
            if generation and known is None:
                self._gens[instance_id] = generation
            self._remember_control(instance_id, control)
            return True

        return self._refusable(instance_id, call)

    def _remember_control(self, instance_id: str, raw: str | None) -> None:
        try:
            value = None if raw is None else decode_control(raw)
        except RecordFormatError:
            self._control_seen.pop(instance_id, None)  # get_control reads it again and says what is wrong
            return
        self._control_seen[instance_id] = (time.monotonic(), value)

    def change_stamp(self, instance_id: str) -> int | None:
        """A number from one sequence of the whole database, taken at every record write
        or delete in the same transaction: it never repeats, not even for a deleted and
        resubmitted instance."""
        row = self._fetchone("SELECT stamp FROM nbflow_instances WHERE instance_id = %s", (instance_id,))
        return None if row is None else row[0]

    _RECORDS = (
        "SELECT r.task_id, r.data, r.generation, "
        "(SELECT sum(octet_length(c.data)) FROM nbflow_chunks c WHERE c.instance_id = r.instance_id AND c.blob = r.blob) "
        "FROM nbflow_records r LEFT JOIN nbflow_instances i ON i.instance_id = r.instance_id "
        "WHERE r.instance_id = %s AND r.generation IN ('', coalesce(i.generation, ''))"
    )

    def get_records(self, instance_id: str) -> dict[str, CheckpointRecord]:
        rows = self._fetchall(self._RECORDS, (instance_id,), binary=True)
        return {row[0]: self._decode(instance_id, *row) for row in rows}

    def get_record(self, instance_id: str, task_id: str) -> CheckpointRecord | None:
        row = self._fetchone(self._RECORDS + " AND r.task_id = %s", (instance_id, task_id), binary=True)
        return None if row is None else self._decode(instance_id, *row)

    def _decode(
        self, instance_id: str, task_id: str, data: bytes, generation: str, stored: int | None
    ) -> CheckpointRecord:
        """A record, or for one that cannot be decoded a stand-in that says so: one bad
        record must not hide the instance's others (nor the repair of it)."""
        try:
            record = decode_record(bytes(data))
        except RecordFormatError as exc:
            return damaged_record(task_id, str(exc))
        if record.task_id != task_id:
            return damaged_record(task_id, f"the record stored for {task_id!r} says it is {record.task_id!r}")
        record.generation = generation
        if record.blob is not None and int(stored or 0) != record.size:
            return damaged_record(
                task_id,
                f"the output of task {task_id!r} has {int(stored or 0)} bytes stored, its record says {record.size}",
            )
        return record

    def open_payload(self, instance_id: str, record: CheckpointRecord) -> IO[bytes]:
        """The record's payload as a stream; a chunked one is verified as it is read
        (call ``verify()`` on the stream after decoding), an inline one up front."""
        if record.blob is None:
            if not verify_inline(record):
                raise self._corrupt(
                    instance_id, f"the output of task {record.task_id!r} fails its checksum", record.task_id
                )
            return io.BytesIO(record.payload or b"")
        if not record.checksum:
            raise self._corrupt(instance_id, f"the output of task {record.task_id!r} has no checksum", record.task_id)
        blob = record.blob

        def fetch(seq: int) -> bytes | None:
            row = self._fetchone(
                "SELECT data FROM nbflow_chunks WHERE instance_id = %s AND blob = %s AND seq = %s",
                (instance_id, blob, seq),
                binary=True,
            )
            return None if row is None else bytes(row[0])

        def missing() -> Exception:
            return self._corrupt(
                instance_id,
                f"part of the output of task {record.task_id!r} is missing (or it was replaced while being read)",
                record.task_id,
            )

        reader = io.BufferedReader(ChunkReader(fetch, record.size, missing), buffer_size=1 << 20)
        return ChecksumReader(reader, record.checksum)  # type: ignore[return-value]

    def delete_records(self, instance_id: str, task_ids: Iterable[str]) -> None:
        ids = list(task_ids)
        lease = self._writer(instance_id)

        def call(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if lease is not None:
                    conn.execute("SELECT nbflow_lock_instance(%s, NULL, %s)", (instance_id, lease))
                conn.execute(
                    "DELETE FROM nbflow_chunks c USING nbflow_records r WHERE r.instance_id = %s "
                    "AND r.task_id = ANY(%s::text[]) AND c.instance_id = r.instance_id AND c.blob = r.blob",
                    (instance_id, ids),
                )
                conn.execute(
                    "DELETE FROM nbflow_records WHERE instance_id = %s AND task_id = ANY(%s::text[])",
                    (instance_id, ids),
                )
                conn.execute(_NEW_STAMP, (instance_id,))
                conn.execute(READY_TOUCH, (instance_id,))  # a step to run again: due now

        self._refusable(instance_id, call)

    # -- task state ---------------------------------------------------------------------
    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None:
        validate_instance_id(instance_id)
        text = None if state is None else encode_json(state).decode("ascii")
        known = self._gens.get(instance_id)
        lease = self._writer(instance_id)

        def call(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT nbflow_lock_instance(%s, %s, %s)", (instance_id, known, lease))
                if text is None:
                    conn.execute(
                        "DELETE FROM nbflow_task_states WHERE instance_id = %s AND task_id = %s", (instance_id, task_id)
                    )
                else:
                    conn.execute(
                        "INSERT INTO nbflow_task_states (instance_id, task_id, state) VALUES (%s, %s, %s) "
                        "ON CONFLICT (instance_id, task_id) DO UPDATE SET state = excluded.state",
                        (instance_id, task_id, text),
                    )

        self._refusable(instance_id, call)

    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]:
        out = {}
        for task_id, text in self._fetchall(
            "SELECT task_id, state FROM nbflow_task_states WHERE instance_id = %s", (instance_id,)
        ):
            value = decode_json(text, "task state")
            if not isinstance(value, dict):
                raise self._corrupt(instance_id, f"the task state of {task_id!r} is not an object", task_id)
            out[task_id] = value
        return out

    # -- exclusivity --------------------------------------------------------------------
    @staticmethod
    def _lock_key(instance_id: str) -> int:
        """The advisory lock key of an instance (64 bits of its id's hash, signed)."""
        value = xxhash.xxh3_64_intdigest(_LOCK_SEED + instance_id.encode("utf-8"))
        return value - (1 << 64) if value >= 1 << 63 else value

    def lock(self, instance_id: str, holder: str) -> PgLease:
        return self._acquire(instance_id, holder, shared=False)

    def share(self, instance_id: str, holder: str) -> PgLease:
        return self._acquire(instance_id, holder, shared=True)

    def _acquire(self, instance_id: str, holder: str, shared: bool) -> PgLease:
        key = self._lock_key(validate_instance_id(instance_id))
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        unlock = f"SELECT pg_advisory_unlock{'_shared' if shared else ''}({key})"
        token = None if shared else uuid.uuid4().hex  # kept when the lock is taken again

        taken = False

        def call(conn: psycopg.Connection[Any]) -> bool:
            nonlocal taken
            row = conn.execute(f"SELECT {fn}(%s)", (key,)).fetchone()
            if not (row and row[0]):
                return False
            if shared:
                return True
            with conn.transaction():  # who holds it, and the token its writes must carry
                if taken:  # taken again after a cut: only if no other runner had it meanwhile
                    row = conn.execute(
                        "SELECT lease FROM nbflow_instances WHERE instance_id = %s FOR UPDATE", (instance_id,)
                    ).fetchone()
                    if row is not None and row[0] is not None and row[0] != token:
                        conn.execute(unlock)  # its records may have moved on: this runner's view is stale
                        return False
                conn.execute(
                    "INSERT INTO nbflow_holders (instance_id, holder) VALUES (%s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE SET holder = excluded.holder",
                    (instance_id, f"{holder}, {self._host}"),
                )
                conn.execute(
                    "INSERT INTO nbflow_instances (instance_id, lease) VALUES (%s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE SET lease = excluded.lease",
                    (instance_id, token),
                )
            taken = True
            return True

        def take() -> tuple[bool, psycopg.Connection[Any]]:
            return self._pool.run_keeping(call)

        # The lease keeps its connection: the lock lives as long as that session (and
        # the keeper takes it again if the session is cut while the holder lives on).
        got, conn = take()
        if got:
            lease = PgLease(self._pool, instance_id, conn, take, unlock, shared, token)
            self._leases.add(lease)
            return lease
        self._pool.give(conn)
        row = self._fetchone("SELECT holder FROM nbflow_holders WHERE instance_id = %s", (instance_id,))
        name = "" if row is None else str(row[0])
        if shared:
            raise InstanceLockedError(instance_id, f"a runner holds it: {name}" if name else "a runner holds it")
        if self.is_locked(instance_id):
            raise InstanceLockedError(instance_id, name)
        raise InstanceLockedError(instance_id, "PooledWorker processes are running it")

    def _writer(self, instance_id: str) -> str | None:
        """The lease token a write of ``instance_id`` carries (None: no runner lock of
        this handle); refuses the write of a runner whose lock on the instance was lost
        (its session was cut and another holder took the lock before it could take it
        again)."""
        lost, token = self._leases.for_write(instance_id)
        if lost:
            raise InstanceLockedError(instance_id, _LOST)
        return token

    def is_locked(self, instance_id: str) -> bool:
        """Whether a runner holds the instance exclusively: read from ``pg_locks``, so
        the probe takes no lock and never makes a concurrent ``lock`` fail."""
        key = self._lock_key(instance_id) & 0xFFFF_FFFF_FFFF_FFFF
        row = self._fetchone(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND mode = 'ExclusiveLock' AND objsubid = 1 AND classid = %s::bigint::oid AND objid = %s::bigint::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            (key >> 32, key & 0xFFFF_FFFF),
        )
        return bool(row[0])

    # -- signals and control ------------------------------------------------------------
    def push_signal(self, instance_id: str, name: str, payload: bytes) -> None:
        validate_instance_id(instance_id)
        self._execute(
            "WITH sent AS (INSERT INTO nbflow_signals (uid, instance_id, name, payload) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (uid) DO NOTHING RETURNING instance_id), "  # a retry after a lost answer does not send it twice
            "due AS (UPDATE nbflow_ready SET version = nextval('nbflow_stamps'), not_before = '-infinity' "
            "WHERE instance_id IN (SELECT instance_id FROM sent)) "  # the instance parked on it is due now ...
            "SELECT pg_notify(%s, instance_id) FROM sent",  # ... and a worker looks again
            (uuid.uuid4().hex, instance_id, name, bytes(payload), CHANNEL),
        )

    _POP = (
        "DELETE FROM nbflow_signals WHERE id = (SELECT id FROM nbflow_signals WHERE instance_id = %s AND name = %s "
        "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload"
    )

    def pop_signal(self, instance_id: str, name: str) -> bytes | None:
        row = self._fetchone(self._POP, (instance_id, name), binary=True)
        return None if row is None else bytes(row[0])

    def consume_signal(self, instance_id: str, name: str, record: CheckpointRecord) -> CheckpointRecord | None:
        """Atomically take the oldest ``name`` signal and store it as ``record``: one
        transaction, so a kill can neither lose the signal nor deliver it twice."""
        validate_instance_id(instance_id)
        popped = False

        def pop(conn: psycopg.Connection[Any]) -> bool:
            nonlocal popped
            if popped:  # a retry after a cut connection: did the first attempt commit?
                found = conn.execute(
                    "SELECT data FROM nbflow_records WHERE instance_id = %s AND task_id = %s",
                    (instance_id, record.task_id),
                    binary=True,
                ).fetchone()
                if found is not None and self._decode(instance_id, record.task_id, found[0], "", 0).checksum == (
                    record.checksum
                ):
                    raise _AlreadyStored  # it did: taking another signal would lose one
            row = conn.cursor(binary=True).execute(self._POP, (instance_id, name)).fetchone()
            if row is None:
                return False
            popped = True
            record.payload = bytes(row[0])
            record.size, record.blob = len(record.payload), None
            record.checksum = checksum_bytes(record.payload)
            return True

        try:
            return record if self._write(instance_id, [record], [], claim=None, before=pop) else None
        except _AlreadyStored:
            return record

    def set_control(self, instance_id: str, action: str | None, reason: str = "") -> None:
        validate_instance_id(instance_id)
        text = None if action is None else encode_control(action, reason).decode("ascii")
        self._execute(
            "WITH due AS (UPDATE nbflow_ready SET version = nextval('nbflow_stamps'), not_before = '-infinity' "
            "WHERE instance_id = %s) "  # a worker looks at once and moves the instance as asked
            "INSERT INTO nbflow_instances (instance_id, control) VALUES (%s, %s) "
            "ON CONFLICT (instance_id) DO UPDATE SET control = excluded.control",
            (instance_id, instance_id, text),
        )
        self._control_seen.pop(instance_id, None)

    def get_control(self, instance_id: str) -> tuple[str, str] | None:
        seen = self._control_seen.get(instance_id)
        if seen is not None and time.monotonic() - seen[0] < _CONTROL_FRESH:
            return seen[1]  # read with this handle's last checkpoint a moment ago
        row = self._fetchone("SELECT control FROM nbflow_instances WHERE instance_id = %s", (instance_id,))
        if row is None or row[0] is None:
            return None
        try:
            return decode_control(row[0])
        except RecordFormatError as exc:
            raise self._corrupt(instance_id, str(exc)) from None

    # -- claims (PooledWorker) ----------------------------------------------------------
    def claim(self, instance_id: str, task_id: str, worker: str, ttl: float, seen: float | None = None) -> str | None:
        validate_instance_id(instance_id)
        token = uuid.uuid4().hex  # ours before the call: a retried call recognises its own claim
        row = self._fetchone(
            "SELECT nbflow_claim(%s, %s, %s, %s, %s, %s::float8)",
            (instance_id, task_id, worker, token, float(ttl), None if seen is None else float(seen)),
        )
        return None if row is None or row[0] is None else str(row[0])

    def renew_claim(self, instance_id: str, task_id: str, token: str, ttl: float) -> bool:
        return (
            self._execute(
                "UPDATE nbflow_claims SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE instance_id = %s AND task_id = %s AND token = %s",
                (float(ttl), instance_id, task_id, token),
            )
            > 0
        )

    def release_claim(self, instance_id: str, task_id: str, token: str) -> bool:
        row = self._fetchone("SELECT nbflow_release_claim(%s, %s, %s)", (instance_id, task_id, token))
        return bool(row and row[0])

    def listen_for_work(self) -> PgWorkListener:
        """A listening session that wakes an idle PooledWorker when another process
        commits something that may make a unit ready (``postgres_notices.py``)."""
        return PgWorkListener(self._pool)

    def commit_claimed(
        self,
        instance_id: str,
        task_id: str,
        token: str,
        items: list[tuple[CheckpointRecord, PayloadSink]],
        *,
        release: bool = False,
    ) -> list[CheckpointRecord] | None:
        records, sinks = self._seal(items)
        try:
            ours = self._write(instance_id, records, sinks, claim=(task_id, token, release))
        finally:
            for sink in sinks:
                sink.discard()
        return records if ours else None

    def get_claims(self, instance_id: str) -> dict[str, Claim]:
        rows = self._fetchall(
            "SELECT task_id, worker, token, extract(epoch FROM expires_at)::float8 FROM nbflow_claims "
            "WHERE instance_id = %s",
            (instance_id,),
        )
        return {tid: Claim(tid, worker, token, float(expires)) for tid, worker, token, expires in rows}

    # -- ready index (PooledWorker) -----------------------------------------------------
    def ready_instances(self, workflows: Iterable[str], limit: int, skip: Iterable[str] = ()) -> ReadyInstances:
        """The instances due for a look in the ready index (``postgres_schema.py``), in
        one statement: no instance row, record or claim is read."""
        row = self._fetchone(
            READY_INSTANCES, {"w": list(workflows), "busy": _BUSY, "skip": list(skip), "n": int(limit)}
        )
        busy, ids, versions = row
        return ReadyInstances(list(zip(ids, (int(v) for v in versions), strict=True)), bool(busy))

    def settle_ready(
        self, instance_id: str, version: int, until: float | None, *, signal: str | None = None, least: float = 0.0
    ) -> bool:
        params = {"iid": instance_id, "v": int(version), "until": until, "sig": signal, "least": float(least)}
        return self._execute(SETTLE_READY, params) > 0
