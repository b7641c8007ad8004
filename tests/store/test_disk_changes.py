"""DiskcacheBackend's change marks: ``change_stamp`` and ``records_since``.

A PooledWorker keeps an instance's records between scans and brings them up to date
with ``records_since`` (the rows written since a stamp, found by rowid). Both rest on
one rule: after a reader saw a stamp, no record can be written without the stamp
moving and the record having a rowid above the stamp's high water. SQLite hands the
rowid of a deleted top row out again, so a deletion that lowers the high water (a
claim given back, a task state or control request cleared) renews the stamp row.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from nbflow import DiskcacheBackend
from nbflow.store.base import CheckpointRecord, InstanceMeta

IID = "inst"


def _item(store: DiskcacheBackend, task_id: str, data: bytes = b"x") -> tuple[CheckpointRecord, Any]:
    sink = store.new_sink(IID)
    sink.write(data)
    return CheckpointRecord(task_id=task_id, fingerprint="fp", codec="pickle"), sink


def _new(tmp_path: Path) -> DiskcacheBackend:
    store = DiskcacheBackend(tmp_path)
    store.save_instance(InstanceMeta(IID, "wf", "hash"))
    return store


def _same(a: dict[str, CheckpointRecord], b: dict[str, CheckpointRecord]) -> bool:
    return {k: (r.payload, r.finished_at, r.generation) for k, r in a.items()} == {
        k: (r.payload, r.finished_at, r.generation) for k, r in b.items()
    }


class Follower:
    """A reader keeping the records of IID up to date as a PooledWorker's view does."""

    def __init__(self, store: DiskcacheBackend) -> None:
        self.store, self.stamp, self.records = store, None, {}  # type: ignore[var-annotated]
        self.complete_reads = self.partial_reads = 0

    def follow(self) -> dict[str, CheckpointRecord]:
        stamp, records, complete = self.store.records_since(IID, self.stamp)
        if complete:
            self.records, self.complete_reads = dict(records), self.complete_reads + 1
        else:
            self.records.update(records)
            self.partial_reads += 1
        self.stamp = stamp  # type: ignore[assignment]
        return self.records


def test_the_stamp_moves_when_a_record_takes_the_rowid_of_a_released_claim(tmp_path: Path) -> None:
    """A claim given back without a commit was the database's top row: the next record
    takes its rowid. The stamp read while the claim was held must not match after."""
    store = _new(tmp_path)
    store.put_records(IID, [_item(store, "a")])
    for clear in ("claim", "task state", "control"):
        if clear == "claim":
            token = store.claim(IID, "b", "w1", ttl=30)
            assert token
        elif clear == "task state":
            store.save_task_state(IID, "b", {"attempts": 1})
        else:
            store.set_control(IID, "paused")
        before = store.change_stamp(IID)
        if clear == "claim":
            assert store.release_claim(IID, "b", token)
        elif clear == "task state":
            store.save_task_state(IID, "b", None)
        else:
            store.set_control(IID, None)
        store.put_records(IID, [_item(store, f"after-{clear}")])
        assert store.change_stamp(IID) != before, clear


def test_records_since_returns_only_the_records_written_since(tmp_path: Path) -> None:
    store = _new(tmp_path)
    store.put_records(IID, [_item(store, f"m[{i}]") for i in range(50)])
    stamp, records, complete = store.records_since(IID, None)
    assert complete and _same(records, store.get_records(IID)) and len(records) == 50
    assert stamp == store.change_stamp(IID)
    store.put_records(IID, [_item(store, "m[7]", b"again"), _item(store, "new")])
    later, changed, complete = store.records_since(IID, stamp)
    assert not complete
    assert sorted(changed) == ["m[7]", "new"] and changed["m[7]"].payload == b"again"
    assert later == store.change_stamp(IID) != stamp
    again, nothing, complete = store.records_since(IID, later)
    assert (again, nothing, complete) == (later, {}, False)


def test_records_since_leaves_out_the_records_the_reader_wrote_itself(tmp_path: Path) -> None:
    """``skip``: a reader that committed records since its stamp (and folded them into
    what it keeps) is not handed them again, nor are they decoded; a complete answer
    still holds every record."""
    store = _new(tmp_path)
    store.put_records(IID, [_item(store, "a")])
    stamp, _, _ = store.records_since(IID, None)
    store.put_records(IID, [_item(store, "mine"), _item(store, "theirs")])
    decoded: list[str] = []
    decode = store._decode_or_stand_in

    def counting(instance_id: str, key: str, data: Any) -> CheckpointRecord:
        decoded.append(key)
        return decode(instance_id, key, data)

    store._decode_or_stand_in = counting  # type: ignore[method-assign]
    _, changed, complete = store.records_since(IID, stamp, {"mine"})
    assert not complete and sorted(changed) == ["theirs"] and decoded == ["t:theirs"]
    _, everything, complete = store.records_since(IID, None, {"mine"})
    assert complete and sorted(everything) == ["a", "mine", "theirs"]


def test_records_since_reads_everything_after_a_deletion_or_a_start_over(tmp_path: Path) -> None:
    store = _new(tmp_path)
    store.put_records(IID, [_item(store, "a"), _item(store, "b")])
    stamp, _, _ = store.records_since(IID, None)
    store.delete_records(IID, ["a"])
    stamp, records, complete = store.records_since(IID, stamp)
    assert complete and sorted(records) == ["b"]
    store.save_instance(InstanceMeta(IID, "wf", "hash"))  # a new generation drops every record
    stamp, records, complete = store.records_since(IID, stamp)
    assert complete and records == {}
    for foreign in ("garbage", 12, "a:b", "x:notanumber:y"):  # not a stamp of this store: read everything
        _, _, complete = store.records_since(IID, foreign)
        assert complete
    assert store.records_since("absent", None) == (None, {}, True)


def test_a_follower_matches_a_full_read_after_any_sequence_of_writes(tmp_path: Path) -> None:
    """Random records, claims (committed, released, refused), task states, control
    requests and deletions from one handle; a follower on another handle, brought up to
    date after each, always holds exactly what a full read holds."""
    writer, reader = _new(tmp_path), DiskcacheBackend(tmp_path)
    follower = Follower(reader)
    rng = random.Random(7)
    tokens: dict[str, str] = {}
    for step in range(400):
        task = f"t{rng.randrange(12)}"
        op = rng.choice(["put", "claim", "commit", "release", "state", "unstate", "control", "uncontrol", "delete"])
        if op == "put":
            writer.put_records(IID, [_item(writer, task, str(step).encode())])
        elif op == "claim":
            token = writer.claim(IID, task, "w", ttl=30, seen=rng.choice([None, 0.0]))
            if token:
                tokens[task] = token
        elif op == "commit" and task in tokens:
            writer.commit_claimed(IID, task, tokens.pop(task), [_item(writer, task, b"c")], release=rng.random() < 0.5)
        elif op == "release" and task in tokens:
            writer.release_claim(IID, task, tokens.pop(task))
        elif op == "state":
            writer.save_task_state(IID, task, {"n": step})
        elif op == "unstate":
            writer.save_task_state(IID, task, None)
        elif op in ("control", "uncontrol"):
            writer.set_control(IID, "paused" if op == "control" else None)
        elif op == "delete" and rng.random() < 0.2:
            writer.delete_records(IID, [task])
        if rng.random() < 0.5:
            assert _same(follower.follow(), reader.get_records(IID)), (step, op)
    assert _same(follower.follow(), reader.get_records(IID))
    assert follower.complete_reads < 60  # most catch-ups read only what changed


_WRITER = textwrap.dedent(
    """
    import random, sys
    from nbflow import DiskcacheBackend
    from nbflow.store.base import CheckpointRecord
    store, name, iid = DiskcacheBackend(sys.argv[1]), sys.argv[2], "inst"
    rng = random.Random(name)
    def item(tid, data):
        sink = store.new_sink(iid)
        sink.write(data)
        return CheckpointRecord(task_id=tid, fingerprint="fp", codec="pickle"), sink
    for n in range(300):
        task = f"{name}-{rng.randrange(40)}"
        token = store.claim(iid, task, name, ttl=30, seen=None)
        stored = store.get_record(iid, task)
        if token is None and stored is not None:
            token = store.claim(iid, task, name, ttl=30, seen=stored.finished_at)
        if token is None:
            continue
        if rng.random() < 0.3:
            store.release_claim(iid, task, token)  # given back: the next record may take its rowid
        else:
            assert store.commit_claimed(iid, task, token, [item(task, str(n).encode())], release=rng.random() < 0.7)
            if rng.random() < 0.5:
                store.release_claim(iid, task, token)
    print("done")
    """
)


def test_a_follower_keeps_up_with_two_writer_processes(tmp_path: Path) -> None:
    """Two processes claim, commit and give back claims on one instance while this one
    follows its records; once they are done, the follower holds what a full read does."""
    _new(tmp_path)
    reader = DiskcacheBackend(tmp_path)
    follower = Follower(reader)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name], stdout=subprocess.PIPE, text=True)
        for name in ("w1", "w2")
    ]
    while any(p.poll() is None for p in procs):
        follower.follow()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all("done" in out for out in outputs)
    final = follower.follow()
    assert _same(final, reader.get_records(IID))
    assert len(final) > 40  # both wrote
    assert follower.partial_reads > 0  # and the follower read only what changed, mostly
