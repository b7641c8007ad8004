"""Build notebooks/05-scaling-out.ipynb and execute it once to store its outputs.

Usage:  python notebooks/make_05_scaling_out.py [--no-execute]

Validate with:
    python -m pytest notebooks/05-scaling-out.ipynb --nbval-lax --nbval-current-env \
        --nbval-sanitize-with notebooks/nbval_sanitize.cfg
Cells marked ``# NBVAL_CHECK_OUTPUT`` print deterministic facts and are compared;
``# NBVAL_IGNORE_OUTPUT`` marks outputs with paths, pids or timings.

The worker pool runs as real ``nbflow worker`` processes started from the notebook
with ``subprocess`` (they import a small module the notebook writes), and once more
as ``worker.start()`` threads inside the kernel for notebook-defined functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from build import write_notebook  # notebooks/build.py: run it with nbclient, write it
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = Path(__file__).parent
NB = HERE / "05-scaling-out.ipynb"

CHECK = "# NBVAL_CHECK_OUTPUT\n"
IGNORE = "# NBVAL_IGNORE_OUTPUT\n"

cells = [
    new_markdown_cell(
        "# Scaling out: Dask for task bodies, a worker pool for instances\n"
        "\n"
        "When one kernel is not enough, nbflow offers two ways out — and writes no cluster scheduler of its own:\n"
        "\n"
        "1. **`DaskExecutor(client)`** — the runner in this kernel keeps scheduling, retries and checkpoints;\n"
        "   only the task *bodies* travel to a Dask `distributed` cluster. Fork branches and map items run side\n"
        "   by side there. Functions and classes defined right here in the notebook work (they are shipped with\n"
        "   cloudpickle). `ProcessExecutor(n)` does the same with local processes.\n"
        "2. **`PooledWorker`** — several worker processes share one store. You *submit* instances; workers claim\n"
        "   ready steps with a time-limited claim, renew it by heartbeat, checkpoint, and release. A worker that\n"
        "   dies loses its claim when the TTL passes and another worker runs the step.\n"
        "\n"
        "Everything happens in a throw-away folder."
    ),
    new_code_cell(
        IGNORE + "import os\n"
        "import subprocess\n"
        "import sys\n"
        "import tempfile\n"
        "import time\n"
        "\n"
        "import nbflow as nf\n"
        "\n"
        "workdir = tempfile.mkdtemp(prefix='nbflow-05-')\n"
        "os.chdir(workdir)\n"
        "backend = nf.DiskcacheBackend('store')\n"
        "client = nf.WorkflowClient(backend)\n"
        "workdir"
    ),
    # -- Dask ---------------------------------------------------------------------------------
    new_markdown_cell(
        "## 1. Task bodies on a Dask cluster\n"
        "\n"
        "A small `LocalCluster`: two worker *processes*, one thread each. On a real cluster you would pass\n"
        "`Client('tcp://scheduler:8786')` instead. The class and the functions below exist only in this\n"
        "notebook (`__main__`)."
    ),
    new_code_cell(
        IGNORE + "from distributed import Client, LocalCluster\n"
        "\n"
        "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)\n"
        "dask_client = Client(cluster)\n"
        "len(cluster.workers)"
    ),
    new_code_cell(
        "class Score:\n"
        '    """A notebook-defined class: instances travel to the workers and back."""\n'
        "    def __init__(self, name, value):\n"
        "        self.name, self.value = name, value\n"
        "    def __repr__(self):\n"
        "        return f'Score({self.name!r}, {self.value})'\n"
        "\n"
        "def crunch(n):\n"
        "    # CPU-bound pure Python: threads would share one GIL, processes do not\n"
        "    acc = 0\n"
        "    for i in range(n):\n"
        "        acc = (acc * 31 + i) % 1_000_003\n"
        "    return acc\n"
        "\n"
        "def make_branch(k):\n"
        "    def branch(n):\n"
        "        ctx = nf.get_task_context()\n"
        "        print(f'{ctx.task_id} crunching {n + k} numbers')  # captured on the worker, stored here\n"
        "        return Score(ctx.task_id, crunch(n + k))\n"
        "    branch.__name__ = f'part{k}'\n"
        "    return branch\n"
        "\n"
        "fork = nf.Workflow('crunch').then('size', lambda n: n).fork()\n"
        "for k in range(4):\n"
        "    fork = fork.branch(f'part{k}', make_branch(k))\n"
        "crunch_wf = fork.join('best', lambda d: max(d.values(), key=lambda s: s.value)).build()"
    ),
    new_code_cell(
        CHECK
        + "dask_runner = nf.CheckpointingRunner(backend, executor=nf.DaskExecutor(dask_client), echo_output=False)\n"
        "status = dask_runner.run(crunch_wf, 'crunch-1', 200_000)\n"
        "print(status.state, status.output)\n"
        "records = backend.get_records('crunch-1')\n"
        "for task in ('part0', 'part1', 'part2', 'part3'):\n"
        "    rec = records[task]\n"
        "    print(task, rec.preview, '| ran on a Dask worker:', rec.worker.startswith('dask tcp://'), '| stdout:', rec.stdout.strip())"
    ),
    new_markdown_cell(
        "Each checkpoint records *where* its body ran (the widget shows it too). The Dask worker addresses\n"
        "change from run to run, so we print them in a cell nbval does not compare:"
    ),
    new_code_cell(IGNORE + "{task: records[task].worker for task in ('part0', 'part1', 'part2', 'part3')}"),
    new_markdown_cell(
        "If a Dask worker dies mid-task, Dask re-runs the task on another worker (up to\n"
        "`distributed.scheduler.allowed-failures` times), then raises `KilledWorker` — an ordinary task failure,\n"
        "so the task's `retries=` submit it again. A lost worker costs a retried task, never the run.\n"
        "Checkpoints never leave this kernel's store."
    ),
    new_code_cell(IGNORE + "dask_client.close()\ncluster.close()"),
    # -- worker pool -------------------------------------------------------------------------
    new_markdown_cell(
        "## 2. A worker pool on one store\n"
        "\n"
        "Worker processes import the workflows from a module — here a small file this notebook writes. (Shell\n"
        "users start the same workers with `nbflow --dir store worker --module flows.py --id w1`.)"
    ),
    new_code_cell(
        "flows_source = '''\n"
        "import os\n"
        "import nbflow as nf\n"
        "\n"
        "def items(n):\n"
        "    return list(range(n))\n"
        "\n"
        "def square(i):\n"
        "    return i * i\n"
        "\n"
        "def report(squares):\n"
        "    return {'count': len(squares), 'sum': sum(squares)}\n"
        "\n"
        "squares = nf.Workflow('squares').then(items).map(square).then(report).build()\n"
        "'''\n"
        "with open('flows.py', 'w') as fh:\n"
        "    fh.write(flows_source)\n"
        "\n"
        "sys.path.insert(0, workdir)\n"
        "import flows"
    ),
    new_markdown_cell("`WorkflowClient.submit` stores an instance as **pending**; nothing runs yet."),
    new_code_cell(
        CHECK + "for k in range(3):\n"
        "    client.submit(flows.squares, f'squares-{k}', 10 * (k + 1))\n"
        "for s in sorted(client.list_instances(workflow='squares'), key=lambda s: s.instance_id):\n"
        "    print(s.instance_id, s.state)"
    ),
    new_markdown_cell(
        "Two worker processes drain the queue (`--until-idle` makes them exit once nothing is pending or\n"
        "running; without it they keep polling for new work until Ctrl-C / SIGTERM, which finishes the steps in\n"
        "hand). `--claim-ttl` and `--heartbeat` set how fast a dead worker's step is taken over."
    ),
    new_code_cell(
        IGNORE + "cmd = [sys.executable, '-m', 'nbflow', '--dir', 'store', 'worker', '--module', 'flows.py',\n"
        "       '--concurrency', '2', '--claim-ttl', '30s', '--heartbeat', '5s', '--poll-interval', '0.1s', '--until-idle']\n"
        "procs = [subprocess.Popen(cmd + ['--id', f'w{i}'], stdout=subprocess.PIPE, text=True) for i in (1, 2)]\n"
        "logs = [p.communicate(timeout=120)[0] for p in procs]\n"
        "print(''.join(logs))"
    ),
    new_code_cell(
        CHECK + "for k in range(3):\n    s = client.status(f'squares-{k}')\n    print(s.instance_id, s.state, s.output)"
    ),
    new_markdown_cell(
        "Which worker ran each map item is stored with its checkpoint (and shown by the widget). The split\n"
        "between `w1` and `w2` depends on timing:"
    ),
    new_code_cell(
        IGNORE + "from collections import Counter\n"
        "Counter(r.worker for k in range(3) for t, r in backend.get_records(f'squares-{k}').items() if t.startswith('square['))"
    ),
    new_code_cell(
        CHECK
        + "ran_on = {r.worker for k in range(3) for t, r in backend.get_records(f'squares-{k}').items() if t.startswith('square[')}\n"
        "print('every item ran on a pool worker:', ran_on <= {'w1', 'w2'})"
    ),
    new_markdown_cell(
        "### Workers inside the kernel\n"
        "\n"
        "For workflows whose functions live in this notebook, `PooledWorker(...).start()` runs a worker in a\n"
        "background thread of the kernel and returns a handle (`shutdown()`, `join()`). Processes started\n"
        "elsewhere cannot import notebook functions; for CPU-bound bodies give the worker\n"
        "`executor=nf.ProcessExecutor()`."
    ),
    new_code_cell(
        CHECK + "def shout(text):\n"
        "    return text.upper() + '!'\n"
        "\n"
        "hello = nf.Workflow('hello').then(shout).then('length', lambda s: (s, len(s))).build()\n"
        "for name in ('ada', 'grace'):\n"
        "    client.submit(hello, f'hello-{name}', name)\n"
        "\n"
        "handles = [nf.PooledWorker(f'thread-{i}', backend, [hello], poll_interval=0.05).start(until_idle=True) for i in (1, 2)]\n"
        "for h in handles:\n"
        "    h.join(60)\n"
        "for name in ('ada', 'grace'):\n"
        "    print(client.status(f'hello-{name}').output)"
    ),
    new_markdown_cell(
        "## What to remember\n"
        "\n"
        "- `executor=nf.DaskExecutor(client)` (or `nf.ProcessExecutor()`): bodies run elsewhere, the runner and\n"
        "  its checkpoints stay here; notebook-defined functions and classes work.\n"
        "- `WorkflowClient.submit` + `PooledWorker` / `nbflow worker`: many processes on one store; a claim\n"
        "  expires when its worker dies and another worker re-runs the step; a late worker whose claim was taken\n"
        "  over cannot store a second result."
    ),
]

write_notebook(cells, NB, execute="--no-execute" not in sys.argv)
