"""One exclusion rule for every writer of an instance: a CheckpointingRunner and a pool of
PooledWorkers never drive one instance at once, whichever started first; the one that
comes second gets InstanceLockedError naming the holder, and no task runs twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import nbflow as nf
from tests.store.implementations import IMPLEMENTATIONS, close_store, make_store


@pytest.fixture(params=IMPLEMENTATIONS)
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    backend = make_store(request.param, tmp_path)
    yield backend
    close_store(backend)


def _slow_flow(started: threading.Event, release: threading.Event, calls: list[str]) -> nf.WorkflowDefinition:
    def first(x: int) -> int:
        calls.append("first")
        return x + 1

    def slow(first: int) -> int:
        calls.append("slow")
        started.set()
        assert release.wait(20), "the test never released the slow task"
        return first * 10

    return nf.Workflow("rvw").then("first", first).then("slow", slow).build()


def test_runner_is_refused_while_a_worker_runs_the_instance(store) -> None:  # type: ignore[no-untyped-def]
    started, release, calls = threading.Event(), threading.Event(), []
    wf = _slow_flow(started, release, calls)
    nf.WorkflowClient(store).submit(wf, "i-1", 1)
    worker = nf.PooledWorker("w1", store, [wf], poll_interval=0.02, concurrency=1)
    handle = worker.start(until_idle=True)
    try:
        assert started.wait(20), "the worker never started the slow task"
        runner = nf.CheckpointingRunner(store, echo_output=False)
        with pytest.raises(nf.InstanceLockedError) as refused:
            runner.resume(wf, "i-1")
        assert "i-1" in str(refused.value) and "PooledWorker" in str(refused.value)
    finally:
        release.set()
        handle.join(30)
    assert not handle.is_alive()
    status = nf.WorkflowClient(store).status("i-1")
    assert status.state == "completed" and status.output == 20
    assert calls == ["first", "slow"]  # nothing ran twice


def test_worker_leaves_an_instance_a_runner_is_running(store) -> None:  # type: ignore[no-untyped-def]
    started, release, calls = threading.Event(), threading.Event(), []
    wf = _slow_flow(started, release, calls)
    runner = nf.CheckpointingRunner(store, echo_output=False)
    handle = runner.start(wf, "i-2", 1)
    assert started.wait(20)
    worker = nf.PooledWorker("w1", store, [wf], poll_interval=0.02, concurrency=1)
    worker_handle = worker.start()
    try:
        time.sleep(0.5)  # several scans: each must skip the runner's instance
        assert worker.stats.get("committed", 0) == 0
        with pytest.raises(nf.InstanceLockedError) as refused:
            store.share("i-2", "a worker")
        assert "runner" in str(refused.value)
    finally:
        release.set()
        status = handle.wait(30)
        worker_handle.shutdown()
    assert status.state == "completed" and status.output == 20
    assert calls == ["first", "slow"]


def test_lock_probe_never_makes_a_lock_fail(store) -> None:  # type: ignore[no-untyped-def]
    """is_locked() while another thread locks and unlocks in a loop: zero refusals."""
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            store.is_locked("busy")

    prober = threading.Thread(target=probe)
    prober.start()
    refusals, rounds, deadline = 0, 0, time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            try:
                store.lock("busy", "stress").release()
            except nf.InstanceLockedError:
                refusals += 1
            rounds += 1
    finally:
        stop.set()
        prober.join()
    assert rounds > 100 and refusals == 0
