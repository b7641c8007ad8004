"""``python -m bench [--quick] [--only NAME ...]``: nbflow's benchmarks.

Prints one table of ratios against baselines measured in the same run and writes every
row to ``artifacts/bench.json`` (gitignored). See ``bench/README.md`` for what each
number means and where its target comes from. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.core import Config, Row, host_info

REPO = Path(__file__).resolve().parent.parent

#: name -> module with ``run(cfg, log) -> list[Row]``; run in this order.
BENCHES: dict[str, str] = {
    "chain": "bench.chain",
    "fork": "bench.fork",
    "resume": "bench.resume",
    "large": "bench.large",
    "map": "bench.map",  # issue 4; skips itself when Workflow.map is missing
    "scale": "bench.scale",  # issue 5
    "pool": "bench.pool",  # PooledWorker on the disk store: 200 tasks of 50 ms, 1/2/4 workers
    "widget": "bench.widget",  # issue 3; skips itself without the jupyter extra
    "results": "bench.results",  # issue 12: results by name in a fresh process; local-module fingerprints
    "live": "bench.live",  # issue 10: task state checkpoints, live output and progress
    "displays": "bench.displays",  # issue 11: a figure per task, captured and stored
    "listing": "bench.listing",  # the store index: listing flat per instance, nbflow list within 0.5 s
    "postgres": "bench.postgres",  # issue 13: PostgresBackend per-task cost and worker throughput
    "instructions": "bench.instructions",  # user-space instructions per chain task (valgrind): repeatable
}

#: Benches from later issues: listed so `--only` knows them, skipped until the feature
#: they measure exists. To add one: write bench/<name>.py with ``run(cfg, log)``, move
#: the entry to BENCHES.
PLANNED: dict[str, tuple[str, Callable[[], bool]]] = {}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _has_attr(module: str, *path: str) -> bool:
    try:
        obj: object = importlib.import_module(module)
    except ImportError:
        return False
    for name in path:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- formatting ---------------------------------------------------------------------------
def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    if row.target and row.target.endswith("%"):
        return f"{row.ratio * 100:.1f}%"
    if row.ratio >= 100:
        return f"{row.ratio:,.0f}x"
    return f"{row.ratio:.2f}x"


def format_table(rows: list[Row]) -> str:
    header = ("bench", "measure", "value", "baseline", "baseline value", "ratio", "target", "met", "spread")
    lines = [
        (
            r.bench,
            r.measure,
            _num(r.value, r.unit),
            r.baseline or "-",
            _num(r.baseline_value, r.unit if r.unit != "MB" else "MB"),
            _ratio(r),
            r.target or "",
            {True: "yes", False: "NO", None: ""}[r.met],
            r.spread,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    seen: set[str] = set()
    notes = []
    for r in rows:
        if r.note and r.note not in seen:
            seen.add(r.note)
            notes.append(f"  {r.bench} / {r.measure}: {r.note}")
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def ratio_lines(rows: list[Row]) -> list[str]:
    """One machine-greppable line per targeted ratio: ``RATIO <bench> <measure> = <x> (target ...) met|MISSED``."""
    return [
        f"RATIO {r.bench} | {r.measure} = {_ratio(r)} vs {r.baseline} (target {r.target}) {'met' if r.met else 'MISSED'}"
        for r in rows
        if r.target is not None and r.ratio is not None
    ]


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (< 60 s)")
    ap.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=[*BENCHES, *PLANNED],
        help=f"run only this bench (repeatable): {', '.join([*BENCHES, *PLANNED])}",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("NBFLOW_BENCH_SCALE", "1")),
        help="multiply task counts and payload sizes (env NBFLOW_BENCH_SCALE; the smoke test uses 0.02)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="rounds per measurement (default: per bench)")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench.json", help="JSON results file")
    ap.add_argument("--workdir", type=Path, default=None, help="where scratch stores go (default: system temp)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every round")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be > 0")

    cfg = Config(quick=args.quick, scale=args.scale, repeats=args.repeats, workdir=args.workdir, verbose=args.verbose)
    selected = args.only or [*BENCHES, *PLANNED]
    started = time.perf_counter()
    info = host_info()
    log(f"host: {info}")
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in selected:
        if name in PLANNED:
            what, available = PLANNED[name]
            state = "feature present, bench not written yet" if available() else "feature not built yet"
            rows.append(Row(name, what, None, "", note=f"skipped: {state}"))
            continue
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(BENCHES[name])
            rows.extend(module.run(cfg, log))
        except Exception:  # noqa: BLE001 - report and go on with the other benches
            errors[name] = traceback.format_exc()
            log(f"{name} FAILED:\n{errors[name]}")
        timings[name] = time.perf_counter() - t0
        log(f"{name}: done in {timings[name]:.1f} s")

    print(format_table(rows))
    print()
    for line in ratio_lines(rows):
        print(line)
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    total = time.perf_counter() - started
    print(f"\ntotal {total:.1f} s; load average at start {info.get('loadavg')}, at end {info.get('loadavg_end')}")

    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "config": {"quick": cfg.quick, "scale": cfg.scale, "repeats": cfg.repeats},
        "host": info,
        "seconds": {"total": total, **timings},
        "rows": [r.to_json() for r in rows],
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
