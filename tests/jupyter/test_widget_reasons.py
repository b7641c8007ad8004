"""The widget's detail pane: why a stale task is stale (kept once the run starts), and
the line that loads a finished task's output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf

pytest.importorskip("anywidget")
from nbflow.jupyter.session import Session
from nbflow.jupyter.widget import WorkflowWidget

STATIC = Path(__file__).parents[2] / "nbflow" / "jupyter" / "static"

CELL = "def first(x):\n    return x + 1\n\ndef second(first):\n    return first * 2\n"


def test_stale_reasons_survive_the_run_start_and_finished_tasks_show_how_to_load(tmp_path: Path) -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(CELL, ns)
    wf = nf.Workflow("w").then(ns["first"]).then(ns["second"]).build()
    runner.run(wf, "w-1", 1)
    exec(CELL.replace("x + 1", "x + 10"), ns)
    edited = nf.Workflow("w").then(ns["first"]).then(ns["second"]).build()
    from nbflow.run.stale import explain_plan

    plan = runner.plan(edited, "w-1")
    reasons = {t: str(r) for t, r in explain_plan(edited, runner.backend.get_records("w-1"), plan).items()}
    widget = WorkflowWidget(
        edited, instance_id="w-1", plan=plan, reasons=reasons, load_code=lambda t: f"%workflow result w {t}"
    )
    widget.selected = "first"
    assert widget.detail["state"] == "stale" and widget.detail["why"] == "its own code changed"
    assert "load" not in widget.detail  # nothing to load yet that this plan keeps
    widget.listen(runner.events)
    runner.resume(edited, "w-1")
    widget.flush()
    widget.selected = "second"
    assert widget.detail["state"] == "done"
    assert widget.detail["why"] == "upstream `first` changed"  # still there after the run
    assert widget.detail["load"] == "%workflow result w second"
    js = (STATIC / "widget.js").read_text()
    assert 'section("why", d.why)' in js and "nbflow-detail-load" in js


def test_the_session_gives_the_widget_the_load_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(WorkflowWidget, "display", lambda self: shown.append(self))
    session = Session({"__name__": "__main__"}, display=shown.append)
    store = tmp_path / "store"
    assert session.cell(f"w --input x=1 --dir {store}", CELL) == 4
    [widget] = shown
    widget.selected = "second"
    assert widget.detail["load"] == f"%workflow result w second --dir {store}"
    # with a second instance of the workflow, the line names this one by id
    session.cell(f"w --input x=2 --dir {store}", CELL)
    widget = shown[-1]
    widget.selected = "first"
    assert widget.detail["load"] == f"%workflow result {session.entries['w'].instance_id} first --dir {store}"
    assert sys.modules.get("nbflow.jupyter.widget") is not None
