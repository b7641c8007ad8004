"""Group commit: quick tasks' records written together, each reported done only once durable.

What is checked: the records all land, in fewer transactions than tasks; a task is
announced (``TaskFinished``) only when another handle on the store can read its record;
the window is kept while the engine runs a long task; a kill -9 loses nothing that was
reported done and the resume completes exactly; a batch that cannot be written fails
the run with the store's error; every kind of step behaves as without grouping; bad
windows are refused.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.errors import StoreFullError
from nbflow.run import events as ev
from nbflow.run.group_commit import GroupCommit
from nbflow.store.base import CheckpointRecord
from tests.integration import crash

WINDOW = 0.005


def _chain(n: int, name: str = "gc") -> Any:
    return _chain_of_fn(lambda x: x + 1, n, name)


def _record(task_id: str) -> CheckpointRecord:
    return CheckpointRecord(task_id, "fp", "pickle", preview="1")


def _sink(backend: Any, instance_id: str, data: bytes = b"\x80\x05K\x01.") -> Any:
    sink = backend.new_sink(instance_id)
    sink.write(data)
    return sink


def _start_instance(backend: Any, tmp: Path) -> None:
    """An instance the group can write into (its meta and generation exist)."""
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(_chain(1), "i", 0).state == nf.RunState.COMPLETED


def test_queued_records_are_written_together_and_announced_after_the_commit(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    _start_instance(backend, tmp_path)
    group = GroupCommit(backend, "i", 0.05)
    seen: list[tuple[str, bool]] = []

    def durable(task_id: str) -> None:
        # read through another handle: only what is committed is visible there
        other = nf.DiskcacheBackend(tmp_path / "store")
        try:
            seen.append((task_id, other.get_record("i", task_id) is not None))
        finally:
            other.close()

    try:
        for tid in ("a", "b", "c"):
            group.add(_record(tid), _sink(backend, "i"), lambda tid=tid: durable(tid))
        assert group.pending == 3 and seen == []  # nothing announced before the write
        group.flush()
        assert seen == [("a", True), ("b", True), ("c", True)]
        assert group.batches == 1 and group.pending == 0
    finally:
        group.close()
        backend.close()


def test_a_runner_with_group_commit_stores_every_record_in_fewer_commits(backend: Any) -> None:
    n = 300
    durable_at_announce: list[bool] = []
    runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=WINDOW)
    runner.subscribe(
        lambda e: durable_at_announce.append(backend.get_record("i", e.task_id) is not None),  # type: ignore[attr-defined]
        kinds=[ev.TaskFinished],
    )
    status = runner.run(_chain(n), "i", 0)
    assert status.state == nf.RunState.COMPLETED and status.output == n
    assert len(durable_at_announce) == n and all(durable_at_announce)
    records = backend.get_records("i")
    assert {f"t{i}" for i in range(n)} <= set(records)
    # a resume finds every task done: nothing runs again
    ran: list[str] = []
    again = nf.CheckpointingRunner(backend, echo_output=False, conflict_policy="use_existing")
    again.subscribe(lambda e: ran.append(e.task_id), kinds=[ev.TaskStarted])  # type: ignore[attr-defined]
    assert again.run(_chain(n), "i", 0).output == n
    assert ran == []


def test_batches_are_fewer_than_tasks(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    writes: list[int] = []
    real = backend.put_records

    def counting(instance_id: str, items: Any) -> Any:
        writes.append(len(items))
        return real(instance_id, items)

    backend.put_records = counting  # type: ignore[method-assign]
    try:
        runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=0.02)
        assert runner.run(_chain(400), "i", 0).output == 400
    finally:
        backend.close()
    grouped = [size for size in writes if size > 1]
    assert sum(grouped) + writes.count(1) >= 400
    assert len(writes) < 400 / 2, f"{len(writes)} writes for 400 tasks: nothing was grouped"


def test_the_window_is_kept_while_the_next_task_runs_long(tmp_path: Path) -> None:
    """t0's record is written by the timer while t1 is still running, not at t1's end."""
    seen_durable = threading.Event()
    directory = tmp_path / "store"

    def long_task(x: int) -> int:
        other = nf.DiskcacheBackend(directory)
        try:
            for _ in range(500):  # up to 10 s; ends as soon as t0's record can be read
                if other.get_record("i", "t0") is not None:
                    seen_durable.set()
                    break
                threading.Event().wait(0.02)
        finally:
            other.close()
        return x + 1

    wf = nf.Workflow("long").then("t0", lambda x: x + 1).then("t1", long_task).build()
    backend = nf.DiskcacheBackend(directory)
    try:
        runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=WINDOW)
        assert runner.run(wf, "i", 0).output == 2
    finally:
        backend.close()
    assert seen_durable.is_set(), "t0's record was not written while t1 ran"


class _FullAfter(nf.InMemoryBackend):
    """An in-memory store whose disk "fills up" after ``ok`` multi-record writes."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def put_records(self, instance_id: str, items: Any) -> Any:
        if len(items) > 1 or self.ok <= 0:
            if self.ok <= 0:
                raise StoreFullError("/store", "No space left on device", instance_id)
            self.ok -= 1
        return super().put_records(instance_id, items)


def test_a_batch_that_cannot_be_written_fails_the_run_with_the_stores_error() -> None:
    backend = _FullAfter(ok=2)
    announced: list[str] = []
    runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=0.02)
    runner.subscribe(lambda e: announced.append(e.task_id), kinds=[ev.TaskFinished])  # type: ignore[attr-defined]
    with pytest.raises(StoreFullError, match="No space left"):
        runner.run(_chain(2000), "i", 0)
    stored = set(backend.get_records("i"))
    assert set(announced) <= stored  # nothing was reported done that is not stored
    assert len(stored) < 2000


def _mixed() -> Any:
    def body(state: dict[str, int]) -> Any:
        n = state["n"] + 1
        return nf.LoopResult.done({"n": n}) if n >= 3 else nf.LoopResult.again({"n": n})

    return (
        nf.Workflow("mixed")
        .then("start", lambda x: x + 1)
        .fork()
        .branch("a", lambda x: x * 2)
        .branch("b", lambda x: x * 3)
        .join("both", lambda d: d["a"] + d["b"])
        .then("items", lambda x: list(range(x)))
        .map("sq", lambda v: v * v)
        .then("total", sum)
        .then("wrap", lambda t: {"n": 0, "t": t})
        .loop("count", body, max_iterations=10)
        .build()
    )


def test_every_kind_of_step_ends_as_without_grouping(backend: Any) -> None:
    plain = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False).run(_mixed(), "p", 1)
    grouped = nf.CheckpointingRunner(backend, echo_output=False, group_commit=WINDOW).run(_mixed(), "g", 1)
    assert plain.state == grouped.state == nf.RunState.COMPLETED
    assert grouped.output == plain.output
    resumed = nf.CheckpointingRunner(backend, echo_output=False, conflict_policy="use_existing").run(_mixed(), "g", 1)
    assert resumed.output == plain.output


@pytest.mark.parametrize("window", [-0.001, 0.5, True, "2ms", float("nan")])
def test_a_bad_window_is_refused_with_what_to_give(window: Any) -> None:
    with pytest.raises(nf.ConfigurationError, match="group_commit"):
        nf.CheckpointingRunner(nf.InMemoryBackend(), group_commit=window)


_CHILD = """
import json, sys
import nbflow as nf
store, n = sys.argv[1], int(sys.argv[2])
builder = nf.Workflow("killed")
for i in range(n):
    builder.then(f"t{i}", lambda x: x + 1)
wf = builder.build()
runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False, group_commit=0.01,
                                conflict_policy="use_existing")
import threading
from nbflow.run import events as ev
lock = threading.Lock()  # TaskFinished comes from the group's timer thread too: whole lines
def say(word, event):
    with lock:
        sys.stdout.write(f"{word} {event.task_id}\\n")
        sys.stdout.flush()
runner.subscribe(lambda e: say("done", e), kinds=[ev.TaskFinished])
runner.subscribe(lambda e: say("ran", e), kinds=[ev.TaskStarted])
status = runner.run(wf, "i", 0)
print(json.dumps({"state": str(status.state.value), "output": status.output}), flush=True)
"""


def test_kill_9_loses_nothing_reported_done_and_the_resume_is_exact(tmp_path: Path) -> None:
    n = 20_000  # far more than can run before the kill (the pipe holds a few thousand lines)
    script = crash.write_script(tmp_path / "child.py", _CHILD)
    store = tmp_path / "store"
    proc = crash.spawn(script, store, n)
    reported: list[str] = []
    assert proc.stdout is not None

    def enough() -> bool:
        while len(reported) < 3000:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                return False  # the child ended: kill_when reports it
            if line.startswith("done "):
                reported.append(line.split()[1])
        return True

    crash.kill_when(proc, enough, "reported 3,000 tasks done")
    backend = nf.DiskcacheBackend(store)
    try:
        stored = set(backend.get_records("i"))
    finally:
        backend.close()
    missing = [t for t in reported if t not in stored]
    assert not missing, f"reported done but lost: {missing[:5]}"
    done = crash.run(script, store, n, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"state": "completed", "output": n}
    ran_again = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("ran ")}
    assert not ran_again & set(reported), "a task reported done ran again"


def test_a_pause_mid_run_keeps_every_task_that_finished_and_the_resume_runs_each_once(backend: Any) -> None:
    """Tasks queued in a batch when the pause lands are written before the run ends paused."""
    ran: list[int] = []
    gate, halfway = threading.Event(), threading.Event()

    def step(x: int) -> int:
        ran.append(x)
        if x == 100:
            halfway.set()
            assert gate.wait(20)
        return x + 1

    wf = _chain_of_fn(step, 300)
    runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=0.02)
    handle = runner.start(wf, "p", 0)
    assert halfway.wait(20)
    nf.WorkflowClient(backend).pause("p", by="test")
    gate.set()
    assert handle.wait(30).state == nf.RunState.PAUSED
    done = {t for t in backend.get_records("p") if t.startswith("t")}
    assert {f"t{i}" for i in range(101)} <= done  # t0..t100 finished before the pause took effect
    nf.WorkflowClient(backend).unpause("p")
    assert nf.CheckpointingRunner(backend, echo_output=False, group_commit=0.02).resume(wf, "p").output == 300
    assert sorted(ran) == list(range(300))  # every task ran exactly once across both runs


def _chain_of_fn(fn: Any, n: int, name: str = "paused") -> Any:
    builder = nf.Workflow(name)
    for i in range(n):
        builder.then(f"t{i}", fn)
    return builder.build()


def test_tasks_done_before_a_failure_are_announced_before_it(backend: Any) -> None:
    def boom(x: int) -> int:
        raise ValueError("no")

    wf = nf.Workflow("fails").then("a", lambda x: x + 1).then("b", lambda x: x + 1).then("c", boom).build()
    seen: list[tuple[str, str]] = []
    runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=0.05)
    runner.subscribe(lambda e: seen.append((type(e).__name__, e.task_id)), kinds=[ev.TaskFinished, ev.TaskFailed])  # type: ignore[attr-defined]
    assert runner.run(wf, "f", 0).state == nf.RunState.FAILED
    assert seen == [("TaskFinished", "a"), ("TaskFinished", "b"), ("TaskFailed", "c")]
    assert {"a", "b"} <= set(backend.get_records("f"))
