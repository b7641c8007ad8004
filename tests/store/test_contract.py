"""One contract suite for every checkpoint store (Hamilton's pattern).

If you add a backend, add it to tests/store/implementations.py: it must pass everything here.
Implementation-specific behaviour (blob files, locks of killed processes) lives in
test_disk.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbflow import InstanceLockedError, InvalidInstanceIdError
from nbflow.store.base import Backend, CheckpointRecord, CheckpointStore, InstanceMeta
from tests.store.implementations import IMPLEMENTATIONS, close_store, make_store

LARGE = 300 * 1024  # above the 256 KiB inline limit of the disk store


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    backend = make_store(request.param, tmp_path)
    yield backend
    close_store(backend)


contract = pytest.mark.parametrize("store", IMPLEMENTATIONS, indirect=True)


def _put(store: Any, instance_id: str, task_id: str, data: bytes, fingerprint: str = "fp") -> CheckpointRecord:
    sink = store.new_sink(instance_id)
    sink.write(data)
    return store.put_record(instance_id, CheckpointRecord(task_id, fingerprint, "pickle"), sink)


def _payload(store: Any, instance_id: str, record: CheckpointRecord) -> bytes:
    with store.open_payload(instance_id, record) as stream:
        return stream.read()


@contract
def test_is_a_backend(store: Any) -> None:
    assert isinstance(store, Backend)
    assert isinstance(store, CheckpointStore)


@contract
def test_summaries_list_every_instance_with_its_counts(store: Any) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h", shape=("x|task", "y|task"), tasks_total=2))
    store.save_instance(InstanceMeta("b", "other", "h", state="failed"))
    _put(store, "a", "x", b"1")
    rows = {row.instance_id: row for row in store.list_summaries()}
    assert set(rows) == {"a", "b"}
    assert (rows["a"].workflow, rows["a"].state, rows["a"].tasks_total) == ("wf", "running", 2)
    assert [r.instance_id for r in store.list_summaries(workflow="other")] == ["b"]
    assert [r.instance_id for r in store.list_summaries(state="failed")] == ["b"]
    assert store.list_summaries(workflow="none") == []
    meta = store.load_instance("a")
    meta.state = "completed"
    store.save_instance(meta)
    (row,) = store.list_summaries(workflow="wf")
    assert (row.state, row.tasks_done) == ("completed", 2)
    store.delete_instance("a")
    assert [r.instance_id for r in store.list_summaries()] == ["b"]


@contract
def test_instances_save_load_list_delete(store: Any) -> None:
    assert store.load_instance("a") is None
    assert store.list_instances() == []
    meta = InstanceMeta("a", "wf", "hash1", shape=("x|task",), sinks=("x",), tasks_total=1)
    store.save_instance(meta)
    store.save_instance(InstanceMeta("b", "wf2", "hash2"))
    loaded = store.load_instance("a")
    assert loaded is not None
    assert (loaded.workflow, loaded.definition_hash, loaded.shape, loaded.sinks) == ("wf", "hash1", ("x|task",), ("x",))
    assert sorted(m.instance_id for m in store.list_instances()) == ["a", "b"]
    # Saving again overwrites.
    meta.state = "completed"
    store.save_instance(meta)
    assert store.load_instance("a").state == "completed"
    # A loaded meta is a copy: changing it does not change the store.
    loaded.state = "failed"
    assert store.load_instance("a").state == "completed"
    assert store.delete_instance("a") is True
    assert store.load_instance("a") is None
    assert store.delete_instance("a") is False
    assert [m.instance_id for m in store.list_instances()] == ["b"]


@contract
def test_delete_instance_removes_its_records(store: Any) -> None:
    store.save_instance(InstanceMeta("a", "wf", "h"))
    _put(store, "a", "t1", b"one")
    store.delete_instance("a")
    assert store.get_records("a") == {}
    assert store.get_record("a", "t1") is None


@contract
def test_records_put_get_delete(store: Any) -> None:
    assert store.get_records("i") == {}
    assert store.get_record("i", "t1") is None
    stored = _put(store, "i", "t1", b"hello", fingerprint="f1")
    assert stored.size == 5
    _put(store, "i", "t2", b"world")
    records = store.get_records("i")
    assert set(records) == {"t1", "t2"}
    rec = store.get_record("i", "t1")
    assert rec is not None and rec.fingerprint == "f1" and rec.codec == "pickle"
    assert _payload(store, "i", rec) == b"hello"
    # Overwrite a record.
    _put(store, "i", "t1", b"again", fingerprint="f2")
    assert store.get_record("i", "t1").fingerprint == "f2"
    assert _payload(store, "i", store.get_record("i", "t1")) == b"again"
    store.delete_records("i", ["t1", "missing"])
    assert set(store.get_records("i")) == {"t2"}
    # Other instances are unaffected.
    _put(store, "j", "t1", b"other")
    assert _payload(store, "j", store.get_record("j", "t1")) == b"other"
    assert set(store.get_records("i")) == {"t2"}


@contract
def test_put_records_batch(store: Any) -> None:
    items = []
    for n in range(5):
        sink = store.new_sink("i")
        sink.write(str(n).encode())
        items.append((CheckpointRecord(f"t{n}", "fp", "json"), sink))
    stored = store.put_records("i", items)
    assert [r.task_id for r in stored] == [f"t{n}" for n in range(5)]
    records = store.get_records("i")
    assert {tid: _payload(store, "i", r) for tid, r in records.items()} == {f"t{n}": str(n).encode() for n in range(5)}


@contract
def test_record_fields_round_trip(store: Any) -> None:
    sink = store.new_sink("i")
    sink.write(b"x")
    rec = CheckpointRecord(
        "t",
        "fp",
        "json",
        attempt=3,
        started_at=1.5,
        finished_at=2.5,
        preview="'x'",
        stdout="out\n",
        stderr="err\n",
        worker="w1",
    )
    store.put_record("i", rec, sink)
    got = store.get_record("i", "t")
    assert (got.attempt, got.started_at, got.finished_at, got.preview, got.stdout, got.stderr, got.worker) == (
        3,
        1.5,
        2.5,
        "'x'",
        "out\n",
        "err\n",
        "w1",
    )
    assert got.duration == pytest.approx(1.0)
    assert got.codec == "json"


@contract
@pytest.mark.parametrize("size", [0, 10, 256 * 1024, LARGE, 3 * 1024 * 1024])
def test_payload_sizes_round_trip(store: Any, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    # Write in several chunks, as a streaming codec does.
    sink = store.new_sink("i")
    view = memoryview(data)
    for start in range(0, len(data), 100_000):
        sink.write(view[start : start + 100_000])
    rec = store.put_record("i", CheckpointRecord("t", "fp", "pickle"), sink)
    assert rec.size == size
    assert _payload(store, "i", store.get_record("i", "t")) == data


@contract
def test_lock_is_exclusive_and_release_frees_it(store: Any) -> None:
    assert store.is_locked("i") is False
    lease = store.lock("i", "first")
    assert store.is_locked("i") is True
    with pytest.raises(InstanceLockedError) as err:
        store.lock("i", "second")
    assert "'i'" in str(err.value) and "another runner" in str(err.value)
    # Another instance is independent.
    other = store.lock("j", "other")
    lease.release()
    lease.release()  # idempotent
    assert store.is_locked("i") is False
    again = store.lock("i", "third")
    again.release()
    other.release()


@contract
@pytest.mark.parametrize("bad", ["", "   ", 5, None, "x" * 300, "a\x00b", "line\nbreak"])
def test_invalid_instance_ids_are_refused(store: Any, bad: Any) -> None:
    with pytest.raises(InvalidInstanceIdError) as err:
        store.save_instance(InstanceMeta(bad, "wf", "h"))
    assert "invalid instance id" in str(err.value)
    with pytest.raises(InvalidInstanceIdError):
        store.lock(bad, "x")


@contract
@pytest.mark.parametrize("instance_id", ["with space", "slash/inside", "../escape", "ünïcode", "a" * 200, ".hidden"])
def test_unusual_but_valid_ids_are_kept_apart(store: Any, instance_id: str) -> None:
    store.save_instance(InstanceMeta(instance_id, "wf", "h"))
    _put(store, instance_id, "t", b"mine")
    _put(store, "plain", "t", b"plain")
    assert store.load_instance(instance_id).instance_id == instance_id
    assert _payload(store, instance_id, store.get_record(instance_id, "t")) == b"mine"
    assert instance_id in [m.instance_id for m in store.list_instances()]
