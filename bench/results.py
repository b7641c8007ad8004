"""Getting results back, and what fingerprinting local modules costs (issue 12).

1. ``%workflow result big make`` in a fresh process: a workflow's task returned a
   200 MB float64 array (checkpointed once, not timed); each round starts a new Python
   process that runs the ``%workflow result`` line through the notebook session (the
   store opened, the name resolved, the array decoded) and times that line only.
   Baseline: ``np.load`` of the same array saved with ``np.save`` (+ fsync), also in a
   fresh process, timed the same way. Both files were just written, so both reads come
   from the page cache. Target: <= 1.5x.

2. ``build()`` of a one-task workflow whose task calls 50 functions of a local module
   (a ``.py`` file in a temp folder, imported): nbflow follows them into the task's
   fingerprint. Baseline: the same build with local-module following switched off (the
   module treated as a library), so the difference is exactly the added cost. Reported
   in microseconds per build; informational (no target in the issue).

Rounds are round-robin; the median of the rounds is the value, the spread is
(worst - best) / best.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.baselines import np_save_fsync
from bench.core import Config, Row, Timing, scratch_dir
from bench.fresh_process import run_worker

NAME = "results"
MB = 10**6
HELPERS = 50


# -- 1. results by name, fresh process -------------------------------------------------------
def _array(nbytes: int) -> Any:
    import numpy as np

    return np.arange(nbytes // 8, dtype=np.float64)


def _prepare_store(directory: Path, nbytes: int) -> None:
    import nbflow as nf

    wf = nf.Workflow("big").then("make", lambda _: _array(nbytes)).build()
    backend = nf.DiskcacheBackend(directory / "store")
    status = nf.CheckpointingRunner(backend, echo_output=False).run(wf, "big-1", None)
    assert status.state == "completed", status
    backend.close()
    np_save_fsync(directory / "array.npy", _array(nbytes))


def worker(kind: str, directory: Path, nbytes: int) -> dict[str, Any]:
    """One measurement in this (fresh) process; imports happen before the clock starts."""
    import numpy as np

    if kind == "nbflow":
        from nbflow.jupyter.session import Session

        session = Session({"__name__": "__main__"}, display=lambda obj: None)
        t0 = time.perf_counter()
        value = session.line(f"result big make --dir {directory / 'store'}")
        seconds = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        value = np.load(directory / "array.npy")
        seconds = time.perf_counter() - t0
    assert value.shape == (nbytes // 8,) and float(value[-1]) == nbytes // 8 - 1
    return {"seconds": seconds}


def _spawn(kind: str, directory: Path, nbytes: int) -> float:
    args = ["--worker", kind, "--dir", str(directory), "--bytes", str(nbytes)]
    return float(run_worker("bench.results", args, cwd=directory)["seconds"])


# -- 2. fingerprinting local-module helpers ---------------------------------------------------
def _helper_module(directory: Path) -> Any:
    name = f"bench_helpers_{uuid.uuid4().hex[:8]}"
    lines = [f"def h{i}(x):\n    y = x * {i} + 1\n    return y if y > 0 else -y\n" for i in range(HELPERS)]
    (directory / f"{name}.py").write_text("\n\n".join(lines))
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))


def _task_calling(module: Any) -> Callable[[Any], Any]:
    body = " + ".join(f"m.h{i}(x)" for i in range(HELPERS))
    namespace: dict[str, Any] = {"__name__": "__main__", "m": module}
    exec(f"def task(x):\n    return {body}\n", namespace)
    return namespace["task"]  # type: ignore[no-any-return]


def _build_seconds(task: Callable[[Any], Any], builds: int, follow: bool) -> float:
    import nbflow as nf
    from nbflow.core import fingerprint as fp

    real = fp.is_local_module
    if not follow:
        fp.is_local_module = lambda name: False  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        for _ in range(builds):
            nf.Workflow("fp").then("task", task).build()
        return (time.perf_counter() - t0) / builds
    finally:
        fp.is_local_module = real  # type: ignore[assignment]


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    nbytes = max(MB, int((20 if cfg.quick else 200) * MB * cfg.scale))
    rounds = cfg.rounds(3, 1)
    rows: list[Row] = []
    with scratch_dir(cfg, "results") as d:
        log(f"results: {nbytes / MB:.0f} MB array, {rounds} rounds of fresh processes")
        _prepare_store(d, nbytes)
        samples: dict[str, list[float]] = {"nbflow": [], "np.load": []}
        for r in range(rounds):
            for kind in ("np.load", "nbflow"):
                samples[kind].append(_spawn("nbflow" if kind == "nbflow" else "numpy", d, nbytes))
                log(f"  round {r + 1}/{rounds} {kind}: {samples[kind][-1]:.4f} s")
        t_nb, t_np = Timing(samples["nbflow"]), Timing(samples["np.load"])
        size = f"{nbytes / MB:.0f} MB"
        rows.append(
            Row(
                NAME,
                f"%workflow result of a {size} array, fresh process",
                t_nb.median,
                "s",
                "np.load of the np.save file",
                t_np.median,
                target="<= 1.5x",
                target_max=1.5,
                spread=f"nbflow {t_nb.spread_text()}, np.load {t_np.spread_text()}",
                note="median of the rounds; store opened + name resolved + array decoded, imports excluded",
                samples=t_nb.samples,
            )
        )

        module = _helper_module(d)
        task = _task_calling(module)
        builds = 20 if cfg.quick else 200
        fp_samples: dict[str, list[float]] = {"follow": [], "skip": []}
        for _ in range(rounds):
            fp_samples["skip"].append(_build_seconds(task, builds, follow=False))
            fp_samples["follow"].append(_build_seconds(task, builds, follow=True))
        follow, skip = Timing(fp_samples["follow"]), Timing(fp_samples["skip"])
        added = [(a - b) * 1e6 for a, b in zip(fp_samples["follow"], fp_samples["skip"], strict=True)]
        added_t = Timing(added)
        rows.append(
            Row(
                NAME,
                f"build() of a task calling {HELPERS} local-module helpers",
                follow.median * 1e6,
                "µs",
                "same build, helpers not followed",
                skip.median * 1e6,
                spread=f"{follow.spread_text()}; added {added_t.median:.0f} µs "
                f"(range {min(added):.0f}-{max(added):.0f})",
                note=f"median of {rounds} rounds of {builds} builds; informational",
                samples=follow.samples,
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="one results measurement (used by `python -m bench`)")
    ap.add_argument("--worker", choices=("nbflow", "numpy"), required=True)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--bytes", type=int, required=True)
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="nbflow-bench-results-"))
    print(json.dumps(worker(args.worker, directory, args.bytes)))


if __name__ == "__main__":
    main()
