"""Build notebooks/04-control-flow.ipynb and execute it once to store its outputs.

Usage:  python notebooks/make_04_control_flow.py [--no-execute]

Validate with:
    python -m pytest notebooks/04-control-flow.ipynb --nbval-lax --nbval-current-env \
        --nbval-sanitize-with notebooks/nbval_sanitize.cfg
Cells marked ``# NBVAL_CHECK_OUTPUT`` print deterministic facts and are compared;
``# NBVAL_IGNORE_OUTPUT`` marks outputs with paths or timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

from build import write_notebook  # notebooks/build.py: run it with nbclient, write it
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = Path(__file__).parent
NB = HERE / "04-control-flow.ipynb"

CHECK = "# NBVAL_CHECK_OUTPUT\n"
IGNORE = "# NBVAL_IGNORE_OUTPUT\n"

cells = [
    new_markdown_cell(
        "# Control flow: routes, loops, a human approval and a map\n"
        "\n"
        "Every construct here is **checkpointed and resumable**: a route remembers the branch it took,\n"
        "a loop stores each iteration, a signal wait stores its deadline, and a map stores every item on\n"
        "its own. Kill the kernel anywhere and re-running resumes where it stopped.\n"
        "\n"
        "We use the fluent builder and a `CheckpointingRunner` on an on-disk store in a throw-away folder."
    ),
    new_code_cell(
        IGNORE + "import os\n"
        "import tempfile\n"
        "\n"
        "import nbflow as nf\n"
        "\n"
        "workdir = tempfile.mkdtemp(prefix='nbflow-04-')\n"
        "os.chdir(workdir)  # the store lives in ./store of this temporary folder\n"
        "backend = nf.DiskcacheBackend('store')\n"
        "runner = nf.CheckpointingRunner(backend, echo_output=False)\n"
        "client = nf.WorkflowClient(backend)\n"
        "workdir"
    ),
    # -- routes ---------------------------------------------------------------------------------
    new_markdown_cell(
        "## 1. Routes: pick one branch by a key\n"
        "\n"
        "`.route(key_fn, keys=[...])` calls `key_fn` on the previous output; the branch whose key it returns\n"
        "runs, the others are **skipped** (the widget paints them grey). Declared keys are checked when the\n"
        "workflow is built: a declared key without a branch (and no `default_branch`) is an error right away,\n"
        "not in the middle of a run."
    ),
    new_code_cell(
        CHECK + "def size(order):\n"
        "    return 'bulk' if order['qty'] >= 100 else 'retail'\n"
        "\n"
        "def bulk_price(order):\n"
        "    return round(order['qty'] * 9.5, 2)\n"
        "\n"
        "def retail_price(order):\n"
        "    return round(order['qty'] * 12.0, 2)\n"
        "\n"
        "def invoice(total):\n"
        "    return f'invoice: {total:.2f} EUR'\n"
        "\n"
        "pricing = (\n"
        "    nf.Workflow('pricing')\n"
        "    .then('parse', lambda text: {'qty': int(text)})\n"
        "    .route(size, keys=['bulk', 'retail'])\n"
        "        .branch('bulk', bulk_price)\n"
        "        .branch('retail', retail_price)\n"
        "    .done()\n"
        "    .then(invoice)\n"
        "    .build()\n"
        ")\n"
        "print(pricing.task_ids)\n"
        "for qty in ('250', '3'):\n"
        "    status = runner.run(pricing, f'order-{qty}', qty)\n"
        "    plan = runner.plan(pricing, f'order-{qty}')\n"
        "    skipped = [t for t, what in plan.items() if what == 'skip']\n"
        "    print(f'{qty:>4} -> {status.output!r}; skipped: {skipped}')"
    ),
    new_code_cell(
        CHECK + "try:\n"
        "    nf.Workflow('broken').route(size, keys=['bulk', 'retail']).branch('bulk', bulk_price).done()\n"
        "except nf.WorkflowDefinitionError as exc:\n"
        "    print(exc)"
    ),
    # -- loops ----------------------------------------------------------------------------------
    new_markdown_cell(
        "## 2. Loops: repeat until done\n"
        "\n"
        "The body returns `nf.LoopResult.again(value)` to go round once more or `nf.LoopResult.done(value)`\n"
        "to leave. Each iteration is checkpointed as `<loop>#<n>`, so a crash in iteration 7 resumes at\n"
        "iteration 7. `max_iterations` bounds it; `on_max='exit_with_last'` continues with the last value\n"
        "instead of failing."
    ),
    new_code_cell(
        CHECK + "def newton(state):\n"
        "    x, target = state\n"
        "    better = (x + target / x) / 2\n"
        "    if abs(better - x) < 1e-9:\n"
        "        return nf.LoopResult.done(round(better, 6))\n"
        "    return nf.LoopResult.again((better, target))\n"
        "\n"
        "sqrt = nf.Workflow('sqrt').then('start', lambda t: (t, t)).loop(newton, max_iterations=50).build()\n"
        "status = runner.run(sqrt, 'sqrt-2', 2.0)\n"
        "iterations = sorted((k for k in backend.get_records('sqrt-2') if k.startswith('newton#')),\n"
        "                    key=lambda k: int(k.split('#')[1]))\n"
        "print(status.state, status.output)\n"
        "print(len(iterations), 'iterations checkpointed:', iterations[:3], '...')"
    ),
    # -- signals --------------------------------------------------------------------------------
    new_markdown_cell(
        "## 3. A human approval: wait for a signal\n"
        "\n"
        "`.wait_for_signal('approval', timeout='1h')` parks the workflow until someone sends the signal.\n"
        "A blocking `runner.run` that reaches it **returns** with state `awaiting_signal` — a parked\n"
        "workflow holds no thread and survives a kernel restart. Signals are buffered first-in first-out,\n"
        "so one sent early (or while no kernel runs) is not lost."
    ),
    new_code_cell(
        CHECK + "def draft(topic):\n"
        "    return f'A short note about {topic}'\n"
        "\n"
        "def publish(approval):\n"
        "    return f\"published ({'approved' if approval['approved'] else 'rejected'} by {approval['by']})\"\n"
        "\n"
        "review = (\n"
        "    nf.Workflow('review')\n"
        "    .then(draft)\n"
        "    .wait_for_signal('approval', timeout='1h')\n"
        "    .then(publish)\n"
        "    .build()\n"
        ")\n"
        "status = runner.run(review, 'review-1', 'durable workflows')\n"
        "print(status.state, '| waiting for:', status.signal)\n"
        "print(client.status('review-1').state, '| a runner holds it:', client.is_running('review-1'))"
    ),
    new_markdown_cell(
        "Send the approval from Python with `WorkflowClient.send_signal`, then resume. The draft is\n"
        "restored from its checkpoint, not computed again:"
    ),
    new_code_cell(
        CHECK + "client.send_signal('review-1', 'approval', {'approved': True, 'by': 'ana'})\n"
        "status = runner.resume(review, 'review-1')\n"
        "print(status.state, '->', status.output)"
    ),
    new_markdown_cell(
        "In a notebook there are two more ways to approve:\n"
        "\n"
        "* the **`%workflow signal NAME SIGNAL JSON`** magic (after `%load_ext nbflow`); `NAME` is a\n"
        "  `%%workflow` cell's workflow or a stored instance id;\n"
        "* the widget's **Send signal** button, while a `%%workflow --background` run waits. In a cell, a\n"
        "  signal step is an assignment: `approval = nf.wait_for_signal('approval', after=['draft'])`;\n"
        "  a function with a parameter named `approval` receives the payload.\n"
        "\n"
        'From a terminal, `nbflow --dir store signal review-2 approval \'{"approved": false, "by": "bo"}\'` does\n'
        "the same. Here is the magic on a second instance:"
    ),
    new_code_cell("%load_ext nbflow"),
    new_code_cell(CHECK + "print(runner.run(review, 'review-2', 'checkpoints').state)"),
    new_code_cell(CHECK + '%workflow signal --dir store review-2 approval {"approved": false, "by": "bo"}'),
    new_code_cell(CHECK + "print(runner.resume(review, 'review-2').output)"),
    # -- map ------------------------------------------------------------------------------------
    new_markdown_cell(
        "## 4. Map: fan out over a list\n"
        "\n"
        "`.map(fn, concurrency=8)` runs `fn` on every item of the previous output, at most `concurrency`\n"
        "at a time, and returns the results **in input order**. Every item is checkpointed on its own\n"
        "(`<map>[<i>]`), so a crash at item 5,000 of 10,000 resumes there, and a failing item is reported\n"
        "with its index. Retries apply per item."
    ),
    new_code_cell(
        CHECK + "calls = {}\n"
        "broken = {137}\n"
        "\n"
        "def score(n):\n"
        "    calls[n] = calls.get(n, 0) + 1\n"
        "    if n in broken:\n"
        "        raise ValueError(f'cannot score {n}')\n"
        "    return n * n % 97\n"
        "\n"
        "scoring = (\n"
        "    nf.Workflow('scoring')\n"
        "    .then('ids', lambda n: list(range(n)))\n"
        "    .map(score, concurrency=8)\n"
        "    .then('best', max)\n"
        "    .build()\n"
        ")\n"
        "status = runner.run(scoring, 'scores', 1000)\n"
        "print(status.state, '->', status.error)"
    ),
    new_code_cell(
        CHECK + "broken.clear()  # fix the bug, then resume: only the items without a checkpoint run again\n"
        "before = dict(calls)\n"
        "status = runner.resume(scoring, 'scores')\n"
        "rerun = sorted(n for n in calls if calls[n] > before.get(n, 0))\n"
        "print(status.state, '-> best score', status.output)\n"
        "print('items re-run:', 137 in rerun, '| every item ran at most twice:', max(calls.values()) <= 2)\n"
        "print('items stored:', sum(1 for k in backend.get_records('scores') if k.startswith('score[')))"
    ),
    new_code_cell(CHECK + "print(runner.get_task_result('scores', 'score')[:10])"),
    # -- overview -------------------------------------------------------------------------------
    new_markdown_cell(
        "## Everything in the store\n"
        "\n"
        "`WorkflowClient.list_instances(workflow=..., state=...)` (or `nbflow --dir store list` in a\n"
        "terminal) shows every instance; `cancel`, `pause` and `unpause` reach a running one at its next\n"
        "task boundary, even from another process."
    ),
    new_code_cell(
        CHECK + "for s in sorted(client.list_instances(), key=lambda s: s.instance_id):\n"
        "    print(f'{s.instance_id:<12} {s.workflow:<8} {s.state:<10} {s.tasks_done}/{s.tasks_total}')"
    ),
]

write_notebook(cells, NB, execute="--no-execute" not in sys.argv)
