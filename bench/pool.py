"""PooledWorker on the default store: 200 tasks of 50 ms drained by 1, 2 and 4 workers.

Four instances, each a map of 50 items that sleep 50 ms, on one ``DiskcacheBackend``,
drained by 1, 2 and 4 ``nbflow --dir … worker`` processes (one unit at a time each).
The workers are started and idle before the instances are submitted; the clock runs
from the submission to the last instance completed, so a worker's start-up (imports,
~0.3 s) stays outside it. The speed-up of 4 workers over one is the issue's target
(>= 3.5x); the tasks sleep, so it measures how well the pool shares out work, not
CPU. The same measure on PostgreSQL is in ``bench/postgres.py``.

``python -m bench --only pool``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbflow as nf
from bench.core import Config, Row, scaled, scratch_dir, speedup_rows, start_workers, stop_workers, wait_completed

NAME = "pool"
REPO = Path(__file__).resolve().parent.parent
TASK_SECONDS = 0.05
WORKERS = (1, 2, 4)


def _nap(i: int) -> int:
    time.sleep(TASK_SECONDS)
    return i


def _items(n: int) -> list[int]:
    return list(range(n))


# the workers import this module (--module bench.pool) and find this workflow
NAPS = nf.Workflow("disk-naps").then("items", _items).map("nap", _nap, concurrency=8).then("total", sum).build()


def drain(directory: Path, workers: int, instances: int, items: int) -> float:
    """Seconds from submitting ``instances`` to all of them completed, with ``workers``
    worker processes started (and idle) beforehand."""
    cmd = [sys.executable, "-m", "nbflow", "--dir", str(directory), "worker", "--module", "bench.pool"]
    opts = ["--concurrency", "1", "--poll-interval", "0.05s", "--heartbeat", "5s"]
    store = nf.DiskcacheBackend(directory)
    procs = start_workers([*cmd, *opts], workers, REPO)
    try:
        client = nf.WorkflowClient(store)
        ids = [f"naps-{k}" for k in range(instances)]
        t0 = time.perf_counter()
        for iid in ids:
            client.submit(NAPS, iid, items)
        wait_completed(store, ids, "nap")
        seconds = time.perf_counter() - t0
        for iid in ids:
            status = client.status(iid)
            if status.output != sum(range(items)):
                raise RuntimeError(f"instance {iid} ended with {status.output!r}: {status}")
        return seconds
    finally:
        stop_workers(procs)
        store.close()


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    """The ``python -m bench --only pool`` entry."""
    instances, items = 4, max(5, scaled(cfg, 50))
    tasks = instances * items
    seconds: dict[int, float] = {}
    for workers in WORKERS:
        log(f"pool: {tasks} tasks of {TASK_SECONDS * 1e3:.0f} ms, {workers} worker(s)")
        with scratch_dir(cfg, f"pool-{workers}") as directory:
            seconds[workers] = drain(directory, workers, instances, items)
    return speedup_rows(NAME, f"{tasks} tasks of 50 ms on disk", tasks, seconds)
