"""Real browser: a notebook saved after a run shows the run when it is opened again, by a
new server whose fresh kernel has never seen the widget (JupyterLab 4 and Notebook 7).

1. The realistic notebook (``_realistic.py``) runs in a first server: ``sales`` finishes,
   ``checks`` fails in ``validate``. In the live session the saved (static) views stay
   hidden under the live widgets. The failed task's detail pane starts with the one-line
   error, then only the user's frames, with the full traceback behind a toggle.
2. The notebook is saved (Ctrl+S) and that server is stopped.
3. A new server opens it. JupyterLab's widget renderer can only say "model not found"
   there: that message must not be visible; the static view must be, with the painted
   DAG (an image whose SVG has every node in its state), the legend, the summary line,
   the task table, each task's captured stdout and — once display capture stores them —
   the figure ``chart`` drew, and for the failed run the one-line error.
4. A server with no kernel to start (the user picks "No Kernel"): the widget renderer
   waits forever ("Loading widget..."), hidden; the static view shows.
5. A colleague's server (another trust database, so the notebook is untrusted): the
   sanitized static view still shows the graph image, the table and the error.

Screenshots: ``artifacts/<app>-failed-task.png``, ``artifacts/<app>-chart-displays.png``,
``artifacts/<app>-reopened.png``, ``artifacts/<app>-reopened-no-kernel.png``,
``artifacts/<app>-reopened-untrusted.png``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ._lab import ARTIFACTS, CHROMIUM, known_page_error, open_notebook, run_all, start_server, stop_server
from ._realistic import SALES_TASKS, write_notebook

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


def _display_capture_landed() -> bool:
    """Task displays (figures) are captured once the detail carries ``displays``."""
    from nbflow.jupyter.progress import TaskInfo

    return "displays" in {f.name for f in dataclasses.fields(TaskInfo)}


def _rich_previews_landed() -> bool:
    """A DataFrame output previews as an HTML table once the detail has ``preview_bundle``."""
    from nbflow.jupyter.progress import TaskInfo

    return "preview_bundle" in {f.name for f in dataclasses.fields(TaskInfo)}


VISIBLE_JS = """(sel) => [...document.querySelectorAll(sel)].filter(e => e.offsetParent !== null).length"""
MODEL_NOT_FOUND_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
  .filter(e => /model not found/.test(e.textContent)).map(e => e.offsetParent !== null)"""


def _run_and_save(page: Any, root: Path, app: str) -> dict[str, Any]:
    page.wait_for_function(
        """() => { const ws = document.querySelectorAll('.nbflow-widget');
                   return ws.length === 2 && ws[0].dataset.runState === 'completed' && ws[1].dataset.runState === 'failed'; }""",
        timeout=120_000,
    )
    page.wait_for_function(
        "() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'",
        timeout=60_000,
    )
    live = {
        "widgets": page.evaluate(VISIBLE_JS, ".nbflow-widget"),
        "static_in_dom": page.locator(".nbflow-static").count(),
        "static_visible": page.evaluate(VISIBLE_JS, ".nbflow-static"),
    }
    if _display_capture_landed():  # chart's figure in its own detail pane
        sales = page.locator(".nbflow-widget").nth(0)
        sales.locator('.nbflow-dag svg g.node[data-task="chart"]').click()
        img = sales.locator('.nbflow-detail[data-task="chart"] .nbflow-detail-displays img')
        img.wait_for(state="visible", timeout=15_000)
        live["figure_width"] = img.evaluate("i => i.complete ? i.naturalWidth : 0")
        sales.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"{app}-chart-displays.png"))
    if _rich_previews_landed():  # orders returned a DataFrame: its head as a table
        sales = page.locator(".nbflow-widget").nth(0)
        sales.locator('.nbflow-dag svg g.node[data-task="orders"]').click()
        table = sales.locator('.nbflow-detail[data-task="orders"] .nbflow-detail-preview-rich table')
        table.first.wait_for(state="visible", timeout=15_000)
        live["preview_rows"] = table.first.locator("tbody tr").count()
        live["preview_text"] = table.first.inner_text()
        sales.screenshot(path=str(ARTIFACTS / f"{app}-dataframe-preview.png"))
    checks = page.locator(".nbflow-widget").nth(1)
    checks.locator('.nbflow-dag svg g.node[data-task="validate"]').click()
    pane = checks.locator('.nbflow-detail[data-task="validate"]')
    pane.locator(".nbflow-detail-error").wait_for(state="visible", timeout=15_000)
    live["error"] = pane.locator(".nbflow-detail-error").inner_text()
    live["mine"] = pane.locator("pre.nbflow-detail-user-traceback").inner_text()
    live["full_open"] = pane.locator("details.nbflow-detail-full-traceback").evaluate("e => e.open")
    live["full"] = pane.locator("pre.nbflow-detail-traceback").text_content()
    live["first_label"] = pane.locator(".nbflow-detail-label").first.inner_text()
    checks.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-failed-task.png"))

    before = (root / "sales.ipynb").stat().st_mtime
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (root / "sales.ipynb").read_text()
        if (root / "sales.ipynb").stat().st_mtime != before and "nbflow-static" in text:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the notebook was not saved with its outputs")
    return live


def _reopened(page: Any, app: str) -> dict[str, Any]:
    page.locator(".nbflow-static").nth(1).wait_for(state="visible", timeout=60_000)
    # The widget renderer says "model not found" once the new kernel's widget manager has
    # restored (or keeps "Loading widget..." without one): give it time to get there.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not page.evaluate(MODEL_NOT_FOUND_JS):
        time.sleep(0.25)
    sales = page.locator(".nbflow-static").nth(0)
    checks = page.locator(".nbflow-static").nth(1)
    dag = sales.locator("img.nbflow-static-dag")
    dag.scroll_into_view_if_needed()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 50", arg=dag.element_handle(), timeout=10_000)
    svg = base64.b64decode(dag.get_attribute("src").split(",", 1)[1]).decode()
    out = {
        "model_not_found": page.evaluate(MODEL_NOT_FOUND_JS),
        "error_text_visible": page.get_by_text("Error displaying widget").filter(visible=True).count(),
        "live_widgets": page.locator(".nbflow-widget").count(),
        "static_visible": page.evaluate(VISIBLE_JS, ".nbflow-static"),
        "summary": sales.locator(".nbflow-static-summary").inner_text(),
        "legend": sales.locator(".nbflow-static-legend").inner_text(),
        "rows": sales.locator("tr.nbflow-static-row").count(),
        "done_rows": sales.locator("tr.nbflow-static-row.nbflow-state-done").count(),
        "svg_done": svg.count("nbflow-state-done"),
        "svg_tasks": [t for t in SALES_TASKS if f'data-task="{t}"' in svg],
        "features_stdout": sales.locator(
            'details.nbflow-static-task[title="features"] pre.nbflow-static-stdout'
        ).text_content(),
        "report_stdout": sales.locator(
            'details.nbflow-static-task[title="report"] pre.nbflow-static-stdout'
        ).text_content(),
        "figures": sales.locator('details.nbflow-static-task[title="chart"] img.nbflow-static-display-image').count(),
        "preview_tables": sales.locator(
            'details.nbflow-static-task[title="orders"] .nbflow-static-display-html table'
        ).count(),
        "failed_open": checks.locator('details.nbflow-static-task[title="validate"]').evaluate("e => e.open"),
        "failed_error": checks.locator(".nbflow-static-error").inner_text(),
        "failed_summary": checks.locator(".nbflow-static-summary").inner_text(),
    }
    sales.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-reopened.png"))
    sales.locator('details.nbflow-static-task[title="features"] > summary').click()
    sales.locator('details.nbflow-static-task[title="features"]').scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-reopened-task-open.png"))
    return out


NO_KERNEL_READY_JS = """(nCells) => document.querySelectorAll('.jp-Notebook .jp-Cell').length === nCells
  && document.querySelectorAll('.nbflow-static').length === 2"""


def _without_kernel(page: Any, base: str, token: str, app: str) -> dict[str, Any]:
    """Open with no kernel to start: JupyterLab asks which; the answer is No Kernel."""
    path = "lab/tree" if app == "lab" else "notebooks"
    page.goto(f"{base}/{path}/sales.ipynb?token={token}" + ("&reset" if app == "lab" else ""))
    page.wait_for_function(NO_KERNEL_READY_JS, arg=3, timeout=90_000)
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(state="visible", timeout=15_000)
        dialog.locator("button.jp-mod-accept").click()  # "Select" with "No Kernel" chosen
    except Exception:  # noqa: BLE001 - no dialog: nothing to answer
        pass
    time.sleep(3)  # the widget renderer's own timeout for a model (2 s) has passed
    out = {
        "kernel": page.locator(".jp-Toolbar-kernelName").first.inner_text(),
        "loading_visible": page.get_by_text("Loading widget").filter(visible=True).count(),
        "error_visible": page.get_by_text("Error displaying widget").filter(visible=True).count(),
        "static_visible": page.evaluate(VISIBLE_JS, ".nbflow-static"),
        "dag_widths": page.locator("img.nbflow-static-dag").evaluate_all("els => els.map(i => i.naturalWidth)"),
        "rows": page.locator("tr.nbflow-static-row").count(),
        # the widget output's text/plain: hidden by the static view's <style> when trusted;
        # an untrusted notebook loses that <style> and shows it (one summary line)
        "fallback_visible": page.get_by_text("sales: live view of the run").filter(visible=True).count(),
        "failed_error": page.locator(".nbflow-static-error").first.inner_text(),
    }
    page.locator(".nbflow-static").first.scroll_into_view_if_needed()
    return out


@pytest.mark.parametrize("app", ["lab", pytest.param("notebook", id="notebook7")])
def test_a_saved_notebook_shows_the_run_without_its_kernel(app: str, browser: Any, tmp_path: Path) -> None:
    if app == "notebook":
        pytest.importorskip("notebook", minversion="7")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    n_cells = write_notebook(root / "sales.ipynb", steps=6, delay=0.2, failing=True)
    errors: list[str] = []

    def session(server_tmp: Path, work: Any, *, kernel: bool = True, **server: Any) -> Any:
        server_tmp.mkdir()
        proc, base, token, log = start_server(app, root, server_tmp, **server)
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        page.on("pageerror", lambda exc: None if known_page_error(app, exc) else errors.append(f"pageerror: {exc}"))
        try:
            if not kernel:
                return work(page, base, token)
            open_notebook(page, base, token, "sales.ipynb", n_cells, app)
            return work(page)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{app}-reopened-FAILED.png"))
            print((server_tmp / f"jupyter-{app}.log").read_text()[-4000:])
            raise
        finally:
            context.close()
            stop_server(proc, log)

    def first(page: Any) -> dict[str, Any]:
        run_all(page)
        return _run_and_save(page, root, app)

    live = session(tmp_path / "first", first)
    saved = json.loads((root / "sales.ipynb").read_text())
    reopened = session(tmp_path / "second", lambda page: _reopened(page, app))

    def shot(name: str, result: dict[str, Any], page: Any) -> dict[str, Any]:
        page.screenshot(path=str(ARTIFACTS / f"{app}-reopened-{name}.png"))
        return result

    no_kernel = session(
        tmp_path / "third",
        lambda page, base, token: shot("no-kernel", _without_kernel(page, base, token, app), page),
        kernel=False,
        extra_args=("--KernelSpecManager.allowed_kernelspecs=no-such-kernel",),
    )
    untrusted = session(
        tmp_path / "fourth",
        lambda page, base, token: shot("untrusted", _without_kernel(page, base, token, app), page),
        kernel=False,
        extra_args=("--KernelSpecManager.allowed_kernelspecs=no-such-kernel",),
        env_extra={"JUPYTER_DATA_DIR": str(tmp_path / "colleague-data")},
    )
    print(
        f"\n[{app}] live: {live}\n[{app}] reopened: {reopened}\n[{app}] no kernel: {no_kernel}"
        f"\n[{app}] untrusted: {untrusted}\n[{app}] errors: {errors}"
    )

    # live: widgets shown, the saved views under them hidden
    assert live["widgets"] == 2 and live["static_in_dom"] == 2 and live["static_visible"] == 0
    # the failed task: one line first, then the user's frames only, the rest behind a toggle
    assert live["error"] == "ValueError: 1 orders have a negative amount"
    assert "_check_amounts" in live["mine"] and "validate" in live["mine"]
    assert "nbflow" not in live["mine"] and "Traceback" not in live["mine"]
    assert live["full_open"] is False and "nbflow" in live["full"]
    # saved: each workflow cell holds its static view next to the widget output
    outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("nbflow-static" in str(o.get("data", {}).get("text/html", "")) for o in outputs) == 2
    # reopened: no visible "model not found", the static view instead
    assert reopened["error_text_visible"] == 0 and not any(reopened["model_not_found"]), reopened
    assert reopened["live_widgets"] == 0 and reopened["static_visible"] == 2
    assert "sales" in reopened["summary"] and "4/4 done" in reopened["summary"]
    assert reopened["legend"].split() == ["done"]  # the states this run has
    assert reopened["rows"] == 4 and reopened["done_rows"] == 4
    assert reopened["svg_done"] == 4 and reopened["svg_tasks"] == list(SALES_TASKS)
    assert all(f"batch {i}: 4830 rows" in reopened["features_stdout"] for i in range(6))
    assert "north" in reopened["report_stdout"]
    if _display_capture_landed():  # chart's plt.show() figure is stored with its task
        assert reopened["figures"] >= 1
    if _display_capture_landed():
        assert live["figure_width"] > 100
    if _rich_previews_landed():
        assert live["preview_rows"] >= 3 and "region" in live["preview_text"] and "amount" in live["preview_text"]
        assert reopened["preview_tables"] == 1
    for view in (no_kernel, untrusted):
        assert view["kernel"] == "No Kernel"
        assert view["loading_visible"] == 0 and view["error_visible"] == 0, view
        assert view["static_visible"] == 2 and len(view["dag_widths"]) == 2 and min(view["dag_widths"]) > 50
        assert view["rows"] == 6 and view["failed_error"] == "ValueError: 1 orders have a negative amount"
    assert no_kernel["fallback_visible"] == 0  # trusted: the widget renders "Loading widget...", hidden
    assert untrusted["fallback_visible"] == 1  # untrusted indeed: no widget renderer, its text fallback
    assert reopened["failed_open"] is True
    assert reopened["failed_error"] == "ValueError: 1 orders have a negative amount"
    assert "1 failed" in reopened["failed_summary"]
    assert not errors, errors
