"""Real browser: a long task's output and progress show while it runs (JupyterLab 4, Notebook 7).

A notebook (made here, without outputs) runs a ``%%workflow`` cell whose ``train`` task
prints a line and advances a ``tqdm.auto`` bar every 0.3 s for about six seconds. While
``train`` runs, the test clicks its node (a blocking cell: the kernel cannot answer the
click until the run ends, so the pane must come from the widget's live view) and checks:

- the detail pane shows lines the task printed and its progress (``12/20 (60%) epoch``);
- the node carries a progress bar (``g.nbflow-node-live[data-fraction]`` > 0) and the
  table row's "Now" column the last printed line;
- the pane's own estimate ("about 4.2s left", from the bar's rate) and the progress bar
  agree: the bar says the run needs at least that ("ETA at least ..."; ``report`` after
  it has no history on a fresh store), not only "ETA unknown";
- JupyterLab's status bar says "Busy" (it used to say "Idle" once the widget appeared);
- no tqdm widget appears under the cell.

After the run the pane shows the full output (every epoch, and the bar's final line).
Screenshots: ``artifacts/<app>-live-running.png``, ``artifacts/<app>-live-finished.png``.
Helpers and gotchas: ``_lab.py`` and ``shared/recipes/RECIPE.md``. No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ._lab import ARTIFACTS, CHROMIUM, known_page_error, open_notebook, run_all, start_server, stop_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

CELL = """%%workflow longtask --fresh --dir .nbflow/live
import time
from tqdm.auto import tqdm

def prepare():
    print("loading the data")
    time.sleep(0.5)
    return 20

def train(prepare):
    for epoch in tqdm(range(prepare), desc="epoch"):
        print(f"epoch {epoch:2d}  loss {1 / (epoch + 1):.3f}")
        time.sleep(0.3)
    return "weights"

def report(train):
    return f"trained: {train}"
"""

LIVE_JS = """() => {
  const w = document.querySelector('.nbflow-widget');
  if (!w) return null;
  const row = w.querySelector('tr.nbflow-row[data-task="train"]');
  const pane = w.querySelector('.nbflow-detail[data-task="train"]');
  const overlay = w.querySelector('g.nbflow-node[data-task="train"] g.nbflow-node-live');
  const bar = pane && pane.querySelector('.nbflow-detail-progress');
  return {
    state: row ? row.dataset.state : null,
    now: row ? row.querySelector('td.nbflow-col-now').textContent : '',
    stdout: pane && pane.querySelector('pre.nbflow-detail-stdout') ? pane.querySelector('pre.nbflow-detail-stdout').textContent : '',
    done: bar ? Number(bar.dataset.done) : null,
    total: bar && bar.dataset.total ? Number(bar.dataset.total) : null,
    barText: bar ? bar.textContent : '',
    fraction: overlay && overlay.dataset.fraction ? Number(overlay.dataset.fraction) : null,
    status: [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent).join('|'),
    tqdmWidgets: document.querySelectorAll('.widget-hprogress, .jupyter-widgets.widget-hbox').length,
    header: w.querySelector('.nbflow-progress-text').textContent,
    left: pane && pane.querySelector('.nbflow-detail-left') ? pane.querySelector('.nbflow-detail-left').textContent : '',
  };
}"""


def _notebook(path: Path) -> int:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[new_code_cell("%load_ext nbflow"), new_code_cell(CELL)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return len(nb.cells)


def _while_running(page: Any, app: str) -> dict[str, Any]:
    w = page.locator(".nbflow-widget").first
    w.wait_for(state="attached", timeout=60_000)
    page.wait_for_function(
        '() => document.querySelector(\'.nbflow-widget tr.nbflow-row[data-task="train"][data-state="running"]\')',
        timeout=60_000,
    )
    w.locator('.nbflow-dag svg g.node[data-task="train"]').click()  # the running node
    page.wait_for_function(
        f"""() => {{ const s = ({LIVE_JS})();
            return s && s.state === 'running' && /epoch  [3-9]/.test(s.stdout) && s.done >= 3 && s.fraction > 0
                && s.left !== ''; }}""",
        timeout=30_000,
    )
    snap: dict[str, Any] = page.evaluate(LIVE_JS)
    w.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-live-running.png"))
    return snap


def _after(page: Any, app: str) -> dict[str, Any]:
    page.wait_for_function(
        "() => document.querySelector('.nbflow-widget')?.dataset.runState === 'completed'", timeout=60_000
    )
    # the kernel's detail of the finished task (the bar's final line is in its stored
    # output), not what the pane shows from the row and the last live view until the
    # kernel has answered the click (a blocking cell may answer only once it is done)
    page.wait_for_function(
        f"""() => {{ const s = ({LIVE_JS})();
            return s && s.state === 'done' && s.stdout.includes('epoch 19') && s.stdout.includes('epoch: 100%'); }}""",
        timeout=30_000,
    )
    snap: dict[str, Any] = page.evaluate(LIVE_JS)
    page.locator(".nbflow-widget").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-live-finished.png"))
    return snap


@pytest.mark.parametrize("app", ["lab", pytest.param("notebook", id="notebook7")])
def test_a_running_task_shows_its_output_and_progress(app: str, browser: Any, tmp_path: Path) -> None:
    if app == "notebook":
        pytest.importorskip("notebook", minversion="7")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    n_cells = _notebook(root / "long.ipynb")
    proc, base, token, log = start_server(app, root, tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: None if known_page_error(app, exc) else errors.append(f"pageerror: {exc}"))
    try:
        open_notebook(page, base, token, "long.ipynb", n_cells, app)
        run_all(page)
        running = _while_running(page, app)
        finished = _after(page, app)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{app}-live-FAILED.png"))
        print((tmp_path / f"jupyter-{app}.log").read_text()[-4000:])
        raise
    finally:
        context.close()
        stop_server(proc, log)
    print(f"\n[{app}] while running: {running}\n[{app}] after: {finished}\n[{app}] console errors: {errors}")

    # while it ran: its printed lines, its progress on the pane, the node and the row
    assert "loading the data" not in running["stdout"]  # the pane is train's, not prepare's
    assert running["total"] == 20 and 3 <= running["done"] < 20
    assert "epoch" in running["barText"] and "/20" in running["barText"]
    assert 0 < running["fraction"] < 1
    assert "epoch" in running["now"] and "loss" in running["now"]
    assert running["left"].startswith("about ") and running["left"].endswith(" left"), running
    assert "ETA at least " in running["header"] and "ETA unknown" not in running["header"], running
    assert running["tqdmWidgets"] == 0  # tqdm.auto drew nothing under the cell
    if app == "lab":
        assert "| Busy" in running["status"], running["status"]
    # after: the full output, and the bar's last line once
    assert all(f"epoch {i:2d}" in finished["stdout"] for i in range(20))
    assert finished["stdout"].count("epoch: 100%") == 1 and "\r" not in finished["stdout"]
    assert finished["fraction"] is None  # no live overlay on a finished node
    assert not errors, errors
