"""User-space instructions per durable task, counted by valgrind: a figure that repeats.

Wall-clock ratios on a shared 2-core machine move by 10-30% from run to run (the disk's
write-back, the neighbours' caches). The number of instructions a chain task executes
in user space does not: counted by valgrind (``cachegrind``, no cache simulation) with
a fixed hash seed, it repeats within ~1-2% on any machine running the same Python and
libraries. That makes it the figure to steer the engine's hot path by.

Each variant is a child process (``python -m bench.instructions KIND N RUN``) that
builds an ``N``-task chain and warms up (a 50-task run, so imports and first-call
costs are outside), then runs the chain when ``RUN`` is 1. Instructions per task =
(count with the run - count without it) / N. Variants:

- **nbflow disk**: ``CheckpointingRunner`` on ``DiskcacheBackend``, one commit per task;
- **nbflow disk, group commit**: the same with ``group_commit=0.002``;
- **nbflow memory**: on ``InMemoryBackend`` — the engine alone;
- **raw set**: ``diskcache.Cache.set(key, value)`` per task, default settings — the
  baseline of the chain bench.

Kernel work is not counted: a commit's ``fcntl`` locks and ``pwrite`` calls (about the
same number on both sides: one SQLite transaction each) and waits for the disk. So the
instruction ratio is larger than the wall-time ratio of ``bench.chain``; their gap is
the kernel's share, and every instruction the engine drops moves both. Skipped when
valgrind is not installed (``apt-get install valgrind``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.core import Config, Row, scaled, scratch_dir
from bench.fresh_process import worker_env

NAME = "instructions"
KINDS = ("nbflow disk", "nbflow disk, group commit", "nbflow memory", "raw set")
WARM_UP = 50
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions_per_task(kind: str, n: int, *, valgrind: str, scratch: Path) -> float:
    """User-space instructions one task of ``kind`` costs in an ``n``-task chain."""
    with_run = _count(kind, n, run=True, valgrind=valgrind, scratch=scratch)
    without = _count(kind, n, run=False, valgrind=valgrind, scratch=scratch)
    return (with_run - without) / n


def _count(kind: str, n: int, *, run: bool, valgrind: str, scratch: Path) -> int:
    env = worker_env(PYTHONHASHSEED="0", TMPDIR=str(scratch))  # the very nbflow this process imported
    cmd = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    cmd += [sys.executable, "-m", "bench.instructions", kind, str(n), "1" if run else "0"]
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, check=False, timeout=1800)
    count = parse_i_refs(proc.stderr)
    if proc.returncode != 0 or count is None:
        raise RuntimeError(f"valgrind run of {kind!r} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return count


def parse_i_refs(text: str) -> int | None:
    """The instruction count valgrind's cachegrind prints at exit, if ``text`` has it."""
    found = _I_REFS.search(text)
    return int(found.group(1).replace(",", "")) if found else None


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return [Row(NAME, "instructions per durable task", None, "", note="skipped: valgrind is not installed")]
    n = scaled(cfg, 2000, minimum=20)
    per_task: dict[str, float] = {}
    with scratch_dir(cfg, "instructions") as scratch:
        for kind in KINDS:
            log(f"instructions: {kind}, {n} tasks under valgrind")
            per_task[kind] = instructions_per_task(kind, n, valgrind=valgrind, scratch=scratch)
    raw = per_task["raw set"]
    note = "user space only (valgrind cachegrind, PYTHONHASHSEED=0); the kernel's share of a commit is not counted"
    rows = [
        Row(NAME, f"{n}-task chain: {kind}, instructions per task", per_task[kind] / 1000, "k instr",
            "raw set", raw / 1000, note=note)
        for kind in KINDS[:-1]
    ]  # fmt: skip
    rows.append(Row(NAME, f"{n}-task chain: raw set, instructions per call", raw / 1000, "k instr", note=note))
    return rows


# -- the child: one variant, run under valgrind ---------------------------------------------
def _child(kind: str, n: int, measured: bool) -> None:
    if kind == "raw set":
        import diskcache

        items = [(f"t{i}", i + 1) for i in range(n)]
        cache = diskcache.Cache(tempfile.mkdtemp(prefix="nbflow-instr-"))
        for key, value in items[:WARM_UP]:
            cache.set("warm-" + key, value)
        if measured:
            for key, value in items:
                cache.set(key, value)
        cache.close()
        return
    import nbflow as nf
    from bench import flows

    wf = flows.chain(n)
    backend = (
        nf.InMemoryBackend()
        if kind == "nbflow memory"
        else nf.DiskcacheBackend(tempfile.mkdtemp(prefix="nbflow-instr-"))
    )
    window = 0.002 if kind == "nbflow disk, group commit" else 0.0
    runner = nf.CheckpointingRunner(backend, echo_output=False, group_commit=window)
    runner.run(flows.chain(WARM_UP), "warm-up", 0)
    if measured:
        status = runner.run(wf, "measured", 0)
        if status.output != n:
            raise SystemExit(f"the chain returned {status.output!r}, not {n}")


if __name__ == "__main__":
    _kind, _n, _run = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    if _kind not in KINDS:
        raise SystemExit(f"unknown variant {_kind!r}; one of {', '.join(KINDS)}")
    _child(_kind, _n, _run)
