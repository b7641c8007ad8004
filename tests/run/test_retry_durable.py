"""Retries that survive a stopped run: the attempt count and the next retry time are
stored before each retry (``backend.save_task_state``) and a resume continues them.

A real kill -9 is in ``tests/integration/test_retry_crash.py``; here a run is stopped
during its backoff (cancel, pause, a worker shut down), which leaves the store exactly
as a kill at that moment would, and is resumed in the same process (a cancelled run
with ``revive=True``, a paused one after ``unpause``: see ``nbflow.run.lifecycle``).
Stored retry times are moved to "now" where a test would otherwise wait out a long backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import nbflow as nf
from nbflow.run import events as ev


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def stored_attempt(backend: Any, iid: str, task_id: str) -> int | None:
    state = backend.load_task_states(iid).get(task_id)
    return None if state is None else state["attempt"]


def due_now(backend: Any, iid: str, task_id: str) -> None:
    """Move a stored retry time to now (instead of waiting out a long backoff)."""
    state = backend.load_task_states(iid)[task_id]
    backend.save_task_state(iid, task_id, {**state, "next_retry_at": time.time()})


class CountingBackend:
    """Counts the task-state calls a run makes (a proxy: everything else passes on)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.saves: list[tuple[str, dict[str, Any] | None]] = []
        self.loads = 0

    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None:
        self.saves.append((task_id, state))
        self._inner.save_task_state(instance_id, task_id, state)

    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]:
        self.loads += 1
        result: dict[str, dict[str, Any]] = self._inner.load_task_states(instance_id)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- the count is stored before each retry, and nothing on the success path -------------
def test_the_count_is_stored_before_the_retry_and_dropped_after_success(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    seen: list[tuple[int, dict[str, Any] | None]] = []

    @nf.task(retries=nf.RetryPolicy(3, initial_delay=0.01, backoff=1))
    def flaky(x: int) -> int:
        ctx = nf.get_task_context()
        seen.append((ctx.attempt, backend.load_task_states("i").get("flaky")))
        if ctx.attempt < 3:
            raise ConnectionError(f"down {ctx.attempt}")
        return x

    status = runner.run(nf.Workflow("r").then(flaky).build(), "i", 5)
    assert status.state == "completed" and status.output == 5
    assert [a for a, _ in seen] == [1, 2, 3]
    assert seen[0][1] is None  # nothing stored before the first failure
    for attempt, state in seen[1:]:  # while attempt n runs, the store says n - 1 failed
        assert state is not None and state["attempt"] == attempt - 1
        assert state["last_error"] == f"ConnectionError: down {attempt - 1}"
        assert state["next_retry_at"] <= time.time()
    assert backend.load_task_states("i") == {}  # dropped once the record is stored
    assert backend.get_record("i", "flaky").attempt == 3


def test_success_on_the_first_attempt_writes_no_task_state(backend: Any) -> None:
    counting = CountingBackend(backend)
    runner = nf.CheckpointingRunner(counting, echo_output=False)
    b = nf.task(retries=2)(lambda x: x * 2)
    c = nf.task(retries=2, timeout=5)(lambda x: x * 3)
    wf = (
        nf.Workflow("ok")
        .then("a", lambda x: x + 1, retries=3)
        .fork()
        .branch("b", b)
        .branch("c", c)
        .join("d", lambda parts: sorted(parts.values()))
        .map("m", lambda x: x + 1, retries=1)
        .build()
    )
    assert runner.run(wf, "i", 1).output == [5, 7]
    assert counting.saves == []
    assert counting.loads <= 1  # read once for the run, not once per task


def test_without_retries_the_states_are_never_read(backend: Any) -> None:
    counting = CountingBackend(backend)
    runner = nf.CheckpointingRunner(counting, echo_output=False)
    wf = nf.Workflow("plain").then("a", lambda x: list(range(x))).map("m", lambda x: x, timeout=5).build()
    assert runner.run(wf, "i", 3).output == [0, 1, 2]
    assert counting.saves == [] and counting.loads == 0


# -- a stopped run resumes its count -------------------------------------------------------
def test_a_run_stopped_during_the_backoff_continues_the_count(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    starts: list[tuple[int, float]] = []

    @nf.task(retries=nf.RetryPolicy(3, initial_delay=30, backoff=1))
    def always(x: int) -> int:
        starts.append((nf.get_task_context().attempt, time.time()))
        raise ValueError(f"no {nf.get_task_context().attempt}")

    wf = nf.Workflow("r").then(always).build()
    handle = runner.start(wf, "i", 1)
    wait_until(lambda: stored_attempt(backend, "i", "always") == 1, what="attempt 1 stored")
    handle.cancel()
    assert handle.wait(30).state == "cancelled"  # the 30 s wait did not hold the stop
    assert stored_attempt(backend, "i", "always") == 1  # a stop keeps the count

    due_now(backend, "i", "always")
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    state = backend.load_task_states("i")["always"]
    handle = runner.start(wf, "i", resume=True, revive=True)
    wait_until(lambda: stored_attempt(backend, "i", "always") == 2, what="attempt 2 stored")
    assert starts[1][1] >= state["next_retry_at"]  # attempt 2 began at the stored time
    handle.cancel()
    handle.wait(30)
    due_now(backend, "i", "always")
    handle = runner.start(wf, "i", resume=True, revive=True)
    wait_until(lambda: stored_attempt(backend, "i", "always") == 3, what="attempt 3 stored")
    handle.cancel()
    handle.wait(30)
    due_now(backend, "i", "always")
    status = runner.resume(wf, "i", revive=True)
    assert [a for a, _ in starts] == [1, 2, 3, 4]  # 1 + 3 retries over four runs, never more
    assert status.state == "failed" and status.error.attempt == 4 and status.error.message == "no 4"
    assert backend.load_task_states("i") == {}  # failed for good: the next resume starts over
    retrying = [e for e in events if isinstance(e, ev.TaskRetrying)]
    assert retrying[0].attempt == 1 and retrying[0].delay <= 1  # the resumed wait: what was left


def test_resume_waits_only_what_is_left_of_the_backoff(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    starts: dict[int, float] = {}

    @nf.task(retries=nf.RetryPolicy(1, initial_delay=30))
    def flaky(x: int) -> int:
        attempt = nf.get_task_context().attempt
        starts[attempt] = time.time()
        if attempt == 1:
            raise ValueError("first")
        return x

    wf = nf.Workflow("r").then(flaky).build()
    handle = runner.start(wf, "i", 1)
    wait_until(lambda: stored_attempt(backend, "i", "flaky") == 1)
    handle.cancel()
    handle.wait(30)
    state = backend.load_task_states("i")["flaky"]
    backend.save_task_state("i", "flaky", {**state, "next_retry_at": time.time() + 0.4})  # 0.4 s left
    due = backend.load_task_states("i")["flaky"]["next_retry_at"]
    resumed_at = time.time()
    status = runner.resume(wf, "i", revive=True)
    assert status.state == "completed" and status.output == 1
    assert due <= starts[2] < resumed_at + 30  # waited for the stored time, not a new 30 s
    assert backend.get_record("i", "flaky").attempt == 2


def test_a_pause_during_the_backoff_parks_the_run_and_keeps_the_count(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    attempts: list[int] = []

    @nf.task(retries=nf.RetryPolicy(2, initial_delay=60))
    def flaky(x: int) -> int:
        attempts.append(nf.get_task_context().attempt)
        if len(attempts) == 1:
            raise ConnectionError("down")
        return x * 2

    wf = nf.Workflow("r").then(flaky).build()
    handle = runner.start(wf, "i", 4)
    wait_until(lambda: stored_attempt(backend, "i", "flaky") == 1)
    handle.pause()
    assert handle.wait(30).state == "paused"  # not failed, and not after the 60 s wait
    due_now(backend, "i", "flaky")
    nf.WorkflowClient(backend).unpause("i")  # paused means paused: a resume alone leaves it so
    status = runner.resume(wf, "i")
    assert status.state == "completed" and status.output == 8
    assert attempts == [1, 2] and backend.get_record("i", "flaky").attempt == 2


def test_changed_code_starts_the_policy_over(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    attempts: list[tuple[str, int]] = []

    def flow(version: str) -> nf.WorkflowDefinition:
        @nf.task(retries=nf.RetryPolicy(3, initial_delay=30), version=version)
        def job(x: int) -> int:
            attempts.append((version, nf.get_task_context().attempt))
            if version == "1":
                raise ValueError("bug")
            return x

        return nf.Workflow("r").then(job).build()

    handle = runner.start(flow("1"), "i", 1)
    wait_until(lambda: stored_attempt(backend, "i", "job") == 1)
    handle.cancel()
    handle.wait(30)
    status = runner.resume(flow("2"), "i", revive=True)  # the fix: a new fingerprint, no wait, attempt 1
    assert status.state == "completed"
    assert attempts == [("1", 1), ("2", 1)]
    assert backend.load_task_states("i") == {}  # the old state was dropped with the success


def test_a_failed_instance_resumed_after_a_fix_gets_a_fresh_policy(runner: nf.CheckpointingRunner) -> None:
    calls: list[int] = []
    broken = True

    @nf.task(retries=nf.RetryPolicy(1, initial_delay=0))
    def job(x: int) -> int:
        calls.append(nf.get_task_context().attempt)
        if broken:
            raise ValueError("bug")
        return x

    wf = nf.Workflow("r").then(job).build()
    assert runner.run(wf, "i", 1).error.attempt == 2
    broken = False
    assert runner.resume(wf, "i").state == "completed"
    assert calls == [1, 2, 1]


# -- map items and loop iterations ---------------------------------------------------------
@pytest.mark.parametrize("timeout", [None, 30], ids=["chunked", "one-by-one"])
def test_map_items_continue_their_count(runner: nf.CheckpointingRunner, timeout: float | None) -> None:
    """Without a timeout a sync map runs first attempts in chunks (no TaskStarted each),
    and retries on the engine loop; with one every item goes alone. Both store the
    count before each retry and continue it."""
    backend = runner.backend
    attempts: dict[int, list[int]] = {}
    flaky = {101, 150}

    def item(x: int) -> int:
        attempt = nf.get_task_context().attempt
        attempts.setdefault(x, []).append(attempt)
        if x in flaky and attempt < 3:
            raise ConnectionError(f"item {x} down")
        return x * 10

    policy = nf.RetryPolicy(3, initial_delay=30)
    wf = nf.Workflow("m").map("m", item, retries=policy, timeout=timeout, concurrency=4).build()
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)

    def stored() -> set[int | None]:
        return {stored_attempt(backend, "i", f"m[{i}]") for i in flaky}

    handle = runner.start(wf, "i", list(range(200)))
    wait_until(lambda: stored() == {1}, what="both items' first failure stored")
    wait_until(lambda: len(backend.get_records("i")) == 1 + 198, what="the other items committed")
    handle.cancel()
    assert handle.wait(30).state == "cancelled"
    for i in flaky:
        due_now(backend, "i", f"m[{i}]")
    handle = runner.start(wf, "i", resume=True, revive=True)
    wait_until(lambda: stored() == {2}, what="the second failures stored")
    handle.cancel()
    handle.wait(30)
    for i in flaky:
        due_now(backend, "i", f"m[{i}]")
    status = runner.resume(wf, "i", revive=True)
    assert status.state == "completed" and status.output == [x * 10 for x in range(200)]
    assert all(attempts[i] == [1, 2, 3] for i in flaky)
    assert all(attempts[i] == [1] for i in range(200) if i not in flaky)
    assert [backend.get_record("i", f"m[{i}]").attempt for i in sorted(flaky)] == [3, 3]
    assert backend.load_task_states("i") == {}
    started = {e.task_id for e in events if isinstance(e, ev.TaskStarted)}
    if timeout is None:
        assert len(started) < 100  # most first attempts ran in chunks
    else:
        assert len(started) == 200


def test_a_map_item_failing_for_good_reports_its_real_count(runner: nf.CheckpointingRunner) -> None:
    def item(x: int) -> int:
        if x == 2:
            raise ValueError(f"bad item {x} (attempt {nf.get_task_context().attempt})")
        return x

    wf = nf.Workflow("m").map("m", item, retries=nf.RetryPolicy(2, initial_delay=0)).build()
    status = runner.run(wf, "i", list(range(5)))
    assert status.state == "failed"
    assert status.error.task_id == "m[2]" and status.error.attempt == 3
    assert "attempt 3" in status.error.message
    assert runner.backend.load_task_states("i") == {}


def test_loop_iterations_continue_their_count(runner: nf.CheckpointingRunner) -> None:
    backend = runner.backend
    attempts: list[tuple[int, int]] = []

    def body(x: int) -> nf.LoopResult:
        attempt = nf.get_task_context().attempt
        attempts.append((x, attempt))
        if x == 2 and attempt < 2:
            raise ConnectionError("flaky iteration")
        return nf.LoopResult.done(x) if x >= 3 else nf.LoopResult.again(x + 1)

    wf = nf.Workflow("l").loop("grow", body, max_iterations=5, retries=nf.RetryPolicy(2, initial_delay=30)).build()
    handle = runner.start(wf, "i", 1)
    wait_until(lambda: stored_attempt(backend, "i", "grow#2") == 1)
    handle.cancel()
    handle.wait(30)
    due_now(backend, "i", "grow#2")
    status = runner.resume(wf, "i", revive=True)
    assert status.state == "completed" and status.output == 3
    assert attempts == [(1, 1), (2, 1), (2, 2), (3, 1)]
    assert backend.get_record("i", "grow#2").attempt == 2


# -- PooledWorker ------------------------------------------------------------------------
def test_a_worker_continues_the_count_of_another_worker(backend: Any) -> None:
    attempts: list[int] = []

    @nf.task(retries=nf.RetryPolicy(3, initial_delay=30))
    def flaky(x: int) -> int:
        attempts.append(nf.get_task_context().attempt)
        if len(attempts) < 2:
            raise ConnectionError("down")
        return x + 1

    wf = nf.Workflow("w").then(flaky).build()
    nf.WorkflowClient(backend).submit(wf, "i", 1)
    # concurrency=2 keeps a slot free: a worker whose every slot is busy only sees a
    # shutdown once a unit ends (its loop then waits without a timeout)
    first = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05, concurrency=2).start()
    wait_until(lambda: stored_attempt(backend, "i", "flaky") == 1)
    first.shutdown(finish=False, timeout=30)  # gives its claim back mid-backoff, like a dead worker
    due_now(backend, "i", "flaky")
    nf.PooledWorker("w2", backend, [wf], poll_interval=0.05).run(until_idle=True)
    status = nf.WorkflowClient(backend).status("i")
    assert status.state == "completed" and status.output == 2
    assert attempts == [1, 2]
    assert backend.get_record("i", "flaky").attempt == 2
    assert backend.load_task_states("i") == {}


def test_worker_map_items_continue_their_count(backend: Any) -> None:
    attempts: dict[int, list[int]] = {}

    def item(x: int) -> int:
        attempts.setdefault(x, []).append(nf.get_task_context().attempt)
        if x == 1 and len(attempts[x]) < 3:
            raise ConnectionError("down")
        return x

    wf = nf.Workflow("wm").map("m", item, retries=nf.RetryPolicy(3, initial_delay=30)).build()
    nf.WorkflowClient(backend).submit(wf, "i", [0, 1, 2])
    for n, name in enumerate(("w1", "w2"), start=1):
        worker = nf.PooledWorker(name, backend, [wf], poll_interval=0.05, concurrency=4).start()
        wait_until(lambda: stored_attempt(backend, "i", "m[1]") == n, what=f"attempt {n} stored")  # noqa: B023
        worker.shutdown(finish=False, timeout=30)
        due_now(backend, "i", "m[1]")
    nf.PooledWorker("w3", backend, [wf], poll_interval=0.05).run(until_idle=True)
    assert nf.WorkflowClient(backend).status("i").output == [0, 1, 2]
    assert attempts[1] == [1, 2, 3] and backend.get_record("i", "m[1]").attempt == 3
