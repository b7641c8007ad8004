"""A workflow name works wherever an instance id does (nbflow.run.lookup), and a dead
run reads ``interrupted`` everywhere."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.cli import main
from nbflow.run.lookup import live_state, resolve_instance


def _wf() -> nf.WorkflowDefinition:
    return nf.Workflow("sales").then("clean", lambda x: x * 2).then("stats", lambda c: c + 1).build()


@pytest.fixture
def backend(tmp_path: Path) -> nf.DiskcacheBackend:
    return nf.DiskcacheBackend(tmp_path / "store")


def _run(backend: nf.DiskcacheBackend, iid: str, x: int) -> None:
    assert nf.CheckpointingRunner(backend, echo_output=False).run(_wf(), iid, x).state == "completed"


def test_a_name_with_one_instance_resolves_to_it(backend: nf.DiskcacheBackend) -> None:
    _run(backend, "sales-56c6c4e0e7", 3)
    client = nf.WorkflowClient(backend)
    assert resolve_instance(backend, "sales").instance_id == "sales-56c6c4e0e7"
    assert client.get_task_result("sales", "clean") == 6
    assert client.status("sales").output == 7
    assert client.status("sales").instance_id == "sales-56c6c4e0e7"


def test_several_instances_are_ambiguous_and_listed_newest_first(backend: nf.DiskcacheBackend) -> None:
    _run(backend, "sales-old", 1)
    time.sleep(0.01)
    _run(backend, "sales-new", 2)
    with pytest.raises(nf.AmbiguousInstanceError) as info:
        nf.WorkflowClient(backend).get_task_result("sales", "clean")
    err = info.value
    assert isinstance(err, nf.NbflowError) and isinstance(err, KeyError)
    assert [row[0] for row in err.instances] == ["sales-new", "sales-old"]
    assert all(row[2] == "completed" and row[1] for row in err.instances)  # state and inputs digest
    text = str(err)
    assert text.index("sales-new") < text.index("sales-old") and "instance ids instead of 'sales'" in text
    # the most recent one, when asked for
    assert resolve_instance(backend, "sales", latest=True).instance_id == "sales-new"


def test_an_instance_id_wins_over_a_workflow_name(backend: nf.DiskcacheBackend) -> None:
    _run(backend, "sales-1", 1)
    _run(backend, "sales-2", 2)
    other = nf.Workflow("other").then("clean", lambda x: -x).build()
    nf.CheckpointingRunner(backend, echo_output=False).run(other, "sales", 5)  # an instance *named* sales
    assert resolve_instance(backend, "sales").workflow == "other"
    assert nf.WorkflowClient(backend).get_task_result("sales", "clean") == -5


def test_unknown_names_say_so(backend: nf.DiskcacheBackend) -> None:
    with pytest.raises(nf.UnknownInstanceError, match="no instance 'nobody'.*no workflow of that name"):
        nf.WorkflowClient(backend).status("nobody")


def test_cancel_and_send_signal_take_a_name(backend: nf.DiskcacheBackend) -> None:
    wf = nf.Workflow("gate").then("a", lambda x: x).wait_for_signal("go").then("b", lambda p: p).build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "gate-1", 1).state == "awaiting_signal"
    client = nf.WorkflowClient(backend)
    client.send_signal("gate", "go", {"ok": True})
    assert runner.resume(wf, "gate-1").output == {"ok": True}
    assert runner.run(wf, "gate-2", 1).state == "awaiting_signal"
    client.cancel("gate-2")
    assert client.status("gate-2").state == "cancelled"


def test_a_running_instance_nobody_holds_reads_interrupted_in_list_and_status(
    backend: nf.DiskcacheBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(backend, "sales-1", 1)
    meta = backend.load_instance("sales-1")
    assert meta is not None
    meta.state = "running"  # what a SIGKILLed runner leaves behind (its lock died with it)
    backend.save_instance(meta)
    client = nf.WorkflowClient(backend)
    assert live_state(backend, meta) == "interrupted"
    assert client.status("sales").state == "interrupted"
    assert [s.state for s in client.list_instances()] == ["interrupted"]
    assert main(["--dir", str(tmp_path / "store"), "list"]) == 0
    assert " interrupted " in capsys.readouterr().out
    # held by a live runner, it is running
    lease = backend.lock("sales-1", holder="test")
    try:
        assert client.status("sales-1").state == "running"
    finally:
        lease.release()
    # or by a worker's live claim
    record = backend.get_record("sales-1", "stats")
    assert record is not None
    token = backend.claim("sales-1", "stats", "w1", ttl=60, seen=record.finished_at)
    assert token is not None
    assert client.status("sales-1").state == "running"
    backend.release_claim("sales-1", "stats", token)
    assert client.status("sales-1").state == "interrupted"
