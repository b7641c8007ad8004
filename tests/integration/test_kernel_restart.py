"""Resume after a real kernel death: jupyter_client drives real ipykernel processes.

A ``%%workflow`` cell of four tasks runs; the third writes a marker file and then waits
for a "go" file. The test kills the kernel (SIGKILL, restart, or the stop button) while
the third task waits, starts a new kernel, re-runs the same cells, and checks with the
execution log (one line appended per task execution) that the first two tasks ran once
in total, the output is right, and ``%workflow status`` / the widget marks them restored.

Follows ``shared/recipes``: IPYTHONDIR and JUPYTER_RUNTIME_DIR isolated in tmp,
``KernelManager(kernel_name="python3")`` resolving to this venv's kernel. No timing
assertions: deadlines only bound how long a broken run can hang.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

pytestmark = [pytest.mark.slow, pytest.mark.kernel]

STARTUP_TIMEOUT = 60
DEADLINE = 60  # seconds a step may take before the test gives up


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    return tmp_path


class Kernel:
    """A real kernel plus its client; ``run`` executes code and collects its outputs."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)

    def run(self, code: str, *, timeout: float = DEADLINE, ok: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"stdout": "", "stderr": "", "result": None, "error": ""}

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] += "\n".join(content["traceback"])

        reply = self.kc.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=hook)
        out["status"] = reply["content"]["status"]
        if ok:
            assert out["status"] == "ok", out
        return out

    def start(self, code: str) -> None:
        """Send code and do not wait for it."""
        self.kc.execute(textwrap.dedent(code))

    @property
    def pid(self) -> int:
        return int(self.run("import os; print(os.getpid())")["stdout"].strip())

    def kill(self) -> None:
        pid = self.km.provisioner.process.pid  # the kernel itself (no wrapper process)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while self.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.km.is_alive()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernels(kernel_env: Path) -> Iterator[list[Kernel]]:
    started: list[Kernel] = []
    yield started
    for kernel in started:
        with contextlib.suppress(Exception):  # already dead is fine
            kernel.close()


def new_kernel(kernels: list[Kernel], cwd: Path) -> Kernel:
    kernel = Kernel(cwd)
    kernels.append(kernel)
    return kernel


def workflow_cell(tmp: Path, flags: str = "") -> str:
    """Four tasks in a chain; ``three`` marks that it started, then waits for 'go'."""
    return f"%%workflow chain --dir {tmp / 'store'} {flags}\n" + textwrap.dedent(
        f"""
            import os, time
            import nbflow as nf

            LOG, MARKER, GO = {str(tmp / "log.txt")!r}, {str(tmp / "marker")!r}, {str(tmp / "go")!r}

            def _note(what):
                with open(LOG, "a") as f:
                    f.write(what + "\\n")

            def one():
                _note("one")
                return 1

            def two(one):
                _note("two")
                return one + 1

            def three(two):
                _note("three started")
                open(MARKER, "w").close()
                ctx = nf.get_task_context()
                deadline = time.monotonic() + {DEADLINE}
                while not os.path.exists(GO) and not ctx.cancelled and time.monotonic() < deadline:
                    time.sleep(0.02)
                _note("three")
                return two * 10

            def four(three):
                _note("four")
                return three + 1
            """
    )


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def executions(tmp: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (tmp / "log.txt").read_text().splitlines():
        counts[line] = counts.get(line, 0) + 1
    return counts


def test_sigkill_during_the_third_task_then_a_new_kernel_resumes(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    first = new_kernel(kernels, tmp)
    assert first.run("import sys; print(sys.executable)")["stdout"].strip() == sys.executable
    first.run("%load_ext nbflow")
    first.start(workflow_cell(tmp))
    wait_for(tmp / "marker")
    first.kill()
    assert executions(tmp) == {"one": 1, "two": 1, "three started": 1}

    second = new_kernel(kernels, tmp)
    (tmp / "go").touch()
    second.run("%load_ext nbflow")
    out = second.run(workflow_cell(tmp))
    assert out["result"] == "21"
    assert executions(tmp) == {"one": 1, "two": 1, "three started": 2, "three": 1, "four": 1}
    status = second.run("report = %workflow status chain\nprint(repr(report))")["stdout"]
    assert "completed (4/4 tasks checkpointed)" in status
    assert re.search(r"one\s+restored", status) and re.search(r"two\s+restored", status), status
    assert re.search(r"three\s+done", status) and re.search(r"four\s+done", status), status
    # the live widget was shown and folds the same events (if the widget package works here)
    summary = second.run(
        "w = get_ipython().magics_manager.registry['WorkflowMagics'].entries['chain'].widget\n"
        "print(w.summary() if w is not None else 'no widget')"
    )["stdout"]
    assert summary.strip() != "no widget", summary
    assert "restored" in summary, summary


def test_kernel_restart_during_a_background_run_then_resume(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    kernel = new_kernel(kernels, tmp)
    kernel.run("%load_ext nbflow")
    out = kernel.run(workflow_cell(tmp, "--background --no-widget"))
    assert "RunHandle" in (out["result"] or "")  # returned at once, the run goes on
    wait_for(tmp / "marker")
    pid = kernel.pid  # the kernel answers while the background run works
    assert executions(tmp) == {"one": 1, "two": 1, "three started": 1}

    kernel.km.restart_kernel(now=True)  # the "Restart kernel" button: kill, same ports
    kernel.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
    assert kernel.pid != pid
    (tmp / "go").touch()
    kernel.run("%load_ext nbflow")
    kernel.run(workflow_cell(tmp, "--no-run --no-widget"))  # define it again, run nothing
    status = kernel.run("report = %workflow status chain\nprint(repr(report))")["stdout"]
    # the store's view after the restart: what finished, and what the dead run was running
    assert re.search(r"one\s+done\s+1", status) and re.search(r"three\s+interrupted", status), status
    assert re.search(r"four\s+pending", status) and "was running when the run stopped: three" in status, status
    plan = kernel.run("shown = %workflow show chain --no-widget\nprint(repr(shown))")["stdout"]
    assert re.search(r"one\s+restore", plan) and re.search(r"three\s+run", plan), plan
    out = kernel.run("%workflow resume chain --no-widget")
    assert out["result"] == "21"
    assert executions(tmp) == {"one": 1, "two": 1, "three started": 2, "three": 1, "four": 1}


def test_interrupt_during_a_blocking_run_keeps_finished_tasks(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    kernel = new_kernel(kernels, tmp)
    kernel.run("%load_ext nbflow")
    first = kernel.kc.execute(textwrap.dedent(workflow_cell(tmp, "--no-widget")))
    # "Run All": the next cell is already queued behind the workflow cell
    after = kernel.kc.execute(f"open({str(tmp / 'after')!r}, 'w').close()")
    wait_for(tmp / "marker")
    kernel.km.interrupt_kernel()  # the stop button
    replies = {}
    while len(replies) < 2:
        reply = kernel.kc.get_shell_msg(timeout=DEADLINE)
        replies[reply["parent_header"]["msg_id"]] = reply["content"]
    # the workflow cell fails (after marking the instance interrupted), so Run All stops
    assert replies[first]["status"] == "error", replies[first]
    assert replies[first]["ename"] in ("CellInterrupted", "KeyboardInterrupt"), replies[first]
    assert replies[first]["traceback"] == [
        "KeyboardInterrupt: chain: interrupted, 2 tasks kept; re-run the cell or %workflow resume chain to continue"
    ]
    assert replies[after]["status"] == "aborted", replies[after]
    assert not (tmp / "after").exists()
    status = kernel.run("report = %workflow status chain\nprint(repr(report))")["stdout"]
    assert "interrupted (2/4 tasks checkpointed)" in status, status

    (tmp / "go").touch()
    out = kernel.run(workflow_cell(tmp, "--no-widget"))
    assert out["result"] == "21"
    counts = executions(tmp)
    assert counts["one"] == 1 and counts["two"] == 1 and counts["four"] == 1
    assert counts["three started"] == 2
