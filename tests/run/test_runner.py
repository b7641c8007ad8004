"""CheckpointingRunner on both stores: run, resume, rerun_from, start, run_async,
conflict policies, code changes, retries, timeouts, task context, output capture."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import nbflow as nf
from nbflow.run import events as ev


def chain(name: str, n: int, counts: dict[str, int], fail_at: dict[str, bool] | None = None) -> nf.WorkflowDefinition:
    """x -> x+1 -> ... n times; counts executions per task id."""
    builder = nf.Workflow(name)
    for i in range(n):
        tid = f"t{i}"

        def step(x: int, tid: str = tid) -> int:
            counts[tid] = counts.get(tid, 0) + 1
            if fail_at and fail_at.get(tid):
                raise RuntimeError(f"{tid} broke")
            return x + 1

        builder.then(tid, step, version="1")
    return builder.build()


# -- run and outputs --------------------------------------------------------------------
def test_run_chain_returns_output(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    status = runner.run(chain("c", 5, counts), "i", 10)
    assert status.state == nf.RunState.COMPLETED and status.state == "completed"
    assert status.output == 15
    assert status.is_completed() and status.error is None
    assert (status.tasks_done, status.tasks_total) == (5, 5)
    assert counts == {f"t{i}": 1 for i in range(5)}
    stored = runner.status("i")
    assert stored.state == "completed" and stored.output == 15


def test_fork_join_output_and_multiple_sinks(runner: nf.CheckpointingRunner) -> None:
    wf = (
        nf.Workflow("f")
        .then("load", lambda x: list(range(x)))
        .fork()
        .branch("total", sum)
        .branch(("top", max), ("double", lambda m: m * 2))
        .join("report", lambda parts: parts)
        .build()
    )
    assert runner.run(wf, "i", 5).output == {"total": 10, "top": 8}
    two_sinks = (
        nf.Workflow("s")
        .then("a", lambda x: x)
        .fork()
        .branch("b", lambda x: x + 1)
        .branch("c", lambda x: x + 2)
        .join("j", lambda d: d)
        .build()
    )
    assert runner.run(two_sinks, "j", 1).output == {"b": 2, "c": 3}
    multi = nf.WorkflowBuilder("m").add("p", lambda: 1).add("q", lambda: 2).build()
    assert runner.run(multi, "k").output == {"p": 1, "q": 2}


def test_kwargs_mode_with_input_items(runner: nf.CheckpointingRunner) -> None:
    def load(path, sep):
        return path.split(sep)

    def count(load):
        return len(load)

    wf = (
        nf.WorkflowBuilder("cell")
        .add(count, inputs={"load": "load"})
        .add(load, inputs={"path": nf.InputRef("path"), "sep": nf.InputRef("sep")})
        .build()
    )
    assert runner.run(wf, "i", {"path": "a,b,c", "sep": ","}).output == 3


def test_async_tasks(runner: nf.CheckpointingRunner) -> None:
    async def fetch(x):
        await asyncio.sleep(0)
        return x * 2

    wf = (
        nf.Workflow("a")
        .then(fetch)
        .fork()
        .branch("p", fetch)
        .branch("q", lambda x: x + 1)
        .join("j", lambda d: d)
        .build()
    )
    assert runner.run(wf, "i", 1).output == {"p": 4, "q": 3}


# -- conflict policies ------------------------------------------------------------------
def test_conflict_fail_is_the_default(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    wf = chain("c", 2, counts)
    runner.run(wf, "i", 0)
    with pytest.raises(nf.InstanceExistsError):
        runner.run(wf, "i", 0)
    assert counts == {"t0": 1, "t1": 1}
    assert not runner.backend.is_locked("i")  # the refused run released its lock


def test_conflict_use_existing_returns_finished_output(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    wf = chain("c", 3, counts)
    runner.run(wf, "i", 0)
    again = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING).run(wf, "i", 999)
    assert again.state == "completed" and again.output == 3  # the stored input wins
    assert counts == {"t0": 1, "t1": 1, "t2": 1}
    assert runner.conflict_policy is nf.ConflictPolicy.FAIL  # with_ returns a copy


def test_conflict_use_existing_continues_failed(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    broken = {"t1": True}
    wf = chain("c", 3, counts, broken)
    assert runner.run(wf, "i", 0).state == "failed"
    broken["t1"] = False
    status = runner.with_conflict_policy("use_existing").run(wf, "i", 0)
    assert status.output == 3
    assert counts == {"t0": 1, "t1": 2, "t2": 1}


def test_conflict_terminate_existing_starts_over(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    wf = chain("c", 2, counts)
    runner.run(wf, "i", 0)
    status = runner.with_conflict_policy(nf.ConflictPolicy.TERMINATE_EXISTING).run(wf, "i", 100)
    assert status.output == 102
    assert counts == {"t0": 2, "t1": 2}


def test_from_shared_and_backend(backend: Any) -> None:
    runner = nf.CheckpointingRunner.from_shared(backend, echo_output=False)
    assert runner.backend is backend
    runner.run(nf.Workflow("w").then("a", lambda x: x).build(), "i", 1)
    assert nf.WorkflowClient(backend).status("i").output == 1


def test_second_runner_on_a_running_instance_is_refused(runner: nf.CheckpointingRunner) -> None:
    gate, entered = threading.Event(), threading.Event()

    def slow(x):
        entered.set()
        gate.wait(30)
        return x

    wf = nf.Workflow("w").then(slow).build()
    handle = runner.start(wf, "i", 1)
    try:
        assert entered.wait(30)
        other = nf.CheckpointingRunner(runner.backend).with_conflict_policy("use_existing")
        with pytest.raises(nf.InstanceLockedError) as err:
            other.run(wf, "i", 1)
        assert "'i'" in str(err.value)
        with pytest.raises(nf.InstanceLockedError):
            other.resume(wf, "i")
    finally:
        gate.set()
    assert handle.wait(30).output == 1


# -- resume -----------------------------------------------------------------------------
def test_resume_failed_instance_reruns_failed_task_after_fix(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    broken = {"t2": True}
    wf = chain("c", 5, counts, broken)
    status = runner.run(wf, "i", 0)
    assert status.state == "failed"
    assert status.error.task_id == "t2" and status.error.type == "RuntimeError"
    assert "t2 broke" in status.error.message and "Traceback" in status.error.traceback
    assert runner.status("i").state == "failed"
    assert runner.status("i").error.task_id == "t2"
    broken["t2"] = False  # "fix" the task
    resumed = runner.resume(wf, "i")
    assert resumed.state == "completed" and resumed.output == 5
    assert counts == {"t0": 1, "t1": 1, "t2": 2, "t3": 1, "t4": 1}
    # Resuming a completed instance runs nothing.
    assert runner.resume(wf, "i").output == 5
    assert sum(counts.values()) == 6


def test_resume_with_a_rebuilt_workflow(runner: nf.CheckpointingRunner) -> None:
    """A notebook rebuilds the workflow from the same code: checkpoints stay valid."""
    counts: dict[str, int] = {}
    broken = {"t3": True}
    runner.run(chain("c", 4, counts, broken), "i", 0)
    broken["t3"] = False
    assert runner.resume(chain("c", 4, counts, broken), "i").output == 4
    assert counts == {"t0": 1, "t1": 1, "t2": 1, "t3": 2}


def test_shape_change_is_refused_with_what_changed(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    runner.run(chain("c", 3, counts, {"t2": True}), "i", 0)
    with pytest.raises(nf.ShapeChangedError) as err:
        runner.resume(chain("c", 4, counts), "i")
    assert "'t3' added" in str(err.value) and "TERMINATE_EXISTING" in str(err.value)
    with pytest.raises(nf.ShapeChangedError) as err:
        runner.resume(chain("c", 2, counts), "i")
    assert "'t2' removed" in str(err.value)
    rewired = nf.Workflow("c").then("t0", lambda x: x).then("t2", lambda x: x).then("t1", lambda x: x).build()
    with pytest.raises(nf.ShapeChangedError) as err:
        runner.resume(rewired, "i")
    assert "inputs of task" in str(err.value)
    assert not runner.backend.is_locked("i")


CALLS: dict[str, int] = {}  # a global, not a closure: closure values are part of a task's fingerprint


def test_on_change_rerun_reruns_changed_task_and_descendants(runner: nf.CheckpointingRunner) -> None:
    CALLS.clear()
    CALLS.update(dict.fromkeys("abcde", 0))

    def a(x):
        CALLS["a"] += 1
        return x + 1

    def make(factor: int) -> nf.WorkflowDefinition:
        def b(x):
            CALLS["b"] += 1
            return x * factor

        def e(v):
            CALLS["e"] += 1
            return v + 1000

        def c(x):
            CALLS["c"] += 1
            return x - 1

        def d(parts):
            CALLS["d"] += 1
            return parts

        return nf.Workflow("diamond").then(a).fork().branch(b, e).branch(c).join(d).build()

    assert runner.run(make(2), "i", 1).output == {"b": 1004, "c": 1}
    assert runner.plan(make(2), "i") == dict.fromkeys("abecd", "restore")
    assert runner.plan(make(3), "i") == {"a": "restore", "b": "stale", "e": "stale", "c": "restore", "d": "stale"}
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    status = runner.resume(make(3), "i")  # a closure value changed: b's code "changed"
    assert status.output == {"b": 1006, "c": 1}
    assert CALLS == {"a": 1, "b": 2, "e": 2, "c": 1, "d": 2}
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.plan["b"] == "stale" and started.resumed
    assert {e.task_id for e in events if isinstance(e, ev.TaskRestored)} == {"a", "c"}


def test_on_change_fail_refuses(backend: Any) -> None:
    strict = nf.CheckpointingRunner(backend, on_change="fail", echo_output=False)
    wf1 = nf.Workflow("w").then("a", lambda x: x + 1).then("b", lambda x: x * 2).build()
    wf2 = nf.Workflow("w").then("a", lambda x: x + 1).then("b", lambda x: x * 3).build()
    strict.run(wf1, "i", 1)
    with pytest.raises(nf.TaskChangedError) as err:
        strict.resume(wf2, "i")
    assert "'b'" in str(err.value) and "on_change='rerun'" in str(err.value)
    assert strict.resume(wf1, "i").output == 4  # unchanged code is fine


def test_rerun_from_reruns_task_and_downstream(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    wf = chain("c", 5, counts)
    runner.run(wf, "i", 0)
    status = runner.rerun_from(wf, "i", "t2")
    assert status.output == 5
    assert counts == {"t0": 1, "t1": 1, "t2": 2, "t3": 2, "t4": 2}


def test_input_is_stored_and_reused_on_resume(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    broken = {"t0": True}
    wf = chain("c", 1, counts, broken)
    runner.run(wf, "i", 41)
    broken["t0"] = False
    assert runner.resume(wf, "i").output == 42


# -- background runs and async ----------------------------------------------------------
def test_start_wait_and_status(runner: nf.CheckpointingRunner) -> None:
    gate = threading.Event()

    def wait_for_gate(x):
        gate.wait(30)
        return x + 1

    wf = nf.Workflow("bg").then("first", lambda x: x).then("gated", wait_for_gate).build()
    handle = runner.start(wf, "i", 1)
    assert handle.status.state == "running"
    assert not handle.done()
    assert nf.WorkflowClient(runner.backend).is_running("i")
    gate.set()
    status = handle.wait(30)
    assert status.output == 2 and handle.done()
    assert handle.status.state == "completed"
    assert not nf.WorkflowClient(runner.backend).is_running("i")


def test_start_cancel_then_resume(runner: nf.CheckpointingRunner) -> None:
    counts = {"first": 0, "slow": 0, "last": 0}
    entered = threading.Event()
    hold = [True]

    def first(x):
        counts["first"] += 1
        return x

    def slow(x):
        counts["slow"] += 1
        entered.set()
        ctx = nf.get_task_context()
        for _ in range(3000):
            if not hold[0]:
                break
            if ctx.cancelled:
                raise RuntimeError("stopped")
            threading.Event().wait(0.01)
        return x

    def last(x):
        counts["last"] += 1
        return x + 1

    wf = nf.Workflow("bg").then(first).then(slow).then(last).build()
    handle = runner.start(wf, "i", 1)
    assert entered.wait(30)
    handle.cancel()
    status = handle.wait(30)
    assert status.state == "cancelled"
    assert runner.status("i").state == "cancelled"
    assert counts["last"] == 0
    assert not runner.backend.is_locked("i")
    hold[0] = False
    # A plain resume leaves a cancelled instance alone; revived, it runs the cancelled
    # task again (it never checkpointed) but not `first`.
    assert runner.resume(wf, "i").state == "cancelled" and counts["slow"] == 1
    status = runner.resume(wf, "i", revive=True)
    assert status.state == "completed" and status.output == 2
    assert counts == {"first": 1, "slow": 2, "last": 1}


def test_run_async_inside_a_running_loop(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    wf = chain("c", 3, counts)

    async def main() -> tuple[nf.WorkflowStatus, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.get_running_loop().create_task(ticker())
        status = await runner.run_async(wf, "i", 1)
        resumed = await runner.resume_async(wf, "i")
        t.cancel()
        assert resumed.output == status.output
        return status, ticks

    status, ticks = asyncio.run(main())
    assert status.output == 4
    assert ticks > 0  # the caller's loop was not blocked meanwhile


def test_blocking_run_from_inside_a_running_loop(runner: nf.CheckpointingRunner) -> None:
    """Jupyter runs cells inside an event loop; ``runner.run`` must still work there."""
    counts: dict[str, int] = {}
    wf = chain("c", 3, counts)

    async def cell() -> nf.WorkflowStatus:
        return runner.run(wf, "i", 1)

    assert asyncio.run(cell()).output == 4


# -- retries and timeouts ---------------------------------------------------------------
def test_retries_with_backoff(runner: nf.CheckpointingRunner) -> None:
    attempts: list[int] = []

    @nf.task(retries=nf.RetryPolicy(max_retries=3, initial_delay=0.001, backoff=2))
    def flaky(x):
        attempts.append(nf.get_task_context().attempt)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x

    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    status = runner.run(nf.Workflow("r").then(flaky).build(), "i", 7)
    assert status.output == 7
    assert attempts == [1, 2, 3]
    retrying = [e for e in events if isinstance(e, ev.TaskRetrying)]
    assert [e.attempt for e in retrying] == [1, 2]
    assert [e.delay for e in retrying] == [0.001, 0.002]
    assert "ConnectionError" in retrying[0].error
    assert runner.backend.get_record("i", "flaky").attempt == 3


def test_retries_exhausted_fail_with_last_attempt(runner: nf.CheckpointingRunner) -> None:
    calls = 0

    def always(x):
        nonlocal calls
        calls += 1
        raise ValueError(f"bad {calls}")

    wf = nf.Workflow("r").then(always, retries=nf.RetryPolicy(2, initial_delay=0.001)).build()
    status = runner.run(wf, "i", 1)
    assert status.state == "failed" and calls == 3
    assert status.error.attempt == 3 and status.error.message == "bad 3"


def test_sync_timeout_is_recorded(runner: nf.CheckpointingRunner) -> None:
    release = threading.Event()

    @nf.task(timeout="50ms")
    def hangs(x):
        release.wait(30)
        return x

    try:
        status = runner.run(nf.Workflow("t").then(hangs).build(), "i", 1)
    finally:
        release.set()
    assert status.state == "failed"
    assert status.error.type == "TaskTimeoutError" and status.error.task_id == "hangs"
    assert "timeout" in status.error.message
    assert runner.status("i").error.type == "TaskTimeoutError"


def test_async_timeout_with_retry(runner: nf.CheckpointingRunner) -> None:
    calls = 0

    async def sometimes_slow(x):
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(30)
        return x

    wf = nf.Workflow("t").then(sometimes_slow, timeout=0.05, retries=nf.RetryPolicy(1, initial_delay=0)).build()
    status = runner.run(wf, "i", 3)
    assert status.output == 3 and calls == 2


# -- task context and output capture ----------------------------------------------------
def test_task_context_in_sync_thread_and_async_tasks(runner: nf.CheckpointingRunner) -> None:
    seen: dict[str, nf.TaskContext] = {}

    def inline(x):
        seen["inline"] = nf.get_task_context()
        return x

    def threaded(x):
        seen[nf.get_task_context().task_id] = nf.get_task_context()
        return x

    async def coro(x):
        await asyncio.sleep(0)
        seen["coro"] = nf.get_task_context()
        return x

    @nf.task(retries=nf.RetryPolicy(1, initial_delay=0))
    def retried(x):
        ctx = nf.get_task_context()
        seen[f"retried{ctx.attempt}"] = ctx
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return x

    wf = (
        nf.Workflow("ctx", metadata={"team": "ds"})
        .then(inline)
        .fork()
        .branch("b1", threaded)
        .branch("b2", threaded)
        .branch(coro)
        .join("j", lambda d: d)
        .then(retried)
        .build()
    )
    runner.run(wf, "inst", 1)
    for tid in ("inline", "b1", "b2", "coro"):
        ctx = seen[tid]
        assert (ctx.workflow_id, ctx.instance_id, ctx.task_id, ctx.attempt) == ("ctx", "inst", tid, 1)
        assert ctx.idempotency_key == f"ctx:inst:{tid}"
        assert ctx.metadata["team"] == "ds"
    assert seen["retried1"].attempt == 1 and seen["retried2"].attempt == 2
    assert seen["retried1"].idempotency_key == seen["retried2"].idempotency_key
    with pytest.raises(nf.NbflowError):
        nf.get_task_context()


def test_stdout_is_captured_per_task_and_concurrent_branches_do_not_mix(
    runner: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    barrier = threading.Barrier(2, timeout=30)

    def talk(name: str) -> Any:
        def fn(x):
            barrier.wait()
            for i in range(50):
                print(f"{name}-{i}")
            import sys

            print(f"{name}-err", file=sys.stderr)
            return x

        return fn

    async def async_talk(x):
        for i in range(3):
            print(f"async-{i}")
            await asyncio.sleep(0)
        return x

    wf = (
        nf.Workflow("cap")
        .fork()
        .branch("left", talk("left"))
        .branch("right", talk("right"))
        .branch("asy", async_talk)
        .join("j", lambda d: d)
        .build()
    )
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    runner.run(wf, "i", 1)
    for name in ("left", "right"):
        rec = runner.backend.get_record("i", name)
        assert rec.stdout == "".join(f"{name}-{i}\n" for i in range(50))
        assert rec.stderr == f"{name}-err\n"
    assert runner.backend.get_record("i", "asy").stdout == "async-0\nasync-1\nasync-2\n"
    finished = {e.task_id: e.stdout for e in events if isinstance(e, ev.TaskFinished)}
    assert finished["left"].startswith("left-0\n")
    # echo_output=False: nothing leaked to the real stdout.
    assert "left-0" not in capsys.readouterr().out
    # After a restart the captured output comes back with the restored task.
    events.clear()
    runner.with_conflict_policy("use_existing").run(wf, "i", 1)
    restored = {e.task_id: e.stdout for e in events if isinstance(e, ev.TaskRestored)}
    assert restored["right"].startswith("right-0\n")


def test_echo_output_true_also_prints(backend: Any, capsys: pytest.CaptureFixture[str]) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=True)

    def hello(x):
        print("hello from the task")
        return x

    runner.run(nf.Workflow("e").then(hello).build(), "i", 1)
    assert "hello from the task" in capsys.readouterr().out
    assert backend.get_record("i", "hello").stdout == "hello from the task\n"


# -- events -----------------------------------------------------------------------------
def test_events_order(runner: nf.CheckpointingRunner) -> None:
    events: list[ev.RunEvent] = []
    unsubscribe = runner.subscribe(events.append)
    counts: dict[str, int] = {}
    broken = {"t1": True}
    wf = chain("c", 3, counts, broken)
    runner.run(wf, "i", 0)
    kinds = [(type(e).__name__, getattr(e, "task_id", None)) for e in events]
    assert kinds == [
        ("RunStarted", None),
        ("TaskStarted", "t0"),
        ("TaskFinished", "t0"),
        ("TaskStarted", "t1"),
        ("TaskFailed", "t1"),
        ("RunFinished", None),
    ]
    assert events[-1].state == "failed" and events[-1].failed_task == "t1"
    assert events[0].tasks == ("t0", "t1", "t2") and events[0].edges == (("t0", "t1"), ("t1", "t2"))
    events.clear()
    broken["t1"] = False
    runner.resume(wf, "i")
    kinds = [(type(e).__name__, getattr(e, "task_id", None)) for e in events]
    assert kinds == [
        ("RunStarted", None),
        ("TaskRestored", "t0"),
        ("TaskStarted", "t1"),
        ("TaskFinished", "t1"),
        ("TaskStarted", "t2"),
        ("TaskFinished", "t2"),
        ("RunFinished", None),
    ]
    assert all(e.instance_id == "i" and e.workflow == "c" for e in events)
    unsubscribe()
    events.clear()
    runner.rerun_from(wf, "i", "t2")
    assert events == []


def test_raising_subscriber_is_dropped_with_a_warning(runner: nf.CheckpointingRunner) -> None:
    def broken(event: ev.RunEvent) -> None:
        raise RuntimeError("ui bug")

    runner.subscribe(broken)
    with pytest.warns(RuntimeWarning, match="unsubscribed"):
        status = runner.run(nf.Workflow("w").then("a", lambda x: x).build(), "i", 1)
    assert status.output == 1


def test_text_progress(runner: nf.CheckpointingRunner) -> None:
    import io

    out = io.StringIO()
    runner.subscribe(nf.TextProgress(out))
    counts: dict[str, int] = {}
    runner.run(chain("c", 2, counts), "i", 0)
    text = out.getvalue()
    assert "starting: 2 tasks" in text and "t1 done in" in text and "(2/2)" in text and "completed" in text


# -- concurrency and scale --------------------------------------------------------------
def test_fork_branches_run_concurrently(runner: nf.CheckpointingRunner) -> None:
    lock = threading.Lock()
    active = peak = 0
    enough = threading.Event()

    def branch(x):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active >= 8:
                enough.set()
        enough.wait(10)  # hold the slot until 8 overlap (or give up: the assert reports it)
        with lock:
            active -= 1
        return x

    builder = nf.Workflow("fan").then("src", lambda x: x).fork()
    for i in range(16):
        builder = builder.branch(f"b{i}", branch)
    wf = builder.join("j", lambda d: sum(d.values())).build()
    status = runner.run(wf, "i", 1)
    assert status.output == 16
    assert peak >= 8


def test_async_fork_branches_overlap(runner: nf.CheckpointingRunner) -> None:
    active = peak = 0

    async def branch(x):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await asyncio.sleep(0)
        active -= 1
        return x

    builder = nf.Workflow("afan").fork()
    for i in range(16):
        builder = builder.branch(f"b{i}", branch)
    wf = builder.join("j", lambda d: len(d)).build()
    assert runner.run(wf, "i", 1).output == 16
    assert peak >= 8


def test_hundred_task_chain(runner: nf.CheckpointingRunner) -> None:
    counts: dict[str, int] = {}
    broken = {"t99": True}
    wf = chain("long", 100, counts, broken)
    assert runner.run(wf, "i", 0).state == "failed"
    broken["t99"] = False
    assert runner.resume(wf, "i").output == 100
    assert sum(counts.values()) == 101


def test_large_numpy_array_round_trips(runner: nf.CheckpointingRunner) -> None:
    np = pytest.importorskip("numpy")

    def make(n):
        return np.arange(n, dtype=np.float64)

    def total(arr):
        return float(arr.sum())

    wf = nf.Workflow("np").then(make).then(total).build()
    n = 1_000_000  # 8 MB
    assert runner.run(wf, "i", n).output == float(n * (n - 1) // 2)
    arr = runner.get_task_result("i", "make")
    assert arr.shape == (n,) and arr[-1] == n - 1
    record = runner.backend.get_record("i", "make")
    assert record.size > 8_000_000
    if isinstance(runner.backend, nf.DiskcacheBackend):
        assert record.blob is not None and record.payload is None
    # Restored from the checkpoint in a fresh runner on the same store.
    fresh = nf.CheckpointingRunner(runner.backend, echo_output=False)
    assert fresh.rerun_from(wf, "i", "total").output == float(n * (n - 1) // 2)


def test_a_task_returning_none_and_falsy_values(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("w").then("none", lambda x: None).then("zero", lambda x: 0).then("empty", lambda x: "").build()
    assert runner.run(wf, "i", 1).output == ""
    assert runner.get_task_result("i", "none") is None


def test_client_list_and_clear(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("w").then("a", lambda x: x).build()
    runner.run(wf, "i1", 1)
    runner.run(wf, "i2", 2)
    client = nf.WorkflowClient(runner.backend)
    assert {s.instance_id for s in client.list_instances()} == {"i1", "i2"}
    assert [s.instance_id for s in client.list_instances(workflow="other")] == []
    assert client.clear("i1") is True
    assert {s.instance_id for s in client.list_instances()} == {"i2"}
    with pytest.raises(nf.UnknownInstanceError):
        client.status("i1")
    # A cleared id can be reused under the default FAIL policy.
    assert runner.run(wf, "i1", 5).output == 5
