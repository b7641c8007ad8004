"""The widget's push timer: one thread per listening widget, armed without starting one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbflow as nf
from nbflow.jupyter.ticker import Ticker
from nbflow.jupyter.widget import WorkflowWidget


def wait_for(check: Any, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.005)
    return bool(check())


def test_a_ticker_fires_once_per_arming_after_the_last_delay() -> None:
    fired: list[float] = []
    ticker = Ticker(lambda: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        ticker.arm(5.0)
        ticker.arm(0.05)  # replaces the first arming
        assert wait_for(lambda: fired)
        assert fired[0] - start >= 0.05
        time.sleep(0.1)
        assert len(fired) == 1
        ticker.arm(0.2)
        ticker.cancel()
        time.sleep(0.3)
        assert len(fired) == 1
    finally:
        ticker.close()
    assert wait_for(lambda: not ticker.alive())
    ticker.arm(0.0)  # closed: ignored, no new thread
    time.sleep(0.05)
    assert len(fired) == 1 and not ticker.alive()


def test_an_idle_ticker_thread_ends_and_the_next_arming_starts_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbflow.jupyter import ticker as ticker_module

    monkeypatch.setattr(ticker_module, "IDLE_EXIT", 0.05)
    fired: list[int] = []
    ticker = Ticker(lambda: fired.append(1))
    try:
        ticker.arm(0.0)
        assert wait_for(lambda: fired)
        assert wait_for(lambda: not ticker.alive())  # nothing armed for IDLE_EXIT: the thread ended
        ticker.arm(0.0)
        assert wait_for(lambda: len(fired) == 2)
    finally:
        ticker.close()


def test_fire_may_arm_again_and_a_raising_fire_is_reported_and_survived(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", reported.append)
    calls: list[int] = []
    ticker: Ticker

    def fire() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a push failed")
        if len(calls) < 4:
            ticker.arm(0.0)

    ticker = Ticker(fire)
    try:
        ticker.arm(0.0)
        assert wait_for(lambda: reported)
        assert isinstance(reported[0].exc_value, RuntimeError)
        ticker.arm(0.0)
        assert wait_for(lambda: len(calls) == 4)
    finally:
        ticker.close()


def square(x: int) -> int:
    return x * x


def test_a_listening_widget_runs_one_timer_thread_and_events_start_none(tmp_path: Any) -> None:
    """Events arrive on the engine's thread; scheduling a push from there must not start
    a thread (``Thread.start`` waits for it: a GIL hand-off on the engine's clock)."""
    wf = nf.Workflow("tick").then("items", lambda n: list(range(n))).map("sq", square).then("total", sum).build()
    widget = WorkflowWidget(wf, instance_id="ticker-test", min_interval=0.01)
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(tmp_path / "s"), echo_output=False)
    started: list[threading.Thread] = []
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self)
        original(self)

    pushed_from: list[str] = []
    widget.observe(lambda _change: pushed_from.append(threading.current_thread().name), names=["progress"])
    unsubscribe = widget.listen(runner.events)
    ticker_threads = [t for t in threading.enumerate() if t.name == "nbflow-widget-ticker-test"]
    assert len(ticker_threads) == 1
    threading.Thread.start = start  # type: ignore[method-assign]
    try:
        status = runner.run(wf, "ticker-test", 200)
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
    assert status.state.value == "completed"
    assert not [t for t in started if isinstance(t, threading.Timer) or t.name.startswith("nbflow-widget")]
    assert wait_for(lambda: any(name.startswith("nbflow-widget-") for name in pushed_from))  # the ticker pushed
    unsubscribe()
    during = widget.cpu_seconds
    assert during > 0  # the ticker's folds and pushes are counted
    widget.flush()
    assert widget.cpu_seconds > during  # and so is the final push
    assert widget.progress["done"] == widget.model.total
    assert wait_for(lambda: not ticker_threads[0].is_alive())
    widget.close()


def test_events_are_folded_on_the_widget_thread_while_a_push_waits(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no push due for seconds, what the run sends is still folded as it comes, on
    the widget's thread, not left for the final flush the run's caller waits for."""
    from nbflow.jupyter.progress import ProgressModel

    folds: list[tuple[str, int]] = []
    original = ProgressModel.apply_all

    def apply_all(self: ProgressModel, events: Any) -> int:
        batch = list(events)
        folds.append((threading.current_thread().name, len(batch)))
        return original(self, batch)

    monkeypatch.setattr(ProgressModel, "apply_all", apply_all)

    def step(x: int) -> int:
        time.sleep(0.12)
        return x + 1

    builder = nf.Workflow("slowish").then("s0", step)
    for i in range(1, 5):
        builder = builder.then(f"s{i}", step)
    wf = builder.build()
    widget = WorkflowWidget(wf, instance_id="fold-test", min_interval=30.0)  # no push due during the run
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(tmp_path / "s"), echo_output=False)
    unsubscribe = widget.listen(runner.events)
    assert runner.run(wf, "fold-test", 0).state.value == "completed"
    unsubscribe()
    on_ticker = [n for name, n in folds if name == "nbflow-widget-fold-test"]
    assert len(on_ticker) >= 3 and sum(on_ticker) >= 8  # folded as the tasks went, not once
    widget.flush()
    assert widget.progress["done"] == 5
    widget.close()
