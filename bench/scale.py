"""Scaling out: CPU-bound fork on processes / Dask, and PooledWorker throughput.

Run with ``python -m bench.scale`` (``--quick`` for a smaller run). Two parts:

1. A fork of 8 branches, each ~1 s of pure-Python work (calibrated on this machine),
   timed in one process run: inline (the default runner: threads share one GIL),
   ``ProcessExecutor(2)``, ``DaskExecutor`` on ``LocalCluster(2 workers, processes)``
   and sayiir 1.0 (its Python runtime runs branches one after another). Pool start-up
   (spawning processes, starting the cluster) is outside the clock for both
   executors and reported separately; the speed-up is against inline.
2. PooledWorker throughput: 2,000 trivial map items (10 instances x 200) on one
   ``DiskcacheBackend``, drained by 1, 2 and 4 ``nbflow worker`` processes, against
   the single-process runner running the same 10 instances one after another. The
   workers are started and idle before the instances are submitted, and the clock
   runs from the submission to the last instance completed (as in bench/postgres.py):
   a worker process's start-up (~0.2-0.4 s of imports here) is paid once per worker,
   not per task, and would otherwise be most of what this row measures. The start-up
   is reported beside it, and so are the workers' CPU time per task over the same
   span (Linux: from /proc, so a busy shared machine does not hide it the way wall
   time does) and the claims the store refused them (each a wasted write transaction).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbflow as nf

BRANCHES = 8


def burn(n: int) -> int:
    """Pure-Python CPU work (holds the GIL)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def calibrate(seconds: float = 1.0) -> int:
    n = 200_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        dt = time.perf_counter() - t0
        if dt > 0.2:
            return int(n * seconds / dt)
        n *= 2


def _branch(i: int) -> Any:
    def body(n: int) -> int:
        return burn(n) + i

    body.__name__ = f"b{i}"
    return body


def _identity(x: Any) -> Any:
    return x


def _total(d: dict[str, int]) -> int:
    return sum(d.values())


def cpu_fork() -> nf.WorkflowDefinition:
    fork = nf.Workflow("cpu-fork").then("start", _identity).fork()
    for i in range(BRANCHES):
        fork = fork.branch(f"b{i}", _branch(i))
    return fork.join("join", _total).build()


def _time_run(runner: nf.CheckpointingRunner, wf: nf.WorkflowDefinition, n: int, iid: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    status = runner.run(wf, iid, n)
    elapsed = time.perf_counter() - t0
    assert status.state == "completed", status
    return elapsed, status.output


def bench_cpu(n: int) -> dict[str, Any]:
    wf = cpu_fork()
    out: dict[str, Any] = {"branches": BRANCHES, "iterations_per_branch": n, "cores": os.cpu_count()}
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    out["inline_s"], expected = _time_run(runner, wf, n, "inline")

    ex = nf.ProcessExecutor(max_workers=2)
    t0 = time.perf_counter()
    _time_run(
        nf.CheckpointingRunner(nf.InMemoryBackend(), executor=ex, echo_output=False),
        nf.Workflow("warm").then(_identity).build(),
        1,
        "warm",
    )
    out["process_startup_s"] = time.perf_counter() - t0
    out["process_s"], got = _time_run(
        nf.CheckpointingRunner(nf.InMemoryBackend(), executor=ex, echo_output=False), wf, n, "proc"
    )
    ex.shutdown()
    assert got == expected

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        out["dask_s"] = None
    else:
        t0 = time.perf_counter()
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            client.submit(_identity, 1, pure=False).result()
            out["dask_startup_s"] = time.perf_counter() - t0
            runner = nf.CheckpointingRunner(nf.InMemoryBackend(), executor=nf.DaskExecutor(client), echo_output=False)
            out["dask_s"], got = _time_run(runner, wf, n, "dask")
        assert got == expected

    try:
        from bench.baselines import have_sayiir, sayiir_fork, sayiir_run, sayiir_version
    except ImportError:
        have_sayiir = lambda: False  # noqa: E731
    if have_sayiir():
        branch_fns = [_branch(i) for i in range(BRANCHES)]
        # sayiir_fork gives every branch one function: use a single burner (same work)
        swf = sayiir_fork(BRANCHES, branch_fns[0], lambda d: d)
        out["sayiir_s"], _ = sayiir_run(swf, "sayiir", n)
        out["sayiir_version"] = sayiir_version()
    else:
        out["sayiir_s"] = None
    for key in ("process", "dask", "sayiir"):
        value = out.get(f"{key}_s")
        out[f"{key}_speedup"] = round(out["inline_s"] / value, 2) if value else None
    return out


# -- worker-pool throughput ------------------------------------------------------------
ITEMS = 200
INSTANCES = 10


def _items(n: int) -> list[int]:
    return list(range(n))


def _inc(i: int) -> int:
    return i + 1


THROUGHPUT = nf.Workflow("throughput").then("items", _items).map("work", _inc, concurrency=8).then("total", sum).build()


def _submit(directory: Path, instances: int, items: int) -> nf.DiskcacheBackend:
    """A store holding the throughput instances, submitted (for profiling a worker)."""
    store = nf.DiskcacheBackend(directory)
    client = nf.WorkflowClient(store)
    for k in range(instances):
        client.submit(THROUGHPUT, f"t-{k}", items)
    return store


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(directory: Path, workers: int, instances: int, items: int) -> tuple[float, float, dict[str, Any]]:
    """(seconds from submitting the instances to all of them completed, seconds the
    ``workers`` worker processes took to start and say they are up, and what the
    workers report: CPU seconds over that span, units run, claims refused)."""
    store = nf.DiskcacheBackend(directory)
    cmd = [sys.executable, "-m", "nbflow", "--dir", str(directory), "worker", "--module", "bench.scale"]
    opts = ["--concurrency", "4", "--poll-interval", "0.05s"]
    here = Path(__file__).resolve().parents[1]
    from bench.core import start_workers, stop_workers, wait_completed

    t0 = time.perf_counter()
    procs = start_workers([*cmd, *opts], workers, here)
    startup = time.perf_counter() - t0
    try:
        client = nf.WorkflowClient(store)
        cpu0 = [_cpu_seconds(p.pid) for p in procs]
        t0 = time.perf_counter()
        for k in range(instances):
            client.submit(THROUGHPUT, f"t-{k}", items)
        wait_completed(store, [f"t-{k}" for k in range(instances)], "throughput")
        elapsed = time.perf_counter() - t0
        cpu1 = [_cpu_seconds(p.pid) for p in procs]
        done = [client.status(f"t-{k}") for k in range(instances)]
        assert all(s.state == "completed" and s.output == sum(range(1, items + 1)) for s in done), done
        spent = [b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None]
        report: dict[str, Any] = {"cpu_s": round(sum(spent), 3) if len(spent) == workers else None}
    finally:
        outputs = stop_workers(procs)
    for key in ("units", "refused"):
        report[key] = 0
    for out in outputs:  # each worker's last line: "worker NAME stopped: {stats}"
        stats = ast.literal_eval(out.rsplit("stopped: ", 1)[1].strip()) if "stopped: " in out else {}
        for key in ("units", "refused"):
            report[key] += int(stats.get(key, 0))
    return elapsed, startup, report


def bench_pool(instances: int, items: int, workers: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    tasks = instances * items
    out: dict[str, Any] = {"tasks": tasks, "instances": instances}
    root = Path(tempfile.mkdtemp(prefix="nbflow-scale-"))
    try:
        store = nf.DiskcacheBackend(root / "single")
        runner = nf.CheckpointingRunner(store, echo_output=False)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for k in range(instances):
            assert runner.run(THROUGHPUT, f"t-{k}", items).state == "completed"
        out["single_process_runner_tasks_per_s"] = round(tasks / (time.perf_counter() - t0), 1)
        out["single_process_runner_cpu_us_per_task"] = round((time.process_time() - cpu0) / tasks * 1e6, 1)

        for n in workers:
            elapsed, startup, report = _drain(root / f"pool-{n}", n, instances, items)
            out[f"pool_{n}_workers_tasks_per_s"] = round(tasks / elapsed, 1)
            out[f"pool_{n}_workers_s"] = round(elapsed, 2)
            out[f"pool_{n}_workers_startup_s"] = round(startup, 2)
            cpu = report["cpu_s"]
            out[f"pool_{n}_workers_cpu_us_per_task"] = None if cpu is None else round(cpu / tasks * 1e6, 1)
            out[f"pool_{n}_workers_units"] = report["units"]
            out[f"pool_{n}_workers_refused_claims"] = report["refused"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def run(cfg: Any, log: Any) -> list[Any]:
    """The ``python -m bench --only scale`` entry: the same measures as table rows.

    A speed-up target of >= 1.7x is expressed as executor wall / inline wall <= 0.59."""
    from bench.core import Row

    quick = bool(getattr(cfg, "quick", False))
    log("scale: calibrating the CPU burner")
    n = calibrate(0.2 if quick else 1.0)
    log(f"scale: CPU fork of {BRANCHES} branches")
    cpu = bench_cpu(n)
    rows = [Row("scale", f"CPU fork {BRANCHES} branches: inline (threads)", cpu["inline_s"], "s")]
    for key, label in (
        ("process", "ProcessExecutor(2)"),
        ("dask", "DaskExecutor(LocalCluster 2)"),
        ("sayiir", "sayiir 1.0"),
    ):
        value = cpu.get(f"{key}_s")
        if value is None:
            rows.append(Row("scale", f"CPU fork: {label}", None, "s", note="skipped: not installed"))
            continue
        target = {"target": "<= 0.59x (speed-up >= 1.7x)", "target_max": 0.59} if key != "sayiir" else {}
        rows.append(
            Row(
                "scale",
                f"CPU fork: {label} wall / inline wall",
                value,
                "s",
                baseline="inline",
                baseline_value=cpu["inline_s"],
                note=f"speed-up {cpu[f'{key}_speedup']}x",
                **target,
            )
        )
    log("scale: worker pool throughput")
    pool = bench_pool(4 if quick else INSTANCES, 100 if quick else ITEMS)
    single = pool["single_process_runner_tasks_per_s"]
    rows.append(Row("scale", f"{pool['tasks']} trivial tasks: single-process runner", single, "tasks/s"))
    for w in (1, 2, 4):
        value = pool.get(f"pool_{w}_workers_tasks_per_s")
        if value is not None:
            rows.append(
                Row(
                    "scale",
                    f"{pool['tasks']} trivial tasks: PooledWorker x{w}",
                    value,
                    "tasks/s",
                    baseline="single-process runner",
                    baseline_value=single,
                    note=(
                        f"clock from submission, workers up (their start-up, {pool[f'pool_{w}_workers_startup_s']} s,"
                        f" outside it); CPU {pool[f'pool_{w}_workers_cpu_us_per_task']} us/task"
                        f" (runner {pool['single_process_runner_cpu_us_per_task']});"
                        f" {pool[f'pool_{w}_workers_refused_claims']} refused claims"
                        f" for {pool[f'pool_{w}_workers_units']} units"
                    ),
                    **({"target": ">= 0.8x", "met": value / single >= 0.8} if w == 2 else {}),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~0.2 s branches and 400 pool tasks")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    n = calibrate(0.2 if args.quick else 1.0)
    cpu = bench_cpu(n)
    pool = bench_pool(4 if args.quick else INSTANCES, 100 if args.quick else ITEMS)
    result = {"cpu_fork": cpu, "worker_pool": pool}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"CPU-bound fork: {BRANCHES} branches x ~{1.0 if not args.quick else 0.2:.1f} s, {cpu['cores']} cores")
    for key, label in (
        ("inline", "inline (threads)"),
        ("process", "ProcessExecutor(2)"),
        ("dask", "DaskExecutor(LocalCluster 2)"),
        ("sayiir", "sayiir"),
    ):
        value = cpu.get(f"{key}_s")
        speed = cpu.get(f"{key}_speedup")
        extra = f"  speed-up {speed:.2f}x" if speed else ""
        print(f"  {label:<30} {value:7.2f} s{extra}" if value is not None else f"  {label:<30}   n/a")
    print(
        f"  (start-up outside the clock: processes {cpu['process_startup_s']:.2f} s, cluster {cpu.get('dask_startup_s', 0):.2f} s)"
    )
    print(f"Worker pool: {pool['tasks']} trivial tasks over {pool['instances']} instances")
    print(f"  single-process runner          {pool['single_process_runner_tasks_per_s']:8.1f} tasks/s")
    for n in (1, 2, 4):
        if f"pool_{n}_workers_tasks_per_s" in pool:
            print(
                f"  PooledWorker x{n} (processes)    {pool[f'pool_{n}_workers_tasks_per_s']:8.1f} tasks/s"
                f"  (start-up {pool[f'pool_{n}_workers_startup_s']:.2f} s, outside the clock;"
                f" CPU {pool[f'pool_{n}_workers_cpu_us_per_task']} us/task;"
                f" {pool[f'pool_{n}_workers_refused_claims']} refused claims)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
