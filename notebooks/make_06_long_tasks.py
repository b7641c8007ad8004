"""Build notebooks/06-long-tasks.ipynb and execute it once to store its outputs.

Usage:  python notebooks/make_06_long_tasks.py [--no-execute]

Validate with:
    python -m pytest notebooks/06-long-tasks.ipynb --nbval-lax --nbval-current-env \
        --nbval-sanitize-with notebooks/nbval_sanitize.cfg -p no:cacheprovider
Cells tagged ``nbval-check-output`` print deterministic facts and are compared; the
``%%workflow`` cells (widget, timings) are tagged ``nbval-ignore-output``.

The lesson: a training-like loop with ``tqdm``, prints and ``ctx.checkpoint``; the
demo presses the stop button in the middle of the loop (a real SIGINT, as the ■
button sends) and re-runs the cell, which continues inside the task at the epoch where
it stopped. It runs in a few seconds.
"""

from __future__ import annotations

import sys

from build import CHECK, HERE, IGNORE, code, md, write_notebook  # notebooks/build.py

NB = HERE / "06-long-tasks.ipynb"

TRAIN_CELL = """
%%workflow train --input epochs=12 --dir .nbflow/long-tasks
import os
import time
from tqdm.auto import tqdm
import nbflow as nf

def data(epochs):
    print("loading 1,000 samples")
    time.sleep(0.3)
    return list(range(1000))

def fit(data, epochs):
    ctx = nf.get_task_context()
    state = ctx.restore({"epoch": 0, "weights": 0.0})    # the last saved state, or this default
    if state["epoch"]:
        print(f"resuming at epoch {state['epoch']}")
    for epoch in tqdm(range(state["epoch"], epochs), desc="epoch", initial=state["epoch"], total=epochs):
        time.sleep(0.15)                                  # one epoch of "training"
        weights = state["weights"] + sum(data) / len(data) / epochs
        state = {"epoch": epoch + 1, "weights": weights}
        ctx.checkpoint(state)                             # durable: from here on a crash resumes after this epoch
        ran(epoch)
        print(f"epoch {epoch:2d}  weights {weights:7.2f}")
        if epoch == 5 and not os.path.exists(STOP_ONCE):  # the demo presses the stop button, once
            press_stop()
        if ctx.cancelled:                                 # the run was stopped: leave, the state is saved
            return None
    return state["weights"]

def evaluate(fit):
    return round(fit, 2)
"""


def cells() -> list:  # type: ignore[type-arg]
    return [
        md("""
# 06 · Long tasks: live output, progress, an honest ETA, and resume *inside* a task

nbflow checkpoints every finished task. A two-hour training task, though, is *one* task: if
the kernel dies at epoch 57 of 100, a plain task starts again at epoch 0. This notebook shows
what nbflow does for tasks that run long:

- **Live output.** What a running task prints shows in the widget while it runs (click its
  node); its last line is in the table's *Now* column. `\\r` progress lines show as the line
  they end with. Everything it printed is still stored with its checkpoint.
- **Progress.** `tqdm` (plain or `tqdm.auto`) inside a task is picked up without code changes and
  drawn on the task's node and row instead of under the cell; `nf.progress(done, total, note)`
  does the same for loops without tqdm (map items too).
- **An honest ETA.** From the task's own progress, and from how long the same tasks took in
  earlier runs (the table's *Expected* column). With nothing to go on it says *unknown*.
- **Resume inside a task.** `ctx.restore(default)` gives back the last state the task saved
  with `ctx.checkpoint(state)`; after a crash or a stop the task continues from there.
"""),
        code("""
%load_ext nbflow
import os
import shutil
import signal

import nbflow as nf

RAN_LOG = ".nbflow/long-tasks-demo/ran.log"          # the task appends each epoch it really runs
STOP_ONCE = ".nbflow/long-tasks-demo/stopped-once"   # exists once the demo pressed "stop"
shutil.rmtree(".nbflow/long-tasks", ignore_errors=True)   # start the demo clean (skip after a real crash!)
shutil.rmtree(".nbflow/long-tasks-demo", ignore_errors=True)
os.makedirs(".nbflow/long-tasks-demo")

def ran(epoch):                                      # a helper, not a task
    with open(RAN_LOG, "a") as f:
        f.write(f"{epoch}\\n")

def press_stop():
    \"\"\"What the ■ button does (an interrupt of the kernel), pressed from inside the task.\"\"\"
    open(STOP_ONCE, "w").close()
    os.kill(os.getpid(), signal.SIGINT)
    nf.get_task_context().cancel_event.wait(10)      # until the run has been told to stop
"""),
        md("""
## The training task

`fit` is a training-like loop: a `tqdm` bar over the epochs, a line printed per epoch, and
`ctx.checkpoint(state)` after each epoch (cheap enough to call every few seconds, even with a
model's weights: big states stream to a file like big outputs do). On entry,
`ctx.restore(default)` returns the last saved state — or the default on the first run.

While it runs, watch the widget: `fit`'s node fills with its progress, the *Now* column shows its
last line, and clicking the node shows what it printed so far. Halfway through, the demo presses
the stop button: the run is *interrupted*, `data` stays checkpointed, and `fit`'s state after
epoch 5 is saved.
"""),
        code(IGNORE + TRAIN_CELL, fails=True),  # interrupted: the cell stops (as with the ■ button)
        code(
            CHECK
            + """
client = nf.WorkflowClient(nf.DiskcacheBackend(".nbflow/long-tasks"))
[run] = client.list_instances()
print("state:", run.state)
print("epochs that ran:", open(RAN_LOG).read().split())
progress = client.backend.load_task_states(run.instance_id)["fit"]["progress"]
print(f"fit's bar read {progress['done']:.0f}/{progress['total']:.0f} ({progress['note']}) when the run stopped")
"""
        ),
        md("""
## Re-run the same cell: it resumes *inside* `fit`

Nothing changed in the cell, so this is the same instance: `data` is restored from its
checkpoint, and `fit` starts again — but `ctx.restore(...)` hands it the state it saved after
epoch 5, so it goes on at epoch 6 (the bar starts at 6/12). After a kernel restart or a crash
it is the same: re-run the setup cell *without* its clean-up lines, then this cell.
"""),
        code(IGNORE + TRAIN_CELL),
        code(
            CHECK
            + """
print("output:", _)
epochs = open(RAN_LOG).read().split()
print("epochs that ran:", epochs)
print("every epoch ran once:", sorted(map(int, epochs)) == list(range(12)))
stored = client.backend.get_record(run.instance_id, "fit")
print("\\n".join(line for line in stored.stdout.splitlines() if not line.startswith("epoch:")))
print("saved state left behind:", client.backend.get_record(run.instance_id, "fit#state"))
"""
        ),
        md("""
## What to remember

- `ctx = nf.get_task_context()`; `state = ctx.restore(default)` at the start of a long task,
  `ctx.checkpoint(state)` every few seconds or every epoch. The state goes through the
  instance's codec and is written atomically; once the task finishes it is dropped (its output
  is what counts then). It is used only while the task's code and inputs are unchanged (pin
  `@nf.task(version=...)` to keep it across a cosmetic edit).
- It works the same in map items and loop bodies, on `ProcessExecutor`/`DaskExecutor` (the
  state travels back to the runner, which stores it) and with `PooledWorker`s.
- `tqdm` and `nf.progress(done, total, note)` draw on the task's node and row; prints stream to
  its detail pane while it runs. What a task printed before it failed or was stopped is kept
  too (`%workflow status` after a restart says where a task was).
- The ETA comes from progress and from earlier runs of the same tasks; from the second run on,
  the *Expected* column shows how long each task usually takes.
"""),
    ]


if __name__ == "__main__":
    write_notebook(cells(), NB, execute="--no-execute" not in sys.argv)
