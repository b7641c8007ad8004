"""Contract of the claim methods PooledWorker relies on, over every backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbflow.store.base import Backend, CheckpointRecord, InstanceMeta, record_version
from nbflow.store.disk import DiskcacheBackend
from tests.store.implementations import IMPLEMENTATIONS, close_store, make_store

IID = "claims-1"


@pytest.fixture(params=IMPLEMENTATIONS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend: Backend = make_store(request.param, tmp_path)
    backend.save_instance(InstanceMeta(IID, "wf", "hash"))
    yield backend
    close_store(backend)


def _item(
    store: Backend, task_id: str, data: bytes = b"x", finished: float | None = None
) -> tuple[CheckpointRecord, object]:
    sink = store.new_sink(IID)
    sink.write(data)
    record = CheckpointRecord(task_id=task_id, fingerprint="f", codec="pickle", finished_at=finished or time.time())
    return record, sink


def test_claim_is_exclusive_while_live(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=30)
    assert token
    assert store.claim(IID, "a", "w2", ttl=30) is None
    assert store.claim(IID, "b", "w2", ttl=30)  # another step is free
    claims = store.get_claims(IID)
    assert claims["a"].worker == "w1" and claims["a"].token == token and not claims["a"].expired


def test_expired_claim_can_be_taken_over(store: Backend) -> None:
    old = store.claim(IID, "a", "w1", ttl=0.05)
    assert old
    time.sleep(0.1)
    new = store.claim(IID, "a", "w2", ttl=30)
    assert new and new != old
    assert store.get_claims(IID)["a"].worker == "w2"
    assert not store.renew_claim(IID, "a", old, ttl=30)  # the old holder lost it
    assert not store.release_claim(IID, "a", old)
    assert store.get_claims(IID)["a"].worker == "w2"


def test_renew_extends_the_claim(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=0.2)
    assert token
    before = store.get_claims(IID)["a"].expires_at
    assert store.renew_claim(IID, "a", token, ttl=60)
    assert store.get_claims(IID)["a"].expires_at > before + 30
    assert store.claim(IID, "a", "w2", ttl=30) is None


def test_release_frees_the_step(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=30)
    assert token and store.release_claim(IID, "a", token)
    assert store.release_claim(IID, "a", token) is False  # idempotent, reports it was gone
    assert "a" not in store.get_claims(IID)
    assert store.claim(IID, "a", "w2", ttl=30)


def test_commit_only_while_the_claim_is_ours(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=30)
    assert token
    stored = store.commit_claimed(IID, "a", token, [_item(store, "a", b"one")])
    assert stored is not None and store.get_record(IID, "a") is not None
    assert store.get_record(IID, "a").payload == b"one"  # type: ignore[union-attr]
    # a stale token (e.g. a slow heartbeat after a take-over) stores nothing
    assert store.commit_claimed(IID, "a", "not-the-token", [_item(store, "a", b"two")]) is None
    assert store.get_record(IID, "a").payload == b"one"  # type: ignore[union-attr]


def test_slow_heartbeat_cannot_commit_after_take_over(store: Backend) -> None:
    slow = store.claim(IID, "a", "slow", ttl=0.05)
    assert slow
    time.sleep(0.1)
    fast = store.claim(IID, "a", "fast", ttl=30)
    assert fast
    assert store.commit_claimed(IID, "a", fast, [_item(store, "a", b"fast")]) is not None
    store.release_claim(IID, "a", fast)
    assert store.commit_claimed(IID, "a", slow, [_item(store, "a", b"slow")]) is None
    assert store.get_record(IID, "a").payload == b"fast"  # type: ignore[union-attr]


def test_claim_refused_when_the_record_changed_since_seen(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=30)
    assert token
    store.commit_claimed(IID, "a", token, [_item(store, "a", finished=123.5)])
    store.release_claim(IID, "a", token)
    # a worker that planned before the commit (it saw no record) must not run it again
    assert store.claim(IID, "a", "w2", ttl=30, seen=None) is None
    version = record_version(store.get_record(IID, "a"))
    assert version == 123.5
    assert store.claim(IID, "a", "w2", ttl=30, seen=version)  # a deliberate re-run (stale step)


def test_commit_of_several_records_is_one_unit(store: Backend) -> None:
    token = store.claim(IID, "loop", "w1", ttl=30)
    assert token
    items = [_item(store, "loop#1"), _item(store, "loop#2")]
    stored = store.commit_claimed(IID, "loop", token, items)
    assert stored is not None and [r.task_id for r in stored] == ["loop#1", "loop#2"]
    assert {"loop#1", "loop#2"} <= set(store.get_records(IID))
    assert "loop" not in store.get_records(IID)


def test_claims_are_not_records_and_go_with_the_instance(store: Backend) -> None:
    store.claim(IID, "a", "w1", ttl=30)
    assert "a" not in store.get_records(IID)
    store.delete_instance(IID)
    assert store.get_claims(IID) == {}


def test_large_output_committed_under_a_claim(store: Backend) -> None:
    token = store.claim(IID, "big", "w1", ttl=30)
    assert token
    data = b"z" * (600 * 1024)
    stored = store.commit_claimed(IID, "big", token, [_item(store, "big", data)])
    assert stored is not None
    with store.open_payload(IID, stored[0]) as fh:
        assert fh.read() == data


def test_rejected_large_commit_leaves_no_file(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path / "s")
    store.save_instance(InstanceMeta(IID, "wf", "hash"))
    assert store.commit_claimed(IID, "big", "nobody", [_item(store, "big", b"z" * (600 * 1024))]) is None
    blobs = store._instance_dir(IID) / "blobs"
    assert not blobs.exists() or not [p for p in blobs.iterdir() if p.suffix == ".bin"]


def test_claims_across_processes(tmp_path: Path) -> None:
    """Two processes race for the same 50 steps: each step is claimed exactly once."""
    import multiprocessing as mp

    directory = tmp_path / "shared"
    DiskcacheBackend(directory).save_instance(InstanceMeta(IID, "wf", "hash"))
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_race, [(str(directory), "p1"), (str(directory), "p2")])
    won = results[0] + results[1]
    assert sorted(won) == sorted(f"t{i}" for i in range(50))


def _race(directory: str, worker: str) -> list[str]:
    store = DiskcacheBackend(directory)
    return [f"t{i}" for i in range(50) if store.claim(IID, f"t{i}", worker, ttl=60)]


def test_commit_with_release_drops_the_claim_in_the_same_step(store: Backend) -> None:
    token = store.claim(IID, "a", "w1", ttl=30)
    assert token
    stored = store.commit_claimed(IID, "a", token, [_item(store, "a", b"one")], release=True)
    assert stored is not None and store.get_record(IID, "a").payload == b"one"  # type: ignore[union-attr]
    assert "a" not in store.get_claims(IID)
    assert not store.release_claim(IID, "a", token)  # already gone
    assert not store.renew_claim(IID, "a", token, ttl=30)
    # a worker that planned before the commit is refused by the record version, not by a claim
    assert store.claim(IID, "a", "w2", ttl=30, seen=None) is None


def test_refused_commit_with_release_keeps_the_other_workers_claim(store: Backend) -> None:
    slow = store.claim(IID, "a", "slow", ttl=0.05)
    assert slow
    time.sleep(0.1)
    fast = store.claim(IID, "a", "fast", ttl=30)
    assert fast
    assert store.commit_claimed(IID, "a", slow, [_item(store, "a", b"slow")], release=True) is None
    assert store.get_record(IID, "a") is None
    assert store.get_claims(IID)["a"].token == fast


def test_change_stamp_moves_with_every_record_change(store: Backend) -> None:
    seen = [store.change_stamp(IID)]

    def changed() -> bool:
        stamp = store.change_stamp(IID)
        new = stamp not in seen
        seen.append(stamp)
        return new

    record, sink = _item(store, "a")
    store.put_record(IID, record, sink)
    assert changed()
    store.put_records(IID, [_item(store, "b"), _item(store, "c")])
    assert changed()
    token = store.claim(IID, "d", "w1", ttl=30)
    assert token
    changed()  # a claim is not a record; a store may still move the stamp (a re-read, never a miss)
    store.commit_claimed(IID, "d", token, [_item(store, "d")], release=True)
    assert changed()
    assert store.commit_claimed(IID, "d", "not-the-token", [_item(store, "d")]) is None
    assert not changed()  # a refused commit changes nothing
    store.push_signal(IID, "go", b"payload")
    assert store.consume_signal(IID, "go", CheckpointRecord(task_id="sig", fingerprint="f", codec="pickle"))
    assert changed()
    store.delete_records(IID, ["a"])
    assert changed()
    store.set_control(IID, "paused")
    changed()  # not a record: may move the stamp or not
    meta = store.load_instance(IID)
    assert meta is not None
    meta.state = "paused"
    store.save_instance(meta)
    assert not changed()  # saving the meta is not a record change (the worker reloads the instance itself)
    store.save_instance(InstanceMeta(IID, "wf", "hash"))  # a start-over drops every record
    assert store.get_records(IID) == {}
    assert changed()


def test_change_stamp_of_a_resubmitted_instance_is_new(store: Backend) -> None:
    store.put_records(IID, [_item(store, "a")])
    before = store.change_stamp(IID)
    assert before is not None
    store.delete_instance(IID)
    assert store.change_stamp(IID) is None
    store.save_instance(InstanceMeta(IID, "wf", "hash"))
    store.put_records(IID, [_item(store, "a")])
    assert store.change_stamp(IID) not in (None, before)
