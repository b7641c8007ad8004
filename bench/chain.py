"""Sequential chain of trivial tasks: the per-task cost of a checkpoint.

For each size (1,000 and 10,000; ``--quick``: 1,000 and 4,000) the same round-robin
measures:

- ``nbflow disk``   ``CheckpointingRunner(DiskcacheBackend(fresh dir)).run``
- ``nbflow disk, group commit`` the same with ``group_commit=GROUP_WINDOW`` (records of
                    the tasks finishing within the window written in one transaction)
- ``nbflow memory`` ``CheckpointingRunner(InMemoryBackend()).run``
- ``raw set``       a fresh ``diskcache.Cache(dir)`` (default settings) and one
                    ``Cache.set(task_id, output)`` per task: the same keys and values
- ``raw set (nbflow settings)`` the same with the Cache settings nbflow uses
                    (no eviction, no statistics, no tag index): informational
- ``plain loop``    calling the task functions one after another
- ``sayiir``        ``run_durable_workflow`` on sayiir's ``InMemoryBackend``, at 1,000
                    only in the round-robin (it is quadratic in chain length); then
                    separately at 4,000 (and 10,000) while it is predicted to stay under
                    ``SAYIIR_BUDGET`` seconds.

Workflow construction (``build()``) is outside the clock and reported on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nbflow as nf
from bench import baselines, flows
from bench.core import Config, Row, Timing, round_robin, scaled, scratch_dir

NAME = "chain"
SAYIIR_BUDGET = 20.0  # seconds for one sayiir run at a larger size
GROUP_WINDOW = 0.002  # seconds: the group-commit window measured
NBFLOW_SETTINGS = {"eviction_policy": "none", "statistics": 0, "tag_index": 0, "cull_limit": 0}


def sizes(cfg: Config) -> tuple[int, int]:
    small, large = (1000, 4000) if cfg.quick else (1000, 10000)
    return scaled(cfg, small), scaled(cfg, large, minimum=40)


def _nbflow_variant(kind: str, wf: Any, n: int, cfg: Config, group_commit: float = 0.0) -> Callable[[], float]:
    counter = iter(range(10**9))

    def run() -> float:
        instance = f"chain-{n}-{next(counter)}"
        with scratch_dir(cfg, f"chain-{kind}") as d:
            backend = flows.make_backend(kind, d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=group_commit)
                seconds, status = flows.timed_run(runner, wf, instance, 0)
            finally:
                flows.close_backend(backend)
        if status.state.value != "completed" or status.output != n:
            raise RuntimeError(f"nbflow {kind} chain ended {status.state}: {status.error}")
        return seconds

    return run


def _raw_variant(items: list[tuple[str, Any]], cfg: Config, **settings: Any) -> Callable[[], float]:
    def run() -> float:
        with scratch_dir(cfg, "chain-raw") as d:
            return baselines.raw_diskcache_set(d / "cache", items, **settings)

    return run


def _plain_variant(n: int) -> Callable[[], float]:
    fns = [baselines.inc] * n

    def run() -> float:
        seconds, out = baselines.plain_loop(fns, 0)
        assert out == n
        return seconds

    return run


def _sayiir_variant(n: int) -> Callable[[], float]:
    wf = baselines.sayiir_chain(n)
    counter = iter(range(10**9))

    def run() -> float:
        seconds, status = baselines.sayiir_run(wf, f"chain-{n}-{next(counter)}", 0)
        if status.output != n:
            raise RuntimeError(f"sayiir chain output {status.output!r} != {n}")
        return seconds

    return run


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    small, large = sizes(cfg)
    rows: list[Row] = []
    per_task: dict[tuple[str, int], Timing] = {}
    sayiir = baselines.have_sayiir()

    for n, rounds in ((small, cfg.rounds(5, 3)), (large, cfg.rounds(3, 2))):
        log(f"chain: {n} tasks, {rounds} rounds")
        wf, build_s = _build(n)
        items = [(f"t{i}", i + 1) for i in range(n)]
        variants: dict[str, Callable[[], float]] = {
            "nbflow disk": _nbflow_variant("disk", wf, n, cfg),
            "nbflow disk, group commit": _nbflow_variant("disk", wf, n, cfg, GROUP_WINDOW),
            "nbflow memory": _nbflow_variant("memory", wf, n, cfg),
            "raw set": _raw_variant(items, cfg),
            "raw set (nbflow settings)": _raw_variant(items, cfg, **NBFLOW_SETTINGS),
            "plain loop": _plain_variant(n),
        }
        if sayiir and n == small:
            variants["sayiir memory"] = _sayiir_variant(n)
        timings = round_robin(variants, rounds, log if cfg.verbose else None)
        for name, t in timings.items():
            per_task[(name, n)] = Timing([s / n * 1e6 for s in t.samples])  # µs per task
        us = {name: per_task[(name, n)] for name in timings}

        def row(
            name: str, base: str, target: float | None = None, note: str = "", us: dict[str, Timing] = us, n: int = n
        ) -> Row:
            return Row(
                NAME,
                f"{n} tasks: {name}",
                us[name].best,
                "µs/task",
                base,
                us[base].best,
                target=f"<= {target}x" if target is not None else None,
                target_max=target,
                spread=us[name].spread_text(),
                note=note,
                samples=us[name].samples,
            )

        rows.append(row("nbflow disk", "raw set", 1.0, "durable per-task cost vs diskcache.set (one commit per task)"))
        rows.append(
            row(
                "nbflow disk, group commit",
                "raw set",
                0.5,
                f"group_commit={GROUP_WINDOW}: one transaction per {GROUP_WINDOW * 1e3:g} ms window",
            )
        )
        rows.append(row("raw set (nbflow settings)", "raw set", note="informational: Cache settings nbflow uses"))
        rows.append(row("nbflow memory", "plain loop", note="engine overhead vs calling the functions"))
        if "sayiir memory" in us:
            rows.append(row("nbflow memory", "sayiir memory", note="both in memory"))
            rows.append(row("nbflow disk", "sayiir memory", note="nbflow on disk vs sayiir in memory"))
        rows.append(
            Row(NAME, f"{n} tasks: build()", build_s * 1e3, "ms", note="workflow construction, outside the clocks")
        )

    for name, target in (("nbflow disk", 1.2), ("nbflow memory", 1.2), ("raw set", None)):
        a, b = per_task[(name, small)], per_task[(name, large)]
        rows.append(
            Row(
                NAME,
                f"flatness {name}: µs/task at {large} / at {small}",
                b.best,
                "µs/task",
                f"{name} at {small}",
                a.best,
                target=f"<= {target}x" if target else None,
                target_max=target,
                spread=b.spread_text(),
                note="per-task cost must not grow with length" if target else "informational",
            )
        )

    if sayiir:
        rows.extend(_sayiir_scaling(cfg, small, per_task[("sayiir memory", small)], log))
    else:
        rows.append(Row(NAME, "sayiir memory", None, "", note="sayiir not installed: skipped"))
    return rows


def _build(n: int) -> tuple[Any, float]:
    from time import perf_counter

    t0 = perf_counter()
    wf = flows.chain(n)
    return wf, perf_counter() - t0


def _sayiir_scaling(cfg: Config, small: int, at_small: Timing, log: Callable[[str], None]) -> list[Row]:
    """sayiir at 4,000 (and 10,000) tasks while a quadratic extrapolation from the last
    size stays under SAYIIR_BUDGET seconds. Skipped with --quick."""
    rows: list[Row] = []
    if cfg.quick:
        return rows
    last_n, last_s = small, at_small.best * small / 1e6
    for n in (scaled(cfg, 4000, minimum=40), scaled(cfg, 10000, minimum=100)):
        predicted = last_s * (n / last_n) ** 2
        if predicted > SAYIIR_BUDGET:
            rows.append(
                Row(
                    NAME,
                    f"sayiir memory at {n} tasks",
                    None,
                    "",
                    note=f"skipped: predicted {predicted:.0f} s (quadratic)",
                )
            )
            break
        log(f"chain: sayiir at {n} tasks (predicted {predicted:.1f} s)")
        t = round_robin({"sayiir": _sayiir_variant(n)}, 1 if predicted > 5 else 2)["sayiir"]
        us = Timing([s / n * 1e6 for s in t.samples])
        rows.append(
            Row(
                NAME,
                f"flatness sayiir memory: µs/task at {n} / at {small}",
                us.best,
                "µs/task",
                f"sayiir memory at {small}",
                at_small.best,
                spread=us.spread_text(),
                note=f"informational (peer); one run took {t.best:.2f} s",
            )
        )
        last_n, last_s = n, t.best
    return rows
