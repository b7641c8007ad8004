"""Retries across a real kill -9: the attempt count and the next retry time are stored
before each retry, so a resumed process continues the policy instead of restarting it.

The task appends one line per attempt to ``counts/<task id>`` (its attempt number and
start time), so the files count attempts across processes. The test kills the child
during the backoff after the 2nd attempt (once the store says attempt 2 failed), waits
a moment, and resumes in a new process, which notes when it started.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from tests.integration.crash import finish, kill_when, spawn, write_script

pytestmark = pytest.mark.slow

DELAY = 2.0  # seconds between attempts (backoff 1: every retry waits this long)

SCRIPT = r"""
import json, sys, time
from pathlib import Path
import nbflow as nf

mode, root, action = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
counts = root / "counts"
counts.mkdir(exist_ok=True)
(root / f"{action}_started_at").write_text(repr(time.time()))
policy = nf.RetryPolicy(3, initial_delay=float(sys.argv[4]), backoff=1)


def attempt_line(tid):
    ctx = nf.get_task_context()
    with open(counts / tid, "a") as f:
        f.write(f"{ctx.attempt} {time.time()!r}\n")
    return ctx.attempt


def always_fails(x):
    attempt = attempt_line("job")
    raise ConnectionError(f"down (attempt {attempt})")


def third_time_lucky(x):
    attempt = attempt_line("job")
    if attempt < 3:
        raise ConnectionError(f"down (attempt {attempt})")
    return x + attempt


def item(x):
    attempt = attempt_line(f"m[{x}]")
    if x == 1 and attempt < 3:
        raise ConnectionError(f"item down (attempt {attempt})")
    return x * 10


if mode == "fail":
    wf = nf.Workflow("retry").then("job", always_fails, retries=policy).build()
elif mode == "succeed":
    wf = nf.Workflow("retry").then("job", third_time_lucky, retries=policy).build()
else:
    wf = nf.Workflow("retry-map").map("m", item, retries=policy).build()

runner = nf.CheckpointingRunner(nf.DiskcacheBackend(root / "store"), echo_output=False)
inp = [0, 1, 2] if mode == "map" else 1
status = runner.run(wf, "inst", inp) if action == "run" else runner.resume(wf, "inst")
error = status.error
print(json.dumps({
    "state": str(status.state),
    "output": status.output,
    "error_attempt": error.attempt if error else None,
    "error_task": error.task_id if error else None,
}))
"""


def _spawn(tmp_path: Path, mode: str, action: str) -> subprocess.Popen[str]:
    return spawn(write_script(tmp_path / "flow.py", SCRIPT), mode, tmp_path, action, DELAY)


def _attempts(tmp_path: Path, task_id: str) -> list[tuple[int, float]]:
    path = tmp_path / "counts" / task_id
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(a), float(t)) for a, t in lines]


def _kill_after_second_failure(proc: subprocess.Popen[str], tmp_path: Path, task_id: str) -> dict[str, Any]:
    """SIGKILL the child once attempt 2 ran and the store holds its failure; returns
    the stored task state at that moment."""
    backend = nf.DiskcacheBackend(tmp_path / "store")
    seen: dict[str, Any] = {}

    def second_failure_stored() -> bool:
        if len(_attempts(tmp_path, task_id)) < 2:
            return False
        state = backend.load_task_states("inst").get(task_id)
        if state is None or state["attempt"] != 2:
            return False
        seen.update(state)
        return True

    try:
        kill_when(proc, second_failure_stored, "stored its second failure")
        assert len(_attempts(tmp_path, task_id)) == 2  # killed in the backoff, before attempt 3
        return seen
    finally:
        backend.close()


def _crash_and_resume(tmp_path: Path, mode: str, task_id: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    state = _kill_after_second_failure(_spawn(tmp_path, mode, "run"), tmp_path, task_id)
    time.sleep(1.0)  # the resumed process starts well after the kill
    result = finish(_spawn(tmp_path, mode, "resume"))
    resumed_at = float((tmp_path / "resume_started_at").read_text())
    return state, result, resumed_at


def test_a_killed_run_keeps_its_attempt_count_and_fails_after_the_policy(tmp_path: Path) -> None:
    state, result, resumed_at = _crash_and_resume(tmp_path, "fail", "job")
    attempts = _attempts(tmp_path, "job")
    assert [a for a, _ in attempts] == [1, 2, 3, 4]  # 1 + 3 retries in all, across the kill
    assert result == {"state": "failed", "output": None, "error_attempt": 4, "error_task": "job"}

    backend = nf.DiskcacheBackend(tmp_path / "store")
    status = nf.WorkflowClient(backend).status("inst")
    assert status.state == "failed" and status.error.attempt == 4
    assert "attempt 4" in status.error.message
    assert backend.load_task_states("inst") == {}  # failed for good: nothing left to continue

    # The resumed process waited only what was left of the stored backoff: attempt 3
    # began at the stored retry time, not a full delay after the resume.
    start3 = attempts[2][1]
    assert state["last_error"] == "ConnectionError: down (attempt 2)"
    assert start3 >= state["next_retry_at"] - 0.01
    assert start3 < resumed_at + DELAY
    assert attempts[3][1] - start3 >= DELAY - 0.05  # then the policy goes on as usual
    backend.close()


def test_a_killed_run_succeeds_on_its_third_attempt_and_records_it(tmp_path: Path) -> None:
    state, result, resumed_at = _crash_and_resume(tmp_path, "succeed", "job")
    attempts = _attempts(tmp_path, "job")
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert result["state"] == "completed" and result["output"] == 1 + 3
    backend = nf.DiskcacheBackend(tmp_path / "store")
    record = backend.get_record("inst", "job")
    assert record is not None and record.attempt == 3
    assert state["next_retry_at"] - 0.01 <= record.started_at < resumed_at + DELAY
    assert backend.load_task_states("inst") == {}
    backend.close()


def test_a_killed_map_item_continues_its_count(tmp_path: Path) -> None:
    _state, result, _resumed_at = _crash_and_resume(tmp_path, "map", "m[1]")
    assert result["state"] == "completed" and result["output"] == [0, 10, 20]
    assert [a for a, _ in _attempts(tmp_path, "m[1]")] == [1, 2, 3]
    assert [a for a, _ in _attempts(tmp_path, "m[0]")] == [1]  # done before the kill: restored
    assert [a for a, _ in _attempts(tmp_path, "m[2]")] == [1]
    backend = nf.DiskcacheBackend(tmp_path / "store")
    assert [backend.get_record("inst", f"m[{i}]").attempt for i in range(3)] == [1, 3, 1]
    backend.close()
