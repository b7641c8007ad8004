"""16-branch fork: do branches really run side by side, and what does a fork task cost?

1. ``start → 16 branches of time.sleep(0.2) → join``: wall time of nbflow (disk and
   memory stores) and of sayiir (whose Python runtime runs branches one after another)
   against the ideal 0.2 s. Target: nbflow ≤ 0.3 s, i.e. ≤ 1.5× the ideal.
2. The same shape with trivial branches: µs per checkpointed task (18 tasks) against
   raw ``diskcache.Cache.set`` of the same 18 values, and against sayiir.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nbflow as nf
from bench import baselines, flows
from bench.core import Config, Row, Timing, round_robin, scratch_dir

NAME = "fork"
BRANCHES = 16
SLEEP = 0.2


def nap(x: Any) -> Any:
    time.sleep(SLEEP)
    return x


def touch(x: Any) -> Any:
    return x


def gather(parts: dict[str, Any]) -> int:
    return len(parts)


def _nbflow_variant(kind: str, wf: Any, cfg: Config) -> Callable[[], float]:
    counter = iter(range(10**9))

    def run() -> float:
        with scratch_dir(cfg, f"fork-{kind}") as d:
            backend = flows.make_backend(kind, d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False)
                seconds, status = flows.timed_run(runner, wf, f"fork-{next(counter)}", 1)
            finally:
                flows.close_backend(backend)
        if status.state.value != "completed" or status.output != BRANCHES:
            raise RuntimeError(f"nbflow {kind} fork ended {status.state}: {status.error}")
        return seconds

    return run


def _sayiir_variant(wf: Any) -> Callable[[], float]:
    counter = iter(range(10**9))

    def run() -> float:
        seconds, status = baselines.sayiir_run(wf, f"fork-{next(counter)}", 1)
        if status.output != BRANCHES:
            raise RuntimeError(f"sayiir fork output {status.output!r}")
        return seconds

    return run


def _raw_variant(cfg: Config) -> Callable[[], float]:
    items: list[tuple[str, Any]] = [("start", 1)] + [(f"b{i}", 1) for i in range(BRANCHES)] + [("join", BRANCHES)]

    def run() -> float:
        with scratch_dir(cfg, "fork-raw") as d:
            return baselines.raw_diskcache_set(d / "cache", items)

    return run


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    sayiir = baselines.have_sayiir()
    verbose = log if cfg.verbose else None

    # 1. sleeping branches: wall time against the ideal
    rounds = cfg.rounds(3, 1)
    log(f"fork: {BRANCHES} x sleep({SLEEP}), {rounds} rounds")
    wf = flows.fork(BRANCHES, nap, gather, name="fork-sleep")
    variants: dict[str, Callable[[], float]] = {
        "nbflow disk": _nbflow_variant("disk", wf, cfg),
        "nbflow memory": _nbflow_variant("memory", wf, cfg),
    }
    if sayiir:
        variants["sayiir memory"] = _sayiir_variant(baselines.sayiir_fork(BRANCHES, nap, gather))
    timings = round_robin(variants, rounds, verbose)
    for name, t in timings.items():
        target = 1.5 if name.startswith("nbflow") else None
        rows.append(
            Row(
                NAME,
                f"{BRANCHES} x sleep({SLEEP}) fork: {name} wall",
                t.best,
                "s",
                "ideal (one sleep)",
                SLEEP,
                target="<= 1.5x (0.3 s)" if target else None,
                target_max=target,
                spread=t.spread_text(),
                note="" if target else "peer: runs branches serially",
                samples=t.samples,
            )
        )
    if sayiir:
        rows.append(
            Row(
                NAME,
                f"{BRANCHES} x sleep({SLEEP}) fork: nbflow disk wall",
                timings["nbflow disk"].best,
                "s",
                "sayiir memory",
                timings["sayiir memory"].best,
                note="< 1 means nbflow is faster",
            )
        )

    # 2. trivial branches: µs per checkpointed task
    rounds = cfg.rounds(5, 3)
    tasks = BRANCHES + 2
    log(f"fork: {BRANCHES} trivial branches, {rounds} rounds")
    wf = flows.fork(BRANCHES, touch, gather, name="fork-trivial")
    variants = {
        "nbflow disk": _nbflow_variant("disk", wf, cfg),
        "nbflow memory": _nbflow_variant("memory", wf, cfg),
        "raw set": _raw_variant(cfg),
    }
    if sayiir:
        variants["sayiir memory"] = _sayiir_variant(baselines.sayiir_fork(BRANCHES, touch, gather))
    timings = round_robin(variants, rounds, verbose)
    us = {name: Timing([s / tasks * 1e6 for s in t.samples]) for name, t in timings.items()}
    pairs = [("nbflow disk", "raw set", 1.0), ("nbflow memory", "raw set", None)]
    if sayiir:
        pairs.append(("nbflow memory", "sayiir memory", None))
    for name, base, target in pairs:
        rows.append(
            Row(
                NAME,
                f"{BRANCHES}-branch trivial fork: {name}",
                us[name].best,
                "µs/task",
                base,
                us[base].best,
                target=f"<= {target}x" if target else None,
                target_max=target,
                spread=us[name].spread_text(),
                note=f"{tasks} tasks incl. start and join; includes run set-up",
                samples=us[name].samples,
            )
        )
    return rows
