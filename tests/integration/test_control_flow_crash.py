"""Kill -9 a real process in the middle of each control-flow construct, resume in a new
process, and count executions: finished work is never repeated; only what was in
flight at the kill runs again (at-least-once).

The workflows live in ``cf_flows.py`` (run as a child process). Each execution
appends ``run <task id>`` to a log file; the crash point writes ``BLOCK <id>`` and
hangs until the test SIGKILLs the process. No assertion depends on wall-clock time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf

pytestmark = pytest.mark.slow

FLOWS = Path(__file__).with_name("cf_flows.py")


class Scenario:
    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.store = tmp_path / "store"
        self.log = tmp_path / "runs.log"

    def spawn(self, mode: str, *, block: bool) -> subprocess.Popen[str]:
        env = {**os.environ, "CF_BLOCK": "1" if block else "0", "CF_LOG": str(self.log)}
        return subprocess.Popen(
            [sys.executable, str(FLOWS), str(self.store), str(self.log), self.name, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def runs(self) -> Counter[str]:
        return Counter(line[4:] for line in self.lines() if line.startswith("run "))

    def wait_for(self, proc: subprocess.Popen[str], predicate: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if proc.poll() is not None:
                raise AssertionError(f"child exited ({proc.returncode}) before {what}: {proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.02)
        proc.kill()
        raise AssertionError(f"timed out waiting for {what}")

    def blocked(self) -> bool:
        return any(line.startswith("BLOCK") for line in self.lines())

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

    def finish(self, mode: str = "resume") -> dict[str, Any]:
        proc = self.spawn(mode, block=False)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def backend(self) -> nf.DiskcacheBackend:
        return nf.DiskcacheBackend(self.store)


def test_kill_inside_loop_iteration_7(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, "loop")
    proc = sc.spawn("run", block=True)
    sc.wait_for(proc, sc.blocked, "iteration 7 to start")
    sc.kill(proc)
    stored = set(sc.backend().get_records("loop"))
    assert {f"body#{n}" for n in range(1, 7)} <= stored and "body#7" not in stored

    result = sc.finish()
    assert result == {"state": "completed", "output": 1200, "error": None}
    runs = sc.runs()
    assert runs["body#7"] == 2  # the iteration in flight runs again
    assert all(runs[f"body#{n}"] == 1 for n in range(1, 14) if n != 7)  # the others exactly once
    assert runs["a"] == 1 and runs["z"] == 1


def test_kill_during_a_delay_waits_only_the_rest(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, "delay")
    proc = sc.spawn("run", block=False)
    client = nf.WorkflowClient(sc.backend())
    status = sc.wait_for(proc, lambda: (s := _status(client, "delay")) and s.state == "waiting" and s, "waiting")
    wake_at = status.wake_at
    assert wake_at is not None
    sc.kill(proc)
    record = sc.backend().get_record("delay", "nap#wake")
    assert record is not None and record.extra["at"] == wake_at

    result = sc.finish()
    assert result == {"state": "completed", "output": 20, "error": None}
    # the new process waited for the deadline stored before the kill, not a fresh 3 s
    waits = [line for line in sc.lines() if line.startswith("wait nap")]
    assert waits[0] == waits[-1] == f"wait nap {wake_at!r}"
    assert sc.backend().get_record("delay", "nap#wake").extra["at"] == wake_at  # type: ignore[union-attr]
    assert sc.runs() == Counter(a=1, b=1)


def test_kill_while_waiting_for_a_signal_then_signal_while_nothing_runs(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, "signal")
    proc = sc.spawn("start", block=False)  # a background run: it keeps waiting, polling the store
    client = nf.WorkflowClient(sc.backend())
    sc.wait_for(proc, lambda: (s := _status(client, "signal")) and s.state == "awaiting_signal", "awaiting_signal")
    assert proc.poll() is None  # still waiting, not parked
    sc.kill(proc)

    # no process runs the instance now: the signal is buffered in the store
    cli = [sys.executable, "-m", "nbflow", "--dir", str(sc.store), "signal", "signal", "approval", '{"by": "ana"}']
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    result = sc.finish()
    assert result == {"state": "completed", "output": {"shipped": {"by": "ana"}}, "error": None}
    assert sc.runs() == Counter(a=1, ship=1)


def test_kill_mid_map_resumes_at_the_items_not_stored(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, "map")
    proc = sc.spawn("run", block=True)
    sc.wait_for(proc, sc.blocked, "item 500 to start")
    backend = sc.backend()

    def stored_items() -> set[int]:
        return {int(k[5:-1]) for k in backend.get_records("map") if k.startswith("item[")}

    # Items before 500 are committed in batches (every 50 ms); a sync map runs items in
    # chunks of up to 64 per thread hop, so the chunk holding item 500 holds back at
    # most 63 finished items. Kill once the rest are durably stored.
    sc.wait_for(proc, lambda: len(stored_items()) >= 500 - 64, "items before 500 to be committed")
    sc.kill(proc)
    stored = stored_items()
    assert max(stored) < 500  # items from 500 on never finished
    runs_before = sc.runs()
    started = {int(k[5:-1]) for k in runs_before if k.startswith("item[")}
    assert len(started) < 2000 and stored <= started

    result = sc.finish()
    assert result["state"] == "completed"
    assert result["output"] == sum(2 * i for i in range(2000))
    runs = sc.runs()
    assert all(runs[f"item[{i}]"] == 1 for i in stored)  # stored work never repeats
    assert all(runs[f"item[{i}]"] >= 1 for i in range(2000))
    again = {i for i in range(2000) if runs[f"item[{i}]"] == 2}
    assert again == started - stored  # exactly the items in flight (or not yet committed)
    assert all(runs[f"item[{i}]"] <= 2 for i in range(2000))
    assert runs["src"] == 1 and runs["total"] == 1


def test_kill_inside_a_child_workflow(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, "child")
    proc = sc.spawn("run", block=True)
    sc.wait_for(proc, sc.blocked, "child/c2 to start")
    sc.kill(proc)
    stored = set(sc.backend().get_records("child"))
    assert {"a", "child/c1"} <= stored and "child/c2" not in stored

    result = sc.finish()
    assert result == {"state": "completed", "output": -17, "error": None}
    assert sc.runs() == Counter({"a": 1, "child/c1": 1, "child/c2": 2, "child/c3": 1, "z": 1})


def _status(client: nf.WorkflowClient, instance_id: str) -> nf.WorkflowStatus | None:
    try:
        return client.status(instance_id)
    except nf.UnknownInstanceError:
        return None
