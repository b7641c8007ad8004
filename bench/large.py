"""Large output: a 100 MB numpy array checkpointed and restored.

Workflow ``make → consume`` on DiskcacheBackend. ``make`` builds a float64 array of
100 MB; ``consume`` sums it but fails on the first run, so the array is checkpointed by
the run and *restored from disk* by the resume ("the fix" flips a switch). Timed:
run + resume.

Baseline: the same ``make``, then ``np.save`` to a file + ``flush`` + ``os.fsync``,
drop the array, ``np.load`` it back and the same ``consume``.

Targets: nbflow time ≤ 2× the baseline; peak memory ≤ 2.5× the payload. Peak memory is
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core import Config, Row, Timing, scratch_dir

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
    with open(path, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
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
        # The worker imports the very nbflow and bench this process imported (a snapshot
        # under test may shadow the working tree), and runs in a neutral directory.
        import bench
        import nbflow

        roots = [str(Path(m.__file__).parent.parent) for m in (nbflow, bench) if m.__file__]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*dict.fromkeys(roots), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-m", "bench.large", "--worker", kind, "--bytes", str(nbytes), "--dir", str(d)],
            cwd=d,
            env=env,
            capture_output=True,
            check=False,
            text=True,
            timeout=600,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"large {kind} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    nbytes = max(MB, int((20 if cfg.quick else 100) * MB * cfg.scale))
    rounds = cfg.rounds(3, 1)
    log(f"large: {nbytes / MB:.0f} MB array, {rounds} rounds (subprocesses)")
    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "nbflow": []}
    for r in range(rounds):
        for kind in ("baseline", "nbflow"):
            res = _spawn(kind, nbytes, cfg)
            results[kind].append(res)
            if cfg.verbose:
                log(f"  round {r + 1} {kind}: {json.dumps(res)}")
    nb, base = results["nbflow"], results["baseline"]
    t_nb, t_base = Timing([x["seconds"] for x in nb]), Timing([x["seconds"] for x in base])
    w_nb, w_base = Timing([x["write_s"] for x in nb]), Timing([x["write_s"] for x in base])
    r_nb, r_base = Timing([x["read_s"] for x in nb]), Timing([x["read_s"] for x in base])
    peak_nb = min(x["peak_delta"] for x in nb)
    peak_base = min(x["peak_delta"] for x in base)
    size = f"{nbytes / MB:.0f} MB"
    how = "VmHWM reset" if all(x["reset_peak"] for x in nb) else "getrusage peak"
    return [
        Row(
            NAME,
            f"{size} array: checkpoint + restore",
            t_nb.best,
            "s",
            "np.save+fsync+np.load",
            t_base.best,
            target="<= 2x",
            target_max=2.0,
            spread=t_nb.spread_text(),
            note="run (make, fails) + resume (restore, consume)",
            samples=t_nb.samples,
        ),
        Row(
            NAME,
            f"{size} array: run (make + checkpoint)",
            w_nb.best,
            "s",
            "make + np.save + fsync",
            w_base.best,
            spread=w_nb.spread_text(),
            note="informational split",
            samples=w_nb.samples,
        ),
        Row(
            NAME,
            f"{size} array: resume (restore + consume)",
            r_nb.best,
            "s",
            "np.load + consume",
            r_base.best,
            spread=r_nb.spread_text(),
            note="informational split",
            samples=r_nb.samples,
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
