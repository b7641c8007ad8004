"""Map of 10,000 trivial items (issue 4): items/s with every item checkpointed.

``Workflow.then("items", range→list).map("square", fn, concurrency=8)`` on
DiskcacheBackend and InMemoryBackend, against, in the same round-robin:

- ``raw set``: a fresh ``diskcache.Cache`` and one ``set`` per item result (the
  durable floor with one transaction per item);
- ``sayiir loop``: sayiir has no map; its nearest durable equivalent is a
  ``Flow.loop`` whose body handles one item per iteration (each iteration is
  checkpointed). The loop state carries (index, last result) only, so its payload
  does not grow. Measured at 1,000 items and scaled up while predicted under budget.

Target: at least 5,000 checkpointed items/s on DiskcacheBackend. Batched commits are
fair as long as a kill -9 never loses an item reported done (tested elsewhere).
Skipped when this nbflow has no ``Workflow.map``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nbflow as nf
from bench import baselines, flows
from bench.core import Config, Row, Timing, round_robin, scaled, scratch_dir

NAME = "map"
SAYIIR_BUDGET = 20.0


def square(x: int) -> int:
    return x * x


def items(n: int) -> list[int]:
    return list(range(n))


def available() -> bool:
    return hasattr(nf.Workflow, "map")


def _nbflow_variant(kind: str, wf: Any, n: int, cfg: Config) -> Callable[[], float]:
    counter = iter(range(10**9))
    expected = sum(i * i for i in range(n))

    def run() -> float:
        with scratch_dir(cfg, f"map-{kind}") as d:
            backend = flows.make_backend(kind, d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False)
                seconds, status = flows.timed_run(runner, wf, f"map-{n}-{next(counter)}", n)
            finally:
                flows.close_backend(backend)
        if status.state.value != "completed" or len(status.output) != n or sum(status.output) != expected:
            raise RuntimeError(f"nbflow {kind} map ended {status.state}: {status.error}")
        return seconds

    return run


def _raw_variant(n: int, cfg: Config) -> Callable[[], float]:
    pairs = [(f"square:{i}", i * i) for i in range(n)]

    def run() -> float:
        with scratch_dir(cfg, "map-raw") as d:
            return baselines.raw_diskcache_set(d / "cache", pairs)

    return run


def _sayiir_loop(n: int) -> Any:
    import sayiir

    def body(state: Any) -> Any:
        i, _ = state
        out = square(i)
        return sayiir.LoopResult.done((i + 1, out)) if i + 1 >= n else sayiir.LoopResult.again((i + 1, out))

    return sayiir.Flow(f"loop-{n}").loop(body, max_iterations=n + 1, name="square").build()


def _sayiir_variant(n: int) -> Callable[[], float]:
    wf = _sayiir_loop(n)
    counter = iter(range(10**9))

    def run() -> float:
        seconds, status = baselines.sayiir_run(wf, f"loop-{n}-{next(counter)}", (0, None))
        out = status.output
        if list(out) != [n, (n - 1) ** 2]:
            raise RuntimeError(f"sayiir loop output {out!r}")
        return seconds

    return run


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    if not available():
        return [Row(NAME, "map", None, "", note="skipped: this nbflow has no Workflow.map")]
    n = scaled(cfg, 2000 if cfg.quick else 10000, minimum=20)
    rounds = cfg.rounds(3, 2)
    log(f"map: {n} items, {rounds} rounds")
    wf = nf.Workflow(f"map-{n}").then("items", items).map("square", square, concurrency=8).build()
    variants = {
        "nbflow disk": _nbflow_variant("disk", wf, n, cfg),
        "nbflow memory": _nbflow_variant("memory", wf, n, cfg),
        "raw set": _raw_variant(n, cfg),
    }
    timings = round_robin(variants, rounds, log if cfg.verbose else None)
    rate = {name: Timing([n / s for s in t.samples]) for name, t in timings.items()}
    us = {name: Timing([s / n * 1e6 for s in t.samples]) for name, t in timings.items()}
    disk_rate = max(rate["nbflow disk"].samples)
    rows = [
        Row(
            NAME,
            f"{n}-item map: nbflow disk throughput",
            disk_rate,
            "items/s",
            "target floor",
            5000.0,
            ratio=disk_rate / 5000.0,
            target=">= 5,000 items/s",
            met=disk_rate >= 5000.0,
            spread=us["nbflow disk"].spread_text(),
            note="ratio = items/s / 5,000 (higher is better)",
        ),
        Row(
            NAME,
            f"{n}-item map: nbflow disk",
            us["nbflow disk"].best,
            "µs/item",
            "raw set",
            us["raw set"].best,
            spread=us["nbflow disk"].spread_text(),
            note="one diskcache.set per item result; < 1 means batching pays",
            samples=us["nbflow disk"].samples,
        ),
        Row(
            NAME,
            f"{n}-item map: nbflow memory",
            us["nbflow memory"].best,
            "µs/item",
            "raw set",
            us["raw set"].best,
            spread=us["nbflow memory"].spread_text(),
            samples=us["nbflow memory"].samples,
        ),
    ]
    if baselines.have_sayiir():
        rows.extend(_sayiir_rows(cfg, n, us["nbflow disk"], log))
    return rows


def _sayiir_rows(cfg: Config, n: int, nb_disk: Timing, log: Callable[[str], None]) -> list[Row]:
    size = min(n, scaled(cfg, 1000, minimum=20))
    t = round_robin({"sayiir": _sayiir_variant(size)}, 1)["sayiir"]
    if size < n:
        predicted = t.best * (n / size) ** 2  # assume the worst (quadratic, like its chains)
        if predicted <= SAYIIR_BUDGET and not cfg.quick:
            log(f"map: sayiir loop at {n} (predicted <= {predicted:.1f} s)")
            size, t = n, round_robin({"sayiir": _sayiir_variant(n)}, 1)["sayiir"]
    us = t.best / size * 1e6
    return [
        Row(
            NAME,
            f"{n}-item map: nbflow disk",
            nb_disk.best,
            "µs/item",
            f"sayiir loop (memory) at {size}",
            us,
            note="sayiir has no map: a loop, one item per checkpointed iteration",
        ),
    ]
