"""DiskcacheBackend.list_states: the store index with current states and no counting,
what a PooledWorker lists to find runnable instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbflow as nf
from nbflow.store.base import CheckpointRecord, InstanceMeta
from tests.store.faults import cache_db


def _put(store: nf.DiskcacheBackend, iid: str, task_id: str) -> None:
    sink = store.new_sink(iid)
    sink.write(b"x")
    store.put_records(iid, [(CheckpointRecord(task_id=task_id, fingerprint="fp", codec="pickle"), sink)])


def _facts(rows: list[Any]) -> dict[str, tuple[str, str, float]]:
    """What a worker reads of a listing (a damaged folder's stand-in has no creation time)."""
    return {
        row.instance_id: (row.workflow, str(row.state), 0.0 if row.workflow == "?" else row.created_at) for row in rows
    }


def test_list_states_agrees_with_the_index_on_every_instance_but_counts_nothing(tmp_path: Path) -> None:
    store = nf.DiskcacheBackend(tmp_path)
    wf = nf.Workflow("inc").then("a", lambda x: x + 1).build()
    nf.CheckpointingRunner(store, echo_output=False).run(wf, "done", 1)
    client = nf.WorkflowClient(store)
    client.submit(wf, "pending", 2)
    store.save_instance(InstanceMeta("busy", "other", "hash", state="running"))
    _put(store, "busy", "step")  # written after its index row: the row is no longer trusted
    cache_db(tmp_path, "broken").parent.mkdir(parents=True)
    cache_db(tmp_path, "broken").write_bytes(b"")  # a damaged instance folder
    expected = _facts(store.list_summaries())
    assert set(expected) == {"done", "pending", "busy", "broken"}
    assert expected["broken"][1] == "damaged"
    other = nf.DiskcacheBackend(tmp_path)  # another handle: nothing of this one's is kept
    _put(other, "busy", "step2")

    def no_records(*args: Any) -> Any:
        raise AssertionError("list_states read an instance's records")

    other._read_records = no_records  # type: ignore[method-assign]
    assert _facts(other.list_states()) == expected
    busy = next(row for row in other.list_states() if row.instance_id == "busy")
    assert busy.tasks_done == 0  # not counted


def test_list_states_sees_a_state_saved_after_the_index_row(tmp_path: Path) -> None:
    """A state moved by another handle, whose index row was not written (a kill between
    the commit and the index write): read from the instance record, not the stale row."""
    store = nf.DiskcacheBackend(tmp_path)
    store.save_instance(InstanceMeta("i", "wf", "hash", state="running"))
    assert _facts(store.list_states())["i"][1] == "running"
    other = nf.DiskcacheBackend(tmp_path)
    meta = other.load_instance("i")
    assert meta is not None
    meta.state = "completed"
    other._index_instance = lambda *args: None  # type: ignore[method-assign]
    other.save_instance(meta)
    assert _facts(store.list_states())["i"][1] == "completed"
    assert _facts(store.list_summaries())["i"][1] == "completed"


def test_list_summaries_still_filters(tmp_path: Path) -> None:
    store = nf.DiskcacheBackend(tmp_path)
    store.save_instance(InstanceMeta("a", "wf", "hash", state="pending"))
    store.save_instance(InstanceMeta("b", "other", "hash", state="running"))
    assert [row.instance_id for row in store.list_summaries(workflow="wf")] == ["a"]
    assert [row.instance_id for row in store.list_summaries(state="running")] == ["b"]
    assert len(store.list_states()) == 2
