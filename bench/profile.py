"""``python -m bench.profile {chain-disk,chain-memory,resume} [-n N] [--top K]``:
cProfile one benched scenario and print the top functions by own time and by
cumulative time, so a missed target comes with its hotspots."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import threading
from pathlib import Path
from typing import Any

import nbflow as nf
from bench import flows, resume


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("scenario", choices=("chain-disk", "chain-memory", "resume"))
    ap.add_argument("-n", type=int, default=4000, help="tasks in the chain")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    n = args.n
    directory = Path(tempfile.mkdtemp(prefix="nbflow-bench-profile-"))
    prof = cProfile.Profile()
    # The runner executes on an engine thread (and sync tasks may use a pool): give
    # every thread started from here on its own profiler and merge them at the end.
    per_thread: list[cProfile.Profile] = []

    def hook(*_: Any) -> None:
        p = cProfile.Profile()
        per_thread.append(p)
        p.enable()  # replaces this hook for the thread

    if args.scenario.startswith("chain"):
        kind = args.scenario.split("-")[1]
        wf = flows.chain(n)
        runner = nf.CheckpointingRunner(flows.make_backend(kind, directory), echo_output=False)
        threading.setprofile(hook)
        prof.enable()
        status = runner.run(wf, "p-1", 0)
        prof.disable()
        assert status.output == n, status
    else:
        wf = flows.chain(n, last=resume.last_task, name="resume")
        resume.SWITCH["broken"] = True
        runner = nf.CheckpointingRunner(flows.make_backend("disk", directory), echo_output=False)
        runner.run(wf, "p-1", 0)
        resume.SWITCH["broken"] = False
        flows.close_backend(runner.backend)
        runner = nf.CheckpointingRunner(flows.make_backend("disk", directory), echo_output=False)
        threading.setprofile(hook)
        prof.enable()
        status = runner.resume(wf, "p-1")
        prof.disable()
        assert status.output == n, status
    threading.setprofile(None)  # type: ignore[arg-type]
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        for p in per_thread:
            try:
                stats.add(p)
            except TypeError:  # a thread that recorded nothing
                pass
        stats.sort_stats(key).print_stats(args.top)
        print(f"===== by {key} =====")
        print(out.getvalue())


if __name__ == "__main__":
    main()
