"""Real browser: the kernel is SIGKILLed (or restarted from the Kernel menu) while a task
runs, and the widget says so (JupyterLab 4 and Notebook 7, headless Chromium).

The realistic notebook (``_realistic.py``) runs; while ``features`` (a slow ``tqdm.auto``
loop) is running the test kills the kernel process with ``kill -9`` — the pid comes from
the notebook's first cell. The server notices and restarts the kernel; the widget must:

- read ``interrupted`` (``data-run-state`` and the running task's node and row),
- stop its clock (the progress text no longer changes),
- say what happened and what to do: the task it stopped during, how many tasks are
  saved and "re-run this cell to resume".

Screenshots: ``artifacts/<app>-sales-running.png`` (a running task, its detail pane
open) and ``artifacts/<app>-kernel-{kill,restart}.png`` (+ ``-widget``: the widget alone). No timing is asserted; the waits are
generous upper bounds.
"""

from __future__ import annotations

import os
import re
import signal
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

STATE_JS = """() => {
  const w = document.querySelector('.nbflow-widget');
  if (!w) return null;
  const row = (t) => w.querySelector(`tr.nbflow-row[data-task="${t}"]`);
  const node = (t) => w.querySelector(`g.nbflow-node[data-task="${t}"]`);
  return {
    runState: w.dataset.runState, kernel: w.dataset.kernel || '',
    rows: Object.fromEntries(TASKS.map(t => [t, row(t) ? row(t).dataset.state : null])),
    nodes: Object.fromEntries(TASKS.map(t => [t, node(t) ? [...node(t).classList].filter(c => c.startsWith('nbflow-state-')) : []])),
    text: w.querySelector('.nbflow-progress-text').textContent,
    lost: w.querySelector('.nbflow-kernel-lost').textContent,
    lostShown: w.querySelector('.nbflow-kernel-lost').style.display !== 'none',
    staticShown: [...document.querySelectorAll('.nbflow-static')].some(e => e.offsetParent !== null),
  };
}""".replace("TASKS", str(list(SALES_TASKS)))


def _stop_while_running(
    page: Any, root: Path, app: str, how: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    w = page.locator(".nbflow-widget").first
    w.wait_for(state="attached", timeout=90_000)
    page.wait_for_function(
        """() => { const r = document.querySelector('.nbflow-widget tr.nbflow-row[data-task="features"]');
                   const p = document.querySelector('.nbflow-widget .nbflow-detail');
                   return r && r.dataset.state === 'running'; }""",
        timeout=90_000,
    )
    w.locator('.nbflow-dag svg g.node[data-task="features"]').click()
    page.wait_for_function(
        """() => /batch [2-9]/.test(document.querySelector('.nbflow-widget .nbflow-detail pre.nbflow-detail-stdout')?.textContent || '')""",
        timeout=30_000,
    )
    before = page.evaluate(STATE_JS)
    w.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-sales-running.png"))

    if how == "kill":
        pid = int((root / "kernel.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # a real hard crash of the process running the cell
    else:  # Kernel > Restart Kernel..., then the dialog's Restart
        page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
        page.locator("li.lm-Menu-item[data-type=command]").filter(
            has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel…$"))
        ).click()
        page.locator(".jp-Dialog button.jp-mod-accept").click()
    page.wait_for_function(
        "() => document.querySelector('.nbflow-widget')?.dataset.runState === 'interrupted'", timeout=30_000
    )
    lost = page.evaluate(STATE_JS)
    time.sleep(2.5)  # the clock ticks every second while a run is live: it must not now
    later = page.evaluate(STATE_JS)
    dialog = page.locator(".jp-Dialog button", has_text="Ok")  # JupyterLab's "Kernel Restarting" notice
    if dialog.count():
        dialog.first.click()
    w.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{app}-kernel-{how}.png"))
    w.screenshot(path=str(ARTIFACTS / f"{app}-kernel-{how}-widget.png"))
    return before, lost, later


@pytest.mark.parametrize("how", ["kill", "restart"])
@pytest.mark.parametrize("app", ["lab", pytest.param("notebook", id="notebook7")])
def test_a_stopped_kernel_reads_interrupted_and_the_clock_stops(
    app: str, how: str, browser: Any, tmp_path: Path
) -> None:
    if app == "notebook":
        pytest.importorskip("notebook", minversion="7")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    n_cells = write_notebook(root / "sales.ipynb", steps=120, delay=0.5)
    proc, base, token, log = start_server(app, root, tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: None if known_page_error(app, exc) else errors.append(f"pageerror: {exc}"))
    try:
        open_notebook(page, base, token, "sales.ipynb", n_cells, app)
        run_all(page)
        before, lost, later = _stop_while_running(page, root, app, how)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{app}-kernel-{how}-FAILED.png"))
        print((tmp_path / f"jupyter-{app}.log").read_text()[-4000:])
        raise
    finally:
        context.close()
        stop_server(proc, log)
    print(f"\n[{app}] before: {before}\n[{app}] lost: {lost}\n[{app}] later: {later}\n[{app}] errors: {errors}")

    assert before["runState"] == "running" and before["rows"]["features"] == "running"
    assert before["rows"]["orders"] == "done" and not before["lostShown"]
    assert not before["staticShown"]  # the saved view stays hidden under a live widget
    assert lost["kernel"] == "lost" and lost["runState"] == "interrupted"
    assert lost["rows"]["features"] == "interrupted"
    assert lost["nodes"]["features"] == ["nbflow-state-interrupted"]
    assert lost["rows"]["orders"] == "done" and lost["rows"]["report"] == "pending"
    assert lost["lostShown"]
    assert "`features`" in lost["lost"] and "1 of 4 tasks are saved" in lost["lost"]
    assert "re-run this cell to resume" in lost["lost"]
    assert "interrupted" in lost["text"]
    assert later["text"] == lost["text"], "the clock kept ticking after the kernel died"
    assert not errors, errors
