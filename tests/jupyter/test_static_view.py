"""The saved, kernel-free view of a run (``static_view``) from real runs, and how the widget
publishes it: two outputs through a real IPython shell, refreshed at run end (and, while
a run goes, every ``STATIC_INTERVAL``)."""

from __future__ import annotations

import base64
import html
import re
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.terminal.interactiveshell import TerminalInteractiveShell
from IPython.testing import tools

import nbflow as nf
from nbflow.jupyter import render, static_view
from nbflow.jupyter.mimebundle import STATE_COLORS
from nbflow.jupyter.progress import ProgressModel
from nbflow.jupyter.static_view import error_line, static_html, user_frames

pytest.importorskip("anywidget")
from nbflow.jupyter import widget as widget_module
from nbflow.jupyter.widget import WorkflowWidget

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` binary not installed")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake figure bytes").decode()


def sales() -> nf.WorkflowDefinition:
    def orders() -> list[float]:
        print("reading 3 orders")
        return [10.0, 2.5, 7.25]

    def total(orders: list[float]) -> float:
        print("summing")
        return sum(orders)

    return nf.Workflow("sales").then(orders).then(total).build()


def _check(rows: list[float]) -> None:
    raise ValueError(f"{len(rows)} rows are bad")


def failing() -> nf.WorkflowDefinition:
    def rows() -> list[float]:
        return [1.0, -2.0]

    def validate(rows: list[float]) -> bool:
        _check(rows)
        return True

    return nf.Workflow("checks").then(rows).then(validate).build()


def run_into_widget(wf: nf.WorkflowDefinition, runner: nf.CheckpointingRunner, instance: str) -> WorkflowWidget:
    widget = WorkflowWidget(wf, instance_id=instance, plan=runner.plan(wf, instance))
    widget.listen(runner.events)
    runner.run(wf, instance)
    widget.flush()
    return widget


@pytest.fixture
def runner() -> nf.CheckpointingRunner:
    return nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)


def dag_svg(page: str) -> str:
    m = re.search(r'class="nbflow-static-dag"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page)
    assert m is not None, "no DAG image in the static view"
    return base64.b64decode(m.group(1)).decode()


def task_section(page: str, task: str) -> str:
    m = re.search(
        rf'<details class="nbflow-static-task[^"]*" title="{task}"[^>]*>(.*?)</details>(?=<details class="nbflow-static-task|</div>)',
        page,
        re.S,
    )
    assert m is not None, f"no details section for {task}"
    return m.group(1)


@needs_dot
def test_a_finished_run_has_summary_dag_legend_table_and_each_tasks_output(runner: nf.CheckpointingRunner) -> None:
    page = run_into_widget(sales(), runner, "s-1").static_html()
    assert '<div class="nbflow-static-summary"><b>sales / s-1</b>' in page
    assert "2/2 done" in page and "completed" in page
    svg = dag_svg(page)
    assert svg.count("nbflow-state-done") == 2 and f'fill="{STATE_COLORS["done"]}"' in svg
    legend = re.search(r'<div class="nbflow-static-legend".*?</div>', page, re.S)
    assert legend is not None and "nbflow-state-done" in legend.group(0)
    rows = re.findall(r'<tr class="nbflow-static-row nbflow-state-(\w+)" title="(\w+)">', page)
    assert rows == [("done", "orders"), ("done", "total")]
    assert "reading 3 orders" in task_section(page, "orders")
    assert "summing" in task_section(page, "total") and "19.75" in page  # the output's preview


@needs_dot
def test_restored_tasks_are_dashed_in_the_saved_graph(runner: nf.CheckpointingRunner) -> None:
    runner.run(sales(), "s-2")
    rerun = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
    page = run_into_widget(sales(), rerun, "s-2").static_html()
    svg = dag_svg(page)
    assert svg.count("nbflow-state-restored") == 2
    assert svg.count('stroke-dasharray="4,2"') == 2  # an attribute: an <img> SVG gets no page CSS
    legend = re.search(r'<div class="nbflow-static-legend".*?</div>', page, re.S)
    assert (
        legend is not None
        and "border: 1px dashed" in legend.group(0)
        and "restored from a checkpoint" in legend.group(0)
    )
    assert "reading 3 orders" in task_section(page, "orders")  # restored tasks keep their output


def test_a_failed_task_shows_one_line_then_its_users_frames_then_the_rest(runner: nf.CheckpointingRunner) -> None:
    widget = run_into_widget(failing(), runner, "c-1")
    page = widget.static_html()
    section = task_section(page, "validate")
    assert '<details class="nbflow-static-task nbflow-state-failed" title="validate" open>' in page
    error = section.index('class="nbflow-static-error"')
    mine = section.index('class="nbflow-static-user-traceback"')
    full = section.index('<details class="nbflow-static-full-traceback">')
    assert error < mine < full
    assert "ValueError: 2 rows are bad</div>" in section
    frames = re.search(r'<pre class="nbflow-static-user-traceback">(.*?)</pre>', section, re.S)
    assert frames is not None
    assert "_check" in frames.group(1) and "validate" in frames.group(1)
    assert "nbflow" not in frames.group(1).replace("test_static_view", "") and "Traceback" not in frames.group(1)
    full_tb = re.search(r'<pre class="nbflow-static-traceback">(.*?)</pre>', section, re.S)
    assert full_tb is not None and "/nbflow/run/" in full_tb.group(1)
    # the live pane gets the same three parts
    widget.selected = "validate"
    assert widget.detail["error_line"] == "ValueError: 2 rows are bad"
    assert "_check" in widget.detail["user_traceback"] and "/nbflow/run/" not in widget.detail["user_traceback"]
    assert "/nbflow/run/" in widget.detail["traceback"]
    assert "The run failed" in page


def test_error_line_and_user_frames() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        f'  File "{nf.__file__.rsplit("/", 1)[0]}/run/attempts.py", line 44, in call_sync\n'
        "    return fn(*args, **kwargs), cap\n"
        '  File "/home/me/analysis.py", line 3, in validate\n'
        "    raise ValueError('bad')\n"
        "ValueError: bad\n"
    )
    assert error_line({"error": "", "traceback": tb}) == "ValueError: bad"
    assert error_line({"error": "KeyError: 'x'\nmore", "traceback": tb}) == "KeyError: 'x'"
    assert user_frames(tb, "ValueError: bad") == (
        "  File \"/home/me/analysis.py\", line 3, in validate\n    raise ValueError('bad')"
    )


def test_displays_previews_and_long_output_in_the_saved_view() -> None:
    model = ProgressModel(["plot"], workflow="w", instance_id="i")
    long_out = "".join(f"line {i}\n" for i in range(5000))
    detail = {
        "state": "done", "attempts": 1, "duration_text": "1.00s", "stdout": long_out, "stderr": "",
        "displays": [{"image/png": PNG, "text/plain": "<Figure>"}, {"text/html": "<table><tr><td>7</td></tr></table>"}],
        "preview_bundle": {"text/html": "<table class='df'><tr><td>head</td></tr></table>", "text/plain": "df"},
    }  # fmt: skip
    page = static_html(model, None, lambda task: detail)
    section = task_section(page, "plot")
    assert f'<img class="nbflow-static-display-image" alt="figure" src="data:image/png;base64,{PNG}">' in section
    assert "<table><tr><td>7</td></tr></table>" in section  # the task's own HTML, as under a cell
    assert "<table class='df'>" in section and "<Figure>" not in section  # the richest type wins
    stdout = re.search(r'<pre class="nbflow-static-stdout">(.*?)</pre>', section, re.S)
    assert stdout is not None
    text = html.unescape(stdout.group(1))
    assert len(text) < static_view.TEXT_TAIL + 200 and "line 4999" in text and "characters not shown" in text


def test_displays_over_the_byte_budget_are_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static_view, "MAX_DISPLAY_BYTES", len(PNG) + 10)
    model = ProgressModel(["a", "b"], workflow="w")
    detail = {"state": "done", "displays": [{"image/png": PNG}]}
    page = static_html(model, None, lambda task: detail)
    assert page.count("data:image/png") == 1
    assert "1 display(s) left out of the saved view" in task_section(page, "b")


def test_a_snapshot_taken_while_running_says_what_to_do() -> None:
    from nbflow.run import events as ev

    model = ProgressModel(["load", "train"], workflow="w", instance_id="i")
    model.apply(ev.RunStarted(workflow="w", instance_id="i", tasks=("load", "train")))
    model.apply(ev.TaskFinished(workflow="w", instance_id="i", task_id="load", duration=0.1))
    model.apply(ev.TaskStarted(workflow="w", instance_id="i", task_id="train", attempt=1))
    page = static_html(model, None)
    assert "Saved while the run was going during train: 1 of 2 tasks were done" in page
    assert "re-run this cell to resume" in page


def test_a_view_saved_before_the_run_reported_says_where_to_look() -> None:
    page = static_html(ProgressModel(["a"], workflow="etl"), None)
    assert "Saved before this run reported back" in page and "%workflow status etl" in page


def test_every_essential_part_survives_an_html_sanitizer() -> None:
    """JupyterLab shows an untrusted notebook's HTML sanitized: no <svg>, no <style>, no
    data-* attributes. Every part of the view that carries information uses none of them."""
    model = ProgressModel(["a"], workflow="w")
    page = static_html(model, None, lambda task: {"state": "failed", "error": "E: x", "traceback": "T"})
    body = page.split("</style>", 1)[1]
    assert "<svg" not in body and "<style" not in body and "<script" not in body
    assert not re.search(r"\sdata-[\w-]+=", body)


# -- how the widget publishes it ------------------------------------------------------------
def _shell() -> Any:
    """The process's test shell as IPython.testing.globalipapp makes it, without calling its
    once-per-process ``start_ipython`` (a module holding its ``get_ipython`` would get None)."""
    if TerminalInteractiveShell.initialized():
        return TerminalInteractiveShell.instance()
    config = tools.default_config()
    config.TerminalInteractiveShell.simple_prompt = True
    return TerminalInteractiveShell.instance(config=config)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """A real IPython shell whose display publisher records what it would send."""
    shell = _shell()
    sent: list[dict[str, Any]] = []
    pub = shell.display_pub
    original = pub.publish

    def record(
        data: Any, metadata: Any = None, source: Any = None, *, transient: Any = None, update: bool = False, **kw: Any
    ) -> None:
        sent.append({"data": dict(data), "display_id": (transient or {}).get("display_id"), "update": update})

    pub.publish = record
    try:
        yield sent
    finally:
        pub.publish = original


def test_display_sends_the_live_widget_and_the_static_view_then_run_end_refreshes_both(
    published: list[dict[str, Any]], runner: nf.CheckpointingRunner
) -> None:
    from IPython.display import display

    wf = sales()
    widget = WorkflowWidget(wf, instance_id="p-1")
    display(widget)  # what the magic and a user's display(widget) do
    assert [set(m["data"]) for m in published] == [{WIDGET_MIME, "text/plain"}, {"text/html", "text/plain"}]
    assert all(m["display_id"] and not m["update"] for m in published)
    assert published[0]["display_id"] != published[1]["display_id"]
    assert "0/2 done" in published[1]["data"]["text/html"]
    widget.listen(runner.events)
    runner.run(wf, "p-1")
    widget.flush()  # on the main thread, as at the end of a blocking cell
    updates = [m for m in published if m["update"]]
    # only the static view: re-sending the widget output would redraw the live view
    assert [m["display_id"] for m in updates] == [published[1]["display_id"]]
    assert published[0]["data"][WIDGET_MIME]["model_id"] == widget.model_id
    assert published[0]["data"]["text/plain"].startswith("sales: live view of the run")
    assert "2/2 done" in updates[0]["data"]["text/html"] and "reading 3 orders" in updates[0]["data"]["text/html"]
    assert updates[0]["data"]["text/plain"] == "sales: 2/2 done | orders done | total done"


def test_while_a_run_goes_the_static_view_is_refreshed_from_the_push_thread(
    published: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(widget_module, "STATIC_INTERVAL", 0.0)
    release = threading.Event()

    def first() -> int:
        return 1

    def slow(first: int) -> int:
        release.wait(10)
        return 2

    wf = nf.Workflow("slowly").then(first).then(slow).build()
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    widget = WorkflowWidget(wf, instance_id="p-2", min_interval=0.01)
    widget.display()
    static_id = published[1]["display_id"]
    widget.listen(runner.events)
    handle = runner.start(wf, "p-2")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(
                m["update"] and m["display_id"] == static_id and "going during slow: 1 of 2" in m["data"]["text/html"]
                for m in published
            ):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the static view was not refreshed while the run went")
    finally:
        release.set()
        handle.wait(timeout=10)
    refreshed = [m for m in published if m["update"] and m["display_id"] == static_id]
    assert all("re-run this cell to resume" in m["data"]["text/html"] for m in refreshed)


@needs_dot
def test_render_layout_is_what_the_saved_view_draws(runner: nf.CheckpointingRunner) -> None:
    wf = sales()
    lay = render.layout(wf)
    assert lay is not None
    page = run_into_widget(wf, runner, "s-3").static_html()
    assert set(re.findall(r'data-task="(\w+)"', dag_svg(page))) == set(lay.node_ids)


def test_outside_ipython_display_prints_the_summary_not_the_bundles() -> None:
    import subprocess
    import sys

    code = (
        "import nbflow as nf\n"
        "from nbflow.jupyter.widget import WorkflowWidget\n"
        "wf = nf.Workflow('w').then('a', lambda: 1).build()\n"
        "WorkflowWidget(wf, instance_id='i').display()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "w: 0/1 done | a pending"


def test_a_big_static_view_is_refreshed_less_often(
    published: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(widget_module, "STATIC_INTERVAL", 0.0)
    monkeypatch.setattr(widget_module, "STATIC_BYTES_PER_SECOND", 1)  # any view is "big": one refresh a long while
    release = threading.Event()

    def first() -> int:
        return 1

    def slow(first: int) -> int:
        step = 0
        while not release.wait(0.02):  # a progress report every 20 ms: the model keeps changing
            step += 1
            nf.progress(step)
        return 2

    wf = nf.Workflow("big").then(first).then(slow).build()
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    widget = WorkflowWidget(wf, instance_id="p-3", min_interval=0.01)
    widget.display()
    static_id = published[1]["display_id"]
    widget.listen(runner.events)
    handle = runner.start(wf, "p-3")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(m["update"] for m in published):
            time.sleep(0.02)
        time.sleep(0.5)  # pushes go on every 10 ms meanwhile (the run's events)
        refreshed = [m for m in published if m["update"] and m["display_id"] == static_id]
    finally:
        release.set()
        handle.wait(timeout=10)
    assert len(refreshed) == 1, [m["data"]["text/plain"] for m in refreshed]
    assert widget.model.info("slow").progress is not None  # it did keep changing
