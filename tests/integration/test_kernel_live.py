"""A real kernel runs a ``%%workflow`` cell whose task prints and advances ``tqdm.auto``
for about three seconds; the test reads every IOPub message the kernel sends.

- The widget's comm updates carry the task's output and progress *before* the task
  ends (before the update that paints it done).
- The kernel reports busy for the whole run. JupyterLab 4 creates a kernel subshell
  for widget comms (``create_subshell_request`` on the control channel) as soon as the
  widget's comm opens, and ipykernel answers it with its own busy/idle pair while the
  cell still runs — which is why the status bar read "Idle". The test sends the same
  requests the front end sends, and checks that every such idle is followed at once by
  a busy for the cell, so the last status before the cell's own idle is busy.
- ``tqdm.auto`` inside the task builds no ipywidgets bar (it would show under the cell).

Follows ``shared/recipes`` (isolated IPYTHONDIR / JUPYTER_RUNTIME_DIR, this venv's
``python3`` kernel). No timing assertions: deadlines only bound a broken run.
"""

from __future__ import annotations

import queue
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

pytestmark = [pytest.mark.slow, pytest.mark.kernel]

STARTUP_TIMEOUT = 60
DEADLINE = 90

CELL = """
%%workflow livek --fresh --dir {store}
import time
from tqdm.auto import tqdm

def train():
    for i in tqdm(range(12), desc="epoch"):
        print(f"epoch {{i}} loss {{1 / (i + 1):.3f}}")
        time.sleep(0.25)
    return 12

def report(train):
    return train
"""


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _drain(kc: Any) -> None:
    while True:
        try:
            kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return


def _run_and_collect(kc: Any, code: str) -> tuple[str, list[dict[str, Any]]]:
    """Execute ``code``; meanwhile poke the kernel as JupyterLab's widget manager does.
    Returns the execute request's id and every IOPub message until its idle."""
    msg_id = kc.execute(textwrap.dedent(code))
    messages: list[dict[str, Any]] = []
    poked = 0
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        messages.append(msg)
        kind, parent = msg["header"]["msg_type"], msg["parent_header"].get("msg_id")
        if kind == "comm_open" and poked == 0:
            # the front end saw the widget: it makes a subshell for widget comms
            kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
            poked += 1
        elif kind == "comm_msg" and 0 < poked < 3 and "live" in msg["content"]["data"].get("state", {}):
            kc.control_channel.send(kc.session.msg("kernel_info_request", {}))  # any control request
            poked += 1
        if kind == "status" and parent == msg_id and msg["content"]["execution_state"] == "idle":
            return msg_id, messages
    raise AssertionError(f"the cell did not finish in {DEADLINE} s")


def test_live_output_progress_and_busy_status(kernel: Any, tmp_path: Path) -> None:
    kc = kernel
    reply = kc.execute_interactive("%load_ext nbflow", timeout=DEADLINE)
    assert reply["content"]["status"] == "ok"
    _drain(kc)
    msg_id, messages = _run_and_collect(kc, CELL.format(store=tmp_path / "store"))

    # -- output and progress reach the widget while the task runs ------------------------
    updates = [
        (i, m["content"]["data"]["state"])
        for i, m in enumerate(messages)
        if m["header"]["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
    ]
    done_at = next(i for i, state in updates if state.get("states", {}).get("train") == "done")
    live = [(i, state["live"]["train"]) for i, state in updates if "train" in state.get("live", {})]
    printed = [i for i, info in live if "epoch 2 loss" in info["stdout"]]
    progressed = [i for i, info in live if info["progress"] and info["progress"][0] >= 2 and info["progress"][1] == 12]
    assert printed and printed[0] < done_at, "no update carried the task's output before it ended"
    assert progressed and progressed[0] < done_at, "no update carried the task's progress before it ended"
    assert any("epoch" in info["line"] for _, info in live)  # the row's last line
    assert len(updates) < 60  # coalesced: a few updates per second, not one per print

    # -- busy for the whole run ------------------------------------------------------------
    statuses = [
        (m["content"]["execution_state"], m["parent_header"].get("msg_id"))
        for m in messages
        if m["header"]["msg_type"] == "status"
    ]
    start = statuses.index(("busy", msg_id))
    during = statuses[start:-1]  # up to, not including, the cell's own idle
    foreign = [k for k, (state, parent) in enumerate(during) if state == "idle" and parent != msg_id]
    assert foreign, f"the test did not make the kernel publish another request's idle: {statuses}"
    for k in foreign:  # each one is corrected at once: the front end never rests on "idle"
        assert k + 1 < len(during) and during[k + 1] == ("busy", msg_id), statuses
    assert during[-1] == ("busy", msg_id), statuses

    # -- tqdm.auto inside the task made no widget --------------------------------------------
    opened = [
        m["content"]["data"]["state"].get("_model_name") for m in messages if m["header"]["msg_type"] == "comm_open"
    ]
    assert not {"FloatProgressModel", "HBoxModel", "HTMLModel"} & set(opened), opened
    results = [m for m in messages if m["header"]["msg_type"] == "execute_result"]
    assert results and results[-1]["content"]["data"]["text/plain"] == "12"
    streams = "".join(m["content"]["text"] for m in messages if m["header"]["msg_type"] == "stream")
    assert "epoch 2 loss" not in streams  # the task's prints live in the widget, not in the cell's output
