"""Large output: a 100 MB numpy array checkpointed and restored.

Workflow ``make → consume`` on DiskcacheBackend. ``make`` builds a float64 array of
100 MB; ``consume`` sums it but fails on the first run, so the array is checkpointed by
the run and *restored from disk* by the resume ("the fix" flips a switch). Timed:
run + resume.

Baseline: the same ``make``, then ``np.save`` to a file + ``flush`` + ``os.fsync``,
drop the array, ``np.load`` it back and the same ``consume``.

Targets: the round trip ≤ 1.3× the baseline, the restore (resume) ≤ 1.5× ``np.load``;
peak memory ≤ 2.5× the payload.

Both sides are bound by the disk's write-back, whose speed here swings by 2× from one
moment to the next (dirty pages of an earlier round still being written throttle the
next writer). So every measurement starts after an ``os.sync()``, the two sides
alternate which goes first from round to round, and there are 5 rounds (2 with
``--quick``): the best of each side is compared. Peak memory is
the process's resident-set high-water mark during the measured part minus the RSS just
before it (the array itself counts once). Each measurement runs in its own subprocess
(``python -m bench.large --worker ...``) so the RSS numbers are clean; the high-water
mark is reset through ``/proc/self/clear_refs`` where the kernel allows it, else
``getrusage`` is used (whose peak may include import-time allocations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.baselines import np_save_fsync
from bench.core import Config, Row, Timing, scratch_dir
from bench.fresh_process import run_worker

NAME = "large"
REPO = Path(__file__).resolve().parent.parent
MB = 10**6


# -- memory probes (Linux /proc) --------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS; False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(reset_ok: bool) -> int:
    kb = _status_kb("VmHWM") if reset_ok else None
    if kb is not None:
        return kb * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the two workers (run in a subprocess) -------------------------------------------------
SWITCH = {"broken": True}


def _tasks(nbytes: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    import numpy as np

    count = nbytes // 8

    def make(_: Any) -> Any:
        return np.arange(count, dtype=np.float64)

    def consume(a: Any) -> float:
        if SWITCH["broken"]:
            raise RuntimeError("consume is broken (bench)")
        return float(a.sum())

    return make, consume


def _expected(nbytes: int) -> float:
    count = nbytes // 8
    return float(count * (count - 1) / 2)


def worker_nbflow(nbytes: int, directory: Path) -> dict[str, Any]:
    import nbflow as nf

    make, consume = _tasks(nbytes)
    wf = nf.Workflow("large").then("make", make).then("consume", consume).build()
    SWITCH["broken"] = True
    backend = nf.DiskcacheBackend(directory / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    before = rss_bytes()
    reset_ok = reset_peak()
    t0 = time.perf_counter()
    status = runner.run(wf, "large-1", None)
    t1 = time.perf_counter()
    assert status.state.value == "failed" and status.error is not None and status.error.task_id == "consume", status
    SWITCH["broken"] = False
    after_run = rss_bytes()
    status = runner.resume(wf, "large-1")
    t2 = time.perf_counter()
    peak = peak_bytes(reset_ok)
    assert status.state.value == "completed", status
    assert status.output == _expected(nbytes), status.output
    blobs = sum(p.stat().st_size for p in (directory / "store").rglob("*.bin"))
    return {
        "seconds": t2 - t0,
        "write_s": t1 - t0,
        "read_s": t2 - t1,
        "rss_before": before,
        "rss_after_run": after_run,
        "peak": peak,
        "peak_delta": peak - before,
        "reset_peak": reset_ok,
        "blob_bytes": blobs,
    }


def worker_baseline(nbytes: int, directory: Path) -> dict[str, Any]:
    import numpy as np

    make, consume = _tasks(nbytes)
    SWITCH["broken"] = False
    path = directory / "array.npy"
    before = rss_bytes()
    reset_ok = reset_peak()
    t0 = time.perf_counter()
    a = make(None)
    np_save_fsync(path, a)
    del a
    t1 = time.perf_counter()
    out = consume(np.load(path))
    t2 = time.perf_counter()
    peak = peak_bytes(reset_ok)
    assert out == _expected(nbytes), out
    return {
        "seconds": t2 - t0,
        "write_s": t1 - t0,
        "read_s": t2 - t1,
        "rss_before": before,
        "peak": peak,
        "peak_delta": peak - before,
        "reset_peak": reset_ok,
    }


def _spawn(kind: str, nbytes: int, cfg: Config) -> dict[str, Any]:
    with scratch_dir(cfg, f"large-{kind}") as d:
        args = ["--worker", kind, "--bytes", str(nbytes), "--dir", str(d)]
        return run_worker("bench.large", args, cwd=d)  # a neutral directory, clean RSS


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    nbytes = max(MB, int((20 if cfg.quick else 100) * MB * cfg.scale))
    rounds = cfg.rounds(5, 2)
    log(f"large: {nbytes / MB:.0f} MB array, {rounds} rounds (subprocesses)")
    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "nbflow": []}
    for r in range(rounds):
        for kind in ("baseline", "nbflow") if r % 2 == 0 else ("nbflow", "baseline"):
            os.sync()  # no earlier round's write-back throttles this one
            res = _spawn(kind, nbytes, cfg)
            results[kind].append(res)
            if cfg.verbose:
                log(f"  round {r + 1} {kind}: {json.dumps(res)}")
    nb, base = results["nbflow"], results["baseline"]
    peak_nb = min(x["peak_delta"] for x in nb)
    peak_base = min(x["peak_delta"] for x in base)
    size = f"{nbytes / MB:.0f} MB"
    how = "VmHWM reset" if all(x["reset_peak"] for x in nb) else "getrusage peak"

    def timed(key: str, what: str, baseline: str, **extra: Any) -> Row:
        """The best of the rounds of ``key`` (seconds), nbflow against the baseline."""
        t_nb, t_base = Timing([x[key] for x in nb]), Timing([x[key] for x in base])
        measure = f"{size} array: {what}"
        return Row(
            NAME,
            measure,
            t_nb.best,
            "s",
            baseline,
            t_base.best,
            spread=t_nb.spread_text(),
            samples=t_nb.samples,
            **extra,
        )

    return [
        timed(
            "seconds",
            "checkpoint + restore",
            "np.save+fsync+np.load",
            target="<= 1.3x",
            target_max=1.3,
            note="run (make, fails) + resume (restore, consume)",
        ),
        timed("write_s", "run (make + checkpoint)", "make + np.save + fsync", note="informational split"),
        timed(
            "read_s",
            "resume (restore + consume)",
            "np.load + consume",
            target="<= 1.5x",
            target_max=1.5,
            note="the restore",
        ),
        Row(
            NAME,
            f"{size} array: nbflow peak RSS growth",
            peak_nb / MB,
            "MB",
            "payload",
            nbytes / MB,
            target="<= 2.5x",
            target_max=2.5,
            note=f"{how}; the array itself counts once",
        ),
        Row(
            NAME,
            f"{size} array: baseline peak RSS growth",
            peak_base / MB,
            "MB",
            "payload",
            nbytes / MB,
            note="informational",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description="one large-output measurement (used by `python -m bench`)")
    ap.add_argument("--worker", choices=("nbflow", "baseline"), required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="nbflow-bench-large-"))
    fn = worker_nbflow if args.worker == "nbflow" else worker_baseline
    print(json.dumps(fn(args.bytes, directory)))


if __name__ == "__main__":
    main()
