"""Long tasks (issue 10): the cost of saving a task's own state, and of live output.

1. **State checkpoint**: inside a running task, ``ctx.checkpoint(weights)`` of a 100 MB
   float64 array on ``DiskcacheBackend`` (a fresh store per round), timed around the
   call; then a second ``checkpoint`` of the same size, which replaces the first (the
   steady state of a training loop: the old file is deleted). Baseline: ``np.save`` of
   the same array to a file in the same folder + ``flush`` + ``os.fsync``; for the
   replacing save, ``np.save`` again over that file (it truncates the old one, as the
   store deletes it). Target: ≤ 1.3× (the store also checksums the payload and commits
   a record).
2. **Live output**: a task printing 100,000 lines; the same run with a
   ``WorkflowWidget`` listening vs without (the notebook's runner settings: no echo,
   sync tasks in threads). The widget variant's clock includes the final ``flush()``.
   Comm messages are counted (JSON-encoded, as a kernel session would) per second of
   run time. Targets: ≤ 1.05× and ≤ 20 messages/s.
3. **Live progress**: a task calling ``nf.progress`` 100,000 times; same comparison and
   targets. Each call only replaces the task's latest report; the flusher sends the
   latest one at most 20 times a second, and the last one at the end of the attempt.

Each measure: round-robin (3 rounds for the checkpoint, 5 for the live runs, which
last a fraction of a second); the value is the **median** round, the ratio is
median / median, and the spread is (worst − best) / best. Both variants of 2 and 3 pay
for capturing the output (it is stored with the checkpoint either way); a plain call
of the same function outside any runner is shown in the notes for scale.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbflow as nf
from bench import flows
from bench.core import Config, Row, Timing, round_robin, scaled, scratch_dir

NAME = "live"
MB = 10**6
CHECKPOINT_MAX = 1.3  # the long-tasks issue: ctx.checkpoint of 100 MB
OVERHEAD_MAX = 1.05  # the long-tasks issue: live output with the widget
MSGS_PER_S_MAX = 20.0


def _median_row(
    measure: str,
    value: Timing,
    baseline: str,
    base: Timing,
    target_max: float,
    note: str = "",
) -> Row:
    ratio = value.median / base.median
    return Row(
        NAME,
        measure,
        value.median,
        "s",
        baseline,
        base.median,
        ratio=ratio,
        target=f"<= {target_max:.2f}x",
        target_max=target_max,
        spread=value.spread_text(),
        note=(note + "; " if note else "")
        + f"median of {len(value.samples)}; best/worst {value.best:.3f}/{value.worst:.3f} s, "
        f"baseline best/worst {base.best:.3f}/{base.worst:.3f} s (spread {base.spread_text()})",
        samples=value.samples,
    )


# -- 1. state checkpoint -----------------------------------------------------------------------
def _checkpoint_rows(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    import numpy as np

    size = max(1, round(100 * cfg.scale)) * MB
    weights = np.random.default_rng(0).random(size // 8)
    times: dict[str, list[float]] = {"first": [], "second": [], "np again": []}

    def nbflow_variant() -> float:
        with scratch_dir(cfg, "live-ckpt") as d:
            backend = nf.DiskcacheBackend(d / "store")
            try:

                def fit(x: int) -> int:
                    ctx = nf.get_task_context()
                    os.sync()  # no earlier round's write-back throttles this one (as for np.save)
                    t0 = time.perf_counter()
                    ctx.checkpoint(weights)
                    t1 = time.perf_counter()
                    ctx.checkpoint(weights)  # replaces the first (as every later save does)
                    t2 = time.perf_counter()
                    times["first"].append(t1 - t0)
                    times["second"].append(t2 - t1)
                    raise RuntimeError("stop before finishing, so the state stays")

                nf.CheckpointingRunner(backend, echo_output=False).run(nf.Workflow("ckpt").then(fit).build(), "i", 1)
                record = backend.get_record("i", "fit#state")
                if record is None or record.size < weights.nbytes:
                    raise RuntimeError(f"the state was not stored as expected: {record}")
            finally:
                backend.close()
        return times["first"][-1]

    def second_variant() -> float:
        return times["second"][-1] if times["second"] else 0.0

    def save(path: Path) -> float:
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            np.save(f, weights)
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t0

    def numpy_variant() -> float:
        with scratch_dir(cfg, "live-np") as d:
            path = Path(d) / "state.npy"
            os.sync()
            first = save(path)
            times["np again"].append(save(path))  # over the last one, as a loop saving each epoch does
            return first

    def numpy_again_variant() -> float:
        return times["np again"][-1] if times["np again"] else 0.0

    rounds = cfg.rounds(3, 3)
    log(f"live: ctx.checkpoint of {size // MB} MB vs np.save + fsync, {rounds} rounds")
    t = round_robin(
        {
            "checkpoint": nbflow_variant,
            "second": second_variant,
            "np.save": numpy_variant,
            "np again": numpy_again_variant,
        },
        rounds,
    )
    return [
        _median_row(f"ctx.checkpoint of a {size // MB} MB array (first save)", t["checkpoint"],
                    "np.save + fsync, same array", t["np.save"], CHECKPOINT_MAX),
        _median_row(f"ctx.checkpoint of a {size // MB} MB array (replacing the last)", t["second"],
                    "np.save + fsync over the last file", t["np again"], CHECKPOINT_MAX,
                    note="like for like: the previous state's file is deleted after the new record commits, "
                    "np.save truncates its last file"),
    ]  # fmt: skip


# -- 2./3. live output and progress ----------------------------------------------------------------
def _printer(n: int) -> Callable[[int], int]:
    def shout(x: int) -> int:
        for i in range(n):
            print(f"line {i} of {n}: loss {1 / (i + 1):.6f}")
        return n

    return shout


def _reporter(n: int) -> Callable[[int], int]:
    def report(x: int) -> int:
        for i in range(n):
            nf.progress(i + 1, n, note="step")
        return n

    return report


def _live_variant(wf: Any, cfg: Config, *, widget: bool, stats: list[dict[str, float]]) -> Callable[[], float]:
    from bench.widget import CommCounter
    from nbflow.jupyter.widget import WorkflowWidget

    counter = iter(range(10**9))

    def run() -> float:
        with scratch_dir(cfg, f"live-{'on' if widget else 'off'}") as d:
            backend = flows.make_backend("disk", d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False, inline_sync=False)
                iid = f"{wf.name}-{next(counter)}"
                w = comms = None
                if widget:
                    w = WorkflowWidget(wf, instance_id=iid)
                    comms = CommCounter(w)
                t0 = time.perf_counter()
                unsubscribe = w.listen(runner.events) if w is not None else None
                status = runner.run(wf, iid, 0)
                if w is not None and unsubscribe is not None:
                    unsubscribe()
                    w.flush()
                seconds = time.perf_counter() - t0
                if status.state.value != "completed":
                    raise RuntimeError(f"{wf.name} ended {status.state}: {status.error}")
                if w is not None and comms is not None:
                    stats.append({"seconds": seconds, "messages": comms.messages, "bytes": comms.bytes})
                    w.close()
            finally:
                flows.close_backend(backend)
        return seconds

    return run


def _plain(fn: Callable[[int], int]) -> float:
    import contextlib
    import io

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fn(0)
    return time.perf_counter() - t0


def _live_rows(label: str, fn: Callable[[int], int], cfg: Config, log: Callable[[str], None]) -> list[Row]:
    wf = nf.Workflow(f"live-{label.split()[-1]}").then("work", fn).build()
    stats: list[dict[str, float]] = []
    rounds = cfg.rounds(5, 3)  # runs of a fraction of a second: a median of 3 is mostly noise
    log(f"live: {label}, widget vs none, {rounds} rounds")
    t = round_robin(
        {
            "no widget": _live_variant(wf, cfg, widget=False, stats=stats),
            "widget": _live_variant(wf, cfg, widget=True, stats=stats),
        },
        rounds,
        log if cfg.verbose else None,
    )
    plain = min(_plain(fn) for _ in range(2))
    rates = sorted(s["messages"] / s["seconds"] for s in stats)
    median_rate = rates[len(rates) // 2]
    msgs = [int(s["messages"]) for s in stats]
    kib = max(s["bytes"] for s in stats) / 1024
    return [
        _median_row(f"{label}: run with live widget", t["widget"], "same run, no widget", t["no widget"],
                    OVERHEAD_MAX, note=f"the same function called outside any runner: {plain:.3f} s"),
        Row(NAME, f"{label}: comm messages per second", median_rate, "msg/s", "target ceiling", MSGS_PER_S_MAX,
            ratio=median_rate / MSGS_PER_S_MAX, target=f"<= {MSGS_PER_S_MAX:.0f} msg/s (ratio <= 1)", target_max=1.0,
            spread=f"{rates[0]:.1f}-{rates[-1]:.1f} msg/s",
            note=f"{label}: messages per run {msgs} (max {kib:.0f} KiB JSON); median of {len(rates)}",
            samples=rates),
    ]  # fmt: skip


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    try:
        import numpy  # noqa: F401
    except ImportError:
        rows.append(Row(NAME, "ctx.checkpoint", None, "", note="skipped: numpy is not installed"))
    else:
        rows += _checkpoint_rows(cfg, log)
    try:
        import nbflow.jupyter.widget  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import problem means "skip"
        rows.append(Row(NAME, "live output", None, "", note=f"skipped: the widget does not import ({exc})"))
        return rows
    n = scaled(cfg, 100_000, minimum=1_000)
    rows += _live_rows(f"{n:,} printed lines", _printer(n), cfg, log)
    rows += _live_rows(f"{n:,} nf.progress calls", _reporter(n), cfg, log)
    return rows
