"""Baselines shared by the benches: raw diskcache writes, a plain Python loop, and
sayiir 1.0 (the Rust-backed peer engine, when it is installed).

sayiir's API, read from ``sayiir/flow.py`` and ``sayiir/executor.py`` (1.0.0):
``Flow(name).then(fn, name=...)``, ``.fork().branch(fn, name=...).join(fn, name=...)``,
``.build()`` → ``Workflow``; ``run_durable_workflow(workflow, instance_id, input,
backend=InMemoryBackend())`` → a status with ``.status`` / ``.output`` /
``.is_completed()``. Its Python runtime runs fork branches one after another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

__all__ = [
    "have_sayiir",
    "np_save_fsync",
    "plain_loop",
    "raw_diskcache_set",
    "sayiir_chain",
    "sayiir_fork",
    "sayiir_run",
    "sayiir_version",
]


def inc(x: int) -> int:
    """The trivial task every chain is made of."""
    return x + 1


def have_sayiir() -> bool:
    try:
        import sayiir  # noqa: F401
    except ImportError:
        return False
    return True


def sayiir_version() -> str | None:
    try:
        import sayiir
    except ImportError:
        return None
    return str(getattr(sayiir, "__version__", "?"))


# -- diskcache -----------------------------------------------------------------------
def raw_diskcache_set(directory: Path, items: list[tuple[str, Any]], **settings: Any) -> float:
    """Seconds to open a fresh ``diskcache.Cache`` in ``directory``, ``set`` every
    (key, value) one call at a time (one SQLite transaction each, like a checkpoint),
    and close it. Opening is inside the clock because nbflow's DiskcacheBackend also
    creates its per-instance cache during the run."""
    t0 = time.perf_counter()
    cache = diskcache.Cache(str(directory), **settings)
    try:
        for key, value in items:
            cache.set(key, value)
    finally:
        cache.close()
    return time.perf_counter() - t0


# -- numpy ----------------------------------------------------------------------------
def np_save_fsync(path: Path, array: Any) -> None:
    """``np.save`` the array to ``path`` and ``fsync`` it: the durable write a checkpoint
    of a large array is measured against."""
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


# -- plain Python ---------------------------------------------------------------------
def plain_loop(fns: list[Callable[[Any], Any]], x: Any) -> tuple[float, Any]:
    """Seconds to call the functions one after another, each on the last output."""
    t0 = time.perf_counter()
    for fn in fns:
        x = fn(x)
    return time.perf_counter() - t0, x


# -- sayiir ---------------------------------------------------------------------------
def sayiir_chain(n: int, fn: Callable[[Any], Any] = inc) -> Any:
    """A built sayiir workflow of ``n`` sequential tasks (ids t0..t{n-1})."""
    import sayiir

    flow = sayiir.Flow(f"chain-{n}")
    for i in range(n):
        flow.then(fn, name=f"t{i}")
    return flow.build()


def sayiir_fork(branches: int, branch_fn: Callable[[Any], Any], join_fn: Callable[[Any], Any]) -> Any:
    """A built sayiir workflow: start → fork of ``branches`` single-task branches → join."""
    import sayiir

    fork = sayiir.Flow(f"fork-{branches}").then(_identity, name="start").fork()
    for i in range(branches):
        fork.branch(branch_fn, name=f"b{i}")
    return fork.join(join_fn, name="join").build()


def sayiir_run(workflow: Any, instance_id: str, input_value: Any) -> tuple[float, Any]:
    """Seconds for ``run_durable_workflow`` on a fresh sayiir ``InMemoryBackend``
    (backend creation outside the clock), and the status it returned."""
    import sayiir

    backend = sayiir.InMemoryBackend()
    t0 = time.perf_counter()
    status = sayiir.run_durable_workflow(workflow, instance_id, input_value, backend=backend)
    elapsed = time.perf_counter() - t0
    if not status.is_completed():
        raise RuntimeError(f"sayiir run {instance_id!r} ended {status.status}: {status.error}")
    return elapsed, status


def _identity(x: Any) -> Any:
    return x
