"""TaskThreads: a sync task that timed out (or whose run stopped) gives its thread up, so
it never holds a retry, another task, or the process's exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.run.threads import TaskThreads

RELEASE = threading.Event()  # set at the end of each test: no body outlives its test by long


@pytest.fixture(autouse=True)
def _release_blocked_bodies() -> Any:
    RELEASE.clear()
    yield
    RELEASE.set()


def hang(seconds: float = 60) -> str:
    RELEASE.wait(seconds)
    return "late"


# -- the pool itself ---------------------------------------------------------------------
def test_an_abandoned_call_frees_its_place_for_the_next() -> None:
    pool = TaskThreads(1)
    stuck = pool.submit(hang)
    time.sleep(0.05)
    queued = pool.submit(lambda: "ran")
    time.sleep(0.1)
    assert not queued.done()  # the only thread is busy
    assert pool.abandon(stuck) is True
    assert queued.result(5) == "ran"  # a replacement took the queued call
    assert pool.abandoned == 1
    RELEASE.set()
    assert stuck.result(5) == "late"  # the body ended on its own; nobody waits for it
    pool.shutdown()


def test_abandoning_a_queued_call_cancels_it() -> None:
    pool = TaskThreads(1)
    stuck = pool.submit(hang)
    queued = pool.submit(lambda: "never")
    assert pool.abandon(queued) is False and queued.cancelled()
    RELEASE.set()
    assert stuck.result(5) == "late"
    assert pool.abandon(stuck) is False  # finished: nothing to give up
    pool.shutdown()


def test_threads_are_daemons_and_the_pool_stays_bounded() -> None:
    pool = TaskThreads(2, name="t-test")
    futures = [pool.submit(time.sleep, 0.05) for _ in range(8)]
    seen = {t for t in threading.enumerate() if t.name.startswith("t-test")}
    assert 1 <= len(seen) <= 2 and all(t.daemon for t in seen)
    for f in futures:
        f.result(5)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in seen)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)


def test_max_threads_is_checked() -> None:
    with pytest.raises(nf.ConfigurationError, match="max_threads"):
        TaskThreads(0)


# -- through the runner ------------------------------------------------------------------
def test_map_retries_start_while_timed_out_attempts_still_run(runner: nf.CheckpointingRunner) -> None:
    """max_threads=4, 4 items whose first attempts hang past their timeout: with a pool
    that kept the stuck threads, no retry could start and the instance failed."""
    runner = nf.CheckpointingRunner(runner.backend, max_threads=4, echo_output=False)
    cancelled: list[bool] = []

    def item(x: int) -> int:
        ctx = nf.get_task_context()
        if ctx.attempt == 1:
            hang()
            cancelled.append(ctx.cancelled)  # the timed-out attempt was told
            return -1
        return x * 10

    wf = nf.Workflow("m").map("m", item, timeout=0.2, retries=nf.RetryPolicy(1, initial_delay=0), concurrency=4).build()
    started = time.monotonic()
    status = runner.run(wf, "i", [1, 2, 3, 4])
    assert status.state == "completed" and status.output == [10, 20, 30, 40]
    assert time.monotonic() - started < 30  # a liveness bound: the hung bodies wait for 60 s
    assert [runner.backend.get_record("i", f"m[{i}]").attempt for i in range(4)] == [2, 2, 2, 2]
    RELEASE.set()
    deadline = time.monotonic() + 10
    while len(cancelled) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cancelled == [True] * 4


def test_every_attempt_timing_out_fails_with_the_policy_count(runner: nf.CheckpointingRunner) -> None:
    runner = nf.CheckpointingRunner(runner.backend, max_threads=1, echo_output=False)
    attempts: list[int] = []

    @nf.task(timeout=0.1, retries=nf.RetryPolicy(2, initial_delay=0))
    def slow(x: int) -> str:
        attempts.append(nf.get_task_context().attempt)
        return hang()

    other = nf.task(timeout=5)(lambda x: "other ran")
    wf = nf.Workflow("t").fork().branch("slow", slow).branch("other", other).join("j", lambda d: d).build()
    started = time.monotonic()
    status = runner.run(wf, "i", 1)
    assert time.monotonic() - started < 30
    assert status.state == "failed" and status.error.task_id == "slow"
    assert status.error.type == "TaskTimeoutError" and status.error.attempt == 3
    assert attempts == [1, 2, 3]  # each retry got a thread although max_threads=1
    assert runner.backend.get_record("i", "other") is not None  # and so did the other branch


def test_cancel_gives_up_a_running_sync_task(runner: nf.CheckpointingRunner) -> None:
    runner = nf.CheckpointingRunner(runner.backend, max_threads=1, echo_output=False, inline_sync=False)
    entered = threading.Event()

    def stuck(x: int) -> str:
        entered.set()
        return hang()

    handle = runner.start(nf.Workflow("c").then("stuck", stuck).build(), "i", 1)
    assert entered.wait(10)
    handle.cancel()
    assert handle.wait(10).state == "cancelled"
    pool = runner._pool
    assert pool is not None and pool.abandoned == 1
    # the one place is free again: the next run's task gets a thread at once
    status = runner.run(nf.Workflow("n").then("quick", lambda x: x + 1).build(), "j", 1)
    assert status.output == 2


def test_context_and_capture_reach_the_pool_threads(runner: nf.CheckpointingRunner) -> None:
    seen: dict[str, Any] = {}

    @nf.task(timeout=10)
    def talk(x: int) -> int:
        ctx = nf.get_task_context()
        seen["task"], seen["thread"] = ctx.task_id, threading.current_thread().name
        print("hello from", ctx.task_id)
        return x

    runner.run(nf.Workflow("c").then(talk).build(), "i", 1)
    assert seen["task"] == "talk" and seen["thread"].startswith("nbflow-task")
    assert runner.backend.get_record("i", "talk").stdout == "hello from talk\n"


# -- process exit ------------------------------------------------------------------------
EXIT_SCRIPT = r"""
import sys, time
import nbflow as nf

def sleepy(x):
    time.sleep(60)
    return x

wf = nf.Workflow("exit").then("sleepy", sleepy, timeout=1).build()
status = nf.CheckpointingRunner(nf.DiskcacheBackend(sys.argv[1]), echo_output=False).run(wf, "i", 1)
print(status.state, status.error.type, flush=True)
"""


@pytest.mark.slow
def test_a_process_exits_while_a_timed_out_task_still_sleeps(tmp_path: Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed", "TaskTimeoutError"]
    assert elapsed < 15, f"the process took {elapsed:.1f}s to exit"  # liveness: the body sleeps 60 s
