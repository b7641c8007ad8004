"""ProcessExecutor and DaskExecutor: task bodies defined in ``__main__`` run in other
processes; context, captured output and errors come back; a lost worker is retried."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow as nf

ROOT = Path(__file__).resolve().parents[2]


def _run_script(tmp_path: Path, body: str, timeout: float = 240) -> dict:
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


PROCESS_SCRIPT = """
    import json, os, sys
    import nbflow as nf

    class Point:                      # a class that only exists in __main__
        def __init__(self, x): self.x = x

    class Boom(Exception):
        pass

    def make(n):
        ctx = nf.get_task_context()
        print(f"making {n} in {ctx.task_id}")
        return [Point(i) for i in range(n)]

    def heavy(points):
        ctx = nf.get_task_context()
        return {"sum": sum(p.x for p in points), "pid": os.getpid(), "task": ctx.task_id, "attempt": ctx.attempt}

    def light(points):
        return {"sum": len(points), "pid": os.getpid(), "task": nf.get_task_context().task_id, "attempt": 1}

    def join(d):
        return d

    def flaky(x):
        if nf.get_task_context().attempt == 1:
            raise Boom("first attempt fails")
        return x

    def broken(x):
        raise Boom("always")

    if __name__ == "__main__":
        store = nf.DiskcacheBackend(os.path.join(sys.argv[1], "store"))
        wf = (nf.Workflow("proc").then(make).fork().branch(heavy).branch(light).join(join)
              .then("retry", flaky, retries=1).build())
        with nf.ProcessExecutor(max_workers=2) as ex:
            runner = nf.CheckpointingRunner(store, executor=ex, echo_output=False)
            status = runner.run(wf, "p-1", 5)
            bad = runner.run(nf.Workflow("bad").then(broken).build(), "p-2", 1)
        recs = store.get_records("p-1")
        out = status.output
        print("RESULT " + json.dumps({
            "state": str(status.state), "heavy": out["heavy"], "light": out["light"],
            "parent": os.getpid(), "make_stdout": recs["make"].stdout,
            "workers": {t: recs[t].worker for t in ("make", "heavy", "light", "join")},
            "retry_attempt": recs["retry"].attempt,
            "bad_state": str(bad.state), "bad_type": bad.error.type, "bad_message": bad.error.message,
        }))
"""


@pytest.mark.slow
def test_process_executor_runs_main_functions(tmp_path: Path) -> None:
    res = _run_script(tmp_path, PROCESS_SCRIPT)
    assert res["state"] == "completed"
    assert res["heavy"]["sum"] == 10 and res["heavy"]["task"] == "heavy"
    assert res["light"]["task"] == "light"
    assert res["heavy"]["pid"] != res["parent"] and res["light"]["pid"] != res["parent"]
    assert res["make_stdout"] == "making 5 in make\n"  # captured in the child, stored with the record
    assert all(
        w and w.endswith(tuple(str(p) for p in (res["heavy"]["pid"], res["light"]["pid"])))
        for w in (res["workers"]["heavy"], res["workers"]["light"])
    )
    assert res["retry_attempt"] == 2
    assert res["bad_state"] == "failed" and res["bad_type"] == "Boom" and "always" in res["bad_message"]


DASK_SCRIPT = """
    import json, os, sys, time, signal, pathlib
    import dask
    import nbflow as nf

    MARKS = pathlib.Path(sys.argv[1]) / "marks"

    class Result:                     # defined in __main__: travels by value both ways
        def __init__(self, branch, pid): self.branch, self.pid = branch, pid

    def start(x):
        return x

    def make_branch(name):
        def body(x):
            ctx = nf.get_task_context()
            (MARKS / f"{name}-{ctx.attempt}-{os.getpid()}").write_text("")
            time.sleep(1.5)
            print(f"{name} done")
            return Result(name, os.getpid())
        body.__name__ = name
        return nf.task(retries=2)(body)  # a lost worker is an ordinary, retried failure

    def join(d):
        return {k: (type(v).__name__, v.branch, v.pid) for k, v in d.items()}

    if __name__ == "__main__":
        from distributed import Client, LocalCluster
        MARKS.mkdir()
        # Dask would re-run a task lost with its worker by itself; with no allowed
        # failures it raises KilledWorker instead, and nbflow's own retry re-submits it.
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
            store = nf.DiskcacheBackend(os.path.join(sys.argv[1], "store"))
            fork = nf.Workflow("dask").then(start).fork()
            for name in ("a", "b", "c", "d"):
                fork = fork.branch(name, make_branch(name))
            wf = fork.join(join).build()
            runner = nf.CheckpointingRunner(store, executor=nf.DaskExecutor(client), echo_output=False)
            handle = runner.start(wf, "d-1", 1)
            deadline = time.time() + 60
            while not list(MARKS.iterdir()) and time.time() < deadline:
                time.sleep(0.05)
            victim = int(sorted(MARKS.iterdir())[0].name.rsplit("-", 1)[1])
            os.kill(victim, signal.SIGKILL)           # a Dask worker process dies mid-task
            status = handle.wait(timeout=180)
            recs = store.get_records("d-1")
            print("RESULT " + json.dumps({
                "state": str(status.state), "output": status.output, "victim": victim,
                "attempts": {k: recs[k].attempt for k in "abcd"},
                "workers": {k: recs[k].worker for k in "abcd"},
                "stdout": recs["a"].stdout, "parent": os.getpid(),
                "marks": sorted(p.name for p in MARKS.iterdir()),
            }))
"""


@pytest.mark.slow
def test_dask_executor_survives_a_killed_worker(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    res = _run_script(tmp_path, DASK_SCRIPT)
    assert res["state"] == "completed"
    out = res["output"]
    assert {k: v[:2] for k, v in out.items()} == {k: ["Result", k] for k in "abcd"}
    assert all(pid != res["parent"] for _, _, pid in out.values())  # bodies ran on the cluster
    assert all(pid != res["victim"] for _, _, pid in out.values())  # ... and none on the dead worker
    assert max(res["attempts"].values()) >= 2  # the lost task was retried by nbflow
    assert any(str(res["victim"]) in m for m in res["marks"])
    assert all(w.startswith("dask tcp://") for w in res["workers"].values())
    assert res["stdout"] == "a done\n"


def test_dask_executor_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(nf.MissingDependencyError, match=r'pip install "nbflow\[dask\]"') as info:
        nf.DaskExecutor(object())
    assert isinstance(info.value, ImportError)


def test_dask_executor_rejects_a_non_client() -> None:
    pytest.importorskip("distributed")
    with pytest.raises(nf.ConfigurationError, match=r"distributed\.Client"):
        nf.DaskExecutor(object())


def test_process_executor_validates() -> None:
    with pytest.raises(nf.ConfigurationError):
        nf.ProcessExecutor(max_workers=0)
    with pytest.raises(nf.ConfigurationError):
        nf.ProcessExecutor(mp_context="nope")


def test_run_shipped_round_trip_in_process() -> None:
    """The child side, called directly: context, capture, errors with a traceback note."""
    from nbflow.core.context import TaskContext
    from nbflow.run.executors import run_shipped, ship, unpack

    def body(x: int) -> int:
        print("hi", nf.get_task_context().task_id)
        return x * 2

    tctx = TaskContext("wf", "i", "t", 1, {})
    value, cap = unpack(run_shipped(ship(body, [21], {}, tctx)))
    assert value == 42 and cap.stdout.getvalue() == "hi t\n" and cap.worker

    def bad() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError) as info:
        unpack(run_shipped(ship(bad, [], {}, tctx)))
    assert any("Raised in worker" in n for n in getattr(info.value, "__notes__", []))
