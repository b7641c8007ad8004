"""A long-lived process (a notebook kernel) keeps its store handle while another process
clears or restarts the same instance: the old handle must notice, never mix the two
generations, and never report the instance wrongly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow as nf

pytestmark = pytest.mark.slow

_OTHER = textwrap.dedent(
    """
    import sys
    import nbflow as nf
    from nbflow.core.status import ConflictPolicy

    store, action = sys.argv[1], sys.argv[2]
    backend = nf.DiskcacheBackend(store)
    wf = nf.Workflow("stale").then("double", lambda x: 2 * x).then("plus", lambda d: d + 1).build()
    if action == "clear":
        assert nf.WorkflowClient(backend).clear("i")
    elif action == "restart":
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        runner = runner.with_conflict_policy(ConflictPolicy.TERMINATE_EXISTING)
        print(runner.run(wf, "i", 100).output)
    """
)


def _flow() -> nf.WorkflowDefinition:
    return nf.Workflow("stale").then("double", lambda x: 2 * x).then("plus", lambda d: d + 1).build()


def _other(store: Path, action: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _OTHER, str(store), action], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_write_into_a_restarted_instance_is_refused_and_a_reload_sees_the_new_one(tmp_path: Path) -> None:
    store = tmp_path / "s"
    backend = nf.DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(_flow(), "i", 1).output == 3
    old = backend.get_record("i", "double")
    assert old is not None
    assert _other(store, "restart") == "201"
    # This process's handle saw the first generation: its write must not land in the second.
    sink = backend.new_sink("i")
    sink.write(b"stale bytes")
    with pytest.raises(nf.StaleInstanceError) as refused:
        backend.put_record("i", old, sink)
    assert "'i'" in str(refused.value) and "clear" not in str(refused.value).split("cleared or restarted")[1]
    # Reading again shows the other process's instance, whole.
    status = nf.WorkflowClient(backend).status("i")
    assert status.state == "completed" and status.output == 201
    assert runner.get_task_result("i", "double") == 200
    # And a resume in this process returns the new output, not a mix.
    assert runner.resume(_flow(), "i").output == 201


def test_after_another_process_clears_an_instance_this_one_starts_it_fresh(tmp_path: Path) -> None:
    store = tmp_path / "s"
    backend = nf.DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(_flow(), "i", 1).output == 3
    _other(store, "clear")
    assert backend.load_instance("i") is None
    # FAIL (the default) does not claim the cleared id exists; it runs it anew.
    assert runner.run(_flow(), "i", 5).output == 11
    _other(store, "clear")
    use_existing = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
    assert use_existing.run(_flow(), "i", 7).output == 15
    assert nf.WorkflowClient(backend).status("i").output == 15


def test_stale_task_state_write_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "s"
    backend = nf.DiskcacheBackend(store)
    nf.CheckpointingRunner(backend, echo_output=False).run(_flow(), "i", 1)
    backend.load_instance("i")
    _other(store, "restart")
    with pytest.raises(nf.StaleInstanceError):
        backend.save_task_state("i", "double", {"attempt": 2})
    meta = backend.load_instance("i")  # reloading adopts the new generation
    assert meta is not None
    backend.save_task_state("i", "double", {"attempt": 2})
    assert backend.load_task_states("i") == {"double": {"attempt": 2}}
