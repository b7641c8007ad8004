"""ProgressModel and Coalescer: event folding, ETA, coalescing — no front end, no clock.

Every event carries an explicit ``time`` and the model gets a fake clock, so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from nbflow.jupyter.progress import Coalescer, ProgressModel, format_seconds
from nbflow.run import events as ev

W = {"workflow": "etl", "instance_id": "etl-1"}


def started(tasks: tuple[str, ...], plan: dict[str, str] | None = None, t: float = 0.0) -> ev.RunStarted:
    return ev.RunStarted(**W, tasks=tasks, plan=plan or {}, time=t)


def model(
    tasks: tuple[str, ...] = ("a", "b", "c", "d"), now: float = 0.0, **kw: Any
) -> tuple[ProgressModel, list[float]]:
    clock = [now]
    return ProgressModel(tasks, workflow="etl", clock=lambda: clock[0], **kw), clock


def test_progress_module_is_pure() -> None:
    """The model must stay importable and testable without any Jupyter package."""
    source = Path(__file__).parents[2].joinpath("nbflow/jupyter/progress.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"IPython", "ipywidgets", "anywidget", "graphviz", "traitlets"}


def test_every_event_type_folds_into_its_state() -> None:
    m, _ = model(("a", "b", "c", "d", "e", "f", "g", "h"))
    m.apply(started(m.task_ids))
    m.apply(ev.TaskStarted(**W, task_id="a", worker="w1", time=1))
    m.apply(
        ev.TaskFinished(**W, task_id="a", duration=2.0, preview="42", stdout="out", stderr="err", worker="w1", time=3)
    )
    m.apply(ev.TaskRestored(**W, task_id="b", preview="7", stdout="old out"))
    m.apply(ev.TaskStarted(**W, task_id="c", time=1))
    m.apply(ev.TaskRetrying(**W, task_id="c", attempt=1, delay=0.1, error="ValueError: x"))
    m.apply(ev.TaskStarted(**W, task_id="d", attempt=3, time=1))
    m.apply(ev.TaskFailed(**W, task_id="d", attempt=3, error="KeyError: k", traceback="Traceback...", time=4))
    m.apply(ev.TaskSkipped(**W, task_id="e", reason="route took 'x'"))
    m.apply(ev.TaskWaiting(**W, task_id="f", wake_at=100.0))
    m.apply(ev.TaskWaiting(**W, task_id="g", signal="approve"))
    m.apply(ev.MapProgress(**W, task_id="h", done=3, total=10, failed=1))
    assert m.states() == {
        "a": "done",
        "b": "restored",
        "c": "retrying",
        "d": "failed",
        "e": "skipped",
        "f": "waiting",
        "g": "awaiting_signal",
        "h": "running",
    }
    a, c, d = m.info("a"), m.info("c"), m.info("d")
    assert (a.attempts, a.duration, a.preview, a.stdout, a.stderr, a.worker) == (1, 2.0, "42", "out", "err", "w1")
    assert m.info("b").stdout == "old out"
    assert (c.attempts, c.error) == (1, "ValueError: x")
    assert (d.attempts, d.error, d.traceback, d.duration) == (3, "KeyError: k", "Traceback...", 3.0)
    assert m.info("e").reason == "route took 'x'"
    assert (m.info("f").wake_at, m.info("g").signal) == (100.0, "approve")
    assert (m.info("h").map_done, m.info("h").map_total, m.info("h").map_failed) == (3, 10, 1)
    assert m.completed == 3 and m.total == 8
    assert m.counts()["failed"] == 1


def test_unknown_events_are_ignored_and_unknown_tasks_are_shown() -> None:
    m, _ = model(("a",))
    version = m.version
    assert m.apply(ev.RunEvent(**W)) is False
    assert m.version == version
    m.apply(ev.TaskFinished(**W, task_id="surprise"))
    assert m.states() == {"a": "pending", "surprise": "done"}


def test_stale_tasks_come_from_the_plan_before_the_run() -> None:
    m, _ = model(plan={"a": "restore", "b": "stale", "c": "stale", "d": "run"})
    # a task with a valid checkpoint shows as restored before the run: that is what it will be
    assert m.states() == {"a": "restored", "b": "stale", "c": "stale", "d": "pending"}
    assert m.summary() == "etl: 1/4 done (1 restored) | a restored | b stale | c stale | d pending"
    # RunStarted carries the plan too: the stale marks survive the reset it causes
    m.apply(started(m.task_ids, {"a": "restore", "b": "stale", "c": "stale", "d": "run"}))
    m.apply(ev.TaskRestored(**W, task_id="a"))
    m.apply(ev.TaskStarted(**W, task_id="b"))
    assert m.states() == {"a": "restored", "b": "running", "c": "stale", "d": "pending"}


@pytest.mark.parametrize("run_state", ["cancelled", "interrupted"])
def test_a_stopped_run_turns_running_tasks_into_cancelled(run_state: str) -> None:
    m, _ = model()
    m.apply(started(m.task_ids))
    m.apply(ev.TaskFinished(**W, task_id="a"))
    m.apply(ev.TaskStarted(**W, task_id="b"))
    m.apply(ev.TaskWaiting(**W, task_id="c", signal="go"))
    m.apply(ev.RunFinished(**W, state=run_state, duration=1.5))
    assert m.states() == {"a": "done", "b": "cancelled", "c": "cancelled", "d": "pending"}
    assert m.run_state == run_state
    assert m.elapsed() == 1.5
    assert m.summary() == f"etl: 1/4 done [{run_state}] | a done | b cancelled | c cancelled | d pending"


def test_a_parked_run_keeps_its_waiting_tasks() -> None:
    m, _ = model(("a", "b"))
    m.apply(started(m.task_ids))
    m.apply(ev.TaskWaiting(**W, task_id="a", signal="go"))
    m.apply(ev.RunFinished(**W, state="awaiting_signal"))
    assert m.state("a") == "awaiting_signal"


def test_run_started_resets_a_previous_run() -> None:
    m, _ = model(("a", "b"))
    m.apply(started(m.task_ids))
    m.apply(ev.TaskFailed(**W, task_id="a", attempt=1, error="boom"))
    m.apply(ev.RunFinished(**W, state="failed"))
    m.apply(started(m.task_ids, t=10))
    assert m.states() == {"a": "pending", "b": "pending"}
    assert (m.run_state, m.info("a").error) == ("running", "")


def test_eta_is_unknown_without_progress_or_history() -> None:
    """The old estimate (mean of finished tasks x tasks left) read "ETA 0.00s" with most of
    a long task left when a fast task went first: with nothing to go on it is unknown."""
    m, clock = model(now=0.0)
    assert m.elapsed() is None and m.eta() is None
    m.apply(started(m.task_ids, t=0.0))
    m.apply(ev.TaskRestored(**W, task_id="a", duration=100.0))  # restored: costs nothing now
    m.apply(ev.TaskStarted(**W, task_id="b", time=0.0))
    m.apply(ev.TaskFinished(**W, task_id="b", duration=0.001, time=0.001))
    m.apply(ev.TaskStarted(**W, task_id="c", time=0.001))
    clock[0] = 2.0
    assert m.elapsed() == 2.0
    assert m.eta() is None
    progress = m.progress()
    assert progress["text"] == "2/4 done (1 restored) · elapsed 2.00s · ETA unknown"
    assert progress["eta_unknown"] is True
    assert (progress["done"], progress["total"], progress["fraction"]) == (2, 4, 0.5)


def test_eta_from_history_is_the_longest_remaining_path() -> None:
    tasks = ("a", "b", "c", "d")
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]  # a fork: b and c side by side
    m, _ = model(tasks, edges=edges, history={"a": 1.0, "b": 4.0, "c": 2.0, "d": 1.0})
    m.apply(started(tasks, t=0.0))
    assert m.eta(now=0.0) == pytest.approx(1.0 + 4.0 + 1.0)
    m.apply(ev.TaskStarted(**W, task_id="a", time=0.0))
    m.apply(ev.TaskFinished(**W, task_id="a", duration=1.0, time=1.0))
    m.apply(ev.TaskStarted(**W, task_id="b", time=1.0))
    m.apply(ev.TaskStarted(**W, task_id="c", time=1.0))
    assert m.eta(now=2.0) == pytest.approx(3.0 + 1.0)  # b has 3 s left, then d
    assert m.task_remaining("c", now=2.0) == pytest.approx(1.0)
    assert m.eta(now=6.0) is None  # b overran its history: unknown, not 0
    assert m.info("b").expected == 4.0


def test_eta_from_in_task_progress_needs_no_history() -> None:
    m, _ = model(("train",))
    m.apply(started(("train",), t=0.0))
    m.apply(ev.TaskStarted(**W, task_id="train", time=0.0))
    assert m.eta(now=1.0) is None
    m.apply(ev.TaskProgress(**W, task_id="train", done=10, total=100, time=2.0))
    assert m.eta(now=2.0) is None  # one report is no rate yet
    m.apply(ev.TaskProgress(**W, task_id="train", done=30, total=100, time=4.0))
    assert m.eta(now=4.0) == pytest.approx(70 / 10)  # 10 steps/s, 70 to go
    assert m.eta(now=5.0) == pytest.approx(6.0)
    assert m.info("train").progress_text() == "30/100 (30%)"


def test_eta_is_none_after_the_run() -> None:
    m, _ = model(("a",))
    m.apply(started(("a",)))
    m.apply(ev.TaskFinished(**W, task_id="a", duration=1.0))
    m.apply(ev.RunFinished(**W, state="completed", duration=1.0))
    assert m.eta() is None
    assert m.progress()["text"] == "1/1 done · elapsed 1.00s"


def test_summary_is_deterministic_and_has_no_timings() -> None:
    def run() -> str:
        m, _ = model(("load", "clean", "plot"))
        m.apply(started(m.task_ids, {"load": "restore"}))
        m.apply(ev.TaskRestored(**W, task_id="load", duration=1.234))
        m.apply(ev.TaskFinished(**W, task_id="clean", duration=0.5678))
        m.apply(ev.MapProgress(**W, task_id="plot", done=2, total=5))
        return m.summary()

    assert run() == run() == "etl: 2/3 done (1 restored) | load restored | clean done | plot running 2/5"


def test_summary_is_capped_for_huge_runs() -> None:
    m, _ = model(tuple(f"t{i}" for i in range(120)))
    text = m.summary(max_tasks=3)
    assert text == "etl: 0/120 done | t0 pending | t1 pending | t2 pending | ... 117 more"


def test_long_output_is_clipped() -> None:
    m, _ = model(("a",))
    m.apply(ev.TaskFinished(**W, task_id="a", stdout="x" * 50_000))
    assert len(m.info("a").stdout) < 21_000
    assert m.info("a").stdout.startswith("... (30000 characters cut)")


def test_coalescer_pushes_at_most_once_per_interval() -> None:
    clock = [0.0]
    c = Coalescer(0.2, clock=lambda: clock[0])
    assert c.delay(1) == 0.0  # leading edge
    c.mark(1)
    assert c.delay(1) is None  # nothing new
    assert c.delay(2) == pytest.approx(0.2)
    clock[0] = 0.15
    assert c.delay(2) == pytest.approx(0.05)
    clock[0] = 0.2
    assert c.delay(2) == 0.0


def test_ten_thousand_events_give_a_handful_of_pushes() -> None:
    """A 10,000-task run (two events per task over 4 simulated seconds) at 5 pushes/s."""
    n = 10_000
    clock = [0.0]
    tasks = tuple(f"item{i}" for i in range(n))
    m = ProgressModel(tasks, workflow="big", clock=lambda: clock[0])
    c = Coalescer(0.2, clock=lambda: clock[0])
    pushes = 0
    events: list[ev.RunEvent] = [started(tasks)]
    for tid in tasks:
        events.append(ev.TaskStarted(**W, task_id=tid))
        events.append(ev.TaskFinished(**W, task_id=tid, duration=0.001))
    events.append(ev.RunFinished(**W, state="completed", duration=4.0))
    step = 4.0 / len(events)
    for event in events:
        clock[0] += step
        m.apply(event)
        if c.delay(m.version) == 0.0:
            m.states()  # what a push would serialize
            c.mark(m.version)
            pushes += 1
    if c.delay(m.version) is not None:  # the final flush
        c.mark(m.version)
        pushes += 1
    assert m.completed == n
    assert m.version == len(events)
    assert pushes <= 4.0 / 0.2 + 2
    assert c.pushes == pushes


def test_model_subscribes_to_an_event_bus_directly() -> None:
    bus = ev.EventBus()
    m, _ = model(("a",))
    unsubscribe = bus.subscribe(m)
    bus.publish(ev.TaskFinished(**W, task_id="a"))
    unsubscribe()
    assert m.state("a") == "done"


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0.0, 9.999, 59.9, 61, 7200)] == ["0.00s", "10.00s", "59.9s", "1m01s", "2h00m"]


def test_an_unknown_eta_says_the_least_that_is_left() -> None:
    """A task reporting progress says "about N s left" in its pane; the bar then says the
    run needs at least that much, not only "ETA unknown" (a task with no history is after it)."""
    m = ProgressModel(["a", "b", "c"], edges=[("a", "b"), ("b", "c")], history={"b": 5.0}, clock=lambda: 0.0)
    m.apply(ev.RunStarted(workflow="w", instance_id="i", tasks=("a", "b", "c"), time=0.0))
    m.apply(ev.TaskStarted(workflow="w", instance_id="i", task_id="a", time=0.0))
    for done, at in ((1, 1.0), (2, 2.0)):
        m.apply(ev.TaskProgress(workflow="w", instance_id="i", task_id="a", done=done, total=10, time=at))
    assert m.task_remaining("a", now=2.0) == pytest.approx(8.0)
    assert m.eta(now=2.0) is None  # c: no history, no progress
    assert m.eta_floor(now=2.0) == pytest.approx(8.0 + 5.0)  # a's 8 s, then b's 5 s; c counts 0
    progress = m.progress(now=2.0)
    assert progress["eta"] is None and progress["eta_unknown"] is True
    assert progress["eta_floor"] == pytest.approx(13.0)
    assert progress["text"].endswith(" · ETA at least 13.0s")
    # a finished task passes on when its inputs end: c after (done) b after a
    m.apply(ev.TaskFinished(workflow="w", instance_id="i", task_id="b", duration=0.1))
    m.set_history({"c": 1.0})
    assert m.eta(now=2.0) == pytest.approx(8.0 + 1.0)
    assert m.eta_floor(now=2.0) == m.eta(now=2.0)
    m.apply(ev.RunFinished(workflow="w", instance_id="i", state="completed", time=3.0, duration=3.0))
    assert m.eta_floor(now=3.0) is None and m.progress(now=3.0)["eta_floor"] is None


def test_a_batch_folds_as_the_events_one_by_one_when_its_run_starts_anew() -> None:
    """A planned model (a resume's plan shown before the run) is made anew by the run's
    RunStarted; the tasks that start and finish after it in the same batch are the new ones."""
    tasks = ("a", "b", "c")
    run: list[ev.RunEvent] = [started(tasks, plan={"a": "restore"})]
    run.append(ev.TaskRestored(**W, task_id="a"))
    for tid in ("b", "c"):
        run += [ev.TaskStarted(**W, task_id=tid, time=1.0), ev.TaskFinished(**W, task_id=tid, duration=0.5, time=2.0)]
    run.append(ev.RunFinished(**W, state="completed", duration=2.0, time=2.0))
    one, _ = model(tasks, plan={"a": "restore", "b": "stale"})
    batch, _ = model(tasks, plan={"a": "restore", "b": "stale"})
    for event in run:
        one.apply(event)
    assert batch.apply_all(run) == len(run)
    assert batch.states() == one.states() == {"a": "restored", "b": "done", "c": "done"}
    assert batch.counts() == one.counts() and batch.summary() == one.summary()
    assert [batch.info(t).detail(t) for t in tasks] == [one.info(t).detail(t) for t in tasks]
