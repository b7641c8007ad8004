"""Instances written by nbflow 0.1 (pickled records) are reported as an old format, not
as damage, and `nbflow migrate` converts them so nothing they finished is lost."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.cli import main
from nbflow.store.migrate import migrate_store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-nbflow-0.1.tar.gz"


def _workflow() -> nf.WorkflowDefinition:
    spec = importlib.util.spec_from_file_location("store_0_1_workflow", FIXTURE.parent / "store_0_1_workflow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._workflow()  # type: ignore[no-any-return]


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path / "store", filter="data")
    return tmp_path / "store"


def test_an_old_store_is_reported_as_old_not_damaged(old_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = nf.DiskcacheBackend(old_store)
    with pytest.raises(nf.StoreFormatError) as err:
        backend.load_instance("done-1")
    text = str(err.value)
    assert "nbflow migrate --dir" in text and "Nothing is damaged" in text
    assert "clear" not in text and "discard" not in text.lower()
    listed = {m.instance_id: m.state for m in backend.list_instances()}
    assert listed == {"done-1": "unreadable", "half-1": "unreadable"}
    assert main(["--dir", str(old_store), "list"]) == 0
    assert "unreadable" in capsys.readouterr().out


def test_migrate_keeps_every_finished_output_and_resume_continues(old_store: Path) -> None:
    assert main(["--dir", str(old_store), "migrate"]) == 0  # the command users run
    report = migrate_store(old_store)
    assert sorted(report.current) == ["done-1", "half-1"] and not report.failed and not report.migrated
    backend = nf.DiskcacheBackend(old_store)
    client = nf.WorkflowClient(backend)
    done = client.status("done-1")
    assert done.state == "completed" and done.output == 395522
    assert client.get_task_result("done-1", "big") == bytes(range(256)) * 1030  # a blob, now checksummed
    assert client.get_task_result("done-1", "half") == [131840, 131840, 131841]
    assert client.status("half-1").state == "failed"
    before = {t: r.finished_at for t, r in backend.get_records("half-1").items()}
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    resumed = runner.resume(_workflow(), "half-1")
    assert resumed.state == "completed" and resumed.output == 395522
    after = {t: r.finished_at for t, r in backend.get_records("half-1").items()}
    # Everything 0.1 finished was restored (same records), only `flaky` ran.
    assert {t for t in after if after[t] != before.get(t)} == {"flaky"}
