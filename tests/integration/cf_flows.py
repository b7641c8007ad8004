"""Workflows for the control-flow crash tests, run as a child process:

    python cf_flows.py STORE LOG SCENARIO MODE

SCENARIO is loop | delay | signal | map | child; MODE is ``run`` (blocking run),
``start`` (background run, waits for signals instead of parking) or ``resume``.
Every task execution appends ``run <task id>`` to LOG (one ``os.write`` on an
O_APPEND file, so lines from threads never mix). With ``CF_BLOCK=1`` in the
environment the scenario's crash point writes ``BLOCK <id>`` and hangs, so the test
can SIGKILL the process right there. The last stdout line is the final status as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import nbflow as nf
from nbflow.run import events as ev

LOG = os.environ.get("CF_LOG", "")
BLOCK = os.environ.get("CF_BLOCK") == "1"


def log(line: str) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def hang(where: str) -> None:
    if BLOCK:
        log(f"BLOCK {where}")
        time.sleep(600)


def counted(task_id: str, fn: Any) -> Any:
    def step(x: Any) -> Any:
        log(f"run {task_id}")
        return fn(x)

    step.__name__ = task_id
    return step


# -- loop: iteration 7 hangs ---------------------------------------------------------------
def body(x: int) -> nf.LoopResult:
    me = nf.get_task_context().task_id  # body#<n>
    log(f"run {me}")
    if me == "body#7":
        hang(me)
    return nf.LoopResult.done(x) if x >= 12 else nf.LoopResult.again(x + 1)


LOOP = (
    nf.Workflow("cf-loop")
    .then("a", counted("a", lambda x: x))
    .loop("body", body, max_iterations=20)
    .then("z", counted("z", lambda x: x * 100))
    .build()
)

# -- delay: killed while waiting -------------------------------------------------------------
DELAY = (
    nf.Workflow("cf-delay")
    .then("a", counted("a", lambda x: x + 1))
    .delay("nap", 3.0)
    .then("b", counted("b", lambda x: x * 10))
    .build()
)

# -- signal: killed while a background run waits -------------------------------------------
SIGNAL = (
    nf.Workflow("cf-signal")
    .then("a", counted("a", lambda x: x + 1))
    .wait_for_signal("approval")
    .then("ship", counted("ship", lambda p: {"shipped": p}))
    .build()
)


# -- map: items from 500 on hang (4 in flight) -----------------------------------------------
def item(x: int) -> int:
    me = nf.get_task_context().task_id  # item[<i>]
    log(f"run {me}")
    if x >= 500:
        hang(me)
    return x * 2


MAP = (
    nf.Workflow("cf-map")
    .then("src", counted("src", lambda n: list(range(n))))
    .map("item", item, concurrency=4)
    .then("total", counted("total", sum))
    .build()
)


# -- child workflow: its second task hangs ---------------------------------------------------
def c2(x: int) -> int:
    log("run child/c2")
    hang("child/c2")
    return x * 3


CHILD = (
    nf.Workflow("child")
    .then("c1", counted("child/c1", lambda x: x + 1))
    .then("c2", c2)
    .then("c3", counted("child/c3", lambda x: x - 1))
    .build()
)
PARENT = (
    nf.Workflow("cf-parent")
    .then("a", counted("a", lambda x: x))
    .then_flow(CHILD)
    .then("z", counted("z", lambda x: -x))
    .build()
)

FLOWS = {"loop": (LOOP, 0), "delay": (DELAY, 1), "signal": (SIGNAL, 1), "map": (MAP, 2000), "child": (PARENT, 5)}


def main(store: str, log_path: str, scenario: str, mode: str) -> int:
    global LOG
    LOG = log_path
    wf, value = FLOWS[scenario]
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    runner.subscribe(lambda e: log(f"wait {e.task_id} {e.wake_at!r}") if isinstance(e, ev.TaskWaiting) else None)
    if mode == "run":
        status = runner.run(wf, scenario, value)
    elif mode == "start":
        status = runner.start(wf, scenario, value).wait()
    else:
        status = runner.resume(wf, scenario)
    print(
        json.dumps(
            {"state": str(status.state), "output": status.output, "error": str(status.error) if status.error else None}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
