"""PostgresBackend beyond the shared contract: its errors, its locks between "machines"
(separate backends), chunked payloads, the schema version, and reconnection after a
server restart — all on a real PostgreSQL server the suite starts (tests/pg_server.py)."""

from __future__ import annotations

import gc
import multiprocessing as mp
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.errors import (
    CheckpointCorruptError,
    InstanceLockedError,
    MissingDependencyError,
    StaleInstanceError,
    StoreAccessError,
    StoreAddressError,
    StoreAuthError,
    StoreConnectionError,
    StoreDatabaseMissingError,
    StoreSchemaError,
)
from nbflow.store import postgres_leases
from nbflow.store.base import CheckpointRecord, InstanceMeta
from nbflow.store.postgres import PostgresBackend
from nbflow.store.postgres_payloads import CHUNK
from nbflow.store.postgres_prepared import Prepared
from nbflow.store.postgres_schema import SCHEMA_VERSION
from tests import pg_server

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")


_sql = pg_server.sql


def _put(store: PostgresBackend, iid: str, tid: str, data: bytes) -> CheckpointRecord:
    sink = store.new_sink(iid)
    sink.write(data)
    return store.put_record(iid, CheckpointRecord(tid, "fp", "pickle", finished_at=time.time()), sink)


# -- errors that say what to do ---------------------------------------------------------
def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError) as err:
        PostgresBackend("postgresql://localhost/x")
    assert 'pip install "nbflow[postgres]"' in str(err.value)


def test_a_malformed_address_is_refused() -> None:
    with pytest.raises(StoreAddressError) as err:
        PostgresBackend("host=localhost port")
    assert "not valid" in str(err.value)


def test_wrong_password(server: pg_server.PgServer) -> None:
    backend = PostgresBackend(server.dsn("postgres", password="wrong"))
    with pytest.raises(StoreAuthError) as err:
        backend.list_instances()
    assert "password" in str(err.value) and "wrong" not in str(err.value).split("(")[0]
    assert isinstance(err.value, StoreConnectionError)


def test_missing_database(server: pg_server.PgServer) -> None:
    backend = PostgresBackend(server.dsn("no_such_db"))
    with pytest.raises(StoreDatabaseMissingError) as err:
        backend.list_instances()
    assert "createdb no_such_db" in str(err.value)


def test_nobody_listening_fails_at_once_without_waiting() -> None:
    backend = PostgresBackend(f"postgresql://nbflow:x@127.0.0.1:{pg_server._free_port()}/db", reconnect_timeout=60)
    with pytest.raises(StoreConnectionError) as err:
        backend.list_instances()
    assert "cannot reach the store" in str(err.value) and "Nothing is damaged" in str(err.value)
    assert ":x@" not in str(err.value)  # never the password


@pytest.mark.parametrize(("version", "says"), [(99, "upgrade nbflow"), (0, "older nbflow")])
def test_a_store_of_another_schema_version_is_refused(dsn: str, version: int, says: str) -> None:
    PostgresBackend(dsn).list_instances()
    _sql(dsn, "UPDATE nbflow_schema SET version = %s", (version,))
    try:
        with pytest.raises(StoreSchemaError) as err:
            PostgresBackend(dsn).list_instances()
        assert says in str(err.value) and f"schema version {version}" in str(err.value)
    finally:
        _sql(dsn, "UPDATE nbflow_schema SET version = %s", (SCHEMA_VERSION,))


def test_the_schema_is_created_on_first_use(server: pg_server.PgServer) -> None:
    name = "fresh_" + str(int(time.time() * 1000))
    server._admin(f"CREATE DATABASE {name}")  # an empty database, not the template
    try:
        backend = PostgresBackend(server.dsn(name))
        backend.save_instance(InstanceMeta("a", "wf", "h"))
        assert [m.instance_id for m in backend.list_instances()] == ["a"]
        assert _sql(server.dsn(name), "SELECT version FROM nbflow_schema") == [(SCHEMA_VERSION,)]
        backend.close()
    finally:
        server.drop_database(server.dsn(name))


def test_a_user_without_rights_is_told_what_to_grant(server: pg_server.PgServer, dsn: str) -> None:
    role = "weak_" + str(int(time.time() * 1000))
    name = "empty_" + role
    server._admin(f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pw'")
    server._admin(f"CREATE DATABASE {name}")  # owned by the admin: PostgreSQL 15 lets others create nothing in it
    try:
        weak = f"postgresql://{role}:weak-pw@127.0.0.1:{server.port}"
        with pytest.raises(StoreAccessError) as err:
            PostgresBackend(f"{weak}/{name}").list_instances()  # may not create the tables
        assert f"GRANT CREATE ON SCHEMA public TO {role}" in str(err.value) and "Nothing is damaged" in str(err.value)
        PostgresBackend(dsn).list_instances()
        with pytest.raises(StoreAccessError):  # tables made by another user, no grant
            PostgresBackend(f"{weak}/{dsn.rsplit('/', 1)[1]}").list_instances()
    finally:
        server.drop_database(server.dsn(name))
        server._admin(f"DROP OWNED BY {role}")
        server._admin(f"DROP ROLE {role}")


def test_importing_nbflow_does_not_import_psycopg() -> None:
    code = "import sys, nbflow; print('psycopg' in sys.modules, nbflow.PostgresBackend.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "PostgresBackend"]


def test_importable_as_nbflow_postgres_backend() -> None:
    assert nf.PostgresBackend is PostgresBackend


# -- one store, many machines -----------------------------------------------------------
def test_two_handles_exclude_each_other_like_two_machines(dsn: str) -> None:
    a, b = PostgresBackend(dsn), PostgresBackend(dsn)
    lease = a.lock("i", "runner on laptop")
    assert b.is_locked("i")
    with pytest.raises(InstanceLockedError) as err:
        b.lock("i", "runner on server")
    assert "runner on laptop" in str(err.value)
    with pytest.raises(InstanceLockedError) as err:
        b.share("i", "worker w1")
    assert "a runner holds it" in str(err.value)
    lease.release()
    assert not b.is_locked("i")
    shared = [b.share("i", "worker w1"), a.share("i", "worker w2")]  # any number of workers
    assert not a.is_locked("i")  # shared holders are not a runner
    with pytest.raises(InstanceLockedError) as err:
        a.lock("i", "runner")
    assert "PooledWorker" in str(err.value)
    for s in shared:
        s.release()
    a.lock("i", "runner").release()


def test_a_runners_writes_carry_the_token_of_its_live_lease_on_that_instance(dsn: str) -> None:
    """The server refuses a write whose lease token is not the instance's: a write must
    name this handle's live lease of that very instance, never a released one or one of
    another instance; a lease dropped without release frees its lock with its session."""
    a, b = PostgresBackend(dsn), PostgresBackend(dsn)
    for iid in ("x", "y"):
        a.save_instance(InstanceMeta(iid, "wf", "h"))
    first, other = a.lock("x", "runner"), a.lock("y", "runner")
    _put(a, "x", "t1", b"1")
    first.release()
    again = a.lock("x", "runner")  # a new token in the instance row
    _put(a, "x", "t2", b"2")  # refused (lock lost) if it carried the released lease's token
    _put(a, "y", "t1", b"3")
    assert set(a.get_records("x")) == {"t1", "t2"} and set(a.get_records("y")) == {"t1"}
    again.release()
    del other
    gc.collect()  # its session closes with it, and the lock goes
    b.lock("y", "the next runner").release()
    a.close()
    b.close()


def test_a_killed_holders_lock_is_free_again(dsn: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from nbflow.store.postgres import PostgresBackend; "
            "lease = PostgresBackend(sys.argv[1]).lock('i', 'a runner that dies'); print('locked', flush=True); "
            "time.sleep(60)",
            dsn,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        b = PostgresBackend(dsn)
        with pytest.raises(InstanceLockedError, match="a runner that dies"):
            b.lock("i", "the next runner")
        holder.kill()  # kill -9: its connection drops, and the server frees the lock
        holder.wait(10)
        deadline = time.monotonic() + 10
        while b.is_locked("i") and time.monotonic() < deadline:
            time.sleep(0.05)
        b.lock("i", "the next runner").release()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_probe_never_makes_a_lock_fail(dsn: str) -> None:
    a, b = PostgresBackend(dsn), PostgresBackend(dsn)
    for _ in range(20):
        assert not b.is_locked("i")
        lease = a.lock("i", "r")
        assert b.is_locked("i")
        lease.release()


def test_locks_are_per_store_not_per_server(server: pg_server.PgServer) -> None:
    one, two = server.take_store(), server.take_store()
    try:
        lease = PostgresBackend(one).lock("same-id", "r1")
        PostgresBackend(two).lock("same-id", "r2").release()  # another database: another store
        lease.release()
    finally:
        server.give_store(one)
        server.give_store(two)


def test_pickles_as_its_address(store: PostgresBackend) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h"))
    clone = pickle.loads(pickle.dumps(store))
    assert isinstance(clone, PostgresBackend) and clone.dsn == store.dsn
    assert [m.instance_id for m in clone.list_instances()] == ["a"]


def _race(dsn: str, worker: str) -> list[str]:
    store = PostgresBackend(dsn)
    return [f"t{i}" for i in range(50) if store.claim("c", f"t{i}", worker, ttl=60)]


def test_claims_across_processes(store: PostgresBackend) -> None:
    """Two processes race for the same 50 steps: each step is claimed exactly once."""
    store.save_instance(InstanceMeta("c", "wf", "h"))
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_race, [(store.dsn, "p1"), (store.dsn, "p2")])
    assert sorted(results[0] + results[1]) == sorted(f"t{i}" for i in range(50))


def test_claims_expire_on_the_servers_clock(store: PostgresBackend, dsn: str) -> None:
    store.save_instance(InstanceMeta("c", "wf", "h"))
    assert store.claim("c", "a", "w1", ttl=600)
    ((server_now,),) = _sql(dsn, "SELECT extract(epoch FROM clock_timestamp())::float8")
    expires = store.get_claims("c")["a"].expires_at
    assert server_now + 590 < expires < server_now + 610


# -- payloads ---------------------------------------------------------------------------
def test_a_large_payload_is_stored_in_chunk_rows_and_streamed_back(store: PostgresBackend, dsn: str) -> None:
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 1000)  # a bit over two chunks
    record = _put(store, "i", "big", data)
    assert record.blob is not None and record.payload is None
    ((inline,),) = _sql(dsn, "SELECT octet_length(data) FROM nbflow_records WHERE task_id = 'big'")
    assert inline < 4096  # the record row holds the header only
    assert _sql(dsn, "SELECT count(*) FROM nbflow_chunks") == [(3,)]
    stream = store.open_payload("i", store.get_record("i", "big"))  # type: ignore[arg-type]
    assert stream.read() == data
    assert stream.verify()  # type: ignore[attr-defined]
    _put(store, "i", "big", b"small now")  # replacing it drops its chunks in the same transaction
    assert _sql(dsn, "SELECT count(*) FROM nbflow_chunks") == [(0,)]


def test_a_chunked_output_replaced_by_the_one_statement_checkpoint_loses_its_chunks(
    store: PostgresBackend, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task of a known generation is checkpointed by one statement that reads no chunk
    table; one whose output was chunked before still gets its chunks dropped."""
    store.save_instance(InstanceMeta("i", "wf", "h"))
    _put(store, "i", "big", b"a" * (600 * 1024))
    _put(store, "i", "other", b"b" * (600 * 1024))
    assert _sql(dsn, "SELECT count(*) FROM nbflow_chunks") == [(2,)]
    answers: list[Any] = []
    real = Prepared.fetchone

    def seen(self: Prepared, conn: Any, params: dict[str, Any]) -> Any:
        answers.append(real(self, conn, params))
        return answers[-1]

    monkeypatch.setattr(Prepared, "fetchone", seen)
    _put(store, "i", "big", b"small now")
    _put(store, "i", "new", b"small too")
    assert [a is None for a in answers] == [True, False]  # the chunked one went on to nbflow_put
    assert _sql(dsn, "SELECT count(*) FROM nbflow_chunks") == [(1,)]  # the other task's stay
    with store.open_payload("i", store.get_record("i", "big")) as stream:  # type: ignore[arg-type]
        assert stream.read() == b"small now"
    _put(store, "i", "big", b"again")  # inline before: the one statement replaces it
    assert answers[-1] is not None and store.get_record("i", "big").size == 5  # type: ignore[union-attr]


def test_a_damaged_chunk_fails_its_checksum(store: PostgresBackend, dsn: str) -> None:
    _put(store, "i", "big", b"a" * (600 * 1024))
    _sql(dsn, "UPDATE nbflow_chunks SET data = overlay(data placing 'b'::bytea from 10 for 1)")
    with store.open_payload("i", store.get_record("i", "big")) as stream:  # type: ignore[arg-type]
        stream.read()
        assert not stream.verify()  # type: ignore[attr-defined]


def test_a_lost_chunk_shows_as_a_damaged_record_and_hides_nothing_else(store: PostgresBackend, dsn: str) -> None:
    _put(store, "i", "big", b"a" * (600 * 1024))
    _put(store, "i", "small", b"fine")
    _sql(dsn, "DELETE FROM nbflow_chunks")
    records = store.get_records("i")
    assert records["big"].codec == "damaged" and "bytes stored" in records["big"].extra["damage"]
    assert records["small"].codec == "pickle"


def test_a_refused_claimed_commit_leaves_no_chunks(store: PostgresBackend, dsn: str) -> None:
    store.save_instance(InstanceMeta("c", "wf", "h"))
    sink = store.new_sink("c")
    sink.write(b"z" * (600 * 1024))
    assert store.commit_claimed("c", "big", "nobody", [(CheckpointRecord("big", "f", "pickle"), sink)]) is None
    assert _sql(dsn, "SELECT count(*) FROM nbflow_chunks") == [(0,)]


def test_a_damaged_instance_record_is_listed_as_damaged_and_hides_no_other(store: PostgresBackend, dsn: str) -> None:
    store.save_instance(InstanceMeta("good", "wf", "h"))
    store.save_instance(InstanceMeta("bad", "wf", "h"))
    _sql(dsn, "UPDATE nbflow_instances SET meta = 'not json' WHERE instance_id = 'bad'")
    states = {m.instance_id: m.state for m in store.list_instances()}
    assert states == {"bad": "damaged", "good": "running"}
    with pytest.raises(CheckpointCorruptError):
        store.load_instance("bad")


def test_a_planted_pickle_is_never_unpickled(store: PostgresBackend, dsn: str) -> None:
    store.save_instance(InstanceMeta("i", "wf", "h"))
    _put(store, "i", "t", b"x")
    planted = pickle.dumps(InstanceMeta("i", "wf", "h"))
    _sql(dsn, "UPDATE nbflow_instances SET meta = %s, control = %s", (planted.hex(), planted.hex()))
    _sql(dsn, "UPDATE nbflow_records SET data = %s", (planted,))
    _sql(dsn, "UPDATE nbflow_index SET summary = %s", (planted.hex(),))
    assert [m.state for m in store.list_instances()] == ["damaged"]
    assert store.get_records("i")["t"].codec == "damaged"
    assert [s.state for s in store.list_summaries()] == ["damaged"]
    with pytest.raises(CheckpointCorruptError):
        store.get_control("i")


def test_the_index_follows_the_instance_in_its_transaction(store: PostgresBackend, dsn: str) -> None:
    meta = InstanceMeta("i", "wf", "h", shape=("x|task", "y|task"), tasks_total=2)
    store.save_instance(meta)
    _put(store, "i", "x", b"1")
    (row,) = store.list_summaries()
    assert (row.state, row.tasks_done) == ("running", 1)  # a running instance's count is live
    _put(store, "i", "y", b"2")
    meta.state = "completed"
    store.save_instance(meta)
    ((workflow, state),) = _sql(dsn, "SELECT workflow, state FROM nbflow_index")
    assert (workflow, state) == ("wf", "completed")
    (row,) = store.list_summaries(state="completed")
    assert (row.tasks_done, row.tasks_total) == (2, 2)
    store.delete_instance("i")
    assert _sql(dsn, "SELECT count(*) FROM nbflow_index") == [(0,)]


def test_a_stale_handle_never_writes_into_a_newer_instance(store: PostgresBackend, dsn: str) -> None:
    other = PostgresBackend(dsn)  # another process
    store.save_instance(InstanceMeta("i", "wf", "h"))
    _put(store, "i", "a", b"1")
    other.save_instance(InstanceMeta("i", "wf", "h"))  # started over: a new generation, no records
    with pytest.raises(StaleInstanceError, match="restarted"):
        _put(store, "i", "b", b"2")
    assert other.get_records("i") == {}
    store.load_instance("i")  # a reload sees the new generation: writing is fine again
    _put(store, "i", "c", b"3")
    other.delete_instance("i")
    with pytest.raises(StaleInstanceError, match="cleared"):
        _put(store, "i", "d", b"4")
    assert store.get_records("i") == {}
    store.load_instance("i")
    with pytest.raises(StaleInstanceError, match="restarted"):
        meta = InstanceMeta("i", "wf", "h")
        other.save_instance(meta)
        meta.generation = "not-the-one"
        store.save_instance(meta)


def test_a_call_repeated_after_a_lost_answer_changes_nothing(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool repeats a call whose connection broke before the answer came; a call
    whose first attempt committed must not do its work twice."""
    store.save_instance(InstanceMeta("i", "wf", "h"))
    store.push_signal("i", "go", b"first")
    store.push_signal("i", "go", b"second")
    real_run = store._pool.run

    def committed_but_answer_lost(call: Any) -> Any:
        real_run(call)
        return real_run(call)

    monkeypatch.setattr(store._pool, "run", committed_but_answer_lost)
    stored = store.consume_signal("i", "go", CheckpointRecord("wait", "fp", "pickle"))
    assert stored is not None and stored.payload == b"first"
    token = store.claim("i", "a", "w1", ttl=30)
    assert token is not None  # the retry recognised its own claim
    store.push_signal("i", "more", b"once")
    big = b"b" * (600 * 1024)
    stored_big = _put(store, "i", "big", big)  # its chunks written twice: the same ones, kept
    token_b = store.claim("i", "b", "w1", ttl=30)
    assert token_b is not None
    sink = store.new_sink("i")
    sink.write(b"done")
    committed = store.commit_claimed("i", "b", token_b, [(CheckpointRecord("b", "f", "pickle"), sink)], release=True)
    assert committed is not None  # the repeat finds its own commit, not a lost claim
    monkeypatch.undo()
    with store.open_payload("i", store.get_record("i", "big")) as stream:  # type: ignore[arg-type]
        assert stream.read() == big and stream.verify()  # type: ignore[attr-defined]
    assert stored_big.blob == store.get_record("i", "big").blob  # type: ignore[union-attr]
    assert "b" not in store.get_claims("i")
    assert store.pop_signal("i", "go") == b"second"  # not lost to the repeated consume
    assert store.pop_signal("i", "more") == b"once" and store.pop_signal("i", "more") is None
    assert store.get_claims("i")["a"].token == token


# -- connection loss --------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_server() -> Iterator[pg_server.PgServer]:
    """A server of this module's own, to restart without disturbing other tests."""
    server = pg_server.PgServer.start()
    yield server
    server.stop()


def test_a_server_restart_is_survived(own_server: pg_server.PgServer) -> None:
    dsn = own_server.take_store()
    store = PostgresBackend(dsn)
    store.save_instance(InstanceMeta("i", "wf", "h"))
    _put(store, "i", "before", b"1")
    lease = store.lock("j", "runner")
    own_server.restart()  # every connection is cut, the pool's idle ones included
    _put(store, "i", "after", b"2")
    assert set(store.get_records("i")) == {"before", "after"}
    assert store.claim("i", "u", "w1", ttl=30)
    lease.release()  # its session is gone; releasing it is harmless
    store.lock("j", "runner").release()


def _eventually(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_runners_lock_is_taken_again_after_a_restart(own_server: pg_server.PgServer) -> None:
    dsn = own_server.take_store()
    runner, other = PostgresBackend(dsn, lease_probe_interval=0.2), PostgresBackend(dsn)
    lease = runner.lock("r", "the runner")
    own_server.restart()  # the lease's session is cut, and its lock with it
    assert _eventually(lambda: other.is_locked("r"))  # ... and taken again by the runner's keeper
    with pytest.raises(InstanceLockedError) as err:
        other.lock("r", "another runner")
    assert "the runner" in str(err.value)
    _put(runner, "r", "t", b"still mine")  # its writes go on
    lease.release()
    other.lock("r", "another runner").release()


def test_a_lock_lost_to_another_holder_refuses_the_runners_writes(own_server: pg_server.PgServer) -> None:
    dsn = own_server.take_store()
    runner = PostgresBackend(dsn, lease_probe_interval=3600)  # its keeper does not get there first
    runner.save_instance(InstanceMeta("r", "wf", "h"))
    lease = runner.lock("r", "the first runner")
    own_server.restart()
    other = PostgresBackend(dsn)
    second = other.lock("r", "the second runner")  # the lock was free while the first was cut off
    time.sleep(1.1)  # a write probes a lease not checked for a second
    with pytest.raises(InstanceLockedError) as err:
        _put(runner, "r", "t", b"must not land")
    assert "was lost" in str(err.value)
    with pytest.raises(InstanceLockedError):
        runner.save_task_state("r", "t", {"attempt": 2})
    assert other.get_record("r", "t") is None
    lease.release()
    second.release()


_CUT_RUNNER_LOCK = (
    "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_a_cut_session_lets_no_write_land_after_another_runner_took_the_lock(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's process has not noticed the cut (no probe: its keeper and its
    write probe are both switched off), so only the server can refuse its writes."""
    monkeypatch.setattr(postgres_leases, "WRITE_PROBE", 3600.0)
    runner = PostgresBackend(dsn, lease_probe_interval=3600)
    runner.save_instance(InstanceMeta("r", "wf", "h"))
    lease = runner.lock("r", "the first runner")
    _put(runner, "r", "before", b"mine")
    assert _sql(dsn, _CUT_RUNNER_LOCK) == [(True,)]  # a real cut: the lease's session is ended
    second = PostgresBackend(dsn).lock("r", "the second runner")  # the advisory lock was free
    with pytest.raises(InstanceLockedError) as err:
        _put(runner, "r", "t", b"must not land")  # one record: the plain upsert statement
    assert "was lost" in str(err.value)
    for write in (
        lambda: runner.put_records("r", [_item(runner, "u", b"1"), _item(runner, "v", b"2")]),  # nbflow_put
        lambda: runner.save_task_state("r", "t", {"attempt": 2}),
        lambda: runner.delete_records("r", ["before"]),
        lambda: runner.save_instance(InstanceMeta("r", "wf", "h", state="failed", generation=_generation(dsn))),
    ):
        with pytest.raises(InstanceLockedError):
            write()
    assert set(PostgresBackend(dsn).get_records("r")) == {"before"}
    assert PostgresBackend(dsn).load_instance("r").state == "running"  # type: ignore[union-attr]
    assert PostgresBackend(dsn).load_task_states("r") == {}
    lease.release()
    second.release()


def test_a_cut_session_nobody_else_took_keeps_writing_and_is_locked_again(dsn: str) -> None:
    runner = PostgresBackend(dsn, lease_probe_interval=0.1)
    runner.save_instance(InstanceMeta("r", "wf", "h"))
    lease = runner.lock("r", "the runner")
    assert _sql(dsn, _CUT_RUNNER_LOCK) == [(True,)]
    _put(runner, "r", "t", b"still mine")  # its token is still the instance's
    other = PostgresBackend(dsn)
    assert _eventually(lambda: other.is_locked("r"))  # the keeper took the lock again
    with pytest.raises(InstanceLockedError):
        other.lock("r", "another runner")
    _put(runner, "r", "u", b"and still mine")
    assert set(other.get_records("r")) == {"t", "u"}
    lease.release()
    other.lock("r", "another runner").release()


def test_a_cut_runner_whose_lock_another_runner_held_meanwhile_does_not_take_it_again(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even once the other runner released it: the instance may have moved on."""
    monkeypatch.setattr(postgres_leases, "WRITE_PROBE", 0.0)  # every write probes its lease
    runner = PostgresBackend(dsn, lease_probe_interval=3600)
    runner.save_instance(InstanceMeta("r", "wf", "h"))
    lease = runner.lock("r", "the first runner")
    assert _sql(dsn, _CUT_RUNNER_LOCK) == [(True,)]
    other = PostgresBackend(dsn)
    other.lock("r", "the second runner").release()
    with pytest.raises(InstanceLockedError) as err:
        _put(runner, "r", "t", b"must not land")  # the probe finds the session gone, and the lock not its own
    assert "was lost" in str(err.value)
    assert not other.is_locked("r")  # the lost lease did not keep the lock it tried
    other.lock("r", "a third runner").release()
    assert other.get_record("r", "t") is None
    lease.release()


def _item(store: PostgresBackend, tid: str, data: bytes) -> tuple[CheckpointRecord, Any]:
    sink = store.new_sink("r")
    sink.write(data)
    return CheckpointRecord(tid, "fp", "pickle", finished_at=time.time()), sink


def _generation(dsn: str) -> str:
    return str(_sql(dsn, "SELECT generation FROM nbflow_instances WHERE instance_id = 'r'")[0][0])


def test_a_server_down_for_longer_than_the_timeout_is_an_error(own_server: pg_server.PgServer) -> None:
    dsn = own_server.take_store()
    store = PostgresBackend(dsn, reconnect_timeout=0.5)
    store.list_instances()
    own_server._ctl("stop", "-w", "-m", "fast")
    try:
        with pytest.raises(StoreConnectionError) as err:
            store.list_instances()
        assert "gave up after 0.5 s" in str(err.value)
    finally:
        own_server._ctl("start", "-w", "-l", str(own_server.log))
    assert store.list_instances() == []  # and it works again once the server is back
