"""Build the lesson notebooks 01-03 and execute them once to store their outputs.

Usage::

    python notebooks/build.py                 # all three
    python notebooks/build.py quickstart      # one (quickstart | restart | inspection)
    python notebooks/build.py --no-execute    # write them without outputs

One function per notebook returns its cells. Each notebook clears its own store folder
(``notebooks/.nbflow/<lesson>``, gitignored) first, so every run reads the same.

Validate with::

    python -m pytest notebooks --nbval-lax --nbval-current-env \
        --nbval-sanitize-with notebooks/nbval_sanitize.cfg

Only cells tagged ``nbval-check-output`` are compared (they print deterministic text);
cells that display the widget are tagged ``nbval-ignore-output`` (its model id is random
and its static SVG depends on the graphviz build). Tags, not ``# NBVAL_...`` comments:
a ``%%workflow`` line must be the first line of its cell. The 04/05 notebooks have their
own ``make_*.py``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
CHECK = "# NBVAL_CHECK_OUTPUT\n"
IGNORE = "# NBVAL_IGNORE_OUTPUT\n"


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *, fails: bool = False) -> nbformat.NotebookNode:
    """A code cell; a leading CHECK / IGNORE marker becomes the equivalent nbval cell tag
    (a ``%%workflow`` cell magic must be the first line, so no comment may precede it).
    ``fails``: the cell raises on purpose (a lesson about failures): tagged
    ``raises-exception`` so nbval and Run All (nbclient) go on past it."""
    tags = []
    for marker, tag in ((CHECK, "nbval-check-output"), (IGNORE, "nbval-ignore-output")):
        if text.startswith(marker):
            text, tags = text[len(marker) :], [tag]
    if fails:
        tags.append("raises-exception")
    return new_code_cell(text.strip("\n"), metadata={"tags": tags} if tags else {})


# -- 01 -------------------------------------------------------------------------------------
QUICKSTART_CELL = """
%%workflow etl --input n=6 --dir .nbflow/quickstart
import time

def load(n):
    print(f"loading {n} rows")
    time.sleep(0.5)              # stands in for real work, so you can watch the widget
    return list(range(1, n + 1))

def clean(load):                 # `load` names a task: this is the edge load -> clean
    time.sleep(0.5)
    return [x for x in load if x % 2]

def stats(clean):                # stats and plot both read clean: a fork,
    time.sleep(0.8)              # they run at the same time
    return sum(clean)

def plot(clean):
    time.sleep(0.6)
    return "#" * len(clean)

def report(stats, plot):         # two upstream tasks: a join
    time.sleep(0.3)
    return {"total": stats, "bar": plot}
"""


def quickstart() -> list[nbformat.NotebookNode]:
    return [
        md("""
# 01 · Quickstart: a notebook cell becomes a durable workflow

You write plain functions in a `%%workflow` cell. nbflow turns them into a graph of tasks,
shows a live picture of it, runs it, and **checkpoints every finished task on disk**. Run the
cell again (tomorrow, or after a kernel restart) and finished tasks are restored instead of
recomputed.

This notebook covers: loading the extension, one workflow with a fork and a join, the
widget, the cell's value, re-running, and the same workflow written with the Python builder.
"""),
        code("""
%load_ext nbflow
import shutil

# This lesson keeps its checkpoints in ./.nbflow/quickstart. Start from an empty store so
# the notebook reads the same every time you run it top to bottom.
shutil.rmtree(".nbflow/quickstart", ignore_errors=True)
"""),
        md("""
## One cell, five tasks

Every top-level function is a task. **A parameter named after another function is an edge**:
`clean(load)` receives what `load` returned. `stats` and `plot` both take `clean`, so they
run concurrently (a fork); `report(stats, plot)` waits for both (a join). A parameter that
names no task (`n`) is a workflow input, given on the first line with `--input n=6`.
`--dir` says where the checkpoints go (default: `./.nbflow`).

Run it and watch the graph: white = pending, blue = running, green = done. The bar counts
finished tasks; the table lists each task's state, attempts and duration. **Click a node**
(or a table row) to see that task's detail: a preview of its output and what it printed.
"""),
        code(IGNORE + QUICKSTART_CELL),
        md("""
The `print` inside `load` did not appear under the cell: each task's output is captured,
stored with its checkpoint and shown in the task's detail pane (click `load`).

**The cell's value is the workflow's output**: the output of its last task (`report`), or a
dict of outputs if the graph has several ends. Like any cell value it is in `_`, and the
workflow itself is now bound to the name `etl`.
"""),
        code(
            CHECK
            + """
result = _
print(result)
print(etl)
print(etl.task_ids)
"""
        ),
        md("""
`%workflow status NAME` prints the same facts as text: the instance id (the name plus a digest
of the inputs), the state, and every task: what happened to it in this kernel's last run, its
attempts, how long it took, when it finished and a preview of its output. It reads the store,
so it works the same in a new kernel (and `nbflow status etl` in a terminal).
"""),
        code(CHECK + "%workflow status etl"),
        md("""
## Getting results back

Any finished task's output comes back by name: `etl.result("clean")`, or `etl.results`, a
read-only mapping of every finished output that reads a value only when you ask for it.
In a new kernel, re-run the cell with `--no-run` (nothing runs), or use
`%workflow result etl clean` without re-running anything: the cell's value is the output.
"""),
        code(
            CHECK
            + """
print(etl.result("clean"))
print(sorted(etl.results))
print(etl.results["stats"])
"""
        ),
        code(CHECK + "%workflow result etl clean"),
        md("""
## Run it again: finished tasks are restored

Running the *same* cell again resumes the *same* instance: every task already has a
checkpoint, so nothing is recomputed; the graph turns light green (**restored**) at once and
the value is read back from disk. This is exactly what happens after a kernel restart
(lesson 02). Change the input (`--input n=7`) and you get a new instance that runs from
scratch; pass `--fresh` to throw the stored one away.
"""),
        code(IGNORE + QUICKSTART_CELL),
        code(
            CHECK
            + """
print(_ == result)
%workflow status etl
"""
        ),
        md("""
## The same workflow without the magic

The magic is a thin layer over the Python API, which works in scripts and tests as well. The
builder chains tasks with `.then`, opens parallel branches with `.fork().branch(...)` and
closes them with `.join(...)`; a join receives one dict `{branch: output}`. Three lines,
reusing the functions defined above:
"""),
        code(
            CHECK
            + """
import nbflow as nf
wf = nf.Workflow("etl").then(load).then(clean).fork().branch(stats).branch(plot).join("report", lambda parts: report(**parts)).build()
print(nf.CheckpointingRunner(nf.DiskcacheBackend(".nbflow/quickstart"), echo_output=False).run(wf, "etl-builder", 6).output)
"""
        ),
        md("""
Next: **02 · Resume after a restart** (what to re-run when the kernel dies) and
**03 · Visual inspection** (failed and stale tasks, task details).
"""),
    ]


# -- 02 -------------------------------------------------------------------------------------
RESTART_CELL = """
%%workflow train --input epochs=3 --dir .nbflow/restart
import os
import time

def _ran(task):                  # a helper (leading underscore), not a task:
    with open(RAN_LOG, "a") as f:  # it records which tasks really executed
        f.write(task + "\\n")

def fetch(epochs):
    _ran("fetch")
    time.sleep(0.3)
    return list(range(100))

def features(fetch):
    _ran("features")
    return [x * 2 for x in fetch]

def fit(features, epochs):
    _ran("fit")
    if not os.path.exists(CRASH_ONCE):   # the first attempt "crashes"
        open(CRASH_ONCE, "w").close()
        raise RuntimeError("simulated crash: the machine went away")
    return sum(features) / len(features) * epochs

def evaluate(fit):
    _ran("evaluate")
    return round(fit, 1)
"""


def restart() -> list[nbformat.NotebookNode]:
    return [
        md("""
# 02 · Resume after a kernel restart

A kernel restart (or crash, or an out-of-memory kill) wipes **everything in memory**: your
variables, the functions a cell defined, loaded extensions. What survives is **the store on
disk**: every task that finished has its output checkpointed there.

So after a restart you re-run exactly two things:

1. **the setup cell** (`%load_ext nbflow` and your imports), and
2. **the same `%%workflow` cell, unchanged** (same name, same `--input` values, same `--dir`).

The same name and inputs give the same instance id, so the cell *resumes*: finished tasks are
restored from disk, the rest runs. Don't add `--fresh` (it discards the checkpoints), and
don't change the inputs (that is a different instance, which starts from scratch).

This notebook cannot restart its own kernel while it runs top to bottom, so it simulates the
crash with a task that fails on its first attempt, then makes the kernel forget everything
nbflow knew, then re-runs the same cell.
"""),
        code("""
%load_ext nbflow
import os
import shutil

RAN_LOG = ".nbflow/restart-demo/ran.log"        # every task appends its name when it runs
CRASH_ONCE = ".nbflow/restart-demo/crashed-once"  # exists after the simulated crash
"""),
        md("""
The next cell resets the demo so this notebook reads the same every time. **After a real
restart, skip it**: it deletes the checkpoints you want to resume from.
"""),
        code("""
shutil.rmtree(".nbflow/restart", ignore_errors=True)
shutil.rmtree(".nbflow/restart-demo", ignore_errors=True)
os.makedirs(".nbflow/restart-demo")
"""),
        md("""
## First run: `fit` crashes

`fetch` and `features` finish and are checkpointed; `fit` raises. The cell prints the error
with your part of the traceback (no nbflow internals) and says how to continue. The widget
paints `fit` red and `evaluate` stays pending. The cell is marked failed, like any failing
cell, so "Run All" stops here.
"""),
        code(IGNORE + RESTART_CELL, fails=True),
        code(
            CHECK
            + """
%workflow status train
"""
        ),
        code(
            CHECK
            + """
print(open(RAN_LOG).read())
"""
        ),
        md("""
## "Restart" the kernel

A real restart would drop every variable. Here we do the part that matters: forget the
workflow's functions and reload the extension, so nbflow keeps nothing in memory about
`train`. All that is left is the store in `.nbflow/restart`.
"""),
        code("""
for name in ("train", "fetch", "features", "fit", "evaluate", "_ran"):
    globals().pop(name, None)
%reload_ext nbflow
"""),
        md("""
## Re-run the same cell: it resumes

This is the cell from above, unchanged. `fetch` and `features` are **restored** from their
checkpoints (light green; they do not run again), `fit` runs again (the simulated problem is
gone now) and `evaluate` runs for the first time.
"""),
        code(IGNORE + RESTART_CELL),
        code(
            CHECK
            + """
print("output:", _)
%workflow status train
"""
        ),
        md("""
`ran.log` proves it: after the first three lines (first run), only `fit` and `evaluate`
executed.
"""),
        code(
            CHECK
            + """
print(open(RAN_LOG).read())
"""
        ),
        md("""
## What the real thing looks like

- **The kernel died in the middle of a task** (no exception at all): that task had no
  checkpoint yet, so it runs again when you resume. Delivery is *at least once*: a task with
  side effects outside the store should be safe to repeat.
- **Which instances did a dead kernel leave behind?** Ask the store from a terminal, no
  kernel needed: `nbflow --dir notebooks/.nbflow/restart list`, or in the notebook
  `%workflow list --dir .nbflow/restart` (shown below). `nbflow --dir ... status train`
  shows one instance, task by task (a workflow name works wherever an instance id does);
  `nbflow --dir ... resume train --module my_flows.py` continues it from a script.
- **Where was I?** `%workflow status train --dir .nbflow/restart` in a fresh kernel (no
  need to re-run the cell) shows the stored state and every task — and, for a run whose
  kernel died, which tasks it was running; `%workflow show train` shows what a resume would
  do before running it, and why each stale task is stale.
- **A long run you don't want to block on**: `%%workflow ... --background` returns at once;
  after a restart, re-running that cell resumes in the background too.
"""),
        code(
            IGNORE
            + """
%workflow list --dir .nbflow/restart
"""
        ),
    ]


# -- 03 -------------------------------------------------------------------------------------
SALES_V1 = """
%%workflow sales --dir .nbflow/inspection
def load():
    print("read 5 rows from the shop database")
    return [12.5, 3.0, 3.0, 40.0, 7.5]

def clean(load):
    print(f"dropped {len(load) - len(set(load))} duplicate(s)")
    return sorted(set(load))

def total(clean):
    return sum(clean)

def count(clean):
    return len(clean)

def report(total, count):
    print("formatting the report")
    return f"{count} sales, average {total / len(count):.2f}"
"""

SALES_V2 = SALES_V1.replace(
    'return f"{count} sales, average {total / len(count):.2f}"',
    'return f"{count} sales, average {total / count:.2f}"',
)
SALES_V3_HEAD = SALES_V2.replace(
    """def clean(load):
    print(f"dropped {len(load) - len(set(load))} duplicate(s)")
    return sorted(set(load))""",
    """def clean(load):                       # edited: also drop tiny sales
    print(f"dropped {len(load) - len(set(load))} duplicate(s) and sales under 5")
    return sorted(x for x in set(load) if x >= 5)""",
)
SALES_V3_NO_RUN = SALES_V3_HEAD.replace("--dir .nbflow/inspection", "--dir .nbflow/inspection --no-run")


def inspection() -> list[nbformat.NotebookNode]:
    assert SALES_V2 != SALES_V1 and SALES_V3_HEAD != SALES_V2
    return [
        md("""
# 03 · Visual inspection: failed tasks, stale tasks, task details

The widget paints every task in its state:

| colour | state | meaning |
| --- | --- | --- |
| white | pending | not run yet |
| blue | running | executing now |
| green | done | ran in this run and is checkpointed |
| light green | restored | its checkpoint was reused (before a resume: will be reused); it does not run |
| red | failed | raised (after its retries); click it for the traceback |
| orange | retrying | failed, will try again |
| yellow | stale | its code changed since its checkpoint: it and its descendants will run again |
| grey | cancelled / skipped | stopped by a cancel or interrupt / a route not taken |
| purple | waiting / awaiting signal | a durable delay, or waiting for a human (`%workflow signal`) |

Click a node (or a table row) to open the **detail pane**: output preview, captured
stdout/stderr, error and traceback, attempts and duration. This lesson produces a failure and
a stale task on purpose and shows where to look.
"""),
        code("""
%load_ext nbflow
import shutil

shutil.rmtree(".nbflow/inspection", ignore_errors=True)  # start clean: same output every run
"""),
        md("""
## A failed task

`report` has a bug (`len(count)` on an int). The other tasks finish and are checkpointed;
`report` is painted red. Under the cell you get the error with only *your* frames of the
traceback. In the widget, **click `report`**: the detail pane shows the error and the
traceback, and what the task printed before it failed.
"""),
        code(IGNORE + SALES_V1, fails=True),
        code(CHECK + "%workflow status sales"),
        md("""
Fix the bug and run the cell again: the four finished tasks are restored, only `report`
runs.
"""),
        code(IGNORE + SALES_V2),
        code(
            CHECK
            + """
print(_)
%workflow status sales
"""
        ),
        md("""
## Stale tasks: edit one function

Now change `clean` (it should also drop sales under 5). nbflow keeps a fingerprint of every
task's code, so it knows that the checkpoint of `clean` was made by other code: `clean` is
**stale**, and so is everything that depends on it (`total`, `count`, `report`). `load` is
untouched and will be restored.

`--no-run` builds the workflow and shows the widget **without running**, so you see what
would happen first: stale tasks are yellow, tasks whose checkpoints will be reused light green.
"""),
        code(IGNORE + SALES_V3_NO_RUN),
        md("""
`%workflow show NAME` shows the same thing at any time: a widget painted with what a resume
would do, or with `--no-widget` as text, with **why** each task is stale: `clean`'s own code
changed (and the diff of its source against the code that made the checkpoint), the others
because their upstream `clean` changed. In the widget, click a yellow node for the same.
A helper function the task calls — also one in your own module next to the notebook —
counts as its code too. An edit that changes nothing (a renamed variable) can be kept:
`%workflow accept sales clean` marks the checkpoint valid for the current code.
"""),
        code(CHECK + "%workflow show sales --no-widget"),
        md("""
Run it (the same cell without `--no-run`): the stale tasks run again, `load` is restored.
(With `--on-change fail` nbflow would refuse to run edited code instead.)
"""),
        code(IGNORE + SALES_V3_HEAD),
        code(
            CHECK
            + """
print(_)
%workflow status sales
"""
        ),
        md("""
## Task details from Python

What the detail pane shows is also available in Python. The widget is a regular object:
attach one to a runner, run, and *select* a task the way a click does. Captured output is
stored with the checkpoint, so even a **restored** task shows what it printed when it ran
(here: `load`, which printed during the very first run).
"""),
        code(
            IGNORE
            + """
import nbflow as nf
from nbflow.jupyter.widget import WorkflowWidget

backend = nf.DiskcacheBackend(".nbflow/inspection")
instance = nf.WorkflowClient(backend).list_instances(workflow="sales")[0].instance_id
runner = nf.CheckpointingRunner(backend, echo_output=False)
widget = WorkflowWidget(sales, instance_id=instance, plan=runner.plan(sales, instance))
widget.listen(runner.events)
widget.display()
runner.resume(sales, instance)   # everything is checkpointed: all five are restored
widget.flush()
"""
        ),
        code(
            CHECK
            + """
print(widget.summary())
for task in ("load", "clean", "report"):
    widget.selected = task             # what clicking the node does
    d = widget.detail
    print(f"{task}: state={d['state']} attempts={d['attempts']} preview={d['preview']} stdout={d['stdout']!r}")
"""
        ),
        md("""
The same detail is in the live widget's pane (`pre.nbflow-detail-stdout`,
`…-preview`, `…-traceback`). In a saved notebook without a kernel (GitHub, nbconvert) the
widget falls back to a painted SVG and the one-line text summary printed above.
"""),
    ]


NOTEBOOKS: dict[str, tuple[str, Callable[[], list[nbformat.NotebookNode]]]] = {
    "quickstart": ("01-quickstart.ipynb", quickstart),
    "restart": ("02-resume-after-restart.ipynb", restart),
    "inspection": ("03-visual-inspection.ipynb", inspection),
}


def write_notebook(cells: list[nbformat.NotebookNode], path: Path, *, execute: bool = True) -> Path:
    """Make a notebook of ``cells``, run it top to bottom (nbclient) so its outputs are
    stored for nbval, and write it to ``path``. The other notebook scripts use it too."""
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    if execute:
        from nbclient import NotebookClient

        t0 = time.monotonic()
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        print(f"executed {path.name} in {time.monotonic() - t0:.1f} s")
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print("wrote", path)
    return path


def build(name: str, *, execute: bool = True) -> Path:
    filename, make = NOTEBOOKS[name]
    return write_notebook(make(), HERE / filename, execute=execute)


def main(argv: list[str]) -> int:
    execute = "--no-execute" not in argv
    names = [a for a in argv if not a.startswith("--")] or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        print(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}", file=sys.stderr)
        return 2
    for name in names:
        build(name, execute=execute)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
