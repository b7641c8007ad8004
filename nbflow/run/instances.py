"""Making a stored instance: the definition it runs, its record and its input.

Shared by everything that creates instances — ``CheckpointingRunner`` (a new run) and
``WorkflowClient.submit`` (a pending instance for a worker pool) — and by the
``PooledWorker``, which accepts the same workflow forms. It sits beside
:mod:`nbflow.run.lifecycle`, which says how an instance's state may move afterwards;
neither reads anything but what it is given, so runner, client and worker import them
without importing each other.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from nbflow.core.builder import WorkflowBuilder
from nbflow.core.errors import ConfigurationError
from nbflow.core.graph import WorkflowDefinition
from nbflow.core.status import RunState
from nbflow.run import lifecycle
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.stale import input_facts
from nbflow.store.base import INPUT_KEY, Backend, CheckpointRecord, InstanceMeta

__all__ = ["as_definition", "move_stored", "new_instance"]


def as_definition(wf: Any) -> WorkflowDefinition:
    """Accept a built workflow, or a builder (built on the spot)."""
    if isinstance(wf, WorkflowDefinition):
        return wf
    if isinstance(wf, WorkflowBuilder):
        return wf.build()
    raise ConfigurationError("workflow", wf, "a workflow from Workflow(name)...build()")


def new_instance(
    definition: WorkflowDefinition, io: CheckpointIO, input_value: Any, state: RunState = RunState.RUNNING
) -> tuple[InstanceMeta, CheckpointRecord]:
    """Check the input, store it, and make the record of a new instance (not saved)."""
    _check_input(definition, input_value)
    meta = InstanceMeta(
        instance_id=io.instance_id,
        workflow=definition.name,
        definition_hash=definition.definition_hash,
        shape=definition.shape(),
        tasks_total=len(definition.nodes),
        sinks=definition.sinks,
        state=state.value,
        codec=io.codec.name,
    )
    now = time.time()
    record = io.write(INPUT_KEY, "", input_value, started_at=now, finished_at=now, extra=input_facts(input_value))
    meta.input_digest = hashlib.sha256(record.payload or (record.blob or "").encode()).hexdigest()[:16]
    return meta, record


def _check_input(wf: WorkflowDefinition, value: Any) -> None:
    """Tasks that read items of the input need a mapping holding those items."""
    needs: dict[str, list[str]] = {}
    for node in wf.nodes:
        for key in node.input_keys:
            if key is not None:
                needs.setdefault(key, []).append(node.id)
    if not needs:
        return
    if not isinstance(value, Mapping):
        raise ConfigurationError("input", value, f"a dict with the keys {sorted(needs)} (read by the workflow's tasks)")
    missing = sorted(k for k in needs if k not in value)
    if missing:
        who = "; ".join(f"{k!r} for task(s) {', '.join(needs[k])}" for k in missing)
        raise ConfigurationError("input", dict(value), f"a dict that also has {who}")


def move_stored(
    backend: Backend, instance_id: str, to: RunState, *, by: str, message: str | None = None, **fields: Any
) -> InstanceMeta | None:
    """Move the stored instance to ``to`` if the lifecycle allows it, and save it.

    Returns the moved instance; None when there is no such instance, the move is not
    allowed (it stays as it is: see :func:`nbflow.run.lifecycle.try_transition`), or
    it would change nothing (already ``to`` with the same ``fields``), which is not
    written again.

    >>> from nbflow import InMemoryBackend
    >>> backend = InMemoryBackend()
    >>> backend.save_instance(InstanceMeta("i-1", "etl", "hash", state="running"))
    >>> move_stored(backend, "i-1", RunState.PAUSED, by="ops").message
    'paused (ops)'
    >>> move_stored(backend, "i-1", RunState.RUNNING, by="worker w1") is None  # paused means paused
    True
    """
    meta = backend.load_instance(instance_id)
    if meta is None:
        return None
    if meta.state == to and all(getattr(meta, name) == value for name, value in fields.items()):
        return None
    if not lifecycle.try_transition(meta, to, by=by, message=message, **fields):
        return None
    backend.save_instance(meta)
    return meta
