"""PostgresBackend on a loopback PostgreSQL server (started for the run, fsync on).

1. Per-task durable cost: a chain of trivial tasks run by ``CheckpointingRunner`` on a
   ``PostgresBackend``, against a raw ``INSERT … ON CONFLICT DO UPDATE`` commit of the
   same keys and the same payload bytes (one autocommit statement per task, prepared),
   in the same run on the same server. Both connect before their clock starts (the
   backend opens the two sessions a run uses). Target from the issue: <= 1.5x.
2. PooledWorker throughput: 200 tasks of 50 ms (4 instances x a map of 50) drained by
   1, 2 and 4 ``nbflow --dsn … worker`` processes (one unit at a time each). Workers
   are started and idle before the instances are submitted; the clock runs from the
   submission to the last instance completed. Target: 4 workers >= 3.5x one.

Skipped (a row saying why) when no server can be started here. ``python -m bench
--only postgres``.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbflow as nf
from bench import flows
from bench.core import Config, Row, Timing, round_robin, scaled, speedup_rows, start_workers, stop_workers

NAME = "postgres"
REPO = Path(__file__).resolve().parent.parent
TASK_SECONDS = 0.05


def _nap(i: int) -> int:
    time.sleep(TASK_SECONDS)
    return i


def _items(n: int) -> list[int]:
    return list(range(n))


# the workers import this module (--module bench.postgres) and find this workflow
NAPS = nf.Workflow("pg-naps").then("items", _items).map("nap", _nap, concurrency=8).then("total", sum).build()


def _chain_variant(server: Any, wf: Any, n: int) -> Callable[[], float]:
    from nbflow.store.postgres import PostgresBackend

    counter = iter(range(10**9))

    def run() -> float:
        dsn = server.take_store()
        backend = PostgresBackend(dsn)
        try:
            _connect_outside_the_clock(backend)
            runner = nf.CheckpointingRunner(backend, echo_output=False)
            seconds, status = flows.timed_run(runner, wf, f"chain-{next(counter)}", 0)
        finally:
            backend.close()
            server.give_store(dsn)
        if status.state.value != "completed" or status.output != n:
            raise RuntimeError(f"nbflow postgres chain ended {status.state}: {status.error}")
        return seconds

    return run


def _connect_outside_the_clock(backend: Any) -> None:
    """Open the two sessions a run uses (its lock's and its writes') before the clock
    starts, as the raw variant connects before its clock: a connection costs ~10 ms
    here (password exchange, schema check), which is set-up, not per-task cost."""
    lease = backend.lock("bench-warm-up", "bench")  # holds one session ...
    try:
        backend.list_summaries()  # ... so this opens a second one
    finally:
        lease.release()  # both stay in the backend's pool for the run
    backend.delete_instance("bench-warm-up")


def _raw_variant(server: Any, n: int) -> Callable[[], float]:
    import psycopg

    items = [(f"t{i}", pickle.dumps(i + 1, protocol=5)) for i in range(n)]

    def run() -> float:
        dsn = server.take_store()
        try:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS raw_commits (k text PRIMARY KEY, v bytea NOT NULL)")
                conn.execute("TRUNCATE raw_commits")
                sql = "INSERT INTO raw_commits (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
                t0 = time.perf_counter()
                for key, value in items:
                    conn.execute(sql, (key, value))
                seconds = time.perf_counter() - t0
                conn.execute("DROP TABLE raw_commits")
        finally:
            server.give_store(dsn)
        return seconds

    return run


def _chain_rows(server: Any, cfg: Config, log: Callable[[str], None]) -> list[Row]:
    n = scaled(cfg, 200 if cfg.quick else 1000)
    rounds = cfg.rounds(3, 2)
    log(f"postgres: chain of {n} tasks, {rounds} rounds")
    wf = flows.chain(n)
    timings = round_robin(
        {"nbflow postgres": _chain_variant(server, wf, n), "raw INSERT ON CONFLICT": _raw_variant(server, n)},
        rounds,
        log if cfg.verbose else None,
    )
    us = {name: Timing([s / n * 1e6 for s in t.samples]) for name, t in timings.items()}
    return [
        Row(
            NAME,
            f"{n} tasks: nbflow postgres",
            us["nbflow postgres"].best,
            "µs/task",
            "raw INSERT ON CONFLICT",
            us["raw INSERT ON CONFLICT"].best,
            target="<= 1.5x",
            target_max=1.5,
            spread=us["nbflow postgres"].spread_text(),
            note="durable per-task cost vs one raw upsert commit of the same payload (loopback, fsync on)",
            samples=us["nbflow postgres"].samples,
        )
    ]


def _drain(server: Any, workers: int, instances: int, items: int) -> float:
    """Seconds from submitting ``instances`` to all of them completed, with ``workers``
    worker processes started (and idle) beforehand."""
    from nbflow.store.postgres import PostgresBackend

    dsn = server.take_store()
    cmd = [sys.executable, "-m", "nbflow", "--dsn", dsn, "worker", "--module", "bench.postgres"]
    opts = ["--concurrency", "1", "--poll-interval", "0.05s", "--heartbeat", "5s"]
    try:
        procs = start_workers([*cmd, *opts], workers, REPO)
    except BaseException:
        server.give_store(dsn)
        raise
    try:
        client = nf.WorkflowClient(PostgresBackend(dsn))
        ids = [f"naps-{k}" for k in range(instances)]
        t0 = time.perf_counter()
        for iid in ids:
            client.submit(NAPS, iid, items)
        while True:
            states = [client.backend.list_summaries(workflow="pg-naps")]
            done = [s for s in states[0] if s.state == "completed"]
            if len(done) == instances:
                break
            if any(s.state == "failed" for s in states[0]):
                raise RuntimeError(f"a throughput instance failed: {states}")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        for iid in ids:
            status = client.status(iid)
            assert status.output == sum(range(items)), status
        client.backend.close()  # type: ignore[attr-defined]
        return seconds
    finally:
        stop_workers(procs)
        server.give_store(dsn)


def _pool_rows(server: Any, cfg: Config, log: Callable[[str], None]) -> list[Row]:
    instances, items = 4, max(5, scaled(cfg, 50))
    tasks = instances * items
    seconds: dict[int, float] = {}
    for workers in (1, 2, 4):
        log(f"postgres: {tasks} tasks of {TASK_SECONDS * 1e3:.0f} ms, {workers} worker(s)")
        seconds[workers] = _drain(server, workers, instances, items)
    return speedup_rows(NAME, f"{tasks} tasks of 50 ms", tasks, seconds)


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    """The ``python -m bench --only postgres`` entry."""
    sys.path.insert(0, str(REPO))
    from tests import pg_server

    why = pg_server.unavailable_reason()
    if why:
        return [Row(NAME, "PostgresBackend", None, "", note=f"skipped: {why}")]
    log("postgres: starting a throw-away server (fsync on)")
    server = pg_server.PgServer.start(durable=True)
    try:
        return _chain_rows(server, cfg, log) + _pool_rows(server, cfg, log)
    finally:
        server.stop()
