"""Map items and loop iterations are folded into their node, never shown as extra tasks.

The engine publishes ``TaskStarted`` (and, on failure, ``TaskFailed``) for item ids such
as ``square[3]`` and ``newton#2``; the widget's model must not turn them into rows (it
used to: a finished 30-item map read "3/11 done" with 8 ghost tasks "cancelled").
"""

from __future__ import annotations

import nbflow as nf
from nbflow.jupyter.progress import ProgressModel


def items(n: int) -> list[int]:
    return list(range(n))


def square(x: int) -> int:
    return x * x


def seven_fails(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def total(xs: list[int]) -> int:
    return sum(xs)


def _run(wf: nf.WorkflowDefinition, value: object) -> tuple[ProgressModel, object]:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    model = ProgressModel(wf.task_ids, kinds={n.id: n.kind for n in wf.nodes})
    runner.subscribe(model)
    return model, runner.run(wf, "i", value)


def test_map_items_are_not_tasks() -> None:
    wf = nf.Workflow("m").then("items", items).map("square", square, concurrency=8).then("total", total).build()
    model, status = _run(wf, 30)
    assert status.state.value == "completed"
    assert model.task_ids == ("items", "square", "total")
    assert (model.completed, model.total) == (3, 3)
    assert model.summary() == "m: 3/3 done | items done | square done 30/30 | total done"


def test_failed_map_item_marks_the_map_failed() -> None:
    wf = nf.Workflow("m").then("items", items).map("square", seven_fails, concurrency=8).then("total", total).build()
    model, status = _run(wf, 30)
    assert status.state.value == "failed"
    assert model.task_ids == ("items", "square", "total")
    assert model.state("square") == "failed"
    assert "seven" in model.info("square").error
    assert "ValueError" in model.info("square").traceback


def test_loop_iterations_are_not_tasks() -> None:
    def step(s: int) -> nf.LoopResult:
        return nf.LoopResult.done(s) if s >= 5 else nf.LoopResult.again(s + 1)

    wf = nf.Workflow("l").then("start", square).loop(step, max_iterations=20).build()
    model, status = _run(wf, 1)
    assert status.state.value == "completed"
    assert len(model.task_ids) == 2
    assert model.completed == 2
