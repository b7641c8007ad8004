"""Real crashes: a child process running a workflow is killed with SIGKILL (inside a
task, inside a fork branch, inside the checkpoint write itself); a new process resumes.

Every task body appends a line to ``counts/<task id>`` before doing anything else, so
the files count executions across processes: a task that finished before the kill ran
exactly once in total, the task that was running when it died ran twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbflow as nf

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
import nbflow as nf
from nbflow.store import disk_layout

mode, root, action = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
KILL_AT = os.environ.get("KILL_AT", "")
counts, marker = root / "counts", root / "marker"
counts.mkdir(exist_ok=True)
backend = nf.DiskcacheBackend(root / "store")


def count(tid):
    with open(counts / tid, "a") as f:
        f.write("1\n")


def hang_if_asked(tid, wait_for=()):
    if tid != KILL_AT:
        return
    # Wait until the other branches are checkpointed, so the kill hits this task only.
    while any(backend.get_record("inst", other) is None for other in wait_for):
        time.sleep(0.01)
    marker.write_text(tid)
    time.sleep(120)  # the parent kills us here


def step(tid):
    def fn(x):
        count(tid)
        hang_if_asked(tid)
        if tid == "t2" and mode == "commit":
            return "x" * (600 * 1024) + str(x)  # large: goes to a blob file
        return (x if isinstance(x, int) else len(x)) + 1
    return fn


if mode in ("chain", "commit"):
    builder = nf.Workflow("crash")
    for i in range(6):
        builder = builder.then(f"t{i}", step(f"t{i}"), version="1")
    wf = builder.build()
else:  # fork
    def branch(tid):
        def fn(x):
            count(tid)
            hang_if_asked(tid, wait_for=[b for b in ("b0", "b1", "b3") if b != tid])
            return x * 10 + int(tid[1])
        return fn

    def join(parts):
        count("join")
        return sorted(parts.values())

    builder = nf.Workflow("crash-fork").then("src", step("src"), version="1").fork()
    for i in range(4):
        builder = builder.branch(f"b{i}", branch(f"b{i}"))
    wf = builder.join("join", join, version="1").build()

if mode == "commit" and KILL_AT == "commit":
    # Fault injection: die after the blob file is durably written, before the record commit.
    original = disk_layout.SpillSink.commit

    def commit_then_die(self):
        payload, blob = original(self)
        if blob is not None:
            marker.write_text("commit")
            os.kill(os.getpid(), signal.SIGKILL)
        return payload, blob

    disk_layout.SpillSink.commit = commit_then_die

runner = nf.CheckpointingRunner(backend, echo_output=False)
status = runner.run(wf, "inst", 1) if action == "run" else runner.resume(wf, "inst")
print(json.dumps({"state": str(status.state), "output": status.output if mode != "commit" else status.output}))
"""


def _spawn(tmp_path: Path, mode: str, action: str, kill_at: str = "") -> subprocess.Popen[str]:
    script = tmp_path / "flow.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = {**os.environ, "KILL_AT": kill_at, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(tmp_path), action],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when_marked(proc: subprocess.Popen[str], marker: Path) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _counts(tmp_path: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted((tmp_path / "counts").iterdir())}


def _store_is_readable(tmp_path: Path, state: str = "running") -> nf.DiskcacheBackend:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    assert not backend.is_locked("inst")  # the kernel freed the dead runner's lock
    meta = backend.load_instance("inst")
    assert meta is not None and meta.state == state
    records = backend.get_records("inst")
    client = nf.WorkflowClient(backend)
    for tid in records:
        if tid != "__input__":
            client.get_task_result("inst", tid)  # every stored record decodes
    backend.close()
    return backend


def test_kill_inside_a_chain_task_then_resume(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "chain", "run", kill_at="t3")
    _kill_when_marked(proc, tmp_path / "marker")
    _store_is_readable(tmp_path)
    assert _counts(tmp_path) == {"t0": 1, "t1": 1, "t2": 1, "t3": 1}
    result = _finish(_spawn(tmp_path, "chain", "resume"))
    assert result == {"state": "completed", "output": 7}
    assert _counts(tmp_path) == {"t0": 1, "t1": 1, "t2": 1, "t3": 2, "t4": 1, "t5": 1}


def test_kill_inside_a_fork_branch_then_resume(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "fork", "run", kill_at="b2")
    _kill_when_marked(proc, tmp_path / "marker")
    _store_is_readable(tmp_path)
    result = _finish(_spawn(tmp_path, "fork", "resume"))
    assert result == {"state": "completed", "output": [20, 21, 22, 23]}
    assert _counts(tmp_path) == {"b0": 1, "b1": 1, "b2": 2, "b3": 1, "join": 1, "src": 1}


def test_kill_inside_the_checkpoint_write_then_resume(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "commit", "run", kill_at="commit")
    proc.wait(120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert (tmp_path / "marker").read_text() == "commit"
    backend = _store_is_readable(tmp_path)
    # The blob file was written but no record points at it: the old state, not a broken one.
    assert backend.get_record("inst", "t2") is None
    assert set(backend.get_records("inst")) == {"__input__", "t0", "t1"}
    blobs = list((backend._instance_dir("inst") / "blobs").iterdir())
    assert len(blobs) == 1 and not blobs[0].name.startswith(".tmp-")
    result = _finish(_spawn(tmp_path, "commit", "resume"))
    assert result == {"state": "completed", "output": 600 * 1024 + 1 + 3}
    assert _counts(tmp_path) == {"t0": 1, "t1": 1, "t2": 2, "t3": 1, "t4": 1, "t5": 1}
    # The re-run wrote a fresh blob that decodes.
    client = nf.WorkflowClient(nf.DiskcacheBackend(tmp_path / "store"))
    assert client.get_task_result("inst", "t2").endswith("x3")
