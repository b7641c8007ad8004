"""Resume inside a task: ``ctx.checkpoint(state)`` / ``ctx.restore(default)``.

A task saves its own state durably (through the instance's codec, as the record
``state_id(task_id)``); its next attempt — a retry, or a resume after a crash — starts
from it; once the task's output is stored the state is dropped. Counted DBOS-style with
nonlocal counters: steps before the failure run once in all.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.errors import CodecError
from nbflow.core.keys import state_id
from nbflow.core.status import LoopResult


def stepper(counts: dict[int, int], fail_at: dict[str, int | None], steps: int = 6) -> Any:
    """A task of ``steps`` steps that saves {"step": i} after each; raises at step
    ``fail_at["step"]`` (once)."""

    def train(x: int) -> int:
        ctx = nf.get_task_context()
        state = ctx.restore({"step": 0, "total": 0})
        for i in range(state["step"], steps):
            if fail_at["step"] == i:
                fail_at["step"] = None
                raise RuntimeError(f"crash at step {i}")
            counts[i] = counts.get(i, 0) + 1
            state = {"step": i + 1, "total": state["total"] + x * i}
            ctx.checkpoint(state)
            ctx.progress(i + 1, steps)
        return int(state["total"])

    return train


def test_a_retry_continues_from_the_saved_state(backend: Any) -> None:
    counts: dict[int, int] = {}
    train = stepper(counts, {"step": 4})
    wf = nf.Workflow("ck").then(train, retries=nf.RetryPolicy(1, initial_delay=0)).build()
    status = nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 2)
    assert status.state == "completed" and status.output == 2 * sum(range(6))
    assert counts == dict.fromkeys(range(6), 1)  # no step ran twice
    assert backend.get_record("i", state_id("train")) is None  # dropped with the task's output


def test_a_resume_after_a_failure_continues_from_the_saved_state(backend: Any) -> None:
    counts: dict[int, int] = {}
    fail = {"step": 3}
    wf = nf.Workflow("ck").then(stepper(counts, fail)).then("after", lambda t: t + 1).build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "i", 1).state == "failed"
    saved = backend.get_record("i", state_id("train"))
    assert saved is not None and saved.codec == "pickle" and saved.fingerprint
    status = nf.CheckpointingRunner(backend, echo_output=False).resume(wf, "i")  # a new runner, as after a restart
    assert status.output == sum(range(6)) + 1
    assert counts == dict.fromkeys(range(6), 1)
    assert state_id("train") not in backend.get_records("i")


def test_changed_code_starts_the_state_over(backend: Any) -> None:
    counts: dict[int, int] = {}
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.run(nf.Workflow("ck").then(stepper(counts, {"step": 3})).build(), "i", 1)

    def train(x: int) -> int:  # a fix: another fingerprint
        return nf.get_task_context().restore({"step": "fresh"})["step"]

    assert runner.resume(nf.Workflow("ck").then(train).build(), "i").output == "fresh"


def test_a_rerun_upstream_starts_the_state_over(backend: Any) -> None:
    counts: dict[int, int] = {}
    fail = {"step": 3}
    wf = nf.Workflow("ck").then("data", lambda x: x).then(stepper(counts, fail)).build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "i", 1).state == "failed"
    counts.clear()
    status = runner.rerun_from(wf, "i", "data")  # its input is new: the saved state is not for it
    assert status.state == "completed" and counts == dict.fromkeys(range(6), 1)


def test_json_codec_and_unencodable_states(backend: Any) -> None:
    def keeps(x: int) -> Any:
        ctx = nf.get_task_context()
        ctx.checkpoint({"epoch": 3, "loss": [0.5, 0.25]})
        assert ctx.restore(None) == {"epoch": 3, "loss": [0.5, 0.25]}
        with pytest.raises(CodecError):
            ctx.checkpoint({"a set": {1, 2}})  # JSON cannot hold it: the task is told at once
        raise RuntimeError("stop here")

    ctx = nf.WorkflowContext("js", codec=nf.JsonCodec())
    wf = nf.WorkflowBuilder(ctx).then(keeps).build()
    nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 1)
    record = backend.get_record("i", state_id("keeps"))
    assert record is not None and record.codec == "json"


def test_large_states_go_through_the_large_output_path(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    backend = nf.DiskcacheBackend(tmp_path / "s")
    weights = np.arange(2_000_000, dtype=np.float64)  # 16 MB: a file, not an inline row
    crash = {"on": True}

    def fit(x: int) -> float:
        ctx = nf.get_task_context()
        w = ctx.restore(None)
        if w is None:
            ctx.checkpoint(weights)
        if crash["on"]:
            raise RuntimeError("killed after saving")
        return float(w.sum())

    wf = nf.Workflow("big").then(fit).build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "i", 1).state == "failed"
    record = backend.get_record("i", state_id("fit"))
    assert record is not None and record.blob and record.payload is None and record.size >= weights.nbytes
    blob = next(p for p in (tmp_path / "s").rglob(record.blob))
    crash["on"] = False
    assert runner.resume(wf, "i").output == float(weights.sum())
    assert backend.get_record("i", state_id("fit")) is None and not blob.exists()  # dropped, file and all
    backend.close()


def test_map_items_and_loop_bodies_keep_their_own_states(backend: Any) -> None:
    counts: dict[tuple[int, int], int] = {}
    crashed: set[int] = set()

    def item(x: int) -> int:
        ctx = nf.get_task_context()
        state = ctx.restore({"step": 0})
        for i in range(state["step"], 4):
            if x == 2 and i == 2 and x not in crashed:
                crashed.add(x)
                raise RuntimeError("item 2 crashes at step 2")
            counts[(x, i)] = counts.get((x, i), 0) + 1
            state = {"step": i + 1}
            ctx.checkpoint(state)
        return x * 10

    rounds: dict[int, int] = {}

    def body(n: int) -> LoopResult:
        ctx = nf.get_task_context()
        step = ctx.restore(0)
        for i in range(step, 3):
            rounds[n * 10 + i] = rounds.get(n * 10 + i, 0) + 1
            ctx.checkpoint(i + 1)
            if n == 1 and i == 1 and ctx.attempt == 1:
                raise RuntimeError("iteration 2 crashes")
        return LoopResult.done(n) if n >= 2 else LoopResult.again(n + 1)

    wf = (
        nf.Workflow("mapped")
        .then("xs", lambda n: list(range(n)))
        .map("sq", item, retries=nf.RetryPolicy(1, initial_delay=0))
        .then("first", lambda xs: 0)
        .loop("grow", body, max_iterations=5, retries=nf.RetryPolicy(1, initial_delay=0))
        .build()
    )
    status = nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 4)
    assert status.state == "completed", status.error
    assert all(n == 1 for n in counts.values()) and len(counts) == 16
    assert all(n == 1 for n in rounds.values()) and len(rounds) == 9
    assert not [rid for rid in backend.get_records("i") if rid.endswith("#state")]


def test_an_abandoned_attempt_cannot_save_a_state(backend: Any) -> None:
    """A sync task that timed out keeps running in its thread; its later checkpoint
    must not land (the next attempt would restore a state it never made)."""
    done = threading.Event()
    outcome: list[str] = []

    def slow(x: int) -> int:
        ctx = nf.get_task_context()
        if ctx.attempt == 1:
            try:
                time.sleep(0.6)
                ctx.checkpoint("late")
                outcome.append("saved")
            except BaseException as exc:
                outcome.append(type(exc).__name__)
                raise
            finally:
                done.set()
        return ctx.restore("fresh")

    wf = nf.Workflow("to").then(slow, timeout=0.2, retries=nf.RetryPolicy(1, initial_delay=0)).build()
    status = nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 1)
    assert status.output == "fresh"
    assert done.wait(10) and outcome == ["CancelledError"]
    assert backend.get_record("i", state_id("slow")) is None


def test_pooled_workers_continue_from_saved_states(backend: Any) -> None:
    counts: dict[int, int] = {}
    wf = (
        nf.Workflow("pool")
        .then(stepper(counts, {"step": 2}), retries=nf.RetryPolicy(1, initial_delay=0))
        .then("xs", lambda t: list(range(3)))
        .map("sq", lambda x: x * x)
        .build()
    )
    client = nf.WorkflowClient(backend)
    client.submit(wf, "p", 3)
    worker = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05)
    handle = worker.start(until_idle=True)
    handle.join(60)
    status = client.status("p")
    assert status.state == "completed", status
    assert counts == dict.fromkeys(range(6), 1)
    assert not [rid for rid in backend.get_records("p") if rid.endswith("#state")]


def test_a_context_made_by_hand_keeps_its_state_in_memory() -> None:
    ctx = nf.TaskContext("wf", "i", "t", 1)
    assert ctx.restore("default") == "default"
    ctx.checkpoint({"step": 2})
    ctx.progress(2, 4)
    assert ctx.restore(None) == {"step": 2}


# -- remote bodies ------------------------------------------------------------------------------
def _remote_train(x: int) -> int:
    import os

    ctx = nf.get_task_context()
    state = ctx.restore({"step": 0, "pids": []})
    for i in range(state["step"], 5):
        print(f"step {i}")
        state = {"step": i + 1, "pids": [*state["pids"], os.getpid()]}
        ctx.checkpoint(state)
        ctx.progress(i + 1, 5)
        if i == 2 and ctx.attempt == 1:
            raise RuntimeError("crash at step 2")
    return len(state["pids"])


@pytest.mark.slow
def test_process_executor_ships_states_back(tmp_path: Path) -> None:
    from nbflow.run import events as ev

    backend = nf.DiskcacheBackend(tmp_path / "s")
    with nf.ProcessExecutor(1) as executor:
        runner = nf.CheckpointingRunner(backend, echo_output=False, executor=executor)
        events: list[ev.RunEvent] = []
        runner.subscribe(events.append)
        wf = nf.Workflow("px").then(_remote_train, retries=nf.RetryPolicy(1, initial_delay=0)).build()
        status = runner.run(wf, "i", 1)
    assert status.state == "completed" and status.output == 5  # 5 steps in all: none twice
    live = [e for e in events if isinstance(e, ev.TaskOutput)]
    assert "step 0" in "".join(e.stdout for e in live)  # output came back while the body ran
    assert any(isinstance(e, ev.TaskProgress) and e.done == 5 for e in events)
    assert backend.get_record("i", state_id("_remote_train")) is None
    backend.close()


@pytest.mark.slow
def test_dask_executor_ships_states_back(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    backend = nf.DiskcacheBackend(tmp_path / "s")
    with (
        distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        runner = nf.CheckpointingRunner(backend, echo_output=False, executor=nf.DaskExecutor(client))
        wf = nf.Workflow("dx").then(_remote_train, retries=nf.RetryPolicy(1, initial_delay=0)).build()
        status = runner.run(wf, "i", 1)
    assert status.state == "completed" and status.output == 5
    backend.close()


def test_states_come_back_with_the_result_when_the_channel_is_unreachable(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dask worker on another machine cannot reach the runner's socket: its last state
    travels back with the failed call and the runner commits it."""
    from nbflow.run import executors, live_remote

    monkeypatch.setattr(live_remote.Channel, "get", classmethod(lambda cls: None))

    class InlineRemote:  # ships like a remote executor, runs in this process
        async def _run(self, data: bytes, hooks: Any) -> Any:
            return executors.unpack(executors.run_shipped(data), hooks)

        def submit_task(self, fn: Any, args: Any, kwargs: Any, tctx: Any) -> Any:
            return self._run(executors.ship(fn, args, kwargs, tctx), tctx.hooks)

    runner = nf.CheckpointingRunner(backend, echo_output=False, executor=InlineRemote())
    wf = nf.Workflow("nochan").then(_remote_train, retries=nf.RetryPolicy(1, initial_delay=0)).build()
    status = runner.run(wf, "i", 1)
    assert status.state == "completed" and status.output == 5


def test_round_2_names_are_public() -> None:
    """DESIGN "Additions (round 2)": nf.progress(done, total=None, note=""),
    get_task_context().progress(...), ctx.restore(default), ctx.checkpoint(state)."""
    import inspect

    assert "progress" in nf.__all__ and nf.progress is nf.core.context.progress
    assert (
        str(inspect.signature(nf.progress))
        == "(done: 'float', total: 'float | None' = None, note: 'str' = '') -> 'None'"
    )
    params = {
        name: list(inspect.signature(getattr(nf.TaskContext, name)).parameters)
        for name in ("progress", "checkpoint", "restore")
    }
    assert params == {
        "progress": ["self", "done", "total", "note"],
        "checkpoint": ["self", "state"],
        "restore": ["self", "default"],
    }
