"""A task's chart survives a kernel death: real kernels (jupyter_client), a real kill -9.

A ``%%workflow`` cell of three tasks runs in a real kernel: ``table`` calls
``display(df)``, ``chart`` draws a matplotlib figure (Agg) and leaves it open, and
``wait`` marks that it started and waits for a "go" file. The test kills the kernel
(SIGKILL) while ``wait`` waits, starts a new kernel and re-runs the same cell. Then:

- ``table`` and ``chart`` are restored (not run again: the execution log says so), and
  the widget's detail of ``chart`` holds the figure as ``image/png`` (a real PNG), the
  one of ``table`` the DataFrame's HTML — read from the store, as the original run
  showed them — and the comm message that synced the detail to the front end carries
  that PNG;
- neither run published the figure under the cell (captured displays belong to their
  task, in the original run as in the restored one).

A second kernel keeps matplotlib's default inline backend: ``plt.show()`` in a task and
a figure the task leaves open both end up in the task's detail, and neither is drawn
under the cell (not even by the backend's end-of-cell flush).

Follows ``shared/recipes`` (isolated IPYTHONDIR / JUPYTER_RUNTIME_DIR, this venv's
``python3`` kernel). No timing assertions: deadlines only bound a broken run.
"""

from __future__ import annotations

import base64
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_kernel_restart import DEADLINE, Kernel, kernel_env, kernels, new_kernel

pytestmark = [pytest.mark.slow, pytest.mark.kernel]
__all__ = ["kernel_env", "kernels"]  # fixtures used by name below

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")


def charts_cell(tmp: Path) -> str:
    return f"%%workflow charts --dir {tmp / 'store'}\n" + textwrap.dedent(
        f"""
        import os, time
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd
        from IPython.display import display

        LOG, MARKER, GO = {str(tmp / "log.txt")!r}, {str(tmp / "marker")!r}, {str(tmp / "go")!r}

        def _note(what):
            with open(LOG, "a") as f:
                f.write(what + "\\n")

        def table():
            _note("table")
            df = pd.DataFrame({{"region": ["north", "south"], "amount": [1.5, 2.5]}})
            display(df)
            return df

        def chart(table):
            _note("chart")
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.bar(table["region"], table["amount"])
            ax.set_title("amount by region")
            return len(table)  # the figure is left open: the task keeps it

        def wait(chart):
            _note("wait started")
            open(MARKER, "w").close()
            deadline = time.monotonic() + {DEADLINE}
            while not os.path.exists(GO) and time.monotonic() < deadline:
                time.sleep(0.02)
            return chart * 10
        """
    )


def run_collecting(kernel: Kernel, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; returns the reply content and every IOPub message it caused."""
    messages: list[dict[str, Any]] = []
    reply = kernel.kc.execute_interactive(textwrap.dedent(code), timeout=DEADLINE, output_hook=messages.append)
    return reply["content"], messages


def loose_images(messages: list[dict[str, Any]]) -> list[str]:
    """Images published as outputs of the cell (display_data / execute_result)."""
    return [
        mime
        for m in messages
        if m["header"]["msg_type"] in ("display_data", "execute_result", "update_display_data")
        for mime in m["content"].get("data", {})
        if mime.startswith("image/")
    ]


def widget_detail(kernel: Kernel, task: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Select ``task`` in the cell's widget (as a click does); returns its detail and
    the IOPub messages that synced it."""
    content, messages = run_collecting(
        kernel,
        "import json\n"
        "w = get_ipython().magics_manager.registry['WorkflowMagics'].entries['charts'].widget\n"
        f"w.selected = {task!r}\n"
        "print(json.dumps(w.detail))",
    )
    assert content["status"] == "ok", messages
    printed = "".join(m["content"]["text"] for m in messages if m["header"]["msg_type"] == "stream")
    return json.loads(printed), messages


def is_png(data: str) -> bool:
    return base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_restored_task_shows_its_figure_again_after_kill_9(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    first = new_kernel(kernels, tmp)
    first.run("%load_ext nbflow")
    messages: list[dict[str, Any]] = []
    first.kc.execute(charts_cell(tmp))
    deadline = time.monotonic() + DEADLINE
    while not (tmp / "marker").exists():
        assert time.monotonic() < deadline, "the task 'wait' never started"
        while True:  # keep what the running cell publishes
            try:
                messages.append(first.kc.get_iopub_msg(timeout=0.05))
            except Exception:  # noqa: BLE001 - queue.Empty: nothing right now
                break
    assert loose_images(messages) == []  # not under the cell
    first.kill()
    kernels.remove(first)

    (tmp / "go").touch()
    second = new_kernel(kernels, tmp)
    second.run("%load_ext nbflow")
    content, rerun = run_collecting(second, charts_cell(tmp))
    assert content["status"] == "ok", rerun
    results = [m["content"]["data"]["text/plain"] for m in rerun if m["header"]["msg_type"] == "execute_result"]
    assert results == ["20"]
    assert (tmp / "log.txt").read_text().splitlines() == ["table", "chart", "wait started", "wait started"]
    assert loose_images(rerun) == []  # restored displays are the task's too, as in the first run

    chart, synced = widget_detail(second, "chart")
    assert chart["state"] == "restored"
    assert len(chart["displays"]) == 1, chart["displays"]
    assert is_png(chart["displays"][0]["image/png"])
    # what the front end receives: the comm update of the detail carries the same PNG
    comm_pngs = [
        d["image/png"]
        for m in synced
        if m["header"]["msg_type"] == "comm_msg"
        for d in ((m["content"].get("data", {}).get("state", {}).get("detail") or {}).get("displays") or [])
        if "image/png" in d
    ]
    assert comm_pngs == [chart["displays"][0]["image/png"]]

    table, _ = widget_detail(second, "table")
    assert table["state"] == "restored"
    assert len(table["displays"]) == 1
    html = table["displays"][0]["text/html"]
    assert "<table" in html and "north" in html and "2.5" in html
    # the output's own preview, made at checkpoint time and read without the codec
    assert "<table" in table["preview_bundle"]["text/html"]
    assert table["preview"].startswith("DataFrame 2x2: region")


def test_inline_backend_plt_show_and_a_figure_left_open_stay_with_their_task(
    kernels: list[Kernel], kernel_env: Path
) -> None:
    tmp = kernel_env
    kernel = new_kernel(kernels, tmp)  # the kernel's default: matplotlib's inline backend
    kernel.run("%load_ext nbflow")
    cell = f"%%workflow inline --dir {tmp / 'store'}\n" + textwrap.dedent(
        """
        import matplotlib.pyplot as plt

        def draw():
            plt.plot([1, 2, 3])
            plt.title("shown")
            plt.show()  # the inline backend displays it (and closes it)
            plt.figure()
            plt.plot([3, 2, 1])  # left open at the end of the task
            return 1
        """
    )
    content, messages = run_collecting(kernel, cell)
    assert content["status"] == "ok", messages
    assert loose_images(messages) == []  # neither under the cell, nor drawn again when the cell ends
    content, messages = run_collecting(
        kernel,
        "import json, matplotlib\n"
        "w = get_ipython().magics_manager.registry['WorkflowMagics'].entries['inline'].widget\n"
        "w.selected = 'draw'\n"
        "print(json.dumps({'backend': matplotlib.get_backend(), 'open': plt.get_fignums(), "
        "'displays': w.detail['displays']}))",
    )
    printed = json.loads("".join(m["content"]["text"] for m in messages if m["header"]["msg_type"] == "stream"))
    assert "inline" in printed["backend"]
    assert printed["open"] == []
    assert len(printed["displays"]) == 2
    assert all(is_png(d["image/png"]) for d in printed["displays"])
