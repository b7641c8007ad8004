"""Real browser: JupyterLab 4 (and Notebook 7) run notebooks/01-quickstart.ipynb in headless Chromium.

Starts ``jupyter lab`` / ``jupyter notebook`` on a free localhost port with a temp root that
holds a *clean* copy of the quickstart (outputs, execution counts and saved widget state
stripped, so everything asserted comes from a real run), opens it with Playwright driving
the system Chromium (``/usr/bin/chromium``; never ``playwright install``), clicks Run > Run
All Cells and checks the nbflow widget in the DOM:

- live updates: ``data-done`` of the first widget is polled while the run lasts (~2 s of
  ``time.sleep`` in the tasks) and takes at least two distinct intermediate values;
- the first run's DAG nodes are all painted ``done``, the re-run's all ``restored``;
- the progress bars are at 100% and ``data-run-state="completed"``;
- clicking a node opens its detail pane, with the task's captured stdout.

Screenshots go to ``artifacts/`` (``NBFLOW_ARTIFACTS`` overrides). Browser console errors
are collected, printed and must be none. Proven commands and gotchas:
``../shared/recipes/RECIPE.md``; the server/page helpers are in ``_lab.py`` and the
``browser`` fixture in ``conftest.py`` (shared with ``test_controls.py``). No timing is asserted.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ._lab import ARTIFACTS, CHROMIUM, KERNEL_READY_JS, REPO, known_page_error, run_all, start_server, stop_server

NOTEBOOK = REPO / "notebooks" / "01-quickstart.ipynb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

# One poll of the page: the first widget's live attributes and how many cells finished.
SNAPSHOT_JS = """() => {
  const ws = [...document.querySelectorAll('.nbflow-widget')];
  const w = ws[0];
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
  return {
    widgets: ws.length,
    state: w ? w.dataset.runState : null,
    done: w ? w.dataset.done : null,
    total: w ? w.dataset.total : null,
    busy: prompts.some(p => p.includes('*')),
    status: document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status'),
  };
}"""


def _workflow_tasks(nb: Any) -> list[str]:
    """Task names of the first %%workflow cell (its top-level public functions)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%workflow"):
            body = cell.source.split("\n", 1)[1]
            return [
                n.name
                for n in ast.parse(body).body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
            ]
    raise AssertionError("no %%workflow cell in the quickstart")


def _clean_copy(src: Path, dst: Path) -> Any:
    """Outputs, execution counts and saved widget state stripped (recipe gotcha 24)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, dst)
    return nb


def _watch_run(page: Any, n_widgets: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Poll every ~50 ms until every cell ran and n_widgets widgets exist; returns the
    distinct snapshots seen (in order)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        snap = page.evaluate(SNAPSHOT_JS)
        if not seen or seen[-1] != snap:
            seen.append(snap)
        started = started or snap["busy"] or snap["widgets"] > 0
        if started and snap["widgets"] >= n_widgets and not snap["busy"] and snap["status"] == "idle":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the notebook did not finish in {timeout:.0f} s; seen: {seen[-5:]}")


def _check(page: Any, app: str, tasks: list[str], timings: dict[str, float]) -> dict[str, Any]:
    n = len(tasks)
    t1 = time.monotonic()
    run_all(page)
    page.locator(".nbflow-widget").first.wait_for(state="attached", timeout=60_000)
    timings["first_widget_s"] = round(time.monotonic() - t1, 2)
    seen = _watch_run(page, n_widgets=2)
    timings["run_all_done_s"] = round(time.monotonic() - t1, 2)

    # live: the first widget went through at least two values strictly between 0 and n
    intermediate = sorted({int(s["done"]) for s in seen if s["done"] is not None and 0 < int(s["done"]) < n})
    assert len(intermediate) >= 2, f"no live updates seen: {[(s['state'], s['done']) for s in seen]}"
    assert any(s["state"] == "running" for s in seen), seen

    # final DOM: first run painted done, the re-run painted restored; bars full
    widgets = page.locator(".nbflow-widget")
    assert widgets.count() == 2, widgets.count()
    first, second = widgets.nth(0), widgets.nth(1)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.nbflow-widget')].every(w => w.dataset.runState === 'completed')",
        timeout=15_000,
    )
    for w, state in ((first, "done"), (second, "restored")):
        assert w.get_attribute("data-run-state") == "completed"
        assert w.get_attribute("data-done") == str(n) and w.get_attribute("data-total") == str(n)
        assert w.locator(".nbflow-dag svg g.node.nbflow-node").count() == n
        assert w.locator(f".nbflow-dag svg g.node.nbflow-state-{state}").count() == n, state
        for task in tasks:
            assert w.locator(f'.nbflow-dag svg g.node.nbflow-state-{state}[data-task="{task}"]').count() == 1
        assert w.locator(".nbflow-progress .nbflow-progress-bar").evaluate("e => e.style.width") == "100%"
        assert w.locator("table.nbflow-table tr.nbflow-row").count() == n
        assert w.locator(f'table.nbflow-table tr.nbflow-row[data-state="{state}"]').count() == n
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
    assert all("*" not in p for p in prompts), prompts

    first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-quickstart-after-run.png"))

    # click a node: its detail pane opens with what the task printed (captured stdout)
    first.locator('.nbflow-dag svg g.node[data-task="load"]').click()
    detail = first.locator('.nbflow-detail[data-task="load"]')
    detail.wait_for(state="visible", timeout=15_000)
    stdout = detail.locator("pre.nbflow-detail-stdout")
    stdout.wait_for(state="visible", timeout=5_000)
    assert "loading 6 rows" in stdout.inner_text()
    assert first.locator('.nbflow-dag svg g.node.nbflow-selected[data-task="load"]').count() == 1
    # the restored task of the re-run shows the same captured output (stored with the checkpoint)
    second.locator('.nbflow-dag svg g.node[data-task="load"]').click()
    second.locator('.nbflow-detail[data-task="load"] pre.nbflow-detail-stdout').wait_for(
        state="visible", timeout=15_000
    )
    assert "loading 6 rows" in second.locator(".nbflow-detail pre.nbflow-detail-stdout").inner_text()
    second.scroll_into_view_if_needed()
    second.screenshot(path=str(ARTIFACTS / f"{app}-quickstart-rerun-restored.png"))
    first.locator('.nbflow-dag svg g.node[data-task="report"]').click()
    first.locator('.nbflow-detail[data-task="report"] pre.nbflow-detail-preview').wait_for(
        state="visible", timeout=15_000
    )
    assert "total" in first.locator(".nbflow-detail pre.nbflow-detail-preview").inner_text()
    first.scroll_into_view_if_needed()
    first.screenshot(path=str(ARTIFACTS / f"{app}-quickstart-widget.png"))
    page.screenshot(path=str(ARTIFACTS / f"{app}-quickstart-detail.png"))
    return {"done_values": intermediate, "states": sorted({s["state"] or "" for s in seen})}


@pytest.mark.parametrize("app", ["lab", pytest.param("notebook", id="notebook7")])
def test_quickstart_runs_live_in_the_browser(app: str, browser: Any, tmp_path: Path) -> None:
    if app == "notebook":
        pytest.importorskip("notebook", minversion="7")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    nb = _clean_copy(NOTEBOOK, root / NOTEBOOK.name)
    tasks = _workflow_tasks(nb)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    proc, base, token, log = start_server(app, root, tmp_path)
    timings["server_start_s"] = round(time.monotonic() - t0, 2)
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    known: list[str] = []

    def on_page_error(exc: Any) -> None:
        text = f"pageerror: {exc}"
        (known if known_page_error(app, exc) else console_errors).append(text)

    page.on("pageerror", on_page_error)
    try:
        path = "lab/tree" if app == "lab" else "notebooks"
        url = f"{base}/{path}/{NOTEBOOK.name}?token={token}" + ("&reset" if app == "lab" else "")
        t1 = time.monotonic()
        page.goto(url)
        page.wait_for_function(KERNEL_READY_JS, arg=len(nb.cells), timeout=90_000)
        timings["page_ready_s"] = round(time.monotonic() - t1, 2)
        live = _check(page, app, tasks, timings)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{app}-quickstart-FAILED.png"))
        print((tmp_path / f"jupyter-{app}.log").read_text()[-4000:])
        raise
    finally:
        context.close()
        stop_server(proc, log)
    print(f"\n[{app}] timings: {json.dumps(timings)}; live: {live}")
    print(f"[{app}] console errors: {console_errors}; known Notebook 7 load errors (not ours): {known}")
    assert not console_errors, console_errors
