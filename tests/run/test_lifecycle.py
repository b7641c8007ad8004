"""The instance lifecycle (``nbflow.run.lifecycle``): the transition table, and the
pause / unpause / cancel / revive rules as the runner, a PooledWorker, the client and
the ``nbflow`` command see them, on both stores."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow import cli
from nbflow.core.status import RunState
from nbflow.run import lifecycle
from nbflow.run.instances import move_stored
from nbflow.store.base import InstanceMeta

# -- the table ---------------------------------------------------------------------------
# Written out here, apart from the module, so that a change to the table is a change to
# this test too. Rows: from; columns: to (P R C F X I Z W A). "y": an ordinary move,
# "r": only with reopen=True (revive, rerun_from, edited code), ".": forbidden.
COLUMNS = ["P", "R", "C", "F", "X", "I", "Z", "W", "A"]
TABLE = """
   P R C F X I Z W A
P  y y y y y . y y y
R  . y y y y y y y y
C  . r y . . . . . .
F  . y . y . . . . .
X  r r . . y . . . .
I  . y . . y y y . .
Z  y . . y y . y . .
W  . y y y y y y y y
A  . y y y y y y y y
"""
LETTERS = {
    "P": RunState.PENDING,
    "R": RunState.RUNNING,
    "C": RunState.COMPLETED,
    "F": RunState.FAILED,
    "X": RunState.CANCELLED,
    "I": RunState.INTERRUPTED,
    "Z": RunState.PAUSED,
    "W": RunState.WAITING,
    "A": RunState.AWAITING_SIGNAL,
}


def _expected() -> dict[tuple[RunState, RunState], str]:
    rows = [line.split() for line in TABLE.strip().splitlines()[1:]]
    return {(LETTERS[row[0]], LETTERS[col]): mark for row in rows for col, mark in zip(COLUMNS, row[1:], strict=True)}


EXPECTED = _expected()
STORED = list(LETTERS.values())
NEVER_STORED = [RunState.DAMAGED, RunState.UNREADABLE]


def test_the_table_covers_every_stored_state() -> None:
    assert set(lifecycle.MOVES) == set(STORED)
    assert set(RunState) == set(STORED) | set(NEVER_STORED)
    assert len(EXPECTED) == len(STORED) ** 2


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(STORED, STORED)), ids=lambda s: str(s))
def test_every_pair(frm: RunState, to: RunState) -> None:
    mark = EXPECTED[(frm, to)]
    meta = InstanceMeta("i-1", "wf", "hash", state=frm.value, message="before")
    if mark == "y":
        before = meta.updated_at
        time.sleep(0.001)
        moved = lifecycle.transition(meta, to, by="tester")
        assert moved is meta and meta.state == to.value
        assert meta.message == f"{to.value} (tester)" and meta.updated_at > before  # who moved it
        assert lifecycle.allowed(frm, to) and lifecycle.allowed(frm.value, to.value, reopen=True)
        return
    with pytest.raises(nf.IllegalTransitionError) as caught:
        lifecycle.transition(meta, to, by="tester")
    err = caught.value
    assert (err.instance_id, err.from_state, err.to_state, err.by) == ("i-1", frm.value, to.value, "tester")
    assert f"cannot move from {frm.value} to {to.value} (asked by tester)" in str(err)
    assert meta.state == frm.value and meta.message == "before"  # nothing changed
    assert not lifecycle.allowed(frm, to)
    if mark == "r":
        lifecycle.transition(meta, to, by="tester", reopen=True)
        assert meta.state == to.value
    else:
        assert not lifecycle.allowed(frm, to, reopen=True)
        with pytest.raises(nf.IllegalTransitionError):
            lifecycle.transition(meta, to, by="tester", reopen=True)


@pytest.mark.parametrize("odd", NEVER_STORED)
def test_damaged_and_unreadable_are_never_moved_to_or_from(odd: RunState) -> None:
    for state in STORED:
        assert not lifecycle.allowed(state, odd, reopen=True)
        assert not lifecycle.allowed(odd, state, reopen=True)
        with pytest.raises(nf.IllegalTransitionError):
            lifecycle.transition(InstanceMeta("i", "wf", "h", state=state.value), odd, by="t")
    with pytest.raises(nf.IllegalTransitionError):
        lifecycle.transition(InstanceMeta("i", "wf", "h", state="no-such-state"), "running", by="t")


def test_transition_sets_fields_and_says_what_to_do() -> None:
    meta = InstanceMeta("i-1", "wf", "hash", state="running")
    lifecycle.transition(meta, "waiting", by="runner r", wake_at=12.5, message="napping")
    assert (meta.state, meta.wake_at, meta.message) == ("waiting", 12.5, "napping")
    with pytest.raises(TypeError, match="cannot set 'state'"):
        lifecycle.transition(meta, "running", by="t", state="completed")
    with pytest.raises(TypeError, match="cannot set 'nonsense'"):
        lifecycle.transition(meta, "running", by="t", nonsense=1)
    hints = {
        "paused": "unpause",
        "cancelled": "revive=True",
        "completed": "rerun_from",
        "failed": "it can move to: failed, running",
    }
    for state, hint in hints.items():
        with pytest.raises(nf.IllegalTransitionError, match=hint) as caught:
            lifecycle.transition(InstanceMeta("i-1", "wf", "h", state=state), "waiting", by="t")
        clone = pickle.loads(pickle.dumps(caught.value))
        assert type(clone) is nf.IllegalTransitionError and str(clone) == str(caught.value)
    assert issubclass(nf.IllegalTransitionError, nf.NbflowError)
    assert nf.errors.IllegalTransitionError is nf.IllegalTransitionError


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(STORED, STORED)), ids=lambda s: str(s))
def test_try_transition_moves_only_what_the_table_allows(frm: RunState, to: RunState) -> None:
    meta = InstanceMeta("i-1", "wf", "hash", state=frm.value, message="before", wake_at=3.0)
    moved = lifecycle.try_transition(meta, to, by="tester", wake_at=None)
    assert moved == (EXPECTED[(frm, to)] == "y")
    if moved:
        assert (meta.state, meta.message, meta.wake_at) == (to.value, f"{to.value} (tester)", None)
    else:
        assert (meta.state, meta.message, meta.wake_at) == (frm.value, "before", 3.0)  # untouched


def test_move_stored_saves_allowed_moves_that_change_something(backend: Any) -> None:
    backend.save_instance(InstanceMeta("i-1", "wf", "hash", state="running"))
    moved = move_stored(backend, "i-1", RunState.WAITING, by="worker w1", wake_at=5.0)
    assert moved is not None and moved.message == "waiting (worker w1)"
    stored = backend.load_instance("i-1")
    assert (stored.state, stored.wake_at, stored.message) == ("waiting", 5.0, "waiting (worker w1)")
    assert move_stored(backend, "i-1", RunState.WAITING, by="worker w2", wake_at=5.0) is None  # nothing changes
    assert backend.load_instance("i-1").message == "waiting (worker w1)"
    assert move_stored(backend, "i-1", RunState.CANCELLED, by="ops", message="stop") is not None
    assert move_stored(backend, "i-1", RunState.FAILED, by="worker w1") is None  # cancelled stays so
    assert backend.load_instance("i-1").state == "cancelled"
    assert move_stored(backend, "no-such", RunState.RUNNING, by="worker w1") is None


# -- workflows and helpers ---------------------------------------------------------------
def approval(counts: Counter[str]) -> nf.WorkflowDefinition:
    """a -> wait for signal "go" -> b."""

    def a(x: int) -> int:
        counts["a"] += 1
        return x + 1

    def b(payload: dict[str, int]) -> int:
        counts["b"] += 1
        return payload["n"] * 2

    return nf.Workflow("approve").then("a", a).wait_for_signal("go").then("b", b).build()


def gated(counts: Counter[str], gate: threading.Event, started: threading.Event) -> nf.WorkflowDefinition:
    """t0 -> t1 (waits for ``gate``) -> t2 -> t3."""
    builder = nf.Workflow("gated")
    for i in range(4):

        def step(x: int, i: int = i) -> int:
            counts[f"t{i}"] += 1
            if i == 1:
                started.set()
                gate.wait(30)
            return x + 1

        builder.then(f"t{i}", step)
    return builder.build()


def wait_for(what: str, check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def state_of(client: nf.WorkflowClient, iid: str) -> str:
    return str(client.status(iid, output=False).state)


def cancelled_midway(runner: nf.CheckpointingRunner, counts: Counter[str]) -> nf.WorkflowDefinition:
    """Start the gated chain and cancel it inside t1 (a sync task: it finishes and is
    checkpointed); the run stops before t2."""
    gate, started = threading.Event(), threading.Event()
    wf = gated(counts, gate, started)
    handle = runner.start(wf, "g", 0)
    assert started.wait(20)
    nf.WorkflowClient(runner.backend).cancel("g", reason="stop", by="tester")
    gate.set()
    assert handle.wait(30).state == "cancelled"
    assert counts == Counter(t0=1, t1=1)
    return wf


# -- paused means paused -------------------------------------------------------------------
def test_worker_finishes_after_pause_signal_unpause_without_a_resume(backend: Any) -> None:
    counts: Counter[str] = Counter()
    wf = approval(counts)
    client = nf.WorkflowClient(backend)
    client.submit(wf, "s-1", 1)
    handle = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05).start()
    try:
        wait_for("awaiting_signal", lambda: state_of(client, "s-1") == "awaiting_signal")
        client.pause("s-1", reason="hold on", by="ops")
        assert state_of(client, "s-1") == "paused"
        client.send_signal("s-1", "go", {"n": 21})  # a paused instance still takes signals
        time.sleep(0.5)  # ten polls: the worker must leave the paused instance alone
        assert state_of(client, "s-1") == "paused" and counts["b"] == 0
        assert backend.get_record("s-1", "b") is None
        client.unpause("s-1", by="ops")
        status = client.status("s-1", output=False)
        assert status.state == "pending" and "unpaused by ops" in status.message
        wait_for("completed", lambda: state_of(client, "s-1") == "completed")
    finally:
        handle.shutdown(timeout=10)
    assert client.status("s-1").output == 42
    assert counts == Counter(a=1, b=1)
    assert backend.pop_signal("s-1", "go") is None  # consumed, once


def test_a_paused_instance_is_not_picked_up(backend: Any) -> None:
    counts: Counter[str] = Counter()
    wf = approval(counts)
    client = nf.WorkflowClient(backend)
    client.submit(wf, "p-1", 1)
    client.pause("p-1", by="ops")
    client.send_signal("p-1", "go", {"n": 1})
    worker = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05)
    worker.run(until_idle=True)  # a paused instance is not work: the worker goes idle at once
    assert state_of(client, "p-1") == "paused"
    assert counts == Counter() and worker.stats["units"] == 0
    assert set(backend.get_records("p-1")) == {"__input__"}
    client.unpause("p-1")
    worker.run(until_idle=True)
    assert client.status("p-1").output == 2 and counts == Counter(a=1, b=1)


def test_runner_resume_of_a_paused_instance_leaves_it_paused(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    wf = approval(counts)
    client = nf.WorkflowClient(runner.backend)
    client.submit(wf, "p-1", 1)
    client.pause("p-1", reason="lunch", by="ops")
    stored = runner.backend.load_instance("p-1")
    held = [
        runner.resume(wf, "p-1"),
        runner.resume(wf, "p-1", revive=True),  # revive is for cancelled instances only
        runner.with_conflict_policy("use_existing").run(wf, "p-1", 1),
        runner.start(wf, "p-1", resume=True).wait(5),
        runner.rerun_from(wf, "p-1", "a"),
        asyncio.run(runner.resume_async(wf, "p-1")),
    ]
    for status in held:
        assert status.state == "paused"
        assert "is paused (lunch by ops); nothing ran. Unpause it first" in status.message
        assert status.tasks_total == 3
    assert counts == Counter()  # nothing ran
    after = runner.backend.load_instance("p-1")
    assert (after.state, after.message, after.updated_at) == ("paused", stored.message, stored.updated_at)
    assert not runner.backend.is_locked("p-1")
    client.unpause("p-1")
    assert runner.resume(wf, "p-1").state == "awaiting_signal"
    client.send_signal("p-1", "go", {"n": 4})
    assert runner.resume(wf, "p-1").output == 8


def test_a_pause_of_a_running_run_then_resume_stays_paused(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    gate, started = threading.Event(), threading.Event()
    wf = gated(counts, gate, started)
    handle = runner.start(wf, "g", 0)
    assert started.wait(20)
    client = nf.WorkflowClient(runner.backend)
    client.pause("g", by="tester")
    gate.set()
    assert handle.wait(30).state == "paused"
    assert runner.resume(wf, "g").state == "paused" and counts == Counter(t0=1, t1=1)
    client.unpause("g")
    assert runner.resume(wf, "g").output == 4 and counts == Counter(t0=1, t1=1, t2=1, t3=1)


# -- cancelled runs again only when revived ------------------------------------------------
def test_runner_resume_of_a_cancelled_instance_needs_revive(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    wf = cancelled_midway(runner, counts)
    held = [
        runner.resume(wf, "g"),
        runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING).run(wf, "g", 0),
        runner.start(wf, "g", resume=True).wait(5),
        asyncio.run(runner.resume_async(wf, "g")),
    ]
    for status in held:
        assert status.state == "cancelled" and status.tasks_done == 2
        assert "is cancelled (stop by tester); nothing ran" in status.message
        assert "revive=True" in status.message
    assert counts == Counter(t0=1, t1=1)
    assert runner.status("g").state == "cancelled"
    status = runner.resume(wf, "g", revive=True)
    assert status.state == "completed" and status.output == 4
    assert counts == Counter(t0=1, t1=1, t2=1, t3=1)  # t0 and t1 restored, the rest ran


def test_rerun_from_names_what_to_run_so_it_revives(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    wf = cancelled_midway(runner, counts)
    status = runner.rerun_from(wf, "g", "t1")
    assert status.state == "completed" and counts == Counter(t0=1, t1=2, t2=1, t3=1)


def test_terminate_existing_starts_a_cancelled_instance_over(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    wf = cancelled_midway(runner, counts)
    status = runner.with_conflict_policy("terminate_existing").run(wf, "g", 10)
    assert status.output == 14 and counts == Counter(t0=2, t1=2, t2=1, t3=1)


def test_client_cancel_and_revive_for_a_worker_pool(backend: Any) -> None:
    counts: Counter[str] = Counter()
    wf = approval(counts)
    client = nf.WorkflowClient(backend)
    client.submit(wf, "c-1", 1)
    client.cancel("c-1", reason="not now", by="ops")
    assert state_of(client, "c-1") == "cancelled"
    for verb in (client.pause, client.unpause):  # neither moves a cancelled instance
        verb("c-1")
        assert state_of(client, "c-1") == "cancelled"
    with pytest.raises(nf.SignalRefusedError):
        client.send_signal("c-1", "go", {"n": 1})
    worker = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05)
    worker.run(until_idle=True)
    assert counts == Counter() and state_of(client, "c-1") == "cancelled"
    client.revive("c-1", by="ops")
    status = client.status("c-1", output=False)
    assert status.state == "pending" and status.message == "revived by ops"
    client.send_signal("c-1", "go", {"n": 5})
    worker.run(until_idle=True)
    assert client.status("c-1").output == 10 and counts == Counter(a=1, b=1)
    client.revive("c-1")  # a completed instance is not touched
    assert state_of(client, "c-1") == "completed"


def test_a_late_failure_does_not_turn_a_cancelled_instance_failed(backend: Any) -> None:
    gate, reached = threading.Event(), threading.Event()

    def doomed(x: int) -> int:
        reached.set()
        gate.wait(30)
        raise ValueError("too late")

    wf = nf.Workflow("late").then("a", lambda x: x).then("doomed", doomed).build()
    client = nf.WorkflowClient(backend)
    client.submit(wf, "l-1", 1)
    handle = nf.PooledWorker("w1", backend, [wf], poll_interval=0.05).start()
    try:
        assert reached.wait(30)
        client.cancel("l-1", by="ops")
        gate.set()
        wait_for("the unit to end", lambda: handle.worker.stats["failed"] == 1)
    finally:
        handle.shutdown(timeout=10)
    status = client.status("l-1", output=False)
    assert status.state == "cancelled" and status.error is None


def test_completed_is_replayed_not_reopened(runner: nf.CheckpointingRunner) -> None:
    counts: Counter[str] = Counter()
    gate, started = threading.Event(), threading.Event()
    gate.set()
    wf = gated(counts, gate, started)
    assert runner.run(wf, "c", 0).output == 4
    before = runner.backend.load_instance("c")
    moves: list[str] = []
    real = runner.backend.save_instance
    runner.backend.save_instance = lambda meta: (moves.append(meta.state), real(meta))[1]  # type: ignore[method-assign]
    try:
        assert runner.resume(wf, "c").output == 4  # restored, never "running" in between
        assert moves == ["completed"]
        moves.clear()
        assert runner.rerun_from(wf, "c", "t2").output == 4  # reopened: tasks run again
        assert moves == ["running", "completed"]
    finally:
        runner.backend.save_instance = real  # type: ignore[method-assign]
    assert counts == Counter(t0=1, t1=1, t2=2, t3=2)
    after = runner.backend.load_instance("c")
    assert after.created_at == before.created_at and after.message.startswith("completed (runner ")


# -- the same rules from the command line -----------------------------------------------
FLOWS = """
from pathlib import Path
import nbflow as nf

LOG = Path({log!r})


def step(name):
    def fn(x):
        with LOG.open("a") as f:
            f.write(name + "\\n")
        return x + 1
    return fn


chain = nf.Workflow("chain").then("a", step("a")).then("b", step("b")).build()
"""


def test_cli_follows_the_same_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "ran.log"
    module = tmp_path / "cli_flows.py"
    module.write_text(FLOWS.format(log=str(log)))
    store = str(tmp_path / "store")
    wf = cli.find_workflows(cli.load_module(str(module)))["chain"]
    backend = nf.DiskcacheBackend(store)
    client = nf.WorkflowClient(backend)
    client.submit(wf, "c-1", 1)

    def nbflow(*args: str) -> tuple[int, str]:
        code = cli.main(["--dir", store, *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    def ran() -> list[str]:
        return log.read_text().split() if log.exists() else []

    # paused: a resume leaves it paused (exit 0: nothing went wrong) until unpause
    assert nbflow("pause", "c-1")[0] == 0
    code, out = nbflow("resume", "c-1", "--module", str(module))
    assert code == 0 and "state     paused" in out and "Unpause it first" in out and ran() == []
    assert nbflow("unpause", "c-1")[0] == 0 and state_of(client, "c-1") == "pending"
    # cancelled: a resume leaves it cancelled (exit 1), --revive runs it
    assert nbflow("cancel", "c-1", "--reason", "wrong data")[0] == 0
    code, out = nbflow("resume", "c-1", "--module", str(module))
    assert code == 1 and "state     cancelled" in out and "--revive" in out and ran() == []
    assert state_of(client, "c-1") == "cancelled"
    code, out = nbflow("resume", "c-1", "--module", str(module), "--revive")
    assert code == 0 and "state     completed" in out and ran() == ["a", "b"]
    assert client.status("c-1").output == 3
    # the workflow name works as well as the id
    assert nbflow("resume", "chain", "--module", str(module))[0] == 0 and ran() == ["a", "b"]
