"""Resume cost: a 10,000-task chain (DiskcacheBackend) whose LAST task fails.

The last task reads a module-level switch; the first run fails there (after 9,999
checkpoints), the switch is flipped ("the fix"), and ``runner.resume`` must restore the
9,999 finished tasks and run only the last one. Reported: resume time as a share of the
original (failed) run's time — target ≤ 5% — plus the resume time per restored task.
A resume that re-read every checkpoint one query at a time would be O(n) store reads
and show up here as tens of percent.

A fresh runner and a fresh ``DiskcacheBackend`` object are used for the resume (same
directory), as after a kernel restart. Workflow construction is outside the clocks.
"""

from __future__ import annotations

from collections.abc import Callable

import nbflow as nf
from bench import flows
from bench.core import Config, Row, Timing, scaled, scratch_dir

NAME = "resume"
SWITCH = {"broken": True}


class Broken(RuntimeError):
    pass


def last_task(x: int) -> int:
    if SWITCH["broken"]:
        raise Broken("the last task is broken (bench)")
    return x + 1


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    n = scaled(cfg, 2000 if cfg.quick else 10000, minimum=20)
    rounds = cfg.rounds(2, 1)
    log(f"resume: {n}-task chain, last task fails, {rounds} rounds")
    wf = flows.chain(n, last=last_task, name="resume")
    originals, resumes = [], []
    for r in range(rounds):
        with scratch_dir(cfg, "resume") as d:
            instance = f"resume-{r}"
            SWITCH["broken"] = True
            backend = flows.make_backend("disk", d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False)
                first_s, status = flows.timed_run(runner, wf, instance, 0)
            finally:
                flows.close_backend(backend)
            if status.state.value != "failed" or status.error is None or status.error.task_id != f"t{n - 1}":
                raise RuntimeError(f"the first run should fail at t{n - 1}: {status.state} {status.error}")
            SWITCH["broken"] = False
            backend = flows.make_backend("disk", d)  # as after a restart: a new store object
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False)
                resume_s, status = flows.timed_run(runner, wf, instance, None, resume=True)
            finally:
                flows.close_backend(backend)
            if status.state.value != "completed" or status.output != n:
                raise RuntimeError(f"resume ended {status.state} with {status.output!r}: {status.error}")
            originals.append(first_s)
            resumes.append(resume_s)
            if cfg.verbose:
                log(f"  round {r + 1}: run {first_s:.3f} s, resume {resume_s:.3f} s")
    orig, res = Timing(originals), Timing(resumes)
    # Pair each resume with its own run (same load conditions), report the best pair.
    shares = Timing([b / a for a, b in zip(originals, resumes, strict=True)])
    return [
        Row(
            NAME,
            f"{n}-task chain, last failed: resume",
            res.best,
            "s",
            "original run (failed)",
            orig.best,
            ratio=shares.best,
            target="<= 5%",
            target_max=0.05,
            spread=res.spread_text(),
            note=f"ratio = resume / its own original run; {res.best / (n - 1) * 1e6:.1f} µs per restored task",
            samples=resumes,
        ),
        Row(
            NAME,
            f"{n}-task chain, last failed: original run",
            orig.best / n * 1e6,
            "µs/task",
            spread=orig.spread_text(),
            note="informational",
            samples=originals,
        ),
    ]
