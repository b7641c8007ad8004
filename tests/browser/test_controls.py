"""Real browser: the widget's buttons steer a ``%%workflow --background`` run in JupyterLab 4.

The test writes its own notebook (nbformat) into the server's temp root, opens it in
headless Chromium (``/usr/bin/chromium``, never ``playwright install``) and runs cells one
by one (click + Shift+Enter):

1. ``%%workflow slow --background`` returns at once; the controls (``.nbflow-controls``)
   appear; while ``train`` runs, **Re-run from selected** is refused with its reason, and
   **Cancel** ends the run ``cancelled`` with ``extract`` and
   ``clean`` kept (``done``), ``train`` cancelled and ``report`` never started. Re-running
   the cell resumes the instance: ``extract``/``clean`` are painted ``restored``, the rest
   ``done``.
2. Selecting ``clean`` in the graph and clicking **Re-run from selected** runs ``clean``,
   ``train`` and ``report`` again (``done``, not ``restored``) while ``extract`` stays
   ``restored``; the detail pane shows ``report``'s fresh output and ``%workflow status``
   in the kernel agrees.
3. The signal box checks its JSON (a bad payload is refused with a message, a good one
   is acknowledged).
4. A ``%%workflow review --background`` cell whose ``approval = nf.wait_for_signal(...)``
   step waits after ``train``: the node is painted ``awaiting_signal``; typing a payload
   and clicking **Approve** completes the run, and ``deploy``'s detail pane shows the
   payload it received.

Screenshots go to ``artifacts/`` (``NBFLOW_ARTIFACTS`` overrides); browser console errors
must be none. Helpers: ``_lab.py``; gotchas: ``/work/shared/recipes/RECIPE.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ._lab import ARTIFACTS, CHROMIUM, open_notebook, start_server, stop_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

NB_NAME = "controls.ipynb"
TASKS = ("extract", "clean", "train", "report")

# train runs ~2 s and checks the documented cooperative-cancel flag, so Cancel stops it
# at once instead of waiting for a sleeping thread.
WORKFLOW_CELL = """\
%%workflow slow --background --dir store
import time
import nbflow as nf

def extract():
    time.sleep(0.3)
    return [1, 2, 3]

def clean(extract):
    time.sleep(0.3)
    print("cleaning", len(extract), "rows")
    return [x * 10 for x in extract]

def train(clean):
    ctx = nf.get_task_context()
    for _ in range(40):
        if ctx.cancelled:
            raise RuntimeError("stopped by cancel")
        time.sleep(0.05)
    return sum(clean)

def report(train):
    return f"total={train}"
"""

# A human-in-the-loop cell: `approval` waits, once `train` finished, for a signal that
# the widget's Approve button sends; `deploy` receives its payload.
REVIEW_CELL = """\
%%workflow review --background --dir store
import nbflow as nf

def train():
    return 0.93

approval = nf.wait_for_signal("approval", after=["train"])

def deploy(train, approval):
    return f"accuracy {train} approved by {approval['by']}"
"""

CELLS = ["%load_ext nbflow", WORKFLOW_CELL, "%workflow status slow", REVIEW_CELL]

# The one widget of the workflow cell, as the test sees it on every poll.
SNAPSHOT_JS = """(cellIndex) => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[cellIndex];
  const w = cell && cell.querySelector('.nbflow-widget');
  if (!w) return null;
  const states = {};
  for (const g of w.querySelectorAll('.nbflow-dag svg g.node.nbflow-node')) {
    const cls = [...g.classList].find(c => c.startsWith('nbflow-state-'));
    states[g.dataset.task] = cls ? cls.slice('nbflow-state-'.length) : null;
  }
  const controls = w.querySelector('.nbflow-controls');
  return {
    run: w.dataset.runState, done: w.dataset.done, total: w.dataset.total, states,
    controls: !!controls && getComputedStyle(controls).display !== 'none',
    message: w.querySelector('.nbflow-message')?.textContent || '',
  };
}"""

RERUN_ENABLED_JS = (
    "() => !document.querySelectorAll('.jp-Notebook .jp-Cell')[1].querySelector('button.nbflow-rerun').disabled"
)


def _make_notebook(path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[new_code_cell(src) for src in CELLS],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.validate(nb)
    nbformat.write(nb, path)


class Lab:
    """The open notebook: run a cell, poll the workflow widget, wait for a condition."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.cells = page.locator(".jp-Notebook .jp-Cell")
        self.seen: list[dict[str, Any]] = []

    def run_cell(self, i: int) -> None:
        cell = self.cells.nth(i)
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")

    def wait_prompt(self, i: int, timeout: float = 30.0) -> str:
        """Until cell i has a numbered prompt (it finished); returns its output text."""
        prompt = self.cells.nth(i).locator(".jp-InputPrompt")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = prompt.inner_text().strip()
            if text.startswith("[") and "*" not in text and text != "[ ]:":
                return self.cells.nth(i).locator(".jp-OutputArea").inner_text()
            time.sleep(0.05)
        raise AssertionError(f"cell {i} did not finish in {timeout:.0f} s (prompt {prompt.inner_text()!r})")

    @property
    def widget(self) -> Any:
        return self.cells.nth(1).locator(".nbflow-widget")

    def snapshot(self) -> dict[str, Any] | None:
        snap = self.page.evaluate(SNAPSHOT_JS, 1)
        if snap is not None and (not self.seen or self.seen[-1] != snap):
            self.seen.append(snap)
        return snap

    def wait(self, what: str, ok: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if snap is not None and ok(snap):
                return snap
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last snapshots: {self.seen[-4:]}")


def _shot(page: Any, lab: Lab, name: str) -> None:
    lab.widget.scroll_into_view_if_needed()
    lab.widget.screenshot(path=str(ARTIFACTS / f"controls-{name}.png"))


def _shot_of(widget: Any, name: str) -> None:
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / f"controls-{name}.png"))


def _scenario(page: Any, lab: Lab, timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    lab.run_cell(0)
    lab.wait_prompt(0)
    lab.run_cell(1)
    # --background: the cell returns at once, the widget shows its controls and keeps updating
    lab.wait_prompt(1, timeout=30)
    snap = lab.wait("the controls of the background run", lambda s: s["controls"], timeout=20)
    assert snap["total"] == str(len(TASKS)), snap
    for sel in ("button.nbflow-cancel", "button.nbflow-rerun", "button.nbflow-approve",
                "input.nbflow-signal-name", "textarea.nbflow-signal-payload"):  # fmt: skip
        assert lab.widget.locator(f".nbflow-controls {sel}").is_visible(), sel

    # -- 1. cancel while train runs: finished tasks are kept --------------------------------
    lab.wait(
        "train running (extract and clean done)",
        lambda s: (
            s["states"].get("train") == "running"
            and s["states"].get("extract") == "done"
            and s["states"].get("clean") == "done"
        ),
    )
    timings["running_s"] = round(time.monotonic() - t0, 2)
    _shot(page, lab, "running")
    # re-run from, while the run is going: refused with the reason (was: "Re-running ..."
    # shown while the re-run failed unseen on the instance lock in its thread)
    lab.widget.locator('.nbflow-dag svg g.node[data-task="extract"]').click()
    page.wait_for_function(RERUN_ENABLED_JS, timeout=10_000)
    lab.widget.locator("button.nbflow-rerun").click()
    snap = lab.wait("the re-run refusal", lambda s: "still going" in s["message"], timeout=10)
    assert snap["message"].startswith("rerun failed: InstanceLockedError"), snap
    lab.widget.locator("button.nbflow-cancel").click()
    snap = lab.wait("run-state cancelled", lambda s: s["run"] == "cancelled", timeout=15)
    timings["cancelled_s"] = round(time.monotonic() - t0, 2)
    assert snap["states"] == {"extract": "done", "clean": "done", "train": "cancelled", "report": "pending"}, snap
    assert snap["done"] == "2", snap
    assert "Cancel requested." in lab.wait("the cancel message", lambda s: bool(s["message"]))["message"]
    assert lab.widget.get_attribute("data-run-state") == "cancelled"
    _shot(page, lab, "cancelled")

    # -- re-run the cell: the kept tasks are restored, the rest run ----------------------------
    lab.run_cell(1)
    lab.wait_prompt(1, timeout=30)
    snap = lab.wait("the re-run completed", lambda s: s["run"] == "completed", timeout=20)
    timings["rerun_completed_s"] = round(time.monotonic() - t0, 2)
    assert snap["states"] == {"extract": "restored", "clean": "restored", "train": "done", "report": "done"}, snap
    assert snap["done"] == snap["total"] == str(len(TASKS)), snap
    assert snap["controls"], "the controls stay for a finished background run (re-run from needs them)"
    _shot(page, lab, "resumed")

    # -- 2. select clean, re-run from it: clean and its descendants run again ----------------
    rerun = lab.widget.locator("button.nbflow-rerun")
    assert rerun.is_disabled(), "nothing selected yet"
    lab.widget.locator('.nbflow-dag svg g.node[data-task="clean"]').click()
    lab.widget.locator('.nbflow-detail[data-task="clean"]').wait_for(state="visible", timeout=10_000)
    assert lab.widget.locator('.nbflow-dag svg g.node.nbflow-selected[data-task="clean"]').count() == 1
    page.wait_for_function(RERUN_ENABLED_JS, timeout=10_000)
    n_before = len(lab.seen)
    rerun.click()
    lab.wait("the re-run-from to start", lambda s: s["run"] == "running", timeout=15)
    snap = lab.wait("the re-run-from to complete", lambda s: s["run"] == "completed", timeout=20)
    timings["rerun_from_completed_s"] = round(time.monotonic() - t0, 2)
    assert snap["states"] == {"extract": "restored", "clean": "done", "train": "done", "report": "done"}, snap
    # live: the re-run tasks were repainted while it ran (not just at the end)
    during = lab.seen[n_before:]
    assert any(s["states"].get("train") in ("running", "pending", "stale") for s in during), during
    assert "Re-running from 'clean'." in snap["message"], snap
    # detail pane: clean's fresh stdout, then report's fresh output
    lab.widget.locator('.nbflow-detail[data-task="clean"] pre.nbflow-detail-stdout').wait_for(
        state="visible", timeout=10_000
    )
    assert "cleaning 3 rows" in lab.widget.locator(".nbflow-detail pre.nbflow-detail-stdout").inner_text()
    lab.widget.locator('.nbflow-dag svg g.node[data-task="report"]').click()
    preview = lab.widget.locator('.nbflow-detail[data-task="report"] pre.nbflow-detail-preview')
    preview.wait_for(state="visible", timeout=10_000)
    assert "total=60" in preview.inner_text()
    assert "state: done" in lab.widget.locator(".nbflow-detail-meta").inner_text()
    _shot(page, lab, "rerun-from")

    # -- 3. the signal box reaches the kernel ----------------------------------------------------
    name_box = lab.widget.locator("input.nbflow-signal-name")
    payload_box = lab.widget.locator("textarea.nbflow-signal-payload")
    approve = lab.widget.locator("button.nbflow-approve")
    name_box.fill("approval")
    payload_box.fill('{"ok": tru')
    approve.click()
    lab.wait("the bad-JSON message", lambda s: "not valid JSON" in s["message"], timeout=10)
    payload_box.fill('{"ok": true, "by": "ana"}')
    approve.click()
    # This instance has completed: nothing would ever consume the signal, so it is refused
    # with the reason (the signal box of a waiting run is exercised in step 4).
    lab.wait(
        "the signal-refused message",
        lambda s: "SignalRefusedError" in s["message"] and "completed" in s["message"],
        timeout=10,
    )

    # -- 4. approve a run that waits for a signal -----------------------------------------------
    lab.run_cell(3)
    lab.wait_prompt(3, timeout=30)
    review = lab.cells.nth(3).locator(".nbflow-widget")

    def review_snap() -> dict[str, Any]:
        snap = page.evaluate(SNAPSHOT_JS, 3)
        assert snap is not None
        return snap  # type: ignore[no-any-return]

    deadline = time.monotonic() + 20
    while review_snap()["states"].get("approval") != "awaiting_signal":
        assert time.monotonic() < deadline, review_snap()
        time.sleep(0.05)
    snap = review_snap()
    assert snap["states"]["train"] == "done" and snap["states"]["deploy"] == "pending", snap
    _shot_of(review, "awaiting-signal")
    review.locator("input.nbflow-signal-name").fill("approval")
    review.locator("textarea.nbflow-signal-payload").fill('{"by": "ana"}')
    review.locator("button.nbflow-approve").click()
    deadline = time.monotonic() + 20
    while review_snap()["run"] != "completed":
        assert time.monotonic() < deadline, review_snap()
        time.sleep(0.05)
    assert review_snap()["states"] == {"train": "done", "approval": "done", "deploy": "done"}, review_snap()
    review.locator('.nbflow-dag svg g.node[data-task="deploy"]').click()
    approved = review.locator('.nbflow-detail[data-task="deploy"] pre.nbflow-detail-preview')
    approved.wait_for(state="visible", timeout=10_000)
    assert "approved by ana" in approved.inner_text()
    timings["approved_s"] = round(time.monotonic() - t0, 2)
    _shot_of(review, "approved")

    # the kernel agrees: completed, and the tasks of the last run (the re-run-from)
    lab.run_cell(2)
    status = lab.wait_prompt(2, timeout=20)
    assert "completed (4/4 tasks checkpointed)" in status, status
    # rows are TASK STATE ATTEMPTS DURATION FINISHED OUTPUT: the state is the second column
    lines = {w[0]: w[1] for w in map(str.split, status.splitlines()) if len(w) > 1 and w[0] in TASKS}
    assert lines == {"extract": "restored", "clean": "done", "train": "done", "report": "done"}, status
    page.screenshot(path=str(ARTIFACTS / "controls-notebook.png"), full_page=True)


def test_widget_controls_cancel_resume_rerun_from_approve(browser: Any, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    _make_notebook(root / NB_NAME)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    proc, base, token, log = start_server("lab", root, tmp_path)
    timings["server_start_s"] = round(time.monotonic() - t0, 2)
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    lab = Lab(page)
    try:
        t1 = time.monotonic()
        open_notebook(page, base, token, NB_NAME, len(CELLS))
        timings["page_ready_s"] = round(time.monotonic() - t1, 2)
        _scenario(page, lab, timings)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "controls-FAILED.png"), full_page=True)
        print((tmp_path / "jupyter-lab.log").read_text()[-4000:])
        print("snapshots:", json.dumps(lab.seen[-10:]))
        raise
    finally:
        context.close()
        stop_server(proc, log)
    print(f"\n[controls] timings: {json.dumps(timings)}; {len(lab.seen)} distinct widget snapshots")
    print(f"[controls] console errors: {errors}")
    assert not errors, errors
