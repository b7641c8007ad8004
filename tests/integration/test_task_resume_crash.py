"""kill -9 in the middle of a task that saves its own state, then resume in a new process.

A subprocess runs a workflow whose task loops over 10 steps, appending one line per
executed step to a log and saving ``ctx.checkpoint({"step": i + 1, ...})`` after each.
At step K the process is SIGKILLed (the task kills it: deterministic, no timing). A new
process resumes the instance: the task restores its state and goes on at step K, so
every step before K ran exactly once in all, and the output is right. The same with
the body on a ``ProcessExecutor`` (the worker kills the runner, then itself) and
inside a map item (one item at a time: an item running beside the killed one would be
cut mid-step, and that step — logged, not yet saved — would rightly run again).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.crash import last_json, run, write_script

pytestmark = pytest.mark.slow

K = 6
STEPS = 10

SCRIPT = r"""
import json, os, signal, sys
from pathlib import Path
import nbflow as nf

mode, root, action, K = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
LOG = str(root / "steps.log")
KILL = action == "run"
RUNNER = os.getpid()


def loop(ctx, x, kill):
    state = ctx.restore({"step": 0, "acc": 0})
    for i in range(state["step"], 10):
        if kill and i == K:
            if os.getpid() != RUNNER:          # a worker process: the whole run dies
                os.kill(RUNNER, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        with open(LOG, "a") as f:
            f.write(f"{ctx.task_id} {i}\n")
        state = {"step": i + 1, "acc": state["acc"] + x * i}
        ctx.checkpoint(state)
    return state["acc"]


def train(x):
    return loop(nf.get_task_context(), x, KILL)


def item(x):
    return loop(nf.get_task_context(), x, KILL and x == 2)


if mode == "map":
    wf = nf.Workflow("crash-map").then("xs", lambda n: list(range(1, n + 1))).map("m", item, concurrency=1).build()
else:
    wf = nf.Workflow("crash").then(train).then("report", lambda acc: {"acc": acc}).build()

if __name__ == "__main__":
    executor = nf.ProcessExecutor(1) if mode == "process" else None
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(root / "store"), echo_output=False, executor=executor)
    arg = 3 if mode == "map" else 2
    status = runner.run(wf, "inst", arg) if action == "run" else runner.resume(wf, "inst")
    records = runner.backend.get_records("inst")
    print(json.dumps({
        "state": str(status.state),
        "output": status.output,
        "states_left": sorted(r for r in records if r.endswith("#state")),
    }))
    if executor is not None:
        executor.shutdown()
"""


def _run(tmp_path: Path, mode: str, action: str) -> subprocess.CompletedProcess[str]:
    return run(write_script(tmp_path / "flow.py", SCRIPT), mode, tmp_path, action, K)


def _steps(tmp_path: Path) -> Counter[tuple[str, int]]:
    lines = (tmp_path / "steps.log").read_text().split()
    return Counter((lines[i], int(lines[i + 1])) for i in range(0, len(lines), 2))


def _crash_and_resume(tmp_path: Path, mode: str) -> tuple[dict[str, Any], Counter[tuple[str, int]]]:
    first = _run(tmp_path, mode, "run")
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stdout, first.stderr[-2000:])
    before = _steps(tmp_path)
    second = _run(tmp_path, mode, "resume")
    assert second.returncode == 0, second.stderr[-3000:]
    return last_json(second.stdout), before


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_a_killed_task_resumes_from_its_last_saved_state(tmp_path: Path, mode: str) -> None:
    result, before = _crash_and_resume(tmp_path, mode)
    assert sorted(before) == [("train", i) for i in range(K)]  # killed at step K
    after = _steps(tmp_path)
    assert after == Counter({("train", i): 1 for i in range(STEPS)})  # steps before K ran once in all
    assert result == {"state": "completed", "output": {"acc": 2 * sum(range(STEPS))}, "states_left": []}


def test_a_killed_map_item_resumes_from_its_last_saved_state(tmp_path: Path) -> None:
    result, before = _crash_and_resume(tmp_path, "map")
    assert ("m[1]", K - 1) in before and ("m[1]", K) not in before  # item x=2 is m[1]
    after = _steps(tmp_path)
    assert set(after.values()) == {1}, sorted(after.items())  # no step of any item ran twice
    assert {(t, i) for t, i in after} == {(f"m[{j}]", i) for j in range(3) for i in range(STEPS)}
    assert result["state"] == "completed" and result["states_left"] == []
    assert result["output"] == [x * sum(range(STEPS)) for x in (1, 2, 3)]
