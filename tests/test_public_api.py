"""The DESIGN's binding names exist on ``nbflow``; a rename breaks this test, not a notebook."""

from __future__ import annotations

import pytest

import nbflow as nf

DESIGN_NAMES = [
    "task",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowContext",
    "CheckpointingRunner",
    "InMemoryBackend",
    "DiskcacheBackend",
    "JsonCodec",
    "PickleCodec",
    "ConflictPolicy",
    "WorkflowStatus",
    "RetryPolicy",
    "LoopResult",
    "WorkflowClient",
    "get_task_context",
    "NbflowError",
]
LATER_NAMES = ["PooledWorker", "DaskExecutor"]  # issue 5 (scaling out)


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_name_exists(name: str) -> None:
    assert hasattr(nf, name)
    assert name in nf.__all__


def test_issue_5_scaling_out_names_exist() -> None:
    for name in LATER_NAMES:
        assert hasattr(nf, name), name


def test_all_is_sorted_and_resolves() -> None:
    assert nf.__all__ == sorted(nf.__all__, key=lambda n: (n[0].islower(), n))
    for name in nf.__all__:
        assert hasattr(nf, name), name


def test_conflict_policy_members_and_states() -> None:
    assert {p.name for p in nf.ConflictPolicy} == {"FAIL", "USE_EXISTING", "TERMINATE_EXISTING"}
    states = {str(s) for s in nf.RunState}
    assert {"completed", "failed", "cancelled", "paused", "waiting", "awaiting_signal", "running"} <= states


def test_errors_namespace_and_pickling() -> None:
    import pickle

    assert nf.errors.NbflowError is nf.NbflowError
    err = nf.InstanceExistsError("wf", "i-1", "completed")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is nf.InstanceExistsError and str(clone) == str(err) and clone.instance_id == "i-1"
    assert isinstance(nf.UnknownInstanceError("x"), KeyError)
    assert isinstance(nf.TaskTimeoutError("t", 1.0), TimeoutError)
    assert str(nf.UnknownInstanceError("x")).startswith("no instance 'x'")


def test_default_runner_uses_disk_store_in_cwd(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = nf.CheckpointingRunner(echo_output=False)
    assert isinstance(runner.backend, nf.DiskcacheBackend)
    assert runner.backend.directory == tmp_path / ".nbflow"


def test_builder_passed_unbuilt_is_built() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    assert runner.run(nf.Workflow("w").then("a", lambda x: x * 2), "i", 2).output == 4


def test_completion_offers_the_public_names_and_not_the_module_s_imports() -> None:
    listed = set(dir(nf))
    assert set(nf.__all__) <= listed and "load_ipython_extension" in listed
    assert not listed & {"importlib", "TYPE_CHECKING", "Any", "annotations", "_LAZY"}
