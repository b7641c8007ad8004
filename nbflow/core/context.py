"""Workflow context (name, codec, metadata) and the per-task context of a running task.

``get_task_context()`` works from inside a task body — sync tasks in threads and async
tasks alike — because the runner sets a ``contextvars`` variable around each attempt.

A running task can also talk back to the runner through its context: report progress
(``ctx.progress(done, total, note)``, or ``nf.progress(...)``), and save its own state
durably (``ctx.checkpoint(state)``) so that after a crash it starts from the last saved
state (``ctx.restore(default)``) instead of from the beginning. The runner gives each
attempt a :class:`TaskHooks` object that does the real work (``nbflow.run.live``); this
module only defines the seam, so ``core`` stays free of the run layer.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from nbflow.core.errors import ConfigurationError, NbflowError
from nbflow.core.keys import ID_RULE, check_task_id

__all__ = ["TaskContext", "TaskHooks", "WorkflowContext", "get_task_context", "progress"]


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


class TaskHooks(Protocol):
    """What the runner plugs into a task's context for one attempt (``nbflow.run.live``).

    ``progress`` must be cheap and thread-safe (a tqdm bar may call it from any thread);
    ``checkpoint`` returns once the state is durable; ``restore`` returns the last state
    this task saved in this instance, or ``default``.
    """

    def progress(self, done: float, total: float | None, note: str) -> None: ...
    def checkpoint(self, state: Any) -> None: ...
    def restore(self, default: Any) -> Any: ...


class _MemoryHooks:
    """The hooks of a context made without a runner (a test building a TaskContext by
    hand): progress goes nowhere and the state lives in memory only."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = _NOTHING

    def progress(self, done: float, total: float | None, note: str) -> None:
        return None

    def checkpoint(self, state: Any) -> None:
        self.state = state

    def restore(self, default: Any) -> Any:
        return default if self.state is _NOTHING else self.state


_NOTHING = object()


def check_progress(done: Any, total: Any, note: Any) -> tuple[float, float | None, str]:
    """Validate ``progress`` arguments; returns them as (float, float | None, str)."""
    kind = type(done)
    if (kind is int or kind is float) and 0 <= done < math.inf:  # the common case, cheaply (NaN fails too)
        if total is None:
            return float(done), None, note if type(note) is str else str(note)
        kind = type(total)
        if (kind is int or kind is float) and 0 < total < math.inf:
            return float(done), float(total), note if type(note) is str else str(note)
    # numpy numbers and other reals are fine too; bools, strings and NaN are not
    if isinstance(done, bool) or not isinstance(done, numbers.Real) or not math.isfinite(done) or done < 0:
        raise ConfigurationError("progress done", done, "a finite number >= 0 (items or steps done so far)")
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, numbers.Real) or not math.isfinite(total) or total <= 0
    ):
        raise ConfigurationError("progress total", total, "None (unknown) or a finite number > 0")
    return float(done), None if total is None else float(total), str(note)


@dataclass(frozen=True)
class TaskContext:
    """What a running task may know about itself, and how it talks back.

    ``idempotency_key`` is the same for every attempt of this task in this instance:
    pass it to external systems so a task re-run after a crash (at-least-once
    delivery) does not, for example, charge a card twice.

    ``progress(done, total, note)`` shows how far the task is (on its node, its table
    row and in the ETA); ``checkpoint(state)`` saves the task's own state durably, with
    the instance's codec, and ``restore(default)`` gives it back in the next attempt or
    after a crash — so a training loop killed at epoch 57 continues at epoch 57:

    >>> ctx = TaskContext("wf", "i-1", "train", 1)   # the runner makes these; by hand, state stays in memory
    >>> state = ctx.restore({"epoch": 0})
    >>> for epoch in range(state["epoch"], 3):
    ...     ctx.checkpoint({"epoch": epoch + 1})
    ...     ctx.progress(epoch + 1, 3, note=f"epoch {epoch + 1}")
    >>> ctx.restore(None)
    {'epoch': 3}

    A finished task's saved state is dropped together with it (its output is what
    counts then). The state is read back only while the task's code and what it reads
    are unchanged (a fix starts it over, as for retries; pin ``@nf.task(version=...)``
    to keep it across a cosmetic edit).
    """

    workflow_id: str
    instance_id: str
    task_id: str
    attempt: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    hooks: TaskHooks = field(default_factory=_MemoryHooks, repr=False, compare=False)

    @classmethod
    def of_attempt(
        cls,
        workflow_id: str,
        instance_id: str,
        task_id: str,
        attempt: int,
        metadata: Mapping[str, Any],
        cancel_event: threading.Event,
        hooks: TaskHooks,
    ) -> TaskContext:
        """The runner's constructor, once per attempt: the same object as
        ``TaskContext(...)`` with every field given, its fields set in one step rather
        than one frozen ``object.__setattr__`` each (most of what a context cost a
        trivial task)."""
        ctx = object.__new__(cls)
        ctx.__dict__.update(
            workflow_id=workflow_id,
            instance_id=instance_id,
            task_id=task_id,
            attempt=attempt,
            metadata=metadata,
            cancel_event=cancel_event,
            hooks=hooks,
        )
        return ctx

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.instance_id}:{self.task_id}"

    @property
    def cancelled(self) -> bool:
        """True once the run was asked to stop; long sync tasks may poll it."""
        return self.cancel_event.is_set()

    def progress(self, done: float, total: float | None = None, note: str = "") -> None:
        """Report how far this task is: ``done`` of ``total`` (None: unknown) steps,
        with an optional short ``note`` ("epoch 3", "loss 0.12"). Cheap: call it every
        step; the widget shows a few updates per second."""
        self.hooks.progress(*check_progress(done, total, note))

    def checkpoint(self, state: Any) -> None:
        """Save ``state`` durably (atomically, with the instance's codec) as this task's
        own state; returns once it is stored. Each call replaces the previous state."""
        self.hooks.checkpoint(state)

    def restore(self, default: Any = None) -> Any:
        """The last state this task saved with :meth:`checkpoint` (in an earlier attempt,
        or before the process died), else ``default``."""
        return self.hooks.restore(default)


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


def current_task_context() -> TaskContext | None:
    """The context of the task running here, or None (never raises)."""
    return _current.get()


def progress(done: float, total: float | None = None, note: str = "") -> None:
    """Report the running task's progress: ``done`` of ``total`` steps (None: unknown).

    Same as ``get_task_context().progress(...)``; outside a task it checks its
    arguments and does nothing, so a function that reports progress can still be
    called on its own (in a test, say).

    >>> progress(3, 10, note="epoch 3")   # outside a task: nothing happens
    """
    checked = check_progress(done, total, note)
    ctx = _current.get()
    if ctx is not None:
        ctx.hooks.progress(*checked)


def set_task_context(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    """Used by the runner around each attempt."""
    return _current.set(ctx)


def reset_task_context(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
