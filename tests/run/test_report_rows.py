"""Per-task status rows read from the store: a task state that holds only what a killed
task printed or how far it got is shown as where it was, not as a retry."""

from __future__ import annotations

import nbflow as nf
from nbflow.run.report import task_rows


def test_a_killed_tasks_progress_is_shown_not_taken_for_a_retry() -> None:
    backend = nf.InMemoryBackend()
    wf = nf.Workflow("r").then("prep", lambda x: x).then("train", lambda prep: prep).build()
    nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 1)
    backend.delete_records("i", ["train"])  # as if the run died inside train
    meta = backend.load_instance("i")
    assert meta is not None
    meta.state = "interrupted"
    backend.save_instance(meta)
    backend.save_task_state("i", "train", {"progress": {"done": 57, "total": 100, "note": "epoch 57", "at": 1.0}})
    rows = {row.task: row for row in task_rows(backend, backend.load_instance("i"))}  # type: ignore[arg-type]
    assert rows["prep"].state == "done"
    assert rows["train"].state != "retrying" and "attempt" not in rows["train"].note
    assert "was at 57/100" in rows["train"].note and "epoch 57" in rows["train"].note
    backend.save_task_state("i", "train", {"attempt": 2, "next_retry_at": 2.0, "last_error": "boom"})
    rows = {row.task: row for row in task_rows(backend, backend.load_instance("i"))}  # type: ignore[arg-type]
    assert rows["train"].state == "retrying" and "boom" in rows["train"].note
