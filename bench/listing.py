"""Listing a store: ``nbflow list`` and ``WorkflowClient.list_instances`` read the store
index, so their cost must stay flat per instance as the store grows.

For stores of 20, 200 and 2,000 small finished instances (``--quick``: 20, 100, 500),
made by a process that has exited (so no handle is warm):

- ``list_instances``  ``WorkflowClient(DiskcacheBackend(dir)).list_instances()`` in a
                      fresh backend, per instance; flatness = per-instance cost at the
                      largest store / at 20
- ``full read``       what listing cost before the index: every instance's meta and
                      records read (``list_instances`` + ``get_records``), per instance
- ``nbflow list``     the command in a new process, wall clock, against a 0.5 s budget;
                      its note splits off the floor any command pays: the interpreter
                      starting (``python -c pass``) and importing nbflow's CLI

The command processes run with their bytecode cached, as an installed nbflow's are:
a private ``PYTHONPYCACHEPREFIX`` in the scratch folder, filled by an unmeasured first
run (with ``PYTHONDONTWRITEBYTECODE`` set and a source just edited, every such process
would compile it again: tens of ms that no user pays).

The first listing after the writer exited may read instances whose write-ahead log
was folded in at close; the measured rounds are the ones after it (a user lists more
than once), and the first one is reported on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.core import Config, Row, Timing, round_robin, scratch_dir

NAME = "listing"
BUDGET_S = 0.5

_MAKE = """
import sys
from nbflow.store.base import CheckpointRecord, InstanceMeta
from nbflow.store.disk import DiskcacheBackend
backend = DiskcacheBackend(sys.argv[1])
for i in range(int(sys.argv[2])):
    meta = InstanceMeta(f"run-{i:05d}", "daily" if i % 2 else "weekly", "h", shape=("load|task", "fit|task"), tasks_total=2)
    backend.save_instance(meta)
    for task in ("load", "fit"):
        sink = backend.new_sink(meta.instance_id)
        sink.write(b"x" * 64)
        backend.put_records(meta.instance_id, [(CheckpointRecord(task, "f", "pickle"), sink)])
    meta.state = "completed"
    backend.save_instance(meta)
backend.close()
"""


def sizes(cfg: Config) -> tuple[int, ...]:
    return (20, 100, 500) if cfg.quick else (20, 200, 2000)


def _make_store(directory: Path, n: int) -> None:
    subprocess.run([sys.executable, "-c", _MAKE, str(directory), str(n)], check=True)


def _client_list(directory: Path, n: int) -> Callable[[], float]:
    from nbflow import DiskcacheBackend, WorkflowClient

    def run() -> float:
        backend = DiskcacheBackend(directory)
        t = time.perf_counter()
        rows = WorkflowClient(backend).list_instances()
        seconds = time.perf_counter() - t
        backend.close()
        if len(rows) != n:
            raise RuntimeError(f"listed {len(rows)} of {n} instances")
        return seconds

    return run


def _full_read(directory: Path, n: int) -> Callable[[], float]:
    from nbflow import DiskcacheBackend

    def run() -> float:
        backend = DiskcacheBackend(directory)
        t = time.perf_counter()
        metas = backend.list_instances()
        for meta in metas:
            backend.get_records(meta.instance_id)
        seconds = time.perf_counter() - t
        backend.close()
        if len(metas) != n:
            raise RuntimeError(f"read {len(metas)} of {n} instances")
        return seconds

    return run


def _command(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        return time.perf_counter() - t

    return run


def _cached_bytecode_env(root: Path) -> dict[str, str]:
    """The environment of a process whose imports read cached bytecode (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    per_instance: dict[int, Timing] = {}
    with scratch_dir(cfg, "listing") as root:
        for n in sizes(cfg):
            store = root / f"store-{n}"
            log(f"listing: making {n} instances")
            _make_store(store, n)
            first = _client_list(store, n)()
            variants: dict[str, Callable[[], float]] = {
                "list_instances": _client_list(store, n),
                "full read": _full_read(store, n),
            }
            if n == max(sizes(cfg)):
                env = _cached_bytecode_env(root)
                variants["nbflow list"] = _command(
                    [sys.executable, "-m", "nbflow.cli", "--dir", str(store), "list"], env
                )
                variants["import only"] = _command([sys.executable, "-c", "import nbflow.cli"], env)
                variants["interpreter"] = _command([sys.executable, "-c", "pass"], env)
                variants["nbflow list"]()  # fills the bytecode cache; not measured
            timings = round_robin(variants, cfg.rounds(5, 3), log if cfg.verbose else None)
            us = {
                k: Timing([s / n * 1e6 for s in t.samples])
                for k, t in timings.items()
                if k not in ("nbflow list", "import only", "interpreter")
            }
            per_instance[n] = us["list_instances"]
            rows.append(
                Row(
                    NAME,
                    f"{n} instances: list_instances",
                    us["list_instances"].median,
                    "µs/instance",
                    "full read",
                    us["full read"].median,
                    spread=us["list_instances"].spread_text(),
                    note=f"first listing after the writer exited: {first / n * 1e6:.0f} µs/instance",
                    samples=us["list_instances"].samples,
                )
            )
            if "nbflow list" in timings:
                cmd, floor, bare = timings["nbflow list"], timings["import only"], timings["interpreter"]
                rows.append(
                    Row(
                        NAME,
                        f"{n} instances: nbflow list (new process)",
                        cmd.median,
                        "s",
                        f"budget {BUDGET_S} s",
                        BUDGET_S,
                        target="<= 1.0x",
                        target_max=1.0,
                        spread=cmd.spread_text(),
                        note=f"of which interpreter start {bare.median:.3f} s, + imports {floor.median:.3f} s",
                        samples=cmd.samples,
                    )
                )
        small, large = min(per_instance), max(per_instance)
        rows.append(
            Row(
                NAME,
                f"flatness: µs/instance at {large} / at {small}",
                per_instance[large].median,
                "µs/instance",
                f"list_instances at {small}",
                per_instance[small].median,
                target="<= 1.2x",
                target_max=1.2,
                note="per-instance listing cost must not grow with the store",
            )
        )
    return rows
