"""PooledWorker processes on one DiskcacheBackend: a SIGKILLed worker's unit is taken
over after its claim expires; no unit commits twice; no instance is left stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest

import nbflow as nf
from nbflow.store.disk import DiskcacheBackend

FLOWS = """
    import os, time, uuid, pathlib
    import nbflow as nf

    MARKS = pathlib.Path(os.environ["POOL_MARKS"])

    def _mark(slow=False):
        ctx = nf.get_task_context()
        token = uuid.uuid4().hex[:10]
        (MARKS / f"{ctx.instance_id}~{ctx.task_id}~{os.getpid()}~{token}").write_text("")
        time.sleep(3.0 if slow else 0.01)
        return token

    def start(x):
        return {"n": x, "tok": _mark()}

    def slow_branch(d):
        return _mark(slow=True)

    def make_branch(i):
        def branch(d):
            return _mark()
        branch.__name__ = f"b{i}"
        return branch

    def join(d):
        _mark()
        return list(range(30))

    def item(i):
        return [i, _mark()]

    def total(xs):
        _mark()
        return sum(x[0] for x in xs)

    fork = nf.Workflow("pool").then(start).fork().branch("b0", slow_branch)
    for i in range(1, 6):
        fork = fork.branch(f"b{i}", make_branch(i))
    pool = fork.join("join", join).map("items", item, concurrency=4).then("total", total).build()
"""

N_INSTANCES = 5
BODIES = ["start", "b0", "b1", "b2", "b3", "b4", "b5", "join", "total"] + [f"items[{i}]" for i in range(30)]


def _load_flows(path: Path, name: str = "pool_flows_test"):  # the same module the workers import
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _marks(marks: Path) -> list[tuple[str, str, int, str]]:
    out = []
    for p in marks.iterdir():
        iid, task, pid, token = p.name.split("~")
        out.append((iid, task, int(pid), token))
    return out


@pytest.mark.slow
def test_four_workers_survive_a_sigkill(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    flows_path = tmp_path / "pool_flows.py"
    flows_path.write_text(textwrap.dedent(FLOWS))
    env = {**os.environ, "POOL_MARKS": str(marks)}
    os.environ["POOL_MARKS"] = str(marks)
    flows = _load_flows(flows_path)
    store_dir = tmp_path / "store"
    store = DiskcacheBackend(store_dir)
    client = nf.WorkflowClient(store)
    for n in range(N_INSTANCES):
        client.submit(flows.pool, f"pool-{n}", n)
    assert len(flows.pool.task_ids) * N_INSTANCES + 30 * N_INSTANCES == 200  # 40 units per instance

    procs = {}
    for w in range(1, 5):
        cmd = [
            sys.executable,
            "-m",
            "nbflow",
            "--dir",
            str(store_dir),
            "worker",
            "--module",
            str(flows_path),
            "--id",
            f"w{w}",
            "--concurrency",
            "2",
            "--claim-ttl",
            "2s",
            "--heartbeat",
            "0.5s",
            "--poll-interval",
            "0.1s",
        ]
        procs[f"w{w}"] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids = {p.pid: name for name, p in procs.items()}
    try:
        victim = None
        deadline = time.time() + 60
        while victim is None and time.time() < deadline:
            for iid, task, pid, _ in _marks(marks):
                if task == "b0" and pid in pids:
                    victim = (iid, pid)
                    break
            time.sleep(0.05)
        assert victim is not None, "no worker started the slow branch"
        victim_iid, victim_pid = victim
        os.kill(victim_pid, signal.SIGKILL)  # mid-task: the slow branch sleeps 3 s
        procs[pids[victim_pid]].wait(10)

        deadline = time.time() + 150
        while time.time() < deadline:
            states = [client.status(f"pool-{n}").state for n in range(N_INSTANCES)]
            if all(s == "completed" for s in states):
                break
            assert not any(s == "failed" for s in states), [client.status(f"pool-{n}") for n in range(N_INSTANCES)]
            time.sleep(0.2)
        else:
            pytest.fail(f"instances stuck: {[client.status(f'pool-{n}') for n in range(N_INSTANCES)]}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # graceful: finish what is in hand, release
        outputs = {name: p.communicate(timeout=30)[0] for name, p in procs.items()}
    for name, p in procs.items():
        if p.pid != victim_pid:
            assert p.returncode == 0, outputs[name]
            assert "stopped" in outputs[name]

    for n in range(N_INSTANCES):
        status = client.status(f"pool-{n}")
        assert status.output == sum(range(30))
        assert store.get_claims(f"pool-{n}") == {}  # every claim was released

    executions = Counter((iid, task) for iid, task, _, _ in _marks(marks))
    by_key: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for iid, task, pid, token in _marks(marks):
        by_key.setdefault((iid, task), []).append((pid, token))
    assert set(executions) == {(f"pool-{n}", t) for n in range(N_INSTANCES) for t in BODIES}
    rerun = {k for k, c in executions.items() if c > 1}
    # only units the killed worker had in hand ran twice; everything else exactly once
    assert (victim_iid, "b0") in rerun
    assert executions[(victim_iid, "b0")] == 2
    for key in rerun:
        assert executions[key] == 2 and victim_pid in [pid for pid, _ in by_key[key]], key

    workers = set()
    for n in range(N_INSTANCES):
        iid = f"pool-{n}"
        records = store.get_records(iid)
        for task in BODIES:
            value = client.get_task_result(iid, task)
            token = value["tok"] if task == "start" else value[1] if task.startswith("items[") else None
            if token is not None:  # the committed output is the one execution that kept its claim
                (pid,) = [p for p, t in by_key[(iid, task)] if t == token]
                assert pid != victim_pid or (iid, task) not in rerun
            workers.add(records[task].worker)
    b0 = store.get_record(victim_iid, "b0")
    assert b0 is not None and b0.worker != pids[victim_pid]  # another worker finished it
    assert client.get_task_result(victim_iid, "b0") in [t for p, t in by_key[(victim_iid, "b0")] if p != victim_pid]
    assert len(workers - {pids[victim_pid]}) >= 2  # the work spread over the live workers


class _CountingStore(DiskcacheBackend):
    commits: ClassVar[Counter[str]] = Counter()

    def commit_claimed(self, instance_id, task_id, token, items, **kw):  # type: ignore[no-untyped-def]
        stored = super().commit_claimed(instance_id, task_id, token, items, **kw)
        if stored is not None:
            type(self).commits[f"{instance_id}/{task_id}"] += 1
        return stored


def test_slow_heartbeat_commits_exactly_one_result(tmp_path: Path) -> None:
    """The slow worker's claim expires while its task runs; the fast worker takes the
    task over. Both executions finish; only one result is committed."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def body(x: int) -> str:
        me = f"run-{time.monotonic_ns()}"
        (marks / me).write_text("")
        if len(list(marks.iterdir())) == 1:  # first execution: outlive the claim until taken over
            end = time.time() + 30
            while len(list(marks.iterdir())) < 2 and time.time() < end:
                time.sleep(0.02)
            return "slow result"
        return "fast result"

    wf = nf.Workflow("hb").then("t", body).then("after", lambda s: s + "!").build()
    _CountingStore.commits.clear()
    nf.WorkflowClient(_CountingStore(tmp_path / "s")).submit(wf, "hb-1", 1)
    slow = nf.PooledWorker(
        "slow", _CountingStore(tmp_path / "s"), [wf], claim_ttl=0.5, heartbeat=60, poll_interval=0.05
    )
    fast = nf.PooledWorker("fast", _CountingStore(tmp_path / "s"), [wf], claim_ttl=30, heartbeat=1, poll_interval=0.05)
    slow_handle = slow.start()
    while not list(marks.iterdir()):
        time.sleep(0.02)
    fast_handle = fast.start(until_idle=True)
    fast_handle.join(60)
    deadline = time.time() + 30
    while slow.stats["lost"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    slow_handle.shutdown(timeout=30)

    store = DiskcacheBackend(tmp_path / "s")
    assert len(list(marks.iterdir())) == 2  # the task ran twice (at-least-once) ...
    assert _CountingStore.commits["hb-1/t"] == 1  # ... and committed once
    assert slow.stats["lost"] == 1
    record = store.get_record("hb-1", "t")
    assert record is not None and record.worker == "fast"
    status = nf.WorkflowClient(store).status("hb-1")
    assert status.state == "completed" and status.output == "fast result!"


def test_graceful_shutdown_finishes_the_unit_in_hand(tmp_path: Path) -> None:
    started = threading.Event()

    def slow(x: int) -> int:
        started.set()
        time.sleep(0.5)
        return x + 1

    wf = nf.Workflow("gs").then("a", slow).then("b", lambda x: x * 10).build()
    store = DiskcacheBackend(tmp_path / "s")
    nf.WorkflowClient(store).submit(wf, "gs-1", 1)
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.05)
    handle = worker.start()
    assert started.wait(10)
    handle.shutdown(timeout=10)  # finish=True: "a" completes and is committed, "b" not claimed
    assert not handle.is_alive()
    assert store.get_record("gs-1", "a") is not None and store.get_record("gs-1", "b") is None
    assert store.get_claims("gs-1") == {}
    nf.PooledWorker("w2", store, [wf], poll_interval=0.05).run(until_idle=True)
    assert nf.WorkflowClient(store).status("gs-1").output == 20
