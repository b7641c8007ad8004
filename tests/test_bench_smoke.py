"""Smoke test for the benchmark harness (``python -m bench``).

It checks structure only — the command runs, exits 0, prints ratio lines and writes
its JSON — never speed: timings are not asserted anywhere in nbflow's test suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("diskcache")


@pytest.mark.slow
def test_bench_quick_chain_runs_and_prints_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, NBFLOW_BENCH_SCALE="0.02")  # 20 and 80 tasks: structure, not speed
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "chain",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "scratch"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("RATIO chain")]
    assert ratio_lines, proc.stdout
    assert any(
        re.search(r"nbflow disk = [\d.,]+x vs raw set \(target <= 1\.0x\) (met|MISSED)$", line) for line in ratio_lines
    ), ratio_lines
    assert any("flatness nbflow disk" in line for line in ratio_lines), ratio_lines

    data = json.loads(out.read_text())
    assert data["errors"] == {}
    measures = {row["measure"] for row in data["rows"]}
    assert any(m.endswith("tasks: nbflow disk") for m in measures), measures
    for row in data["rows"]:
        if row["target_max"] is not None and row["value"] is not None:
            assert row["ratio"] is not None and row["ratio"] > 0
            assert isinstance(row["met"], bool)


@pytest.mark.slow
def test_bench_pool_drains_with_worker_processes_and_prints_the_speed_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, NBFLOW_BENCH_SCALE="0.1")  # 4 instances x 10 naps (the least): structure, not speed
    cmd = [sys.executable, "-m", "bench", "--only", "pool", "--out", str(out), "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, check=False, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(r"RATIO pool \| 40 tasks of 50 ms on disk: PooledWorker x4 speed-up = [\d.]+x", proc.stdout)
    rows = {row["measure"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {f"40 tasks of 50 ms on disk: PooledWorker x{n} speed-up" for n in (1, 2, 4)}
    assert all(row["value"] > 0 for row in rows.values())
    assert isinstance(rows["40 tasks of 50 ms on disk: PooledWorker x4 speed-up"]["met"], bool)


@pytest.mark.parametrize("kind", ["nbflow disk", "nbflow disk, group commit", "nbflow memory", "raw set"])
def test_instruction_count_children_run_each_variant(kind: str, tmp_path: Path) -> None:
    """The child ``bench.instructions`` runs under valgrind: each variant runs its chain
    (and checks the chain's output) without valgrind too."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instructions", kind, "7", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_instruction_count_is_read_from_cachegrind_output() -> None:
    from bench.instructions import parse_i_refs

    text = "==123== \n==123== I   refs:      1,216,890,872\n"
    assert parse_i_refs(text) == 1_216_890_872
    assert parse_i_refs("==123== error: no such tool") is None
