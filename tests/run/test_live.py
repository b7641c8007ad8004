"""Live output and progress of running tasks (``nbflow.run.live``, ``tqdm_hook``).

What a task prints reaches subscribers *while it runs* (TaskOutput, coalesced), its
progress too (TaskProgress, from ``nf.progress`` or a tqdm bar), and what it printed is
still stored with its checkpoint — or, when the attempt fails or is cut short, in the
task state, next to (never over) the retry ledger's keys. Counted with events, not clocks.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.errors import ConfigurationError
from nbflow.run import events as ev
from nbflow.run import tqdm_hook
from nbflow.run.live import FLUSH_INTERVAL, collapse, last_line
from nbflow.run.task_state import LIVE_KEY, RETRY_KEYS, stored_progress

tqdm_std = pytest.importorskip("tqdm.std")


def record(runner: nf.CheckpointingRunner) -> list[ev.RunEvent]:
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    return events


def index(events: list[ev.RunEvent], kind: type, task: str) -> int:
    return next(i for i, e in enumerate(events) if isinstance(e, kind) and getattr(e, "task_id", None) == task)


# -- helpers of the module ---------------------------------------------------------------------
def test_collapse_renders_carriage_returns_like_a_terminal() -> None:
    frames = "".join(f"\rtrain: {p:3d}%|" for p in range(0, 101, 10))
    assert collapse("start\n" + frames + "\nend\n") == "start\ntrain: 100%|\nend\n"
    assert collapse("a\r\nb\r\n") == "a\nb\n"  # Windows line ends are newlines
    assert collapse("no returns at all\n") == "no returns at all\n"
    assert last_line("x\n 10%\r 55%|#####\n\n") == "55%|#####"


# -- output -------------------------------------------------------------------------------------
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
def test_output_streams_while_the_task_runs(backend: Any, inline: bool) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False, inline_sync=inline)
    events = record(runner)
    seen_live = threading.Event()

    def on(e: ev.RunEvent) -> None:
        if isinstance(e, ev.TaskOutput) and "line 2" in e.stdout:
            seen_live.set()

    runner.subscribe(on)

    def talk(x: int) -> int:
        for i in range(5):
            print(f"line {i}")
            if i == 2:  # the event for what is printed so far arrives before the task ends
                assert seen_live.wait(10), "no TaskOutput while the task ran"
        print("to stderr", file=__import__("sys").stderr)
        return x

    status = runner.run(nf.Workflow("live").then(talk).build(), "i", 1)
    assert status.state == "completed"
    finished = index(events, ev.TaskFinished, "talk")
    outputs = [e for e in events if isinstance(e, ev.TaskOutput)]
    assert outputs and all(events.index(e) < finished for e in outputs)
    assert "".join(e.stdout for e in outputs) == "".join(f"line {i}\n" for i in range(5))
    assert "".join(e.stderr for e in outputs) == "to stderr\n"
    record_ = backend.get_record("i", "talk")
    assert record_.stdout == "".join(f"line {i}\n" for i in range(5))  # still stored with the checkpoint
    assert record_.stderr == "to stderr\n"
    assert backend.load_task_states("i") == {}  # a short task that succeeded leaves nothing behind


def test_output_is_coalesced(runner: nf.CheckpointingRunner) -> None:
    events = record(runner)

    def chatty(x: int) -> int:
        for i in range(20_000):
            print(i)
        return x

    t0 = time.monotonic()
    runner.run(nf.Workflow("chatty").then(chatty).build(), "i", 1)
    elapsed = time.monotonic() - t0
    outputs = [e for e in events if isinstance(e, ev.TaskOutput)]
    assert len(outputs) <= elapsed / FLUSH_INTERVAL + 2  # never one event per print
    text = "".join(e.stdout for e in outputs)
    cut = sum(e.cut for e in outputs)
    assert len(text) + cut == sum(len(f"{i}\n") for i in range(20_000))
    assert text.endswith("19999\n")
    assert runner.backend.get_record("i", "chatty").stdout.count("\n") == 20_000


def test_what_a_failed_attempt_printed_is_kept(backend: Any) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    events = record(runner)

    def flaky(x: int) -> int:
        print(f"attempt {nf.get_task_context().attempt} starts")
        nf.progress(3, 10, note="epoch 3")
        raise ConnectionError("down")

    wf = nf.Workflow("f").then(flaky, retries=nf.RetryPolicy(1, initial_delay=0)).build()
    status = runner.run(wf, "i", 1)
    assert status.state == "failed"
    failed = [e for e in events if isinstance(e, ev.TaskFailed)]
    assert failed[-1].stdout == "attempt 2 starts\n"  # the failure shows what it printed
    state = backend.load_task_states("i")["flaky"]
    assert state[LIVE_KEY]["stdout"] == "attempt 2 starts\n" and state[LIVE_KEY]["attempt"] == 2
    assert stored_progress(state) == {
        "done": 3.0,
        "total": 10.0,
        "note": "epoch 3",
        "at": pytest.approx(time.time(), abs=60),
    }
    assert not any(k in state for k in RETRY_KEYS)  # failed for good: the ledger's keys are gone, ours kept


def test_live_keys_and_retry_keys_do_not_clobber_each_other(backend: Any) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    seen: list[dict[str, Any]] = []

    def flaky(x: int) -> int:
        ctx = nf.get_task_context()
        seen.append(dict(backend.load_task_states("i").get("flaky", {})))
        print(f"attempt {ctx.attempt}")
        if ctx.attempt < 3:
            raise ConnectionError("down")
        return x

    wf = nf.Workflow("f").then(flaky, retries=nf.RetryPolicy(3, initial_delay=0)).build()
    assert runner.run(wf, "i", 1).state == "completed"
    # attempt 3 started with the ledger's count and attempt 2's output side by side
    assert seen[2]["attempt"] == 2 and seen[2][LIVE_KEY]["stdout"] == "attempt 2\n"
    assert backend.load_task_states("i") == {}  # succeeded: both sets of keys dropped


# -- progress -----------------------------------------------------------------------------------
def test_progress_events_and_stored_last_progress(backend: Any) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    events = record(runner)

    def steps(x: int) -> int:
        ctx = nf.get_task_context()
        for i in range(1, 4):
            ctx.progress(i, 3, note=f"step {i}")
            time.sleep(FLUSH_INTERVAL * 1.5)  # each report gets its own event
        return x

    runner.run(nf.Workflow("p").then(steps).build(), "i", 1)
    reports = [(e.done, e.total, e.note) for e in events if isinstance(e, ev.TaskProgress)]
    assert reports == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]
    assert index(events, ev.TaskProgress, "steps") < index(events, ev.TaskFinished, "steps")
    assert stored_progress(backend.load_task_states("i")["steps"])["done"] == 3.0  # kept with the instance


def test_progress_arguments_are_checked_and_do_nothing_outside_a_task() -> None:
    nf.progress(1, 2, note="outside")  # no task: nothing happens
    with pytest.raises(ConfigurationError, match="progress done"):
        nf.progress(-1)
    with pytest.raises(ConfigurationError, match="progress total"):
        nf.progress(1, 0)
    with pytest.raises(ConfigurationError, match="progress done"):
        nf.progress(float("nan"))


def test_a_resumed_run_announces_where_unfinished_tasks_were(backend: Any) -> None:
    crash = {"on": True}

    def slow(x: int) -> int:
        nf.progress(57, 100, note="epoch 57")
        if crash["on"]:
            raise RuntimeError("the machine went away")
        return x

    runner = nf.CheckpointingRunner(backend, echo_output=False)
    wf = nf.Workflow("r").then(slow).build()
    assert runner.run(wf, "i", 1).state == "failed"
    crash["on"] = False
    events = record(runner)
    runner.resume(wf, "i")
    stored = [e for e in events if isinstance(e, ev.TaskProgress) and e.stored]
    assert [(e.task_id, e.done, e.total, e.note) for e in stored] == [("slow", 57.0, 100.0, "epoch 57")]
    assert index(events, ev.TaskProgress, "slow") < index(events, ev.TaskStarted, "slow")


# -- tqdm ---------------------------------------------------------------------------------------
def test_tqdm_inside_a_task_reports_and_draws_nothing(backend: Any) -> None:
    from tqdm import tqdm, trange

    runner = nf.CheckpointingRunner(backend, echo_output=False, inline_sync=False)
    events = record(runner)

    def train(x: int) -> int:
        total = 0
        for _ in tqdm(range(30), desc="epoch", mininterval=0):
            time.sleep(0.005)
            total += 1
        time.sleep(2 * FLUSH_INTERVAL)  # reports are coalesced: let the last one of each bar go out
        with tqdm(total=10, desc="manual") as bar:
            for _ in range(10):
                bar.update(1)
        assert bar.n == 10
        time.sleep(2 * FLUSH_INTERVAL)
        for _ in trange(3, leave=False):
            pass
        return total

    assert runner.run(nf.Workflow("t").then(train).build(), "i", 1).output == 30
    assert tqdm_hook.installed()
    reports = [e for e in events if isinstance(e, ev.TaskProgress) and e.task_id == "train"]
    assert reports and max(e.done for e in reports if e.note == "epoch") == 30
    assert any(e.note == "manual" and e.done == 10 and e.total == 10 for e in reports)
    stderr = backend.get_record("i", "train").stderr
    assert "\r" not in stderr  # no frames: the node shows the bar
    assert stderr.count("\n") == 2 and "epoch: 100%" in stderr and "10/10" in stderr  # leave=True bars: one line each


def test_tqdm_outside_tasks_is_untouched() -> None:
    from tqdm import tqdm

    tqdm_hook.install()
    out = io.StringIO()
    for _ in tqdm(range(5), file=out, mininterval=0, desc="plain"):
        pass
    assert "\r" in out.getvalue() and "plain: 100%" in out.getvalue()  # tqdm's own frames


def test_tqdm_to_a_users_file_still_draws_and_reports(runner: nf.CheckpointingRunner, tmp_path: Any) -> None:
    from tqdm import tqdm

    events = record(runner)
    log = tmp_path / "bar.log"

    def job(x: int) -> int:
        with open(log, "w") as f:
            for _ in tqdm(range(5), file=f, mininterval=0, desc="to file"):
                pass
        return x

    runner.run(nf.Workflow("tf").then(job).build(), "i", 1)
    assert "to file: 100%" in log.read_text()
    assert any(isinstance(e, ev.TaskProgress) and e.done == 5 for e in events)


def test_tqdm_notebook_bar_in_a_task_makes_no_widget(runner: nf.CheckpointingRunner, monkeypatch: Any) -> None:
    notebook = pytest.importorskip("tqdm.notebook")
    made: list[Any] = []
    monkeypatch.setattr(notebook.tqdm_notebook, "status_printer", staticmethod(lambda *a, **k: made.append(a)))
    events = record(runner)

    def job(x: int) -> int:
        for _ in notebook.tqdm(range(7), desc="nb"):
            pass
        return x

    runner.run(nf.Workflow("nb").then(job).build(), "i", 1)
    assert made == []  # no ipywidgets bar was built (it would show under the cell)
    assert any(isinstance(e, ev.TaskProgress) and e.done == 7 and e.note == "nb" for e in events)
    assert "nb: 100%" in runner.backend.get_record("i", "job").stdout  # its final line, on stdout as tqdm.notebook


def test_nbflow_leaves_no_attribute_of_its_own_on_a_users_bar(runner: nf.CheckpointingRunner) -> None:
    """What nbflow knows of a bar lives beside it: the user's objects (and tqdm's classes)
    carry no nbflow attribute, and close stays the class's method."""
    from tqdm import tqdm

    notebook = pytest.importorskip("tqdm.notebook")
    events = record(runner)
    bars: list[Any] = []

    def job(x: int) -> int:
        for _ in tqdm(range(4), desc="loop", mininterval=0):
            pass
        time.sleep(2 * FLUSH_INTERVAL)  # reports are coalesced: let each bar's last one go out
        with tqdm(total=3, desc="manual") as bar:
            bar.update(3)
        time.sleep(2 * FLUSH_INTERVAL)
        nb = notebook.tqdm(total=2, desc="nb", display=False)
        nb.update(2)
        nb.close()
        bars.extend([bar, nb])
        return x

    runner.run(nf.Workflow("attrs").then(job).build(), "i", 1)
    assert len(bars) == 2
    for bar in bars:
        assert not [name for name in vars(bar) if "nbflow" in name]
        assert "close" not in vars(bar)  # no per-bar method swapped in
        assert not [name for name in dir(type(bar)) if "nbflow" in name]
    reports = {(e.note, e.done) for e in events if isinstance(e, ev.TaskProgress)}
    assert {("loop", 4.0), ("manual", 3.0), ("nb", 2.0)} <= reports
    stdout, stderr = runner.backend.get_record("i", "job").stdout, runner.backend.get_record("i", "job").stderr
    assert "nb: 100%" in stdout and "loop: 100%" in stderr and "manual: 100%" in stderr  # final lines, once each


def test_bars_of_concurrent_branches_report_to_their_own_task(runner: nf.CheckpointingRunner) -> None:
    from tqdm import tqdm

    events = record(runner)
    barrier = threading.Barrier(2, timeout=10)

    def make(n: int) -> Any:
        def branch(x: int) -> int:
            barrier.wait()  # both bars are open at the same time, in two threads
            for _ in tqdm(range(n), mininterval=0):
                time.sleep(0.002)
            return n

        return branch

    wf = (
        nf.Workflow("fork")
        .then("start", lambda x: x)
        .fork()
        .branch("ten", make(10))
        .branch("twenty", make(20))
        .join("done", lambda d: d)
        .build()
    )
    runner.run(wf, "i", 0)
    top = {
        t: max(e.done for e in events if isinstance(e, ev.TaskProgress) and e.task_id == t) for t in ("ten", "twenty")
    }
    assert top == {"ten": 10.0, "twenty": 20.0}
    assert all(e.total in (10.0, 20.0) for e in events if isinstance(e, ev.TaskProgress))


def test_map_items_report_progress(runner: nf.CheckpointingRunner) -> None:
    events = record(runner)

    def item(x: int) -> int:
        nf.progress(1, 1, note=f"item {x}")
        print(f"item {x}")
        return x

    runner.run(nf.Workflow("m").then("xs", lambda n: list(range(n))).map("sq", item).build(), "i", 4)
    items = {e.task_id for e in events if isinstance(e, ev.TaskProgress)}
    assert items == {f"sq[{i}]" for i in range(4)}
    assert "".join(sorted(e.stdout for e in events if isinstance(e, ev.TaskOutput))) == "".join(
        sorted(f"item {i}\n" for i in range(4))
    )


def test_events_of_kinds_nobody_takes_are_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subscriber names its kinds; the engine then builds no other event — a task's
    prints and progress cost nothing when nobody watches them."""
    built: list[str] = []
    for cls in (ev.TaskOutput, ev.TaskProgress, ev.TaskFinished):
        real_init = cls.__init__

        def counting(self: Any, *a: Any, _real: Any = real_init, _name: str = cls.__name__, **k: Any) -> None:
            built.append(_name)
            _real(self, *a, **k)

        monkeypatch.setattr(cls, "__init__", counting)

    def chatty(x: int) -> int:
        for i in range(50):
            print(f"line {i}")
            nf.progress(i + 1, 50)
        return x

    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    got: list[ev.RunEvent] = []
    runner.subscribe(got.append, kinds=[ev.TaskFinished, ev.EventKind.RUN_FINISHED])
    assert runner.run(nf.Workflow("quiet").then(chatty).build(), "q-1", 1).output == 1
    assert [type(e).__name__ for e in got] == ["TaskFinished", "RunFinished"]
    assert "TaskOutput" not in built and "TaskProgress" not in built
    assert built.count("TaskFinished") == 1
    everything: list[ev.RunEvent] = []
    runner.subscribe(everything.append)  # one subscriber of every kind: all are built again
    runner.run(nf.Workflow("loud").then(chatty).build(), "l-1", 1)
    assert any(isinstance(e, ev.TaskProgress) for e in everything)
    assert not any(isinstance(e, ev.TaskProgress) for e in got)  # still filtered for the first


def test_the_bus_delivers_each_subscriber_its_kinds() -> None:
    bus = ev.EventBus()
    assert not bus.wants(ev.TaskStarted)
    starts: list[ev.RunEvent] = []
    unsubscribe = bus.subscribe(starts.append, kinds=[ev.EventKind.TASK_STARTED])
    assert bus.wants(ev.TaskStarted) and not bus.wants(ev.TaskOutput)
    bus.publish(ev.TaskStarted(workflow="w", instance_id="i", task_id="a"))
    bus.publish(ev.TaskOutput(workflow="w", instance_id="i", task_id="a", stdout="x"))
    assert [type(e) for e in starts] == [ev.TaskStarted]
    unsubscribe()
    assert not bus.wants(ev.TaskStarted)
