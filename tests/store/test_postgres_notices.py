"""Work notices of a PostgreSQL store (LISTEN/NOTIFY): which commits send one, a
listener surviving a cut session, and an idle PooledWorker woken long before its poll
interval — on the real server of tests/pg_server.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbflow as nf
from nbflow.store.base import CheckpointRecord, InstanceMeta, WorkNotices
from nbflow.store.postgres import PostgresBackend
from tests import pg_server

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")


_sql = pg_server.sql


def _record(store: PostgresBackend, tid: str) -> tuple[CheckpointRecord, Any]:
    sink = store.new_sink("i")
    sink.write(b"x")
    return CheckpointRecord(tid, "fp", "pickle", finished_at=time.time()), sink


def test_the_commits_that_can_make_work_send_a_notice(store: PostgresBackend, dsn: str) -> None:
    assert isinstance(store, WorkNotices)
    other = PostgresBackend(dsn)  # another process, as far as sessions go
    listener = store.listen_for_work()
    try:
        other.save_instance(InstanceMeta("i", "wf", "h", state="pending"))  # submitted
        assert listener.wait(30)
        token = other.claim("i", "a", "w1", ttl=30)
        assert token is not None
        assert other.release_claim("i", "a", token)  # the unit is free again
        assert listener.wait(30)
        token = other.claim("i", "a", "w1", ttl=30)
        assert token is not None
        assert other.commit_claimed("i", "a", token, [_record(other, "a")], release=True) is not None
        assert listener.wait(30)
        other.push_signal("i", "go", b"payload")  # a worker parked on the signal looks again
        assert listener.wait(30)
        # a runner's checkpoint, a finished instance and a refused release wake nobody
        other.put_record("i", *_record(other, "b"))
        other.save_instance(
            InstanceMeta("i", "wf", "h", state="completed", generation=other.load_instance("i").generation)
        )  # type: ignore[union-attr]
        assert not other.release_claim("i", "a", "not-a-token")
        assert not listener.wait(0.5)
        assert listener.received == 4
    finally:
        listener.close()
        other.close()


def test_a_burst_of_commits_is_one_wake_up(store: PostgresBackend, dsn: str) -> None:
    other = PostgresBackend(dsn)
    listener = store.listen_for_work()
    try:
        for k in range(5):
            other.save_instance(InstanceMeta(f"i{k}", "wf", "h", state="pending"))
        time.sleep(0.2)  # let them all arrive (a late one only makes a second wake-up)
        assert listener.wait(30)
        assert listener.received >= 2  # taken together
    finally:
        listener.close()
        other.close()


def test_a_cut_listening_session_is_opened_again(store: PostgresBackend, dsn: str) -> None:
    listener = store.listen_for_work()
    try:
        cut = _sql(
            dsn,
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        assert cut == [(True,)]
        assert not listener.wait(5)  # the cut is noticed (the poll covers what is missed)
        listener.wait(0)  # listening again
        PostgresBackend(dsn).save_instance(InstanceMeta("j", "wf", "h", state="pending"))
        assert listener.wait(30)
    finally:
        listener.close()


def test_an_idle_worker_is_woken_by_a_submit_long_before_its_poll(store: PostgresBackend) -> None:
    """The worker polls once an hour; it asks the ready index once at start (the
    instance is not there yet) and is then only woken by the submit's notice."""
    wf = nf.Workflow("woken").then("inc", lambda x: x + 1).build()
    listed = threading.Event()
    calls: list[str] = []
    original = store.ready_instances

    def ready_instances(*args: Any, **kwargs: Any) -> Any:
        rows = original(*args, **kwargs)
        calls.append("list")
        listed.set()
        return rows

    store.ready_instances = ready_instances  # type: ignore[method-assign]
    worker = nf.PooledWorker("w", store, [wf], poll_interval="1h")
    handle = worker.start()
    try:
        assert listed.wait(30)  # the first scan has asked the (empty) index
        client = nf.WorkflowClient(PostgresBackend(store.dsn))
        client.submit(wf, "w-1", 41)
        deadline = time.time() + 60
        while client.status("w-1").state != "completed" and time.time() < deadline:
            time.sleep(0.05)
        assert client.status("w-1").output == 42
        assert worker.stats["woken"] >= 1
        assert len(calls) >= 2  # asked again because of the notice, not an hour later
    finally:
        handle.shutdown(timeout=30)
