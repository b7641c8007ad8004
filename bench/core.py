"""Shared bench machinery: configuration, timing, result rows.

Every number the bench prints is a *ratio* against a baseline measured in the same
process and the same run, because the machines are shared and noisy (2 cores). Timings
are never asserted anywhere; ``met`` only says whether the ratio is inside the target
from the issue, for a human to read.

Variants are measured *round-robin* (A, B, C, A, B, C, ...) rather than A-A-A, B-B-B,
so a burst of load from a neighbour hits every variant alike; the best of the rounds
is the reported value and (worst - best) / best is the spread.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "Row",
    "Timing",
    "round_robin",
    "scaled",
    "scratch_dir",
]


@dataclass
class Config:
    """What the command line asked for."""

    quick: bool = False
    scale: float = 1.0  # multiplies task counts / payload sizes (the smoke test uses a tiny one)
    repeats: int | None = None  # override the per-bench default number of rounds
    workdir: Path | None = None  # where scratch stores go (default: a fresh temp dir)
    verbose: bool = False

    def rounds(self, full: int, quick: int) -> int:
        if self.repeats is not None:
            return max(1, self.repeats)
        return quick if self.quick else full


def scaled(cfg: Config, n: int, minimum: int = 10) -> int:
    return max(minimum, round(n * cfg.scale))


@dataclass
class Timing:
    """Seconds for one variant over several rounds."""

    samples: list[float]

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """(worst - best) / best: how noisy the rounds were."""
        return (self.worst - self.best) / self.best if self.best > 0 else 0.0

    def spread_text(self) -> str:
        if len(self.samples) < 2:
            return "n=1"
        return f"+{self.spread * 100:.0f}% (n={len(self.samples)})"


@dataclass
class Row:
    """One line of the results table (and one object in artifacts/bench.json)."""

    bench: str
    measure: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None  # value / baseline_value (or as described in `measure`)
    target: str | None = None  # e.g. "<= 1.5x"
    target_max: float | None = None  # ratio must be <= this for `met`
    met: bool | None = None
    spread: str = ""
    note: str = ""
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value
        if self.met is None and self.target_max is not None and self.ratio is not None:
            self.met = self.ratio <= self.target_max

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def scratch_dir(cfg: Config, prefix: str) -> Iterator[Path]:
    """A fresh directory for one store, removed afterwards (not timed)."""
    base = cfg.workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"nbflow-bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def round_robin(
    variants: dict[str, Callable[[], float]], rounds: int, log: Callable[[str], None] | None = None
) -> dict[str, Timing]:
    """Run each variant once per round, in turn; each returns the seconds it measured
    itself (so its set-up and tear-down stay outside the clock)."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            gc.collect()
            seconds = fn()
            out[name].append(seconds)
            if log is not None:
                log(f"  round {r + 1}/{rounds} {name}: {seconds:.4f} s")
    return {name: Timing(samples) for name, samples in out.items()}


def clock() -> float:
    return time.perf_counter()


def host_info() -> dict[str, Any]:
    import platform
    import sys

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    for mod in ("nbflow", "sayiir", "diskcache", "numpy"):
        try:
            module = __import__(mod)
            info[mod] = getattr(module, "__version__", "?")
        except ImportError:
            info[mod] = None
    return info


def start_workers(command: list[str], count: int, cwd: Path) -> list[subprocess.Popen[str]]:
    """Start ``count`` ``nbflow worker`` processes (``command`` plus ``--id w<i>``) and
    wait until each prints its start line, so their start-up stays outside a clock
    started afterwards. If one does not start, all are stopped and the error raised."""
    procs = [
        subprocess.Popen([*command, "--id", f"w{i}"], cwd=cwd, stdout=subprocess.PIPE, text=True) for i in range(count)
    ]
    try:
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if not line.startswith("worker "):
                raise RuntimeError(f"a worker did not start: {line!r}")
    except BaseException:
        stop_workers(procs)
        raise
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> list[str]:
    """SIGTERM the workers (they finish their units and print their stats); their output."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    return [p.communicate(timeout=60)[0] or "" for p in procs]


def wait_completed(store: Any, instance_ids: list[str], what: str) -> None:
    """Wait until every instance is completed, reading each one's own meta (cheap,
    unlike a listing of instances in progress); a failed one raises."""
    waiting = list(instance_ids)
    while waiting:
        meta = store.load_instance(waiting[0])
        if meta is not None and meta.state == "failed":
            raise RuntimeError(f"a {what} instance failed: {meta}")
        if meta is not None and meta.state == "completed":
            waiting.pop(0)
        else:
            time.sleep(0.01)


def speedup_rows(bench: str, label: str, tasks: int, seconds: dict[int, float]) -> list[Row]:
    """One row per pool size: tasks/s and the speed-up over one worker (``seconds`` by
    worker count, 1 included); the issue's >= 3.5x target on the pool of 4."""
    rows = []
    for workers, spent in seconds.items():
        speedup = seconds[1] / spent
        target = {"target": ">= 3.5x speed-up", "met": speedup >= 3.5} if workers == 4 else {}
        rows.append(
            Row(
                bench,
                f"{label}: PooledWorker x{workers} speed-up",
                tasks / spent,
                "tasks/s",
                "PooledWorker x1",
                tasks / seconds[1],
                ratio=speedup,
                note=f"{spent:.2f} s wall; ideal {workers}x",
                **target,  # type: ignore[arg-type]
            )
        )
    return rows
