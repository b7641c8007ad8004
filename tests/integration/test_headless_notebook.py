"""A headless run (nbclient, as ``jupyter nbconvert --execute`` and papermill use) keeps the
run's log in the executed notebook, and nbconvert's HTML of it shows the saved view.

The realistic notebook of the browser tests (pandas, matplotlib ``plt.show()`` on an Agg
figure, ``tqdm.auto``, prints; a second workflow that fails) is executed by nbclient with
a real kernel. Its ``%%workflow`` cells' saved outputs must hold, per task: its state, its
duration, what it printed (stdout), the figure ``chart`` drew (``image/png``, once display
capture stores displays) — and no ``tqdm`` bar frozen at 0% (a task's bar draws nothing
under the cell). The failed workflow's output starts its task section with the one-line
error. nbconvert's HTML of the executed notebook has the legend and the table.

Follows ``shared/recipes``: isolated IPYTHONDIR / JUPYTER_RUNTIME_DIR, this venv's
``python3`` kernel. No timing is asserted.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kernel]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the browser helpers)
from browser._realistic import SALES_TASKS, write_notebook  # noqa: E402

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` binary not installed")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _display_capture_landed() -> bool:
    from nbflow.jupyter.progress import TaskInfo

    return "displays" in {f.name for f in dataclasses.fields(TaskInfo)}


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    tmp = tmp_path_factory.mktemp("headless")
    mp = pytest.MonkeyPatch()
    mp.setenv("IPYTHONDIR", str(tmp / "ipython"))
    mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
    mp.delenv("PYTEST_CURRENT_TEST", raising=False)
    try:
        path = tmp / "sales.ipynb"
        write_notebook(path, steps=5, delay=0.05, failing=True, rerun=True)
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp)}}
        )
        client.execute()
        nbformat.write(nb, tmp / "sales.executed.ipynb")
        return nb, tmp
    finally:
        mp.undo()


def _workflow_outputs(nb: Any, name: str, nth: int = 0) -> list[Any]:
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"%%workflow {name}")]
    return list(cells[nth].outputs)


def _static(outputs: list[Any]) -> str:
    pages = [o.data["text/html"] for o in outputs if "nbflow-static" in o.get("data", {}).get("text/html", "")]
    assert len(pages) == 1, [o.get("data", {}).keys() for o in outputs]
    return str(pages[0])


def _section(page: str, task: str) -> str:
    m = re.search(
        rf'<details class="nbflow-static-task[^"]*" title="{task}"[^>]*>(.*?)</details>(?=<details class="nbflow-static-task|</div>)',
        page,
        re.S,
    )
    assert m is not None, f"no section for {task}"
    return m.group(1)


def test_the_executed_notebook_keeps_every_tasks_state_duration_and_output(executed: tuple[Any, Path]) -> None:
    nb, _ = executed
    outputs = _workflow_outputs(nb, "sales")
    page = _static(outputs)
    assert "4/4 done" in page and "completed" in page
    rows = re.findall(r'<tr class="nbflow-static-row nbflow-state-(\w+)" title="(\w+)">(.*?)</tr>', page, re.S)
    assert [(state, task) for state, task, _ in rows] == [("done", t) for t in SALES_TASKS]
    for _state, _task, cells in rows:  # attempts, then a duration such as 0.05s
        assert re.search(r"<td>1</td><td>\d+\.\d\ds</td>", cells), cells
    assert "reading 4830 orders" in _section(page, "orders")
    features = _section(page, "features")
    assert all(f"batch {i}: 4830 rows" in features for i in range(5))
    assert "north" in _section(page, "report")
    # the widget output is there too (a kernel-backed viewer shows the live widget)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_the_figure_a_task_drew_is_saved_with_its_task(executed: tuple[Any, Path]) -> None:
    nb, _ = executed
    page = _static(_workflow_outputs(nb, "sales"))
    if not _display_capture_landed():
        pytest.skip("display capture (task displays) is not in this tree yet")
    chart = _section(page, "chart")
    assert re.search(
        r'<img class="nbflow-static-display-image" alt="figure" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}', chart
    )


def test_no_tqdm_bar_is_left_under_the_cell(executed: tuple[Any, Path]) -> None:
    nb, _ = executed
    outputs = _workflow_outputs(nb, "sales")
    texts = [json.dumps(o.get("data", {})) + o.get("text", "") for o in outputs if "nbflow-static" not in json.dumps(o)]
    assert not any("0%|" in t for t in texts), texts
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1  # the nbflow widget only: no tqdm.notebook bar
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    assert not [m for m in state.values() if m.get("model_name") in ("FloatProgressModel", "IntProgressModel")]


def test_a_failed_workflow_saves_its_error_first(executed: tuple[Any, Path]) -> None:
    nb, _ = executed
    page = _static(_workflow_outputs(nb, "checks"))
    section = _section(page, "validate")
    assert section.index("nbflow-static-error") < section.index("nbflow-static-user-traceback")
    assert "ValueError: 1 orders have a negative amount" in section
    assert '<details class="nbflow-static-task nbflow-state-failed" title="validate" open>' in page


@needs_dot
def test_a_rerun_saves_its_restored_tasks_dashed_with_their_output_and_figure(executed: tuple[Any, Path]) -> None:
    nb, _ = executed
    page = _static(_workflow_outputs(nb, "sales", nth=1))
    assert "4/4 done (4 restored)" in page
    rows = re.findall(r'<tr class="nbflow-static-row nbflow-state-(\w+)" title="(\w+)">', page)
    assert rows == [("restored", t) for t in SALES_TASKS]
    m = re.search(r'class="nbflow-static-dag"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page)
    assert m is not None
    svg = base64.b64decode(m.group(1)).decode()
    assert svg.count("nbflow-state-restored") == 4 and svg.count('stroke-dasharray="4,2"') == 4
    assert all(f"batch {i}: 4830 rows" in _section(page, "features") for i in range(5))  # as when it ran
    if _display_capture_landed():
        assert "data:image/png;base64," in _section(page, "chart")  # the figure comes back too


@needs_dot
def test_nbconvert_html_shows_legend_summary_table_and_graph(executed: tuple[Any, Path]) -> None:
    nbconvert = pytest.importorskip("nbconvert")
    nb, tmp = executed
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    assert body.count('class="nbflow-static-legend"') == 3
    assert body.count('class="nbflow-static-table"') == 3
    assert body.count('class="nbflow-static-dag"') == 3
    assert 'class="nbflow-static-summary"' in body and "4/4 done" in body
    assert "model not found" not in body
    out = tmp / "sales.html"
    out.write_text(body)
    chromium = Path("/usr/bin/chromium")
    if chromium.exists():  # a picture of it, for a person to look at
        sync_api = pytest.importorskip("playwright.sync_api")
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(out.as_uri())
            page.locator(".nbflow-static").first.scroll_into_view_if_needed()
            visible = page.evaluate(
                "() => [...document.querySelectorAll('.nbflow-static')].filter(e => e.offsetParent !== null).length"
            )
            summaries = page.evaluate(
                """() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/plain"] pre')]
                     .filter(e => e.offsetParent !== null && /^sales: /.test(e.textContent)).length"""
            )
            page.screenshot(path=str(ARTIFACTS / "nbconvert-sales.png"), full_page=True)
            rerun = page.locator(".nbflow-static").nth(2)
            rerun.locator('details.nbflow-static-task[title="chart"] > summary').click()
            rerun.screenshot(path=str(ARTIFACTS / "nbconvert-restored.png"))
            browser.close()
        assert visible == 3
        assert summaries == 0  # the widget's text fallback is hidden next to the static view
