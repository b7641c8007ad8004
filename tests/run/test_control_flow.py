"""Control flow on both stores (issue #4): route, loop, map, durable delay, signals,
child workflows, task context metadata, and the lifecycle verbs (pause, unpause,
cancel) from another thread and from another process (the CLI).

Executions are counted with plain counters; nothing asserts on wall-clock time.
Sleeps only order events (a run reaching a state), never bound a duration.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import nbflow as nf
from nbflow import cli as nbflow_cli
from nbflow.run import events as ev

FAST = nf.RetryPolicy(max_retries=1, initial_delay=0)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy (a guard against hangs, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def record_events(runner: nf.CheckpointingRunner) -> list[ev.RunEvent]:
    seen: list[ev.RunEvent] = []
    runner.subscribe(seen.append)
    return seen


def of_type(events: list[ev.RunEvent], kind: type[ev.RunEvent]) -> list[str]:
    return [e.task_id for e in events if isinstance(e, kind)]  # type: ignore[attr-defined]


# == route ==============================================================================
def size(x: int) -> str:
    return "big" if x > 10 else "small"


def routed(counts: Counter[str], fail_after: list[bool] | None = None) -> nf.WorkflowDefinition:
    def key(x: int) -> str:
        counts["key"] += 1
        return size(x)

    def big(x: int) -> str:
        counts["big"] += 1
        return f"big:{x}"

    def small(x: int) -> str:
        counts["small"] += 1
        return f"small:{x}"

    def shout(x: str) -> str:
        counts["shout"] += 1
        return x.upper()

    def after(x: str) -> str:
        counts["after"] += 1
        if fail_after and fail_after[0]:
            raise RuntimeError("after broke")
        return x + "!"

    return (
        nf.Workflow("routed")
        .then("inc", lambda x: x + 1)
        .route(key, keys=["big", "small"])
        .branch("big", ("big", big), ("shout", shout))
        .branch("small", small)
        .done()
        .then("after", after)
        .build()
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: nf.Workflow("x").route(size, keys=["big", "small"]).branch("big", str).done(), "'small'"),
        (lambda: nf.Workflow("x").route(size, keys=["big"]).branch("big", str).branch("small", repr).done(), "'small'"),
        (lambda: nf.Workflow("x").route(size, keys=["big"]).branch("big", str).branch("big", repr).done(), "'big'"),
        (lambda: nf.Workflow("x").route(size, keys=["big", "big"]), "'big'"),
        (lambda: nf.Workflow("x").route(size, keys=["big"]).done(), "no branches"),
    ],
    ids=["missing-branch-no-default", "orphan-branch", "duplicate-branch", "duplicate-key", "no-branches"],
)
def test_route_declared_keys_are_checked_at_build(make: Callable[[], Any], needle: str) -> None:
    with pytest.raises(nf.WorkflowDefinitionError) as info:
        make()
    assert needle in str(info.value)
    assert "size" in str(info.value)  # names the route


def test_route_missing_branch_is_fine_with_a_default(runner: nf.CheckpointingRunner) -> None:
    wf = (
        nf.Workflow("dflt")
        .route(lambda x: x, keys=["a", "b", "c"])
        .branch("a", lambda x: "A")
        .default_branch(("other", lambda x: f"default:{x}"))
        .done()
        .build()
    )
    assert runner.run(wf, "i-a", "a").output == "A"
    assert runner.run(wf, "i-c", "c").output == "default:c"
    # an undeclared key goes to the default too
    assert runner.run(wf, "i-z", "zzz").output == "default:zzz"


def test_route_runs_one_branch_and_skips_the_other(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    events = record_events(runner)
    wf = routed(counts)
    status = runner.run(wf, "r-1", 20)
    assert status.state == "completed" and status.output == "BIG:21!"
    assert counts == Counter(key=1, big=1, shout=1, after=1)
    assert of_type(events, ev.TaskSkipped) == ["small"]
    assert status.tasks_done == status.tasks_total == len(wf.task_ids)
    assert nf.WorkflowClient(runner.backend).status("r-1").tasks_done == len(wf.task_ids)  # skipped count as done

    events.clear()
    status = runner.run(wf, "r-2", 1)
    assert status.output == "small:2!"
    assert sorted(of_type(events, ev.TaskSkipped)) == ["big", "shout"]  # the whole branch


def test_route_branch_not_taken_stays_skipped_on_resume(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    broken = [True]
    wf = routed(counts, broken)
    assert runner.run(wf, "r", 3).state == "failed"
    broken[0] = False
    events = record_events(runner)
    status = runner.resume(wf, "r")
    assert status.state == "completed" and status.output == "small:4!"
    assert of_type(events, ev.TaskSkipped) == ["big", "shout"]
    assert "key" in of_type(events, ev.TaskRestored) and "small" in of_type(events, ev.TaskRestored)
    assert counts == Counter(key=1, small=1, after=2)  # the key function did not run again
    assert runner.plan(wf, "r")["big"] == "skip"


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_route_unknown_key_fails_with_key_and_declared_set(runner: nf.CheckpointingRunner, declared: bool) -> None:
    wf = (
        nf.Workflow("rk")
        .route("pick", lambda x: x, keys=["a", "b"] if declared else None)
        .branch("a", lambda x: 1)
        .branch("b", lambda x: 2)
        .done()
        .build()
    )
    status = runner.run(wf, "rk-1", "zebra")
    assert status.state == "failed"
    assert status.error is not None and status.error.task_id == "pick"
    assert status.error.type == "RouteKeyError"
    assert "'zebra'" in status.error.message and "['a', 'b']" in status.error.message
    assert nf.WorkflowClient(runner.backend).status("rk-1").error == status.error


def test_route_with_non_string_keys(runner: nf.CheckpointingRunner) -> None:
    wf = (
        nf.Workflow("ints")
        .route(lambda x: x % 3, keys=[0, 1, 2])
        .branch(0, lambda x: "zero")
        .branch(1, lambda x: "one")
        .branch(2, lambda x: "two")
        .done()
        .build()
    )
    assert [runner.run(wf, f"n{i}", i).output for i in range(4)] == ["zero", "one", "two", "zero"]


# == loop ===============================================================================
def counting_loop(
    counts: Counter[int],
    *,
    stop_at: int,
    fail_once_at: int | None = None,
    max_iterations: int = 10,
    on_max: str = "fail",
) -> nf.WorkflowDefinition:
    def body(x: int) -> nf.LoopResult:
        n = int(nf.get_task_context().task_id.rsplit("#", 1)[1])
        counts[n] += 1
        if n == fail_once_at and counts[n] == 1:
            raise RuntimeError(f"iteration {n} broke")
        return nf.LoopResult.done(x) if x >= stop_at else nf.LoopResult.again(x + 1)

    return nf.Workflow("loopy").loop("body", body, max_iterations=max_iterations, on_max=on_max).build()


def test_loop_again_then_done_checkpoints_every_iteration(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[int] = Counter()
    status = runner.run(counting_loop(counts, stop_at=5), "l", 0)
    assert status.state == "completed" and status.output == 5
    assert counts == Counter({n: 1 for n in range(1, 7)})  # 0..4 go again, 5 is done
    records = runner.backend.get_records("l")
    assert {f"body#{n}" for n in range(1, 7)} <= set(records)
    assert "body#7" not in records
    assert records["body"].extra["iterations"] == 6


def test_loop_resumes_at_the_failed_iteration(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[int] = Counter()
    wf = counting_loop(counts, stop_at=8, fail_once_at=4)
    first = runner.run(wf, "l", 0)
    assert first.state == "failed" and "iteration 4 broke" in str(first.error)
    status = runner.resume(wf, "l")
    assert status.state == "completed" and status.output == 8
    assert counts[4] == 2
    assert all(counts[n] == 1 for n in range(1, 10) if n != 4)


def test_loop_max_iterations_fail(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[int] = Counter()
    status = runner.run(counting_loop(counts, stop_at=100, max_iterations=3), "l", 0)
    assert status.state == "failed"
    assert status.error is not None and status.error.task_id == "body"
    assert "max_iterations=3" in status.error.message and "exit_with_last" in status.error.message
    assert sum(counts.values()) == 3


def test_loop_max_iterations_exit_with_last(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[int] = Counter()
    status = runner.run(counting_loop(counts, stop_at=100, max_iterations=3, on_max="exit_with_last"), "l", 0)
    assert status.state == "completed" and status.output == 3


def test_loop_body_must_return_loop_result(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("bad").loop("body", lambda x: x + 1).build()
    status = runner.run(wf, "l", 0)
    assert status.state == "failed"
    assert status.error is not None and status.error.type == "TypeError"
    assert "'body'" in status.error.message and "LoopResult.again" in status.error.message
    assert "returned int" in status.error.message


@pytest.mark.parametrize("kwargs", [{"max_iterations": 0}, {"max_iterations": True}, {"on_max": "explode"}])
def test_loop_options_are_checked_at_build(kwargs: dict[str, Any]) -> None:
    with pytest.raises(nf.WorkflowDefinitionError):
        nf.Workflow("x").loop("body", lambda x: nf.LoopResult.done(x), **kwargs)


# == map ================================================================================
def test_map_preserves_order_and_checkpoints_items(runner: nf.CheckpointingRunner) -> None:
    def slow_first(x: int) -> int:
        if x < 3:
            time.sleep(0.02 * (3 - x))  # early items finish last
        return x * 10

    wf = nf.Workflow("m").then("src", lambda n: range(n)).map("times10", slow_first, concurrency=4).build()
    status = runner.run(wf, "m", 20)
    assert status.output == [x * 10 for x in range(20)]
    records = runner.backend.get_records("m")
    assert {f"times10[{i}]" for i in range(20)} <= set(records)
    assert runner.get_task_result("m", "times10") == status.output
    assert runner.resume(wf, "m").output == status.output  # restored from the item records


def test_map_concurrency_limit_is_observed(runner: nf.CheckpointingRunner) -> None:
    lock = threading.Lock()
    active = 0
    peak = 0

    def item(x: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return x

    wf = nf.Workflow("m").map("item", item, concurrency=3).build()
    assert runner.run(wf, "m", list(range(40))).output == list(range(40))
    assert 1 <= peak <= 3


def test_map_retries_apply_per_item(runner: nf.CheckpointingRunner) -> None:
    calls: Counter[int] = Counter()

    def flaky(x: int) -> int:
        calls[x] += 1
        if x in (3, 7) and calls[x] == 1:
            raise ConnectionError(f"item {x} flaked")
        return -x

    wf = nf.Workflow("m").map("flaky", flaky, retries=FAST).build()
    status = runner.run(wf, "m", range(10))
    assert status.state == "completed" and status.output == [-x for x in range(10)]
    assert calls == Counter({x: 2 if x in (3, 7) else 1 for x in range(10)})
    assert runner.backend.get_record("m", "flaky[3]").attempt == 2  # type: ignore[union-attr]


def test_map_failing_item_reports_its_index_and_resume_reruns_only_it(runner: nf.CheckpointingRunner) -> None:
    calls: Counter[int] = Counter()
    broken = {13}

    def item(x: int) -> int:
        calls[x] += 1
        if x in broken:
            raise ValueError(f"bad value {x}")
        return x

    wf = nf.Workflow("m").map("item", item, concurrency=2).build()
    status = runner.run(wf, "m", range(20))
    assert status.state == "failed"
    assert status.error is not None and "item[13]" in str(status.error) and "bad value 13" in str(status.error)
    broken.clear()
    done_before = {i for i in range(20) if runner.backend.get_record("m", f"item[{i}]") is not None}
    assert 13 not in done_before
    assert runner.resume(wf, "m").output == list(range(20))
    assert all(calls[i] == 1 for i in done_before)
    assert calls[13] == 2


def test_map_over_empty_input(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("m").map("item", lambda x: x).then("count", len).build()
    status = runner.run(wf, "m", [])
    assert status.state == "completed" and status.output == 0


def test_map_accepts_any_iterable(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("m").then("squares", lambda n: {i * i: str(i) for i in range(n)}).map("neg", lambda x: -x).build()
    assert runner.run(wf, "m", 5).output == [0, -1, -4, -9, -16]  # a dict: its keys, in order


def test_map_over_a_non_iterable_fails_clearly(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("m").map("item", lambda x: x).build()
    status = runner.run(wf, "m", 42)
    assert status.state == "failed"
    assert status.error is not None and status.error.task_id == "item"
    assert "iterable" in status.error.message and "int" in status.error.message


def test_map_of_ten_thousand_trivial_items(runner: nf.CheckpointingRunner) -> None:
    progress: list[tuple[int, int]] = []
    runner.subscribe(lambda e: progress.append((e.done, e.total)) if isinstance(e, ev.MapProgress) else None)
    wf = nf.Workflow("big").map("inc", lambda x: x + 1, concurrency=8).then("total", sum).build()
    status = runner.run(wf, "m", range(10_000))
    assert status.state == "completed" and status.output == sum(range(1, 10_001))
    assert runner.get_task_result("m", "inc")[9_999] == 10_000
    assert progress[-1] == (10_000, 10_000)
    assert len(progress) < 2_000  # progress is coalesced, not one event per item


# == delay ==============================================================================
def test_delay_is_durable_and_observable(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()

    def a(x: int) -> int:
        counts["a"] += 1
        return x + 1

    def b(x: int) -> int:
        counts["b"] += 1
        return x * 10

    wf = nf.Workflow("nap").then("a", a).delay("cool-off", "1s").then("b", b).build()
    client = nf.WorkflowClient(runner.backend)
    handle = runner.start(wf, "d", 1)
    status = wait_until(lambda: handle.status.state == "waiting" and handle.status, what="waiting")
    assert status.wake_at is not None
    stored = client.status("d")
    assert stored.state == "waiting" and stored.wake_at == status.wake_at
    record = runner.backend.get_record("d", "cool-off#wake")
    assert record is not None and record.extra["at"] == status.wake_at

    handle.cancel("restart")  # stop during the wait, as a kernel restart would
    assert handle.wait().state == "cancelled"

    events = record_events(runner)
    final = runner.resume(wf, "d", revive=True)
    assert final.state == "completed" and final.output == 20
    waits = [e for e in events if isinstance(e, ev.TaskWaiting)]
    # the resumed wait counts down to the same stored deadline, not a new full delay
    assert all(e.wake_at == status.wake_at for e in waits)
    assert runner.backend.get_record("d", "cool-off#wake").extra["at"] == status.wake_at  # type: ignore[union-attr]
    assert counts == Counter(a=1, b=1)


def test_delay_passes_the_value_through(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("nap").delay("tiny", 0.01).then("b", lambda x: x).build()
    assert runner.run(wf, "d", {"k": [1, 2]}).output == {"k": [1, 2]}


# == signals ============================================================================
def approval_flow(counts: Counter[str] | None = None, timeout: Any = None) -> nf.WorkflowDefinition:
    counts = counts if counts is not None else Counter()

    def prepare(x: int) -> int:
        counts["prepare"] += 1
        return x + 1

    def ship(payload: Any) -> Any:
        counts["ship"] += 1
        return {"shipped": payload}

    return (
        nf.Workflow("approve")
        .then("prepare", prepare)
        .wait_for_signal("approval", timeout=timeout)
        .then("ship", ship)
        .build()
    )


def test_signal_park_send_resume(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    wf = approval_flow(counts)
    status = runner.run(wf, "s", 1)
    assert status.state == "awaiting_signal" and status.signal == "approval"
    client = nf.WorkflowClient(runner.backend)
    stored = client.status("s")
    assert stored.state == "awaiting_signal" and stored.signal == "approval"
    assert not client.is_running("s")  # parked: no runner holds it
    client.send_signal("s", "approval", {"by": "ana"})
    status = runner.resume(wf, "s")
    assert status.state == "completed" and status.output == {"shipped": {"by": "ana"}}
    assert counts == Counter(prepare=1, ship=1)
    assert client.get_task_result("s", "approval") == {"by": "ana"}


def test_signals_are_fifo_per_name(runner: nf.CheckpointingRunner) -> None:
    wf = (
        nf.Workflow("two")
        .then("start", lambda x: x)
        .wait_for_signal("vote", name="first")
        .wait_for_signal("vote", name="second")
        .build()
    )
    assert runner.run(wf, "s", 0).state == "awaiting_signal"
    client = nf.WorkflowClient(runner.backend)
    for payload in ("one", "two", "three"):
        client.send_signal("s", "vote", payload)
    status = runner.resume(wf, "s")
    assert status.state == "completed" and status.output == "two"
    assert client.get_task_result("s", "first") == "one"
    # the third stays buffered for a later wait
    assert runner.backend.pop_signal("s", "vote") is not None
    assert runner.backend.pop_signal("s", "vote") is None


def test_signal_sent_before_the_wait_is_reached(runner: nf.CheckpointingRunner) -> None:
    gate = threading.Event()
    wf = (
        nf.Workflow("early")
        .then("slow", lambda x: gate.wait(20) and x)
        .wait_for_signal("go")
        .then("use", lambda p: f"got {p}")
        .build()
    )
    handle = runner.start(wf, "s", 1)
    wait_until(lambda: nf.WorkflowClient(runner.backend).status("s"), what="instance stored")
    nf.WorkflowClient(runner.backend).send_signal("s", "go", "early bird")
    gate.set()
    status = handle.wait(timeout=30)
    assert status.state == "completed" and status.output == "got early bird"


def test_background_run_waits_for_a_signal_from_another_thread(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    handle = runner.start(approval_flow(counts), "s", 1)
    wait_until(lambda: handle.status.state == "awaiting_signal", what="awaiting_signal")
    assert handle.status.signal == "approval" and not handle.done()
    sender = threading.Thread(target=nf.WorkflowClient(runner.backend).send_signal, args=("s", "approval", "ok"))
    sender.start()
    sender.join()
    status = handle.wait(timeout=30)
    assert status.state == "completed" and status.output == {"shipped": "ok"}
    assert counts == Counter(prepare=1, ship=1)


def test_background_run_gets_a_signal_from_another_process(tmp_path: Any) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    handle = runner.start(approval_flow(), "s", 1)
    wait_until(lambda: handle.status.state == "awaiting_signal", what="awaiting_signal")
    cli = [sys.executable, "-m", "nbflow", "--dir", str(tmp_path / "store"), "signal", "s", "approval", '{"ok": true}']
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = handle.wait(timeout=30)
    assert status.state == "completed" and status.output == {"shipped": {"ok": True}}


def test_signal_timeout_fails_the_background_run(runner: nf.CheckpointingRunner) -> None:
    handle = runner.start(approval_flow(timeout=0.2), "s", 1)
    status = handle.wait(timeout=30)
    assert status.state == "failed"
    assert status.error is not None and status.error.type == "SignalTimeoutError"
    assert "approval" in status.error.message
    assert nf.WorkflowClient(runner.backend).status("s").error == status.error


def test_signal_timeout_counts_from_the_stored_deadline_on_resume(runner: nf.CheckpointingRunner) -> None:
    wf = approval_flow(timeout=0.05)
    assert runner.run(wf, "s", 1).state == "awaiting_signal"
    deadline = runner.backend.get_record("s", "approval#deadline")
    assert deadline is not None
    wait_until(lambda: time.time() > deadline.extra["at"], what="deadline to pass")
    status = runner.resume(wf, "s")
    assert status.state == "failed" and status.error is not None
    assert status.error.type == "SignalTimeoutError"


def test_send_signal_to_unknown_instance(runner: nf.CheckpointingRunner) -> None:
    with pytest.raises(nf.UnknownInstanceError):
        nf.WorkflowClient(runner.backend).send_signal("nobody", "approval", 1)


# == child workflows ======================================================================
def test_then_flow_namespaces_ids_and_groups(runner: nf.CheckpointingRunner) -> None:
    child = nf.Workflow("child").then("c1", lambda x: x + 1).then("c2", lambda x: x * 2).build()
    wf = nf.Workflow("parent").then("c1", lambda x: x).then_flow(child).then("z", lambda x: -x).build()
    assert wf.task_ids == ("c1", "child/c1", "child/c2", "z")
    assert wf.node("child/c1").group == "child" and wf.node("c1").group is None
    assert ("c1", "child/c1") in wf.edges and ("child/c2", "z") in wf.edges
    events = record_events(runner)
    status = runner.run(wf, "p", 3)
    assert status.output == -8
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert dict(started.groups) == {"child/c1": "child", "child/c2": "child"}
    assert runner.get_task_result("p", "child/c1") == 4


def test_then_flow_with_a_multi_sink_child_and_a_route_inside(runner: nf.CheckpointingRunner) -> None:
    child = (
        nf.Workflow("kid")
        .add("low", lambda v: v - 1, inputs={"v": nf.InputRef()})
        .add("high", lambda v: v + 1, inputs={"v": nf.InputRef()})
        .build()
    )
    assert set(child.sinks) == {"low", "high"}
    router = (
        nf.Workflow("router")
        .route("pick", size, keys=["big", "small"])
        .branch("big", ("b", lambda x: "B"))
        .branch("small", ("s", lambda x: "S"))
        .done()
        .build()
    )
    wf = (
        nf.Workflow("p")
        .then("a", lambda x: x * 10)
        .then_flow(child)
        .then("pair", lambda d: d["low"] + d["high"])
        .then_flow(router)
        .build()
    )
    assert "kid/output" in wf.task_ids and wf.node("kid/output").group == "kid"
    assert wf.node("router/b").options["guard"] == "router/pick"
    events = record_events(runner)
    status = runner.run(wf, "p", 1)
    assert status.state == "completed" and status.output == "B"
    assert runner.get_task_result("p", "kid/output") == {"low": 9, "high": 11}
    assert of_type(events, ev.TaskSkipped) == ["router/s"]


def test_then_flow_twice_with_the_same_child_is_refused() -> None:
    child = nf.Workflow("child").then("c", lambda x: x).build()
    with pytest.raises(nf.WorkflowDefinitionError, match="child"):
        nf.Workflow("p").then_flow(child).then_flow(child)


# == task context =========================================================================
def test_task_context_includes_workflow_metadata(runner: nf.CheckpointingRunner) -> None:
    def look(x: Any) -> dict[str, Any]:
        ctx = nf.get_task_context()
        return {
            "workflow": ctx.workflow_id,
            "instance": ctx.instance_id,
            "task": ctx.task_id,
            "attempt": ctx.attempt,
            "key": ctx.idempotency_key,
            "meta": dict(ctx.metadata),
        }

    wf = (
        nf.Workflow("ctx", metadata={"owner": "ana", "team": "ds"})
        .then("look", look)
        .map("each", lambda x: nf.get_task_context().task_id)
        .build()
    )
    wf2 = nf.Workflow("ctx2", metadata={"owner": "bo"}).then("look", look).build()
    seen = runner.run(wf2, "c", None).output
    assert seen == {
        "workflow": "ctx2",
        "instance": "c",
        "task": "look",
        "attempt": 1,
        "key": "ctx2:c:look",
        "meta": {"owner": "bo"},
    }
    out = runner.run(wf, "c1", None).output
    assert out == ["each[0]", "each[1]", "each[2]", "each[3]", "each[4]", "each[5]"]


# == lifecycle ============================================================================
def gated_chain(
    counts: Counter[str], gate: threading.Event, started: threading.Event, n: int = 5
) -> nf.WorkflowDefinition:
    builder = nf.Workflow("gated")
    for i in range(n):

        def step(x: int, i: int = i) -> int:
            counts[f"t{i}"] += 1
            if i == 2:
                started.set()
                gate.wait(30)
            return x + 1

        builder.then(f"t{i}", step)
    return builder.build()


@pytest.mark.parametrize("verb", ["cancel", "pause"])
def test_client_from_another_thread_stops_a_running_workflow(runner: nf.CheckpointingRunner, verb: str) -> None:
    counts: Counter[str] = Counter()
    gate, started = threading.Event(), threading.Event()
    wf = gated_chain(counts, gate, started)
    client = nf.WorkflowClient(runner.backend)
    handle = runner.start(wf, "g", 0)
    assert started.wait(20)
    assert client.is_running("g")
    worker = threading.Thread(target=getattr(client, verb), args=("g",), kwargs={"reason": "stop", "by": "tester"})
    worker.start()
    worker.join()
    gate.set()
    status = handle.wait(timeout=30)
    expected = "cancelled" if verb == "cancel" else "paused"
    assert status.state == expected and "tester" in status.message
    assert client.status("g").state == expected
    assert counts == Counter(t0=1, t1=1, t2=1)  # stopped at the next task boundary
    assert runner.backend.get_record("g", "t1") is not None
    if verb == "pause":
        client.unpause("g")
        assert client.status("g").state == "pending"
    final = runner.resume(wf, "g", revive=verb == "cancel")
    assert final.state == "completed" and final.output == 5
    assert counts == Counter(t0=1, t1=1, t2=1, t3=1, t4=1)


@pytest.mark.parametrize("verb", ["cancel", "pause"])
def test_cli_in_another_process_stops_a_running_workflow(tmp_path: Any, verb: str) -> None:
    store = tmp_path / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    counts: Counter[str] = Counter()
    gate, started = threading.Event(), threading.Event()
    wf = gated_chain(counts, gate, started)
    handle = runner.start(wf, "g", 0)
    assert started.wait(20)
    cli = [sys.executable, "-m", "nbflow", "--dir", str(store), verb, "g", "--reason", "from the shell"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    gate.set()
    status = handle.wait(timeout=30)
    assert status.state == ("cancelled" if verb == "cancel" else "paused")
    assert "from the shell" in status.message
    assert counts == Counter(t0=1, t1=1, t2=1)
    if verb == "pause":
        assert nbflow_cli.main(["--dir", str(store), "unpause", "g"]) == 0
    final = runner.resume(wf, "g", revive=verb == "cancel")
    assert final.state == "completed" and counts == Counter(t0=1, t1=1, t2=1, t3=1, t4=1)


def test_cli_cancel_reaches_a_long_async_task_and_a_signal_wait(tmp_path: Any) -> None:
    """A cancel from another process must not wait for a long task or a wait to end."""
    store = tmp_path / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    reached = threading.Event()

    async def long(x: int) -> int:
        reached.set()
        await asyncio.sleep(120)
        return x

    wf = nf.Workflow("long").then("a", lambda x: x).then("long", long).build()
    handle = runner.start(wf, "l", 0)
    assert reached.wait(20)
    cli = [sys.executable, "-m", "nbflow", "--dir", str(store), "cancel", "l"]
    assert subprocess.run(cli, capture_output=True, timeout=60).returncode == 0
    assert handle.wait(timeout=30).state == "cancelled"

    handle = runner.start(approval_flow(), "s", 1)
    wait_until(lambda: handle.status.state == "awaiting_signal", what="awaiting_signal")
    assert subprocess.run([*cli[:-1], "s"], capture_output=True, timeout=60).returncode == 0
    status = handle.wait(timeout=30)
    assert status.state == "cancelled"
    assert nf.WorkflowClient(runner.backend).status("s").state == "cancelled"


def test_cancel_is_not_swallowed_by_except_exception(runner: nf.CheckpointingRunner) -> None:
    reached = threading.Event()
    outcome: list[str] = []

    async def stubborn(x: int) -> str:
        reached.set()
        try:
            await asyncio.sleep(120)
        except Exception:  # noqa: BLE001 - the point of the test
            outcome.append("swallowed")
            return "swallowed"
        return "slept"

    wf = nf.Workflow("stub").then("a", lambda x: x).then("stubborn", stubborn).then("z", lambda x: x).build()
    handle = runner.start(wf, "c", 0)
    assert reached.wait(20)
    nf.WorkflowClient(runner.backend).cancel("c", reason="enough")
    status = handle.wait(timeout=30)
    assert status.state == "cancelled"
    assert outcome == []
    assert runner.backend.get_record("c", "stubborn") is None
    assert runner.backend.get_record("c", "a") is not None


def test_sync_task_that_raises_on_cancel_ends_cancelled_not_failed(backend: Any) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False, inline_sync=False)
    reached = threading.Event()

    def polite(x: int) -> int:
        reached.set()
        ctx = nf.get_task_context()
        for _ in range(2_000):
            if ctx.cancelled:
                raise RuntimeError("asked to stop")
            time.sleep(0.01)
        return x

    wf = nf.Workflow("polite").then("a", lambda x: x).then("polite", polite).build()
    handle = runner.start(wf, "c", 0)
    assert reached.wait(20)
    handle.cancel("stop now")
    status = handle.wait(timeout=30)
    assert status.state == "cancelled" and status.error is None


def test_list_instances_filters_by_workflow_and_state(runner: nf.CheckpointingRunner) -> None:
    runner.run(approval_flow(), "s1", 1)
    runner.run(nf.Workflow("other").then("x", lambda x: x).build(), "o1", 1)
    client = nf.WorkflowClient(runner.backend)
    assert {s.instance_id for s in client.list_instances()} == {"s1", "o1"}
    assert [s.instance_id for s in client.list_instances(workflow="approve")] == ["s1"]
    assert [s.instance_id for s in client.list_instances(state="awaiting_signal")] == ["s1"]
    assert [s.instance_id for s in client.list_instances(workflow="other", state="completed")] == ["o1"]
    assert client.list_instances(workflow="approve", state="completed") == []


def test_submit_creates_a_pending_instance(runner: nf.CheckpointingRunner) -> None:
    client = nf.WorkflowClient(runner.backend)
    wf = approval_flow()
    assert client.submit(wf, "q", 5).state == "pending"
    with pytest.raises(nf.InstanceExistsError):
        client.submit(wf, "q", 5)
    assert [s.instance_id for s in client.list_instances(state="pending")] == ["q"]
    assert runner.resume(wf, "q").state == "awaiting_signal"  # its stored input is used
    assert client.get_task_result("q", "prepare") == 6


def test_pause_during_a_delay_keeps_its_deadline(runner: nf.CheckpointingRunner) -> None:
    client = nf.WorkflowClient(runner.backend)
    wf = nf.Workflow("d").then("a", lambda x: x + 1).delay("nap", "30s").then("b", lambda x: x).build()
    handle = runner.start(wf, "d", 1)
    wake_at = wait_until(lambda: handle.status.state == "waiting" and handle.status.wake_at, what="waiting")
    client.pause("d", by="tester")
    assert handle.wait(timeout=30).state == "paused"  # a pause stops a wait at once
    client.unpause("d")
    handle = runner.start(wf, "d", resume=True)
    assert wait_until(lambda: handle.status.state == "waiting" and handle.status.wake_at, what="waiting") == wake_at
    handle.cancel("done testing")
    assert handle.wait(timeout=30).state == "cancelled"
