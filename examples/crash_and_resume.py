"""Crash a workflow halfway with a real SIGKILL, then run it again: it resumes.

    python examples/crash_and_resume.py --crash-at clean   # dies inside `clean`
    python examples/crash_and_resume.py                    # resumes: `load` is restored
    python examples/crash_and_resume.py --fresh            # start over

Checkpoints live in ./.nbflow-example (delete it to forget everything).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import nbflow as nf

CRASH_AT = os.environ.get("NBFLOW_EXAMPLE_CRASH_AT", "")


@nf.task(description="read the rows (slow)")
def load(n: int) -> list[int]:
    time.sleep(0.5)
    return list(range(n))


@nf.task(retries=2, description="drop odd rows")
def clean(rows: list[int]) -> list[int]:
    if CRASH_AT == "clean":
        print("clean: simulating a crash with SIGKILL")
        os.kill(os.getpid(), signal.SIGKILL)
    return [r for r in rows if r % 2 == 0]


def total(rows: list[int]) -> int:
    return sum(rows)


def biggest(rows: list[int]) -> int:
    return max(rows)


def report(parts: dict[str, int]) -> str:
    return f"total={parts['total']} biggest={parts['biggest']}"


etl = nf.Workflow("example-etl").then(load).then(clean).fork().branch(total).branch(biggest).join(report).build()


def main() -> None:
    global CRASH_AT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crash-at", default="", help="task to die in (e.g. clean)")
    parser.add_argument("--fresh", action="store_true", help="discard the stored instance first")
    args = parser.parse_args()
    CRASH_AT = args.crash_at
    policy = nf.ConflictPolicy.TERMINATE_EXISTING if args.fresh else nf.ConflictPolicy.USE_EXISTING
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(".nbflow-example"), conflict_policy=policy)
    runner.subscribe(nf.TextProgress())
    status = runner.run(etl, "example-1", 1000)
    print(status.state, status.output)


if __name__ == "__main__":
    main()
