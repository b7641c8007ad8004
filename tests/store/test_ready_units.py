"""The ready index of a PostgreSQL store: kept in the transactions of the writes that
can make a unit ready, and what lets a free PooledWorker find work without reading
every instance."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.errors import StaleInstanceError
from nbflow.store.base import CheckpointRecord, InstanceMeta, ReadyIndex
from nbflow.store.postgres import PostgresBackend
from nbflow.store.postgres_schema import SCHEMA_VERSION
from tests import pg_server

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")


_sql = pg_server.sql


def _rows(dsn: str) -> dict[str, str]:
    return dict(_sql(dsn, "SELECT instance_id, state FROM nbflow_ready"))


def _due(store: PostgresBackend, workflow: str = "wf") -> dict[str, int]:
    return dict(store.ready_instances([workflow], 100).due)


def _settled(store: PostgresBackend, iid: str, until: float | None = None) -> None:
    """Put ``iid`` off as a worker that found nothing to claim would."""
    assert store.settle_ready(iid, _due(store)[iid], until)
    assert iid not in _due(store)


def _item(store: PostgresBackend, iid: str, tid: str) -> tuple[CheckpointRecord, Any]:
    sink = store.new_sink(iid)
    sink.write(b"x")
    return CheckpointRecord(tid, "fp", "pickle", finished_at=time.time()), sink


def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_index_follows_the_instance_state_in_its_transaction(store: PostgresBackend, dsn: str) -> None:
    assert isinstance(store, ReadyIndex)
    meta = InstanceMeta("a", "wf", "h", state="pending")
    store.save_instance(meta)
    assert _rows(dsn) == {"a": "pending"} and list(_due(store)) == ["a"]
    for state in ("running", "waiting", "awaiting_signal"):
        meta.state = state
        store.save_instance(meta)
        assert _rows(dsn) == {"a": state} and list(_due(store)) == ["a"]
    for state in ("paused", "cancelled", "completed", "failed", "interrupted"):
        meta.state = state
        store.save_instance(meta)
        assert _rows(dsn) == {}, state  # no worker finds work in it: out of the index
    meta.state = "pending"  # revived
    store.save_instance(meta)
    assert list(_due(store)) == ["a"]
    # a save the store refuses (a stale handle, another generation) changes nothing in it
    stale = PostgresBackend(dsn)
    old = stale.load_instance("a")
    assert old is not None
    store.save_instance(InstanceMeta("a", "wf", "h", state="pending"))  # a new generation
    _settled(store, "a")
    old.state = "completed"
    with pytest.raises(StaleInstanceError):
        stale.save_instance(old)
    stale.close()
    assert _rows(dsn) == {"a": "pending"} and "a" not in _due(store)
    store.delete_instance("a")
    assert _rows(dsn) == {}


def test_due_instances_come_oldest_first_per_workflow_and_say_whether_any_is_busy(store: PostgresBackend) -> None:
    for iid in ("c", "a", "b"):
        store.save_instance(InstanceMeta(iid, "wf", "h", state="pending"))
    store.save_instance(InstanceMeta("x", "other", "h", state="pending"))
    answer = store.ready_instances(["wf"], 100)
    assert [iid for iid, _ in answer.due] == ["c", "a", "b"] and answer.busy
    assert [iid for iid, _ in store.ready_instances(["wf"], 2, skip=["c"]).due] == ["a", "b"]
    for iid in ("c", "a", "b"):
        _settled(store, iid)
    answer = store.ready_instances(["wf"], 100)
    assert answer.due == [] and answer.busy  # settled, still pending: a worker told to stop when idle goes on
    assert not store.ready_instances(["wf"], 100, skip=["a", "b", "c"]).busy
    for iid in ("c", "a", "b"):
        store.save_instance(InstanceMeta(iid, "wf", "h", state="awaiting_signal"))
        _settled(store, iid)
    assert not store.ready_instances(["wf"], 100).busy  # only waits for signals: idle


def test_every_write_that_can_make_a_unit_ready_makes_the_instance_due_in_its_transaction(
    store: PostgresBackend,
) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", state="running"))
    store.load_instance("a")
    writes: dict[str, Callable[[], Any]] = {}

    def commit() -> None:
        token = store.claim("a", "t1", "w", 60)
        assert token is not None  # a claim leaves it settled
        assert "a" not in _due(store)
        assert store.commit_claimed("a", "t1", token, [_item(store, "a", "t1")], release=True) is not None

    def release() -> None:
        token = store.claim("a", "t2", "w", 60)
        assert token is not None
        assert store.release_claim("a", "t2", token)

    writes["a claimed commit"] = commit
    writes["a released claim"] = release
    writes["a signal"] = lambda: store.push_signal("a", "go", b"1")
    writes["a control request"] = lambda: store.set_control("a", "paused", "ops")
    writes["deleted records"] = lambda: store.delete_records("a", ["t1"])
    for what, write in writes.items():
        _settled(store, "a")
        write()
        assert "a" in _due(store), what
    # what cannot make a unit ready leaves it settled
    token = store.claim("a", "t3", "w", 60)
    assert token is not None
    _settled(store, "a")
    assert store.renew_claim("a", "t3", token, 60)
    assert store.claim("a", "t3", "other", 60) is None
    assert store.commit_claimed("a", "t3", "not-the-token", [_item(store, "a", "t3")]) is None  # refused
    assert "a" not in _due(store)


def test_settling_is_refused_when_the_index_moved_since_it_was_read(store: PostgresBackend) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", state="running"))
    version = _due(store)["a"]
    token = store.claim("a", "t", "w", 60)
    assert token is not None
    assert store.release_claim("a", "t", token)  # a change the settling worker did not see
    assert not store.settle_ready("a", version, None)
    assert "a" in _due(store)


def test_a_buffered_signal_refuses_settling_on_it(store: PostgresBackend) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", state="awaiting_signal", signal="go"))
    store.push_signal("a", "go", b"1")
    assert not store.settle_ready("a", _due(store)["a"], None, signal="go")  # it would wait forever
    assert store.settle_ready("a", _due(store)["a"], None, signal="other")


def test_a_settled_instance_is_due_again_at_its_time_or_when_a_claim_on_it_expires(store: PostgresBackend) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", state="waiting"))
    _settled(store, "a", until=time.time() + 0.5)  # a delay due in half a second
    assert _eventually(lambda: "a" in _due(store))
    assert store.claim("a", "t", "dead worker", 1.0) is not None  # its holder never commits
    _settled(store, "a", until=None)  # "until a change" — but never past the claim's expiry
    assert _eventually(lambda: "a" in _due(store))
    assert store.claim("a", "t", "another worker", 60) is not None  # the expired claim is taken over


def test_a_claim_left_behind_expired_puts_the_instance_off_for_the_least_time_not_at_every_scan(
    store: PostgresBackend,
) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", state="running"))
    assert store.claim("a", "t", "died after its commit", 0.01) is not None
    time.sleep(0.05)  # expired: its expiry alone would make the instance due at once, for ever
    assert store.settle_ready("a", _due(store)["a"], None, least=30.0)
    assert "a" not in _due(store)  # put off for the least time asked (a worker's poll interval)


def test_a_signal_wait_with_a_timeout_is_put_off_until_its_deadline_then_fails(store: PostgresBackend) -> None:
    """Parked on a signal nobody sends, the instance is settled until the wait's stored
    deadline (not run again at every scan), and then the step runs and fails."""
    wf = nf.Workflow("sto").then("a", lambda x: x).wait_for_signal("go", timeout=0.5).then("b", lambda p: p).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "s-1", 1)
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.02)
    handle = worker.start()
    try:
        assert _eventually(lambda: client.status("s-1").state == "failed")
    finally:
        handle.shutdown(timeout=30)
    assert "SignalTimeoutError" in str(client.status("s-1").error)
    # a (1), the wait parking (1, maybe once more after its own release), the wait failing (1)
    assert worker.stats["units"] <= 5, worker.stats


def test_a_version_2_store_is_upgraded_with_its_runnable_instances_in_the_index(
    store: PostgresBackend, dsn: str
) -> None:
    wf = nf.Workflow("wf").then("inc", lambda x: x + 1).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "done", 1)
    nf.PooledWorker("w", store, [wf], poll_interval=0.05).run(until_idle=True)
    client.submit(wf, "todo", 41)
    store.close()
    _sql(dsn, "DROP TABLE nbflow_ready; UPDATE nbflow_schema SET version = 2")  # a store as version 2 made it
    upgraded = PostgresBackend(dsn)
    try:
        assert nf.WorkflowClient(upgraded).status("done").state == "completed"  # its first call upgrades it
        assert _sql(dsn, "SELECT version FROM nbflow_schema") == [(SCHEMA_VERSION,)]
        assert _rows(dsn) == {"todo": "pending"}
        nf.PooledWorker("w", upgraded, [wf], poll_interval=0.05).run(until_idle=True)
        assert nf.WorkflowClient(upgraded).status("todo").output == 42
        assert _rows(dsn) == {}
    finally:
        upgraded.close()


def _counting(store: PostgresBackend, names: list[str]) -> collections.Counter[tuple[str, str]]:
    """Count the calls of ``names`` on this handle, by (method, first argument)."""
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    for name in names:
        method = getattr(store, name)

        def wrapper(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            calls[(_name, str(args[0]) if args else "")] += 1
            return _method(*args, **kwargs)

        setattr(store, name, wrapper)
    return calls


def test_a_free_worker_finds_work_without_reading_other_instances(store: PostgresBackend) -> None:
    """30 finished instances and 10 parked on a signal nobody sent: a worker that finds
    one new instance reads that one only — no listing of the store, no look at any
    other instance."""
    inc = nf.Workflow("inc").then("a", lambda x: x + 1).build()
    parked = nf.Workflow("parked").then("a", lambda x: x).wait_for_signal("go").then("b", lambda p: p).build()
    client = nf.WorkflowClient(store)
    for n in range(30):
        client.submit(inc, f"done-{n}", n)
    for n in range(10):
        client.submit(parked, f"parked-{n}", n)
    nf.PooledWorker("w", store, [inc, parked], poll_interval=0.02, concurrency=4).run(until_idle=True)
    assert {client.status(f"done-{n}").state for n in range(30)} == {"completed"}
    assert {client.status(f"parked-{n}").state for n in range(10)} == {"awaiting_signal"}
    worker = nf.PooledWorker("w2", store, [inc, parked], poll_interval=0.02)
    handle = worker.start()
    try:
        assert _eventually(lambda: store.ready_instances(["inc", "parked"], 100).due == [])  # settled
        calls = _counting(
            store, ["list_instances", "list_summaries", "load_instance", "get_records", "get_claims", "change_stamp"]
        )
        time.sleep(0.3)  # about 15 scans with nothing to do
        assert calls == collections.Counter()
        client.submit(inc, "new", 1)
        assert _eventually(lambda: client.status("new").state == "completed")
    finally:
        handle.shutdown(timeout=30)
    assert client.status("new").output == 2
    assert {name for name, _ in calls} >= {"load_instance", "get_records"}
    looked_at = {iid for _, iid in calls}
    assert looked_at == {"new"}, looked_at
    client.send_signal("parked-3", "go", {"n": 3})  # a signal makes its instance due: it is found
    nf.PooledWorker("w3", store, [inc, parked], poll_interval=0.02).run(until_idle=True)
    assert client.status("parked-3").output == {"n": 3}


def _claim_then_hang(dsn: str, marker: str) -> None:
    """A worker process that claims the one unit of ``slow-1`` and dies (is killed)
    before it commits."""
    gate = Path(marker)

    def hang(x: int) -> int:
        gate.write_text(str(os.getpid()))
        time.sleep(600)
        return x

    wf = nf.Workflow("slow").then("a", hang).build()
    nf.PooledWorker("doomed", PostgresBackend(dsn), [wf], claim_ttl=2.0, heartbeat=0.5, poll_interval=0.05).run()


def test_a_worker_killed_between_claim_and_commit_leaves_its_unit_claimable_after_its_ttl(
    store: PostgresBackend, dsn: str, tmp_path: Path
) -> None:
    runs = []

    def body(x: int) -> int:
        runs.append(x)
        return x + 1

    wf = nf.Workflow("slow").then("a", body).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "slow-1", 1)
    marker = tmp_path / "claimed"
    proc = mp.get_context("fork").Process(target=_claim_then_hang, args=(dsn, str(marker)))
    proc.start()
    try:
        assert _eventually(marker.exists), "the doomed worker never started its unit"
        os.kill(proc.pid or 0, signal.SIGKILL)  # mid-unit: claimed, never committed
        proc.join(10)
        assert store.get_claims("slow-1")["a"].worker == "doomed"
        worker = nf.PooledWorker("heir", store, [wf], poll_interval=0.05)
        handle = worker.start()
        try:
            # the heir finds the unit held, puts the instance off until the claim expires ...
            assert _eventually(lambda: store.ready_instances(["slow"], 10).due == [] or runs != [])
            # ... and then takes it over and commits it
            assert _eventually(lambda: client.status("slow-1").state == "completed")
        finally:
            handle.shutdown(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert client.status("slow-1").output == 2 and runs == [1]
    assert store.get_record("slow-1", "a").worker == "heir"  # type: ignore[union-attr]


def test_a_claim_released_without_a_commit_is_seen_although_the_kept_view_says_held(
    store: PostgresBackend,
) -> None:
    """A release moves no change stamp, so a worker's kept view still shows the unit
    held by the other worker; the worker must read the claims as stored before it
    settles the instance, or nothing would ever make it due again."""
    wf = nf.Workflow("one").then("a", lambda x: x + 1).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "o-1", 1)
    token = store.claim("o-1", "a", "other worker", 600)
    assert token is not None
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.02)
    handle = worker.start()
    try:
        assert _eventually(lambda: store.ready_instances(["one"], 10).due == [])  # settled: "a" is held
        assert store.release_claim("o-1", "a", token)  # given back unfinished
        assert _eventually(lambda: client.status("o-1").state == "completed")
    finally:
        handle.shutdown(timeout=30)
    assert client.status("o-1").output == 2
