"""``%%workflow`` and ``%workflow`` tested headless with IPython's global test shell.

Executions are counted with a list in the user namespace (DBOS-style counters); every
test uses its own store through ``--dir``. No timing assertions.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp

import nbflow as nf
from nbflow.jupyter.cell import default_instance_id
from nbflow.jupyter.magics import WorkflowMagics


@pytest.fixture(scope="module")
def ip() -> Any:
    # Looked up at call time: once some test started the shell, globalipapp's module-level
    # get_ipython is the shell's own (the name imported before would return None then).
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbflow")
    return shell


@pytest.fixture
def calls(ip: Any) -> list[str]:
    ip.user_ns["calls"] = []
    return ip.user_ns["calls"]  # type: ignore[no-any-return]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def magics(ip: Any) -> WorkflowMagics:
    return ip.magics_manager.registry["WorkflowMagics"]  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def no_widget_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run without a widget unless they install one (the real one is tested last)."""
    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", None)


def cell(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def run(ip: Any, line: str, body: str) -> Any:
    return ip.run_cell_magic("workflow", line, body)


def line(ip: Any, text: str) -> Any:
    return ip.run_line_magic("workflow", text)


ETL = cell(
    """
    def load(path):
        calls.append("load")
        return [path, path + "!"]

    def clean(load):
        calls.append("clean")
        return [p.upper() for p in load]

    def stats(clean):
        calls.append("stats")
        return len(clean)

    def plot(clean):
        calls.append("plot")
        return "plot:" + clean[0]

    def report(stats, plot):
        calls.append("report")
        return {"n": stats, "plot": plot}
    """
)
EXPECTED = {"n": 2, "plot": "plot:A.CSV"}


# -- the cell magic -----------------------------------------------------------------------
def test_cell_runs_binds_the_workflow_and_returns_the_output(ip: Any, calls: list[str], store: str) -> None:
    out = run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    assert out == EXPECTED
    assert sorted(calls) == ["clean", "load", "plot", "report", "stats"]
    wf = ip.user_ns["etl"]
    assert isinstance(wf, nf.WorkflowDefinition) and wf.name == "etl"
    assert ip.user_ns["load"].__module__ == "__main__"  # the functions live in the notebook
    assert ip.user_ns["load"]("x") == ["x", "x!"]


def test_cell_value_is_displayed_as_out(ip: Any, calls: list[str], store: str) -> None:
    result = ip.run_cell(f"%%workflow etl --input path=a.csv --no-widget --dir {store}\n{ETL}")
    assert result.success and result.result == EXPECTED


def test_rerunning_the_same_cell_restores_everything(
    ip: Any, calls: list[str], store: str, magics: WorkflowMagics
) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    calls.clear()
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL) == EXPECTED
    assert calls == []
    assert set(magics.entries["etl"].log.tasks.values()) == {"restored"}


def test_editing_one_body_reruns_it_and_its_descendants_only(ip: Any, calls: list[str], store: str) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    calls.clear()
    edited = ETL.replace('return "plot:" + clean[0]', 'return "PLOT:" + clean[0]')
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store}", edited) == {"n": 2, "plot": "PLOT:A.CSV"}
    assert sorted(calls) == ["plot", "report"]
    report = line(ip, "status etl")
    assert report.tasks == {
        "load": "restored",
        "clean": "restored",
        "stats": "restored",
        "plot": "done",
        "report": "done",
    }


def test_on_change_fail_refuses_an_edited_task(ip: Any, calls: list[str], store: str) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    calls.clear()
    edited = ETL.replace("return len(clean)", "return len(clean) + 1")
    with pytest.raises(UsageError, match="'stats'.*changed"):
        run(ip, f"etl --input path=a.csv --no-widget --dir {store} --on-change fail", edited)
    assert calls == []
    with pytest.raises(UsageError):
        run(ip, f"etl --input path=a.csv --no-widget --dir {store} --on-change sometimes", ETL)


def test_fresh_starts_over(ip: Any, calls: list[str], store: str) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    calls.clear()
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store} --fresh", ETL) == EXPECTED
    assert sorted(calls) == ["clean", "load", "plot", "report", "stats"]


def test_a_changed_shape_says_to_use_fresh(ip: Any, calls: list[str], store: str) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store} --instance fixed", ETL)
    more = ETL + "\ndef extra(report):\n    return 1\n"
    with pytest.raises(UsageError, match="--fresh"):
        run(ip, f"etl --input path=a.csv --no-widget --dir {store} --instance fixed", more)
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store} --instance fixed --fresh", more) == 1


def test_inputs_literals_strings_and_variables(ip: Any, calls: list[str], store: str) -> None:
    body = cell(
        """
        def combine(n, path, rows, flag, words):
            return (n + 1, path, sum(rows), flag, words)
        """
    )
    ip.user_ns["my_rows"] = [1, 2, 3]
    out = run(
        ip,
        f'w --input n=41 --input path=data.csv --input rows=$my_rows --input flag=True --input words="hello world" '
        f"--no-widget --dir {store}",
        body,
    )
    assert out == (42, "data.csv", 6, True, "hello world")
    with pytest.raises(UsageError, match="no variable 'nope'"):
        run(ip, f"w --input n=1 --input path=p --input rows=$nope --input flag=1 --input words=w --dir {store}", body)
    with pytest.raises(UsageError, match="KEY=VALUE"):
        run(ip, f"w --input n --dir {store}", body)
    with pytest.raises(UsageError, match="given twice"):
        run(ip, f"w --input n=1 --input n=2 --dir {store}", body)


def test_changed_inputs_make_a_new_instance_and_instance_flag_names_it(
    ip: Any, calls: list[str], store: str, magics: WorkflowMagics
) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    first = magics.entries["etl"].instance_id
    assert first == default_instance_id("etl", {"path": "a.csv"})
    calls.clear()
    assert run(ip, f"etl --input path=b.csv --no-widget --dir {store}", ETL) == {"n": 2, "plot": "plot:B.CSV"}
    assert "load" in calls and magics.entries["etl"].instance_id != first
    run(ip, f"etl --input path=a.csv --no-widget --dir {store} --instance my-run", ETL)
    assert magics.entries["etl"].instance_id == "my-run"
    ids = {s.instance_id for s in nf.WorkflowClient(nf.DiskcacheBackend(store)).list_instances()}
    assert ids == {first, magics.entries["etl"].instance_id, default_instance_id("etl", {"path": "b.csv"})}  # type: ignore[attr-defined]


def test_no_run_defines_without_running(ip: Any, calls: list[str], store: str) -> None:
    assert run(ip, f"etl --input path=a.csv --no-run --no-widget --dir {store}", ETL) is None
    assert calls == []
    assert isinstance(ip.user_ns["etl"], nf.WorkflowDefinition)
    with pytest.raises(UsageError, match="no instance"):
        line(ip, "resume etl --no-widget")
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL) == EXPECTED


def test_default_dir_is_dot_nbflow(ip: Any, calls: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(ip, "etl --input path=a.csv --no-widget", ETL) == EXPECTED
    assert (tmp_path / ".nbflow" / "instances").is_dir()


BAD_CELLS = [
    ("syntax", "def a():\n    return 1\n\ndef b(a:\n    return a\n", "", r"\(line 5\): the cell has a syntax error"),
    ("no functions", "x = 1\n", "", r"\(line 2\): the cell defines no functions"),
    (
        "twice",
        "def a():\n    return 1\ndef a():\n    return 2\n",
        "",
        r"\(line 5\): function 'a' is defined twice \(first on line 3\)",
    ),
    (
        "cycle",
        "def a(c):\n    return 1\ndef b(a):\n    return 2\ndef c(b):\n    return 3\n",
        "",
        r"\(line 3\): its tasks form a cycle: a -> b -> c -> a",
    ),
    (
        "missing input",
        "def a(path):\n    return path\n",
        "",
        r"\(line 3\): task 'a' needs the input 'path'.*--input path=",
    ),
    ("unknown input", "def a():\n    return 1\n", "--input nope=1", r"\(line 1\): --input 'nope' is not a parameter"),
    ("star args", "def a(*xs):\n    return xs\n", "", r"\(line 3\): task 'a' has a \*xs parameter"),
    ("bad name", "def a():\n    return 1\n", "", None),
]


@pytest.mark.parametrize(("label", "body", "flags", "message"), BAD_CELLS, ids=[c[0] for c in BAD_CELLS])
def test_bad_cells_raise_usage_error_with_the_line(
    ip: Any, calls: list[str], store: str, label: str, body: str, flags: str, message: str | None
) -> None:
    name = "not-a-name" if label == "bad name" else "bad"
    # line 1 is the %%workflow header, line 2 this statement, the body starts on line 3
    body = "calls.append('top level ran')\n" + body if label != "syntax" else body
    with pytest.raises(UsageError) as info:
        run(ip, f"{name} {flags} --no-widget --dir {store}", body)
    text = str(info.value)
    if message is None:
        assert "identifier" in text
    else:
        import re

        assert re.search(message, text), text
    assert calls == []  # nothing of the cell ran


def test_bad_flags_raise_usage_error(ip: Any, store: str) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        run(ip, f"etl --bogus --dir {store}", ETL)
    with pytest.raises(UsageError):
        run(ip, "", ETL)  # no name


def test_an_error_in_the_cells_own_code_is_one_line_and_runs_no_task(
    ip: Any, calls: list[str], store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="raised ZeroDivisionError.*no task ran"):
        run(ip, f"w --no-widget --dir {store}", "def a():\n    calls.append('a')\n    return 1\nx = 1 / 0\n")
    assert calls == []


def test_a_failed_task_fails_the_cell_with_a_compact_report(ip: Any, calls: list[str], store: str) -> None:
    broken = ETL.replace("return len(clean)", "return len(clean) / 0")
    with pytest.raises(nf.WorkflowFailedError) as info:
        run(ip, f"etl --input path=a.csv --no-widget --dir {store}", broken)
    assert info.value.task_id == "stats"
    err = str(info.value)
    # IPython shows these lines instead of a traceback through nbflow's internals
    assert info.value._render_traceback_() == err.splitlines()
    assert "workflow 'etl' failed: task 'stats' raised ZeroDivisionError: division by zero" in err
    assert "in stats" in err and "len(clean) / 0" in err  # the user's frame, with its source line
    assert "nbflow/run" not in err and "asyncio" not in err and "concurrent" not in err
    assert "Fix 'stats' and re-run the cell" in err
    # fix it: the tasks that finished are restored, the failed one and its descendants run
    calls.clear()
    assert run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL) == EXPECTED
    assert sorted(calls) == ["report", "stats"]


INTERRUPTIBLE = cell(
    """
    import os, signal, time
    import nbflow as nf

    def first():
        calls.append("first")
        return 1

    def second(first):
        calls.append("second")
        if interrupt_now:
            os.kill(os.getpid(), signal.SIGINT)  # the kernel's stop button
            ctx = nf.get_task_context()
            for _ in range(3000):
                if ctx.cancelled:
                    break
                time.sleep(0.01)
        return first + 1

    def third(second):
        calls.append("third")
        return second * 10
    """
)


def test_interrupt_keeps_finished_tasks_and_the_next_run_resumes(
    ip: Any, calls: list[str], store: str, capsys: pytest.CaptureFixture[str], magics: WorkflowMagics
) -> None:
    ip.user_ns["interrupt_now"] = True
    capsys.readouterr()
    # the cell fails (so Run All stops at it), after the instance was marked interrupted
    with pytest.raises(KeyboardInterrupt) as info:
        run(ip, f"w --no-widget --dir {store}", INTERRUPTIBLE)
    assert "w: interrupted, 1 tasks kept; re-run the cell or %workflow resume w to continue" in str(info.value)
    assert info.value._render_traceback_() == [f"KeyboardInterrupt: {info.value}"]  # type: ignore[attr-defined]
    assert line(ip, "status w").status.state == "interrupted"
    ip.user_ns["interrupt_now"] = False
    calls.clear()
    assert run(ip, f"w --no-widget --dir {store}", INTERRUPTIBLE) == 20
    assert calls == ["second", "third"]


BLOCKING = cell(
    """
    import time
    import nbflow as nf

    def first():
        calls.append("first")
        return 1

    def slow(first):
        calls.append("slow")
        started.set()
        ctx = nf.get_task_context()
        while not release.is_set() and not ctx.cancelled:
            time.sleep(0.01)
        return first + 1

    def last(slow):
        calls.append("last")
        return slow * 100
    """
)


@pytest.fixture
def gates(ip: Any) -> Iterator[tuple[threading.Event, threading.Event]]:
    started, release = threading.Event(), threading.Event()
    ip.user_ns["started"], ip.user_ns["release"] = started, release
    yield started, release
    release.set()  # never leave a task thread spinning


def test_background_run_returns_at_once_and_completes(
    ip: Any, calls: list[str], store: str, gates: tuple[threading.Event, threading.Event]
) -> None:
    started, release = gates
    handle = run(ip, f"bg --background --no-widget --dir {store}", BLOCKING)
    assert isinstance(handle, nf.RunHandle)
    assert started.wait(30)
    assert not handle.done()
    assert line(ip, "status bg").tasks["slow"] == "running"
    release.set()
    status = handle.wait(timeout=60)
    assert status.state == "completed" and status.output == 200
    assert calls == ["first", "slow", "last"]
    assert line(ip, "status bg").status.output == 200


def test_background_run_can_be_cancelled_and_resumed(
    ip: Any,
    calls: list[str],
    store: str,
    gates: tuple[threading.Event, threading.Event],
    capsys: pytest.CaptureFixture[str],
) -> None:
    started, release = gates
    handle = run(ip, f"bg --background --no-widget --dir {store}", BLOCKING)
    assert started.wait(30)
    with pytest.raises(UsageError, match="%workflow cancel bg"):  # the instance is busy
        run(ip, f"bg --no-widget --dir {store}", BLOCKING)
    capsys.readouterr()
    line(ip, "cancel bg")
    assert "cancel requested" in capsys.readouterr().out
    assert handle.wait(timeout=60).state == "cancelled"
    assert line(ip, "status bg").status.state == "cancelled"
    release.set()
    calls.clear()
    assert line(ip, "resume bg --no-widget") is None  # a cancelled instance stays cancelled ...
    assert "%workflow resume bg --revive runs it again" in capsys.readouterr().err
    assert line(ip, "resume bg --no-widget --revive") == 200  # ... unless revived
    assert calls == ["slow", "last"]


def test_line_magic_status_list_show_clear(
    ip: Any, calls: list[str], store: str, capsys: pytest.CaptureFixture[str], magics: WorkflowMagics
) -> None:
    run(ip, f"etl --input path=a.csv --no-widget --dir {store}", ETL)
    iid = magics.entries["etl"].instance_id
    report = line(ip, "status etl")
    assert report.status.state == "completed" and report.status.tasks_done == 5
    assert repr(report).startswith(f"etl [{iid}]: completed (5/5 tasks checkpointed)")
    by_id = line(ip, f"status {iid}")
    assert by_id.status.instance_id == iid
    capsys.readouterr()
    line(ip, f"list --dir {store}")
    out = capsys.readouterr().out
    assert iid in out and "completed" in out
    shown = line(ip, "show etl --no-widget")
    assert shown.tasks == dict.fromkeys(["load", "clean", "stats", "plot", "report"], "restore")
    line(ip, "clear etl")
    assert "cleared" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no instance"):
        line(ip, "status etl")
    with pytest.raises(UsageError, match="no workflow 'nothing'"):
        line(ip, f"status nothing --dir {store}")
    with pytest.raises(UsageError, match="unknown %workflow command"):
        line(ip, "explode etl")
    with pytest.raises(UsageError, match="the following arguments are required: NAME"):
        line(ip, "status")
    line(ip, "")
    assert "%workflow list" in capsys.readouterr().out


def test_status_of_an_instance_from_another_kernel(ip: Any, calls: list[str], store: str) -> None:
    # written by a plain runner, as another kernel or a script would
    wf = nf.Workflow("other").then("a", lambda x: x + 1).build()
    nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).run(wf, "other-1", 1)
    report = line(ip, f"status other-1 --dir {store}")
    assert report.status.state == "completed" and report.status.workflow == "other"
    with pytest.raises(UsageError, match="not defined in this kernel"):
        line(ip, f"resume other-1 --dir {store}")


def test_pause_unpause_and_signal(
    ip: Any, calls: list[str], store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(ip, f"etl --input path=a.csv --no-run --no-widget --dir {store}", ETL)
    # an instance that exists but is not running: pause marks it, unpause lifts it
    wf = ip.user_ns["etl"]
    backend = nf.DiskcacheBackend(store)
    nf.CheckpointingRunner(backend, echo_output=False).run(wf, "p-1", {"path": "x"})
    line(ip, f"pause p-1 --dir {store}")
    line(ip, f"unpause p-1 --dir {store}")
    assert "unpaused" in capsys.readouterr().out
    sent: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(nf.WorkflowClient, "send_signal", lambda self, i, n, p=None: sent.append((i, n, p)))
    line(ip, f'signal p-1 --dir {store} approval {{"ok": true, "who": "ada lovelace"}} ')
    line(ip, f"signal p-1 ping --dir {store}")
    assert sent == [("p-1", "approval", {"ok": True, "who": "ada lovelace"}), ("p-1", "ping", None)]
    with pytest.raises(UsageError, match="not JSON"):
        line(ip, f"signal p-1 approval --dir {store} {{nope")


def test_widget_is_shown_fed_and_flushed(
    ip: Any, calls: list[str], store: str, monkeypatch: pytest.MonkeyPatch, magics: WorkflowMagics
) -> None:
    made: list[FakeWidget] = []

    class FakeWidget:
        def __init__(
            self, wf: Any, *, instance_id: str = "", plan: Any = None, controls: Any = None, **more: Any
        ) -> None:
            self.wf, self.instance_id, self.plan, self.controls = wf, instance_id, plan, controls
            self.events: list[Any] = []
            self.flushed = self.shown = 0
            made.append(self)

        def display(self) -> None:
            self.shown += 1

        def listen(self, bus: Any) -> Any:
            return bus.subscribe(self.events.append)

        def set_controls(self, controls: Any) -> None:
            self.controls = controls

        def flush(self) -> None:
            self.flushed += 1

    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", types.SimpleNamespace(WorkflowWidget=FakeWidget))
    run(ip, f"etl --input path=a.csv --dir {store}", ETL)
    w = made[-1]
    assert w.shown == 1 and w.flushed >= 1 and w.controls is None
    assert w.plan == dict.fromkeys(w.wf.task_ids, "run")
    assert type(w.events[0]).__name__ == "RunStarted" and type(w.events[-1]).__name__ == "RunFinished"
    edited = ETL.replace("return len(clean)", "return len(clean) * 1")
    run(ip, f"etl --input path=a.csv --dir {store} --no-run", edited)
    assert made[-1].plan == {
        "load": "restore",
        "clean": "restore",
        "stats": "stale",
        "plot": "restore",
        "report": "stale",
    }
    assert made[-1].events == []  # --no-run: shown, not run
    # --no-widget shows nothing
    count = len(made)
    run(ip, f"etl --input path=a.csv --dir {store} --no-widget", ETL)
    assert len(made) == count


def test_background_widget_controls(
    ip: Any,
    calls: list[str],
    store: str,
    monkeypatch: pytest.MonkeyPatch,
    gates: tuple[threading.Event, threading.Event],
) -> None:
    made: list[Any] = []
    finished = threading.Event()

    class FakeWidget:
        def __init__(
            self, wf: Any, *, instance_id: str = "", plan: Any = None, controls: Any = None, **more: Any
        ) -> None:
            self.controls = controls
            made.append(self)

        def listen(self, bus: Any) -> Any:
            def on(event: Any) -> None:
                if type(event).__name__ == "RunFinished":
                    finished.set()

            return bus.subscribe(on)

        def set_controls(self, controls: Any) -> None:
            self.controls = controls

        def flush(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", types.SimpleNamespace(WorkflowWidget=FakeWidget))
    monkeypatch.setattr("nbflow.jupyter.magics.display", lambda obj: None)
    started, release = gates
    handle = run(ip, f"bg --background --dir {store}", BLOCKING)
    controls = made[-1].controls
    assert controls is not None
    assert started.wait(30)
    # re-run from while the run is going: refused at once (the widget shows why), nothing started
    with pytest.raises(nf.InstanceLockedError):
        controls.rerun_from("slow")
    assert ip.magics_manager.registry["WorkflowMagics"].entries["bg"].threads == []
    controls.cancel()
    assert handle.wait(timeout=60).state == "cancelled"
    release.set()
    # re-run from a task, from the widget: runs it and its descendants in the background
    calls.clear()
    finished.clear()
    controls.rerun_from("slow")
    assert finished.wait(60)
    for thread in ip.magics_manager.registry["WorkflowMagics"].entries["bg"].threads:
        thread.join(60)
    assert calls == ["slow", "last"]
    assert line(ip, "status bg").status.output == 200
    calls.clear()
    controls.rerun_from("last")
    for thread in ip.magics_manager.registry["WorkflowMagics"].entries["bg"].threads:
        thread.join(60)
    assert calls == ["last"]


def test_real_widget_when_available(
    ip: Any, calls: list[str], store: str, monkeypatch: pytest.MonkeyPatch, magics: WorkflowMagics
) -> None:
    monkeypatch.delitem(sys.modules, "nbflow.jupyter.widget")
    try:
        from nbflow.jupyter.widget import WorkflowWidget  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the widget is not importable here: {exc}")
    shown: list[Any] = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    assert run(ip, f"etl --input path=a.csv --dir {store}", ETL) == EXPECTED
    assert run(ip, f"etl --input path=a.csv --dir {store}", ETL) == EXPECTED
    widget = magics.entries["etl"].widget
    assert widget is not None
    assert "restored" in widget.summary()


REVIEW = cell(
    """
    import nbflow as nf

    def train():
        calls.append("train")
        return 0.93

    approval = nf.wait_for_signal("approval", after=["train"])

    def deploy(train, approval):
        calls.append("deploy")
        return f"{train} approved by {approval['by']}"
    """
)


def test_a_blocking_cell_parks_at_a_signal_then_signal_and_resume(ip: Any, calls: list[str], store: str) -> None:
    assert run(ip, f"review --no-widget --dir {store}", REVIEW) is None  # parked, not failed
    assert line(ip, "status review").status.state == "awaiting_signal"
    line(ip, 'signal review approval {"by": "ana"}')
    assert line(ip, "resume review --no-widget") == "0.93 approved by ana"
    assert calls == ["train", "deploy"]  # train was not run again


def test_the_widget_approves_a_background_run_waiting_for_a_signal(
    ip: Any, calls: list[str], store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []

    class FakeWidget:  # records the controls the magic wires, as the real widget's buttons call them
        def __init__(
            self, wf: Any, *, instance_id: str = "", plan: Any = None, controls: Any = None, **more: Any
        ) -> None:
            self.controls = controls
            made.append(self)

        def listen(self, bus: Any) -> Any:
            return bus.subscribe(lambda event: None)

        def set_controls(self, controls: Any) -> None:
            self.controls = controls

        def flush(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", types.SimpleNamespace(WorkflowWidget=FakeWidget))
    monkeypatch.setattr("nbflow.jupyter.magics.display", lambda obj: None)
    handle = run(ip, f"review_bg --background --dir {store}", REVIEW)
    deadline = threading.Event()
    for _ in range(300):  # wait (on the state, not the clock) until the run waits for the signal
        if handle.status.state == "awaiting_signal":
            break
        deadline.wait(0.05)
    assert handle.status.state == "awaiting_signal"
    made[-1].controls.send_signal("approval", {"by": "bo"})  # the approve button
    assert handle.wait(timeout=60).output == "0.93 approved by bo"
    assert calls == ["train", "deploy"]


def test_help_on_one_command_prints_its_usage(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("workflow", "help status")
    out = capsys.readouterr().out
    assert "usage: %workflow status" in out
    with pytest.raises(Exception, match="unknown %workflow command 'nosuch'"):
        ip.run_line_magic("workflow", "help nosuch")
