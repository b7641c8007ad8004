"""What a (re)run will do with each task, decided before anything runs.

A checkpoint is reused only if the task's code fingerprint still matches *and* every
upstream task is reused too: a task re-run because its code changed, or because
``rerun_from`` asked for it, makes everything downstream run again. Branches of a
route whose (restored) key chose another branch are skipped. The widget shows this
plan before the run ("stale" tasks), and ``on_change="fail"`` refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nbflow.core.graph import Node, WorkflowDefinition
from nbflow.core.vocabulary import NodeKind, PlanStep
from nbflow.store.base import CheckpointRecord

__all__ = ["RESTORE", "RUN", "SKIP", "STALE", "PlanStep", "changed_tasks", "compute_plan", "skipped_by"]

RESTORE, STALE, RUN, SKIP = PlanStep.RESTORE, PlanStep.STALE, PlanStep.RUN, PlanStep.SKIP


def skipped_by(node: Node, plan: Mapping[str, str], branch_of: Mapping[str, str]) -> bool:
    """True if ``node`` cannot run in this instance: its route chose another branch,
    or what feeds it was skipped (a route's merge is skipped only if all its inputs are)."""
    guard = node.options.get("guard")
    if guard is not None and guard in branch_of and branch_of[guard] != node.options.get("when"):
        return True
    deps = node.deps
    if node.kind == NodeKind.MERGE:
        return bool(deps) and all(plan.get(d) == SKIP for d in deps)
    return any(plan.get(d) == SKIP for d in deps)


def compute_plan(
    wf: WorkflowDefinition,
    records: Mapping[str, CheckpointRecord],
    force: Iterable[str] = (),
) -> dict[str, PlanStep]:
    """Map every task id to RESTORE, STALE (has a checkpoint, runs again), RUN or SKIP.

    >>> from nbflow.core.builder import Workflow
    >>> wf = Workflow("w").then("a", lambda x: x).then("b", lambda x: x).build()
    >>> compute_plan(wf, {})
    {'a': 'run', 'b': 'run'}
    """
    forced = set(force)
    plan: dict[str, PlanStep] = {}
    branch_of: dict[str, str] = {}
    routed = any(node.kind == NodeKind.ROUTE for node in wf.nodes)  # no route: nothing can be skipped
    for node in wf.nodes:
        nid = node.id
        if routed and skipped_by(node, plan, branch_of):
            plan[nid] = SKIP
            continue
        record = records.get(nid)
        if record is None:
            plan[nid] = RUN
            continue
        valid = nid not in forced and record.fingerprint == node.fingerprint
        if valid:
            for dep in node.deps:  # a skipped input (a route's other branch) does not count
                if plan[dep] != RESTORE and plan[dep] != SKIP:
                    valid = False
                    break
        plan[nid] = RESTORE if valid else STALE
        if valid and node.kind == NodeKind.ROUTE and "branch" in record.extra:
            branch_of[nid] = record.extra["branch"]
    return plan


def changed_tasks(wf: WorkflowDefinition, records: Mapping[str, CheckpointRecord]) -> list[str]:
    """Tasks whose own code changed since their checkpoint was written."""
    return [n.id for n in wf.nodes if n.id in records and records[n.id].fingerprint != n.fingerprint]
