"""The engine seam: every kind of node has one step in one table, the steps talk to
the engine only through the StepHost, and the engine modules import each other at the
top (no cycle hidden in a function)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.core.vocabulary import NodeKind
from nbflow.run import map_step, steps

RUN = Path(steps.__file__).parent
ENGINE = ["scheduler.py", "steps.py", "map_step.py", "step_host.py", "outcomes.py", "worker.py", "client.py"]
ENGINE += ["runner.py", "instances.py", "lifecycle.py"]
LAZY = {("runner.py", "nbflow.store.disk")}  # the default store, made only when none is given


def test_every_kind_of_node_has_its_step() -> None:
    assert set(steps.STEPS) == set(NodeKind)
    assert steps.STEPS[NodeKind.MAP] is map_step.run_map


@pytest.mark.parametrize("name", ENGINE)
def test_engine_modules_import_at_the_top(name: str) -> None:
    tree = ast.parse((RUN / name).read_text())
    inner = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (name, node.module) not in LAZY:
                    inner.append(f"{func.name}: from {node.module} import ...")
                elif isinstance(node, ast.Import):
                    inner.append(f"{func.name}: import {', '.join(a.name for a in node.names)}")
    assert inner == []


@pytest.mark.parametrize("first", ["steps", "map_step", "scheduler", "worker", "client", "runner", "outcomes"])
def test_any_engine_module_imports_first(first: str) -> None:
    code = f"import nbflow.run.{first}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_map_runs_the_same_in_a_worker_pool_and_in_one_process() -> None:
    """One map step serves both: items, chunks and the final record, in a pool too."""

    def square(i: int) -> int:
        print("item", i)
        return i * i

    wf = nf.Workflow("sq").then("mk", lambda n: list(range(n))).map("sq", square, concurrency=4).build()
    alone_store = nf.InMemoryBackend()
    alone = nf.CheckpointingRunner(alone_store, echo_output=False).run(wf, "i", 100)
    store = nf.InMemoryBackend()
    client = nf.WorkflowClient(store)
    client.submit(wf, "i", 100)
    workers = [nf.PooledWorker(f"w{n}", store, [wf], poll_interval=0.02, concurrency=2) for n in range(2)]
    handles = [w.start(until_idle=True) for w in workers]
    for handle in handles:
        handle.join(60)
    assert client.status("i").output == alone.output == [i * i for i in range(100)]
    records = store.get_records("i")
    assert [records[f"sq[{i}]"].stdout for i in range(100)] == [f"item {i}\n" for i in range(100)]
    assert {records[f"sq[{i}]"].worker for i in range(100)} <= {"w0", "w1"}
    # an item record's finish time is its version, which a claim compares: never unset
    assert all(records[f"sq[{i}]"].finished_at >= records[f"sq[{i}]"].started_at > 0 for i in range(100))
    one = alone_store.get_records("i")
    assert all(one[f"sq[{i}]"].finished_at >= one[f"sq[{i}]"].started_at > 0 for i in range(100))
    assert any(":" in key for key in records if key.startswith("sq["))  # chunk markers: chunks ran
