"""The progress model on real runs: live output and progress, and an honest ETA.

The ETA assertions are on the model's own numbers at a known moment (the event that
marks the midpoint) against the run's real remaining time taken from the events, not
on how long the test takes.
"""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.jupyter.progress import HISTORY, DurationHistory, ProgressModel
from nbflow.run import events as ev

STEP = 0.25  # seconds each task sleeps: deterministic work


def _sleeper(name: str) -> Any:
    def body(x: Any) -> Any:
        time.sleep(STEP)
        return x

    body.__name__ = name
    return body


def _chain() -> nf.WorkflowDefinition:
    wf = nf.Workflow("eta")
    for name in ("a", "b", "c", "d"):
        wf = wf.then(_sleeper(name))
    return wf.build()


def _watch(
    runner: nf.CheckpointingRunner, wf: nf.WorkflowDefinition, midpoint: str
) -> tuple[ProgressModel, dict[str, Any]]:
    model = ProgressModel(wf.task_ids, workflow=wf.name, edges=wf.edges, history="auto")
    seen: dict[str, Any] = {}

    def on(e: ev.RunEvent) -> None:
        model.apply(e)
        if isinstance(e, ev.TaskFinished) and e.task_id == midpoint:
            seen["at"], seen["eta"] = e.time, model.eta(now=e.time)
        elif isinstance(e, ev.TaskStarted) and e.task_id == "a":
            seen["eta_at_start"] = model.eta(now=e.time)
        elif isinstance(e, ev.RunFinished):
            seen["end"] = e.time

    runner.subscribe(on)
    return model, seen


def test_second_run_eta_at_the_midpoint_is_close(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    wf = _chain()
    model, seen = _watch(runner, wf, "b")
    runner.run(wf, "first", 1)
    assert seen["eta"] is None and seen["eta_at_start"] is None  # nothing to go on yet: unknown
    HISTORY.clear()  # as in a new process: the second run reads the first one from the store
    runner2 = nf.CheckpointingRunner(backend, echo_output=False)
    model, seen = _watch(runner2, wf, "b")
    runner2.run(wf, "second", 1)
    truth = seen["end"] - seen["at"]
    assert seen["eta"] == pytest.approx(truth, rel=0.25)
    assert seen["eta_at_start"] == pytest.approx(4 * STEP, rel=0.25)
    assert model.info("c").expected == pytest.approx(STEP, rel=0.25)  # each row's expected duration
    backend.close()


def test_eta_from_in_task_progress_without_history(backend: Any) -> None:
    steps = 12

    def train(x: int) -> int:
        for i in range(steps):
            time.sleep(STEP / 4)
            nf.progress(i + 1, steps, note=f"epoch {i + 1}")
        return x

    wf = nf.Workflow("fit").then(train).build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    model = ProgressModel(wf.task_ids, edges=wf.edges)
    seen: dict[str, Any] = {}

    def on(e: ev.RunEvent) -> None:
        model.apply(e)
        if isinstance(e, ev.TaskProgress) and e.done >= steps // 2 and "eta" not in seen:  # (reports coalesce)
            seen["at"], seen["eta"] = e.time, model.eta(now=e.time)
        elif isinstance(e, ev.RunFinished):
            seen["end"] = e.time

    runner.subscribe(on)
    runner.run(wf, "i", 1)
    assert seen["eta"] == pytest.approx(seen["end"] - seen["at"], rel=0.25)


def test_live_output_and_progress_fold_into_the_task(runner: nf.CheckpointingRunner) -> None:
    def train(x: int) -> int:
        for i in range(3):
            print(f"epoch {i}", end="\r" if i < 2 else "\n")
            nf.progress(i + 1, 3, note=f"epoch {i}")
            time.sleep(0.08)
        print("warn: slow disk", file=__import__("sys").stderr)
        return x

    wf = nf.Workflow("fold").then(train).build()
    model = ProgressModel(wf.task_ids, edges=wf.edges)
    snapshots: list[dict[str, Any]] = []

    def on(e: ev.RunEvent) -> None:
        model.apply(e)
        if isinstance(e, ev.TaskOutput | ev.TaskProgress) and model.state("train") == "running":
            snapshots.append(model.info("train").detail("train"))

    runner.subscribe(on)
    runner.run(wf, "i", 1)
    assert any(d["live"] and d["stdout"].startswith("epoch") for d in snapshots)  # shown while running
    assert any(d["progress"] and d["progress"][1] == 3 for d in snapshots)
    final = model.info("train").detail("train")
    assert final["stdout"] == "epoch 2\n"  # the \r frames render as the line they end with
    assert final["stderr"] == "warn: slow disk\n" and final["live"] is False
    assert final["progress_text"] == "3/3 (100%) epoch 2"


def test_history_reads_earlier_instances_once(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    wf = _chain()
    runner.run(wf, "one", 1)
    history = DurationHistory()
    durations = history.durations(backend, "eta")
    assert set(durations) == {"a", "b", "c", "d"}
    assert all(d == pytest.approx(STEP, rel=0.5) for d in durations.values())
    backend.get_records = None  # type: ignore[assignment,method-assign]  # a second look would fail
    assert history.durations(backend, "eta") == durations  # cached per process
    assert history.durations(nf.InMemoryBackend(), "eta") == {}
    backend.close()


def test_history_can_leave_instances_out(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.run(_chain(), "one", 1)
    runner.run(nf.Workflow("eta").then(_sleeper("z")).build(), "other", 1)  # same workflow name, other tasks
    assert set(DurationHistory().durations(backend, "eta", skip=("other",))) == {"a", "b", "c", "d"}
    assert set(DurationHistory().durations(backend, "eta", skip=("one",))) == {"z"}
    backend.close()


@pytest.mark.parametrize(("resumed", "skipped"), [(False, ("one",)), (True, ())])
def test_a_new_run_reads_no_history_from_its_own_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resumed: bool, skipped: tuple[str, ...]
) -> None:
    """A new instance's records are only what this run writes (its durations are noted as
    its tasks finish): reading them back while the run writes them would cost the engine
    for nothing. A resumed instance's earlier run counts."""
    backend = nf.DiskcacheBackend(tmp_path / "store")
    wf = _chain()
    nf.CheckpointingRunner(backend, echo_output=False).run(wf, "one", 1)  # the store of "one" is known now
    asked: list[tuple[str, ...]] = []
    durations = HISTORY.durations

    def spy(store: Any, workflow: str, *, skip: Any = ()) -> dict[str, float]:
        asked.append(tuple(skip))
        return durations(store, workflow, skip=skip)

    monkeypatch.setattr(HISTORY, "durations", spy)
    model = ProgressModel(wf.task_ids, workflow=wf.name, edges=wf.edges, history="auto")
    model.apply(ev.RunStarted(workflow=wf.name, instance_id="one", tasks=wf.task_ids, resumed=resumed))
    assert asked == [skipped]
    backend.close()


def test_folding_a_batch_is_folding_each_event(runner: nf.CheckpointingRunner) -> None:
    def shout(x: int) -> int:
        print("hello")
        nf.progress(1, 2, note="half")
        return x

    wf = nf.Workflow("batch").then("a", shout).fork().branch(("b", shout)).branch(("c", shout)).join(
        "d", lambda parts: len(parts)).build()  # fmt: skip
    seen: list[ev.RunEvent] = []
    runner.subscribe(seen.append)
    runner.run(wf, "i", 1)
    one, batch = (ProgressModel(wf.task_ids, edges=wf.edges, clock=lambda: 100.0) for _ in range(2))
    for event in seen:
        one.apply(event)
    assert batch.apply_all(seen) == sum(1 for e in seen if e.kind != "task_display")
    assert batch.version == one.version
    assert batch.states() == one.states() and batch.summary() == one.summary()
    assert batch.progress() == one.progress()
    assert [batch.info(t).detail(t) for t in wf.task_ids] == [one.info(t).detail(t) for t in wf.task_ids]


def test_a_tight_progress_loop_sends_few_reports_and_never_loses_the_last(runner: nf.CheckpointingRunner) -> None:
    """``nf.progress`` every step only replaces the latest report (no lock): the flusher
    racing the loop sends a few of them, and the last one always reaches the view."""
    n = 50_000

    def loop(x: int) -> int:
        for i in range(n):
            nf.progress(i + 1, n, note=f"step {i + 1}")
        return x

    wf = nf.Workflow("tight").then(loop).build()
    reports: list[ev.TaskProgress] = []
    runner.subscribe(reports.append, kinds=[ev.TaskProgress])
    model = ProgressModel(wf.task_ids, edges=wf.edges)
    runner.subscribe(model)
    for run in range(3):
        reports.clear()
        started = time.monotonic()
        runner.run(wf, f"i-{run}", 1)
        seconds = time.monotonic() - started
        assert reports[-1].done == n and reports[-1].note == f"step {n}"
        assert all(a.done < b.done for a, b in pairwise(reports))  # in order, none twice
        assert len(reports) <= 20 * seconds + 3
        assert model.info("loop").progress == (n, n, f"step {n}")


def test_history_keeps_the_newest_instances_and_a_rerun_updates_its_own() -> None:
    history, store = DurationHistory(), nf.InMemoryBackend()
    history.MAX_INSTANCES = 3
    for i in range(5):
        history.note_all(store, "w", f"i-{i}", {"a": float(i), "b": 10.0})
    assert history.durations(store, "w") == {"a": 3.0, "b": 10.0}  # i-2, i-3, i-4
    history.note_all(store, "w", "i-2", {"a": 100.0})  # i-2 again: its "a" replaced, its "b" kept
    assert history.durations(store, "w") == {"a": 4.0, "b": 10.0}  # 3, 4, 100
    history.note_all(store, "w", "i-5", {"a": -1.0})  # the oldest (i-3) goes; a negative time counts as 0
    assert history.durations(store, "w") == {"a": 4.0, "b": 10.0}  # 4, 100, 0 and 10, 10
    history.note_all(store, "w", "i-6", {"c": 1.0})
    assert history.durations(store, "w") == {"a": 50.0, "b": 10.0, "c": 1.0}  # i-2, i-5, i-6
