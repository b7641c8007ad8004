"""Workflow context (name, codec, metadata) and the per-task context of a running task.

``get_task_context()`` works from inside a task body — sync tasks in threads and async
tasks alike — because the runner sets a ``contextvars`` variable around each attempt.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nbflow.core.errors import ConfigurationError, NbflowError
from nbflow.core.keys import ID_RULE, check_task_id

__all__ = ["TaskContext", "WorkflowContext", "get_task_context"]


class WorkflowContext:
    """A workflow's name, the codec its checkpoints use, and free metadata.

    >>> WorkflowContext("etl", metadata={"owner": "ana"}).metadata["owner"]
    'ana'
    """

    def __init__(self, name: str, codec: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        # A workflow name prefixes its child ids and default instance ids, so it obeys
        # the task-id rule (nbflow.core.keys) that keeps those ids unambiguous.
        reason = check_task_id(name)
        if reason is not None:
            raise ConfigurationError("workflow name", name, f"a name of {ID_RULE}, but {reason}")
        if codec is not None and not (hasattr(codec, "name") and hasattr(codec, "dump") and hasattr(codec, "load")):
            raise ConfigurationError("codec", codec, "a codec such as PickleCodec() or JsonCodec()")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigurationError("metadata", metadata, "a dict")
        self.name = name
        self.codec = codec
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))

    def __repr__(self) -> str:
        return f"WorkflowContext({self.name!r})"


@dataclass(frozen=True)
class TaskContext:
    """What a running task may know about itself.

    ``idempotency_key`` is the same for every attempt of this task in this instance:
    pass it to external systems so a task re-run after a crash (at-least-once
    delivery) does not, for example, charge a card twice.
    """

    workflow_id: str
    instance_id: str
    task_id: str
    attempt: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.instance_id}:{self.task_id}"

    @property
    def cancelled(self) -> bool:
        """True once the run was asked to stop; long sync tasks may poll it."""
        return self.cancel_event.is_set()


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("nbflow_task", default=None)


def get_task_context() -> TaskContext:
    """The context of the task currently running (raises outside a task)."""
    ctx = _current.get()
    if ctx is None:
        raise NbflowError(
            "get_task_context() was called outside a running task. Call it from inside a "
            "task body that a runner executes."
        )
    return ctx


def set_task_context(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    """Used by the runner around each attempt."""
    return _current.set(ctx)


def reset_task_context(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
