"""nbflow-side helpers: build the benched workflows and run them on a fresh store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbflow as nf
from bench.baselines import inc

__all__ = ["STORES", "chain", "fork", "make_backend", "timed_run"]

STORES = ("disk", "memory")


def chain(n: int, fn: Callable[[Any], Any] = inc, last: Callable[[Any], Any] | None = None, name: str = "chain") -> Any:
    """``n`` sequential tasks t0..t{n-1}; ``last`` replaces the final one if given."""
    builder = nf.Workflow(f"{name}-{n}")
    for i in range(n - 1):
        builder.then(f"t{i}", fn)
    builder.then(f"t{n - 1}", last or fn)
    return builder.build()


def fork(branches: int, branch_fn: Callable[[Any], Any], join_fn: Callable[[Any], Any], name: str = "fork") -> Any:
    """start → ``branches`` single-task branches b0..b{k-1} → join."""
    f = nf.Workflow(f"{name}-{branches}").then("start", _identity).fork()
    for i in range(branches):
        f.branch(f"b{i}", branch_fn)
    return f.join("join", join_fn).build()


def make_backend(kind: str, directory: Path | None) -> Any:
    if kind == "memory":
        return nf.InMemoryBackend()
    if kind == "disk":
        assert directory is not None
        return nf.DiskcacheBackend(directory / "store")
    raise ValueError(kind)


def close_backend(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def timed_run(runner: Any, wf: Any, instance_id: str, input_value: Any, *, resume: bool = False) -> tuple[float, Any]:
    """Seconds for one ``runner.run`` (or ``resume``) call, and its status."""
    t0 = time.perf_counter()
    status = runner.resume(wf, instance_id) if resume else runner.run(wf, instance_id, input_value)
    return time.perf_counter() - t0, status


def _identity(x: Any) -> Any:
    return x
