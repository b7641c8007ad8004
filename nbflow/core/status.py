"""Run states, the status object a run returns, conflict policies and LoopResult."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConflictPolicy", "LoopResult", "RunState", "TaskError", "WorkflowStatus"]


class RunState(enum.StrEnum):
    """Where an instance stands. A StrEnum: ``status.state == "completed"`` works."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    WAITING = "waiting"
    AWAITING_SIGNAL = "awaiting_signal"
    # Listing only: the instance's records cannot be read (DAMAGED: their bytes are not
    # valid; UNREADABLE: the operating system refuses access). Never stored.
    DAMAGED = "damaged"
    UNREADABLE = "unreadable"

    @property
    def finished(self) -> bool:
        """Completed and failed runs are over; everything else can go on."""
        return self in (RunState.COMPLETED, RunState.FAILED)


class ConflictPolicy(enum.Enum):
    """What ``run`` does when the instance id already exists.

    FAIL raises ``InstanceExistsError`` (the seed's default); USE_EXISTING continues the
    instance (or returns its finished output); TERMINATE_EXISTING discards it and
    starts over.
    """

    FAIL = "fail"
    USE_EXISTING = "use_existing"
    TERMINATE_EXISTING = "terminate_existing"

    @classmethod
    def coerce(cls, value: ConflictPolicy | str) -> ConflictPolicy:
        if isinstance(value, ConflictPolicy):
            return value
        from nbflow.core.errors import ConfigurationError

        try:
            return cls(str(value).lower())
        except ValueError:
            raise ConfigurationError(
                "conflict_policy", value, "ConflictPolicy.FAIL, USE_EXISTING or TERMINATE_EXISTING"
            ) from None


@dataclass(frozen=True)
class TaskError:
    """Why a run failed: the task, the exception type and message, and the traceback."""

    task_id: str
    type: str
    message: str
    traceback: str = ""
    attempt: int = 1

    def __str__(self) -> str:
        return f"task {self.task_id!r} failed: {self.type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskError:
        return cls(**data)


@dataclass(frozen=True)
class WorkflowStatus:
    """The outcome of ``run``/``resume``, or a snapshot of a stored instance."""

    workflow: str
    instance_id: str
    state: RunState
    output: Any = None
    error: TaskError | None = None
    tasks_done: int = 0
    tasks_total: int = 0
    wake_at: float | None = None
    signal: str | None = None
    message: str = ""
    task_states: dict[str, str] = field(default_factory=dict)

    def is_completed(self) -> bool:
        return self.state == RunState.COMPLETED

    def is_failed(self) -> bool:
        return self.state == RunState.FAILED

    @property
    def status(self) -> str:
        """The state as plain text (sayiir's spelling)."""
        return str(self.state)

    def __repr__(self) -> str:
        extra = f", error={self.error}" if self.error else ""
        return (
            f"WorkflowStatus({self.workflow!r}, {self.instance_id!r}, state={str(self.state)!r}, "
            f"{self.tasks_done}/{self.tasks_total} tasks{extra})"
        )


@dataclass(frozen=True)
class LoopResult:
    """What a loop body returns: ``LoopResult.again(v)`` to go round once more with
    ``v``, or ``LoopResult.done(v)`` to leave the loop with ``v``."""

    value: Any
    finished: bool

    @classmethod
    def again(cls, value: Any) -> LoopResult:
        return cls(value, False)

    @classmethod
    def done(cls, value: Any) -> LoopResult:
        return cls(value, True)
