"""The engine seam: every kind of node has one step in one table, the steps talk to
the engine only through the StepHost, and the engine modules import each other at the
top (no cycle hidden in a function)."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.vocabulary import NodeKind
from nbflow.run import map_step, steps
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.control import RunControl
from nbflow.run.events import EventBus
from nbflow.run.outcomes import NotDue
from nbflow.run.plan import compute_plan
from nbflow.run.scheduler import Scheduler
from nbflow.run.step_host import EngineSettings

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


def _scheduler(
    store: nf.InMemoryBackend, wf: nf.WorkflowDefinition, records: dict[str, Any], **settings: Any
) -> Scheduler:
    return Scheduler(
        wf=wf,
        instance_id="d-1",
        plan=compute_plan(wf, records),
        records=dict(records),
        input_value=1,
        io=CheckpointIO(store, "d-1", nf.PickleCodec()),
        bus=EventBus(),
        control=RunControl(store, "d-1"),
        settings=EngineSettings(None, **settings),
    )


@pytest.mark.parametrize("lag", [True, False])
def test_a_deadline_stored_by_another_worker_is_kept(lag: bool) -> None:
    """A worker's records were read before its claim: a wake-up time another worker
    stored since is looked up, not written anew (which would push the delay back)."""
    wf = nf.Workflow("d").then("a", lambda x: x).delay("nap", 3600).build()
    store = nf.InMemoryBackend()
    client = nf.WorkflowClient(store)
    client.submit(wf, "d-1", 1)
    before = dict(store.get_records("d-1"))  # what the late worker read
    first = _scheduler(store, wf, before, park_on_delay=True, records_may_lag=True)
    a = wf.node("a")
    first.commit(a, 1)
    with pytest.raises(NotDue) as stored:
        asyncio.run(steps.run_delay(first, wf.node("nap")))
    late = _scheduler(store, wf, {**before, "a": store.get_record("d-1", "a")}, park_on_delay=True, records_may_lag=lag)
    with pytest.raises(NotDue) as again:
        asyncio.run(steps.run_delay(late, wf.node("nap")))
    assert (again.value.at == stored.value.at) is lag  # without the look-up the wake-up time moved
