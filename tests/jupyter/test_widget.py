"""WorkflowWidget without a front end: a real runner's events, the synced traits, the
number of comm messages, the static fallback and the button actions."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.jupyter import render
from nbflow.jupyter.mimebundle import STATE_COLORS
from nbflow.jupyter.progress import STATES

pytest.importorskip("anywidget")
from nbflow.jupyter.widget import MAX_ROWS, WorkflowWidget

STATIC = Path(__file__).parents[2] / "nbflow" / "jupyter" / "static"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def etl(clean_body: str = "x + 1") -> nf.WorkflowDefinition:
    clean = eval(f"lambda x: {clean_body}")

    def load(x: int) -> int:
        print(f"loading {x}")
        return x * 2

    return nf.Workflow("etl").then("extract", lambda x: x).then("load", load).then("clean", clean).build()


@pytest.fixture
def runner() -> nf.CheckpointingRunner:
    return nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)


def count_comm_messages(widget: WorkflowWidget) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    real_send = widget.comm.send

    def send(data: Any = None, *args: Any, **kwargs: Any) -> Any:
        sent.append(data)
        return real_send(data, *args, **kwargs)

    widget.comm.send = send
    return sent


def test_widget_follows_a_real_run(runner: nf.CheckpointingRunner) -> None:
    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-1", plan=runner.plan(wf, "e-1"))
    assert widget.states == {"extract": "pending", "load": "pending", "clean": "pending"}
    assert widget.svg.startswith("<svg") or "graphviz" in widget.svg_note
    unsubscribe = widget.listen(runner.events)
    assert runner.run(wf, "e-1", 1).output == 3
    widget.flush()
    unsubscribe()
    assert widget.states == {"extract": "done", "load": "done", "clean": "done"}
    assert (widget.progress["done"], widget.progress["total"], widget.progress["run_state"]) == (3, 3, "completed")
    assert widget.progress["text"].startswith("3/3 done · elapsed ")
    assert [row[:3] for row in widget.rows] == [["extract", "done", 1], ["load", "done", 1], ["clean", "done", 1]]
    assert widget.summary() == "etl: 3/3 done | extract done | load done | clean done"
    assert widget.controls_enabled is False


def test_resume_shows_stale_then_restored(runner: nf.CheckpointingRunner) -> None:
    runner.run(etl(), "e-2", 1)
    edited = etl("x + 2")
    plan = runner.plan(edited, "e-2")
    assert plan == {"extract": "restore", "load": "restore", "clean": "stale"}
    widget = WorkflowWidget(edited, instance_id="e-2", plan=plan)
    assert widget.states["clean"] == "stale"
    widget.listen(runner.events)
    runner.resume(edited, "e-2")
    widget.flush()
    assert widget.states == {"extract": "restored", "load": "restored", "clean": "done"}
    assert widget.summary() == "etl: 3/3 done (2 restored) | extract restored | load restored | clean done"
    widget.selected = "load"  # what a click in the graph does
    assert widget.detail["task"] == "load"
    assert widget.detail["state"] == "restored"
    assert widget.detail["stdout"] == "loading 1\n"  # restored tasks still show their output
    assert widget.detail["deps"] == ["extract"]


def test_failure_shows_traceback_in_detail(runner: nf.CheckpointingRunner) -> None:
    def explode(x: int) -> int:
        raise ValueError("bad row 7")

    wf = nf.Workflow("boom").then("extract", lambda x: x).then("explode", explode).then("never", lambda x: x).build()
    widget = WorkflowWidget(wf, instance_id="b-1")
    widget.listen(runner.events)
    assert runner.run(wf, "b-1", 1).state == "failed"
    widget.flush()
    assert widget.states["extract"] == "done"
    assert widget.states["explode"] == "failed"
    assert widget.states["never"] == "pending"
    assert widget.progress["run_state"] == "failed"
    widget.selected = "explode"
    assert "ValueError" in widget.detail["error"]
    assert "bad row 7" in widget.detail["traceback"]
    assert widget.summary() == "boom: 1/3 done, 1 failed [failed] | extract done | explode failed | never pending"


def test_a_thousand_task_run_sends_few_comm_messages(runner: nf.CheckpointingRunner) -> None:
    n = 1000
    builder = nf.Workflow("wide")
    for i in range(n):
        builder.add(f"t{i:04d}", lambda: 1)
    wf = builder.build()
    widget = WorkflowWidget(wf, instance_id="w-1")
    assert widget.svg == "" and "more than" in widget.svg_note  # too big to draw; table still works
    sent = count_comm_messages(widget)
    notifications: list[str] = []
    widget.observe(lambda change: notifications.append(change["name"]), names=["states", "progress", "rows"])
    widget.listen(runner.events)
    started = time.monotonic()
    runner.run(wf, "w-1")
    widget.flush()
    seconds = time.monotonic() - started
    assert widget.progress["done"] == n
    assert set(widget.states.values()) == {"done"}
    assert len(widget.rows) == min(n, MAX_ROWS)
    # >= 2,000 events; the widget pushes at most 5 snapshots a second plus a final flush,
    # each push is ONE comm message (hold_sync). Target: <= 20 messages per second of run.
    updates = [m for m in sent if m and m.get("method") == "update"]
    assert len(updates) == len(sent)
    assert len(sent) <= 5 * seconds + 3
    assert len(sent) <= max(20 * seconds, 3)
    assert notifications.count("states") <= len(sent)


def test_throttled_pushes_arrive_without_flush(runner: nf.CheckpointingRunner) -> None:
    """The trailing timer pushes the last events even if nobody calls flush()."""
    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-3", min_interval=0.05)
    widget.listen(runner.events)
    runner.run(wf, "e-3", 1)
    deadline = time.monotonic() + 10
    while widget.progress.get("run_state") != "completed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert widget.progress["run_state"] == "completed"


def test_unsubscribed_widget_stops_following(runner: nf.CheckpointingRunner) -> None:
    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-4")
    widget.listen(runner.events)()
    runner.run(wf, "e-4", 1)
    widget.flush()
    assert set(widget.states.values()) == {"pending"}


def test_mimebundle_has_live_view_and_static_fallback(runner: nf.CheckpointingRunner) -> None:
    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-5")
    widget.listen(runner.events)
    runner.run(wf, "e-5", 1)
    widget.flush()
    data, _metadata = widget._repr_mimebundle_()
    assert data["text/plain"] == widget.summary()
    assert data[WIDGET_MIME]["model_id"] == widget.model_id
    # the painted graph is in the static view, a separate output (nbconvert would show an
    # image/svg+xml here as well as the static view's)
    assert set(data) == {WIDGET_MIME, "text/plain"}
    if render.layout(wf) is not None:
        svg = base64.b64decode(
            re.search(r'class="nbflow-static-dag"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', widget.static_html())[
                1
            ]
        ).decode()
        assert svg.count("nbflow-state-done") == 3
        assert f'fill="{STATE_COLORS["done"]}"' in svg
    assert repr(widget) == "<WorkflowWidget 'etl' instance 'e-5': 3/3 done, completed>"
    assert "0x" not in repr(widget)


class FakeControls:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def cancel(self) -> None:
        self.calls.append(("cancel",))

    def send_signal(self, name: str, payload: Any) -> None:
        self.calls.append(("signal", name, payload))

    def rerun_from(self, task_id: str) -> None:
        if task_id == "extract":
            raise nf.NbflowError("cannot re-run now")
        self.calls.append(("rerun", task_id))


def test_buttons_call_the_controls() -> None:
    widget = WorkflowWidget(etl(), instance_id="e-6")
    press = widget._on_front_end_message
    press(widget, {"action": "cancel"})
    assert widget.message == "Controls need a background run (%%workflow ... --background)."
    controls = FakeControls()
    widget.set_controls(controls)
    assert widget.controls_enabled is True
    press(widget, {"action": "cancel"})
    assert widget.message == "Cancel requested."
    press(widget, {"action": "signal", "name": "approve", "payload": '{"ok": true}'})
    press(widget, {"action": "signal", "name": "approve", "payload": "{nope"})
    assert widget.message.startswith("The payload is not valid JSON")
    press(widget, {"action": "rerun"})
    assert widget.message == "Select a task in the graph or the table first."
    widget.selected = "load"
    press(widget, {"action": "rerun"})
    press(widget, {"action": "rerun", "task": "extract"})
    assert widget.message == "rerun failed: NbflowError: cannot re-run now"
    assert controls.calls == [("cancel",), ("signal", "approve", {"ok": True}), ("rerun", "load")]
    widget.set_controls(None)
    assert widget.controls_enabled is False


def test_missing_dot_still_gives_progress_and_table(
    runner: nf.CheckpointingRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    render.clear_cache()
    monkeypatch.setattr(render, "_warned", False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="apt-get install graphviz"):
        widget = WorkflowWidget(etl("x * 5"), instance_id="e-7")
    render.clear_cache()
    assert widget.svg == ""
    assert "apt-get install graphviz" in widget.svg_note
    widget.listen(runner.events)
    runner.run(etl("x * 5"), "e-7", 1)
    widget.flush()
    assert widget.progress["done"] == 3 and len(widget.rows) == 3
    data, _ = widget._repr_mimebundle_()
    assert "image/svg+xml" not in data and data["text/plain"].startswith("etl: 3/3 done")


def test_css_paints_every_state_in_the_static_colours() -> None:
    css = (STATIC / "widget.css").read_text()
    assert set(STATE_COLORS) == {*STATES, "interrupted"}  # interrupted: the kernel died (front end only)
    for state, color in STATE_COLORS.items():
        assert re.search(rf"\.nbflow-state-{state} [^{{]*\{{ fill: {color}; background: {color}; \}}", css), state


def test_front_end_files_and_selectors_exist() -> None:
    js = (STATIC / "widget.js").read_text()
    assert "export default { render }" in js
    for selector in (
        "nbflow-widget",
        "nbflow-dag",
        "nbflow-progress",
        "nbflow-progress-bar",
        "nbflow-table",
        "nbflow-detail",
        "nbflow-cancel",
        "nbflow-rerun",
        "nbflow-approve",
        "nbflow-signal-payload",
        "nbflow-kernel-lost",
        "nbflow-detail-error",
        "nbflow-detail-user-traceback",
        "nbflow-detail-full-traceback",
        "nbflow-detail-displays",
    ):
        assert f'"{selector}' in js, selector
    # what the front end watches to call a kernel gone (see widget.js watchKernel)
    for hook in ("statusChanged", "connectionStatusChanged", "kernelChanged", "jupyter-widgets-disconnected"):
        assert hook in js, hook
    css = (STATIC / "widget.css").read_text()
    assert ".jp-OutputArea-child:has(.nbflow-widget) + .jp-OutputArea-child:has(.nbflow-static)" in css
    assert WorkflowWidget._esm is not None and WorkflowWidget._css is not None


def test_events_are_folded_before_a_push_is_due(runner: nf.CheckpointingRunner) -> None:
    """While no push is due (here: never before the flush), queued events are folded into
    the model in the background, so the push at the end of a run has little left to fold."""
    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-1", min_interval=60.0)
    sent = count_comm_messages(widget)
    widget.listen(runner.events)
    assert runner.run(wf, "e-1", 1).output == 3
    deadline = time.monotonic() + 10
    while widget._inbox and time.monotonic() < deadline:  # folded by the widget's timer, not by a read
        time.sleep(0.05)
    assert not widget._inbox
    assert sent == []  # folding sends nothing: the browser still gets at most one update per interval
    assert widget.states == {"extract": "pending", "load": "pending", "clean": "pending"}  # nothing pushed yet
    widget.flush()
    assert len(sent) == 1 and widget.states == {"extract": "done", "load": "done", "clean": "done"}


def test_the_table_and_task_list_go_to_the_browser_as_json_text(runner: nf.CheckpointingRunner) -> None:
    """ipywidgets walks every list of a synced value in Python before each send; the
    table's rows and the task list go as one JSON string each (widget.js parses them)."""
    import json

    wf = etl()
    widget = WorkflowWidget(wf, instance_id="e-8")
    sent = count_comm_messages(widget)
    widget.listen(runner.events)
    runner.run(wf, "e-8", 1)
    widget.flush()
    state = widget.get_state()
    assert isinstance(state["rows"], str) and json.loads(state["rows"]) == widget.rows
    assert isinstance(state["tasks"], str) and json.loads(state["tasks"]) == [[n.id, n.kind] for n in wf.nodes]
    assert isinstance(state["states"], dict)  # read by name from the comm messages (kernel tests)
    (update,) = [m for m in sent if m.get("method") == "update" and "rows" in m["state"]]
    assert json.loads(update["state"]["rows"])[0][:3] == ["extract", "done", 1]
    js = (STATIC / "widget.js").read_text()
    assert 'jsonTrait(model, "rows")' in js and 'jsonTrait(model, "tasks")' in js


def test_the_first_snapshot_goes_with_the_comm_opening(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the widget sends its first state once, in the comm's opening message, not
    again as an update right after it."""
    import ipywidgets

    updates: list[Any] = []
    real = ipywidgets.Widget._send

    def send(self: Any, msg: Any, buffers: Any = None) -> None:
        updates.append(msg)
        real(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", send)
    widget = WorkflowWidget(etl(), instance_id="e-9", plan={"clean": "stale"})
    assert not [m for m in updates if {"states", "rows", "progress"} & set(m.get("state", {}))]
    state = widget.get_state()
    assert state["states"] == {"extract": "pending", "load": "pending", "clean": "stale"}
    assert state["progress"]["total"] == 3 and len(widget.rows) == 3
    assert widget.cpu_seconds > 0  # the first snapshot's cost counts as a push's


def test_a_big_table_lists_what_needs_attention_first_in_graph_order() -> None:
    from nbflow.run import events as ev

    n = MAX_ROWS + 100
    builder = nf.Workflow("many")
    for i in range(n):
        builder.add(f"t{i:04d}", lambda: 1)
    wf = builder.build()
    widget = WorkflowWidget(wf, instance_id="m-1")
    ids = {"workflow": "many", "instance_id": "m-1"}
    events: list[ev.RunEvent] = [ev.RunStarted(**ids, tasks=wf.task_ids, time=0.0)]
    for i in range(0, n, 7):
        events.append(ev.TaskStarted(**ids, task_id=f"t{i:04d}", time=1.0))
    for i in range(0, n, 21):
        events.append(ev.TaskFinished(**ids, task_id=f"t{i:04d}", duration=0.5))
    events.append(ev.TaskFailed(**ids, task_id="t0590", attempt=1, error="boom"))
    events.append(ev.TaskFailed(**ids, task_id="t0007", attempt=1, error="boom"))
    widget.model.apply_all(events)
    widget.flush()
    states = widget.states
    order = [row[0] for row in widget.rows]
    assert len(order) == MAX_ROWS and len(set(order)) == MAX_ROWS
    running = [t for t in wf.task_ids if states[t] == "running"]
    rest = [t for t in wf.task_ids if states[t] not in ("failed", "running")]
    assert order == ["t0007", "t0590", *running, *rest][:MAX_ROWS]
