"""What a (re)run will do with each task, decided before anything runs.

A checkpoint is reused only if the task's code fingerprint still matches *and* every
upstream task is reused too: a task re-run because its code changed, or because
``rerun_from`` asked for it, makes everything downstream run again. The widget shows
this plan before the run ("stale" tasks), and ``on_change="fail"`` refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nbflow.core.graph import WorkflowDefinition
from nbflow.store.base import CheckpointRecord

__all__ = ["RESTORE", "RUN", "STALE", "changed_tasks", "compute_plan"]

RESTORE, STALE, RUN = "restore", "stale", "run"


def compute_plan(
    wf: WorkflowDefinition,
    records: Mapping[str, CheckpointRecord],
    force: Iterable[str] = (),
) -> dict[str, str]:
    """Map every task id to RESTORE, STALE (has a checkpoint, runs again) or RUN.

    >>> from nbflow.core.builder import Workflow
    >>> wf = Workflow("w").then("a", lambda x: x).then("b", lambda x: x).build()
    >>> compute_plan(wf, {})
    {'a': 'run', 'b': 'run'}
    """
    forced = set(force)
    plan: dict[str, str] = {}
    for node in wf.nodes:
        record = records.get(node.id)
        if record is None:
            plan[node.id] = RUN
        elif (
            node.id in forced
            or record.fingerprint != node.fingerprint
            or any(plan[dep] != RESTORE for dep in node.deps)
        ):
            plan[node.id] = STALE
        else:
            plan[node.id] = RESTORE
    return plan


def changed_tasks(wf: WorkflowDefinition, records: Mapping[str, CheckpointRecord]) -> list[str]:
    """Tasks whose own code changed since their checkpoint was written."""
    return [n.id for n in wf.nodes if n.id in records and records[n.id].fingerprint != n.fingerprint]
