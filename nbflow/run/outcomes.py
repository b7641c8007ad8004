"""How a step or a run ends, as the engine passes it around.

A step ends normally (its record is committed), or with one of the outcomes here,
raised from deep inside the step and caught by whoever hosts it: the scheduler of a
single-process run, or a ``PooledWorker`` running one unit. They are exceptions only
so that they can leave a step from any depth; none of them is an error a user sees
(the ``TaskError`` a ``StepFailed`` carries is what the run reports).

They live apart from the scheduler and the steps so both import them at the top,
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbflow.core.status import RunState, TaskError

__all__ = ["NotDue", "Outcome", "Parked", "StepFailed"]


@dataclass
class Outcome:
    """Where a run of the scheduler ended: its state and what goes with it."""

    state: RunState
    output: Any = None
    error: TaskError | None = None
    reason: str = ""
    done: int = 0
    total: int = 0
    signal: str | None = None


class StepFailed(Exception):  # noqa: N818 - an internal outcome carrying a TaskError
    """A step failed for good; carries the TaskError that the run reports."""

    def __init__(self, error: TaskError) -> None:
        super().__init__(str(error))
        self.error = error


class Parked(Exception):  # noqa: N818 - a control outcome, not an error
    """A run reached a signal that has not been sent: it parks (holding no thread)."""

    def __init__(self, task_id: str, signal: str) -> None:
        super().__init__(signal)
        self.task_id, self.signal = task_id, signal


class NotDue(Exception):  # noqa: N818 - a control outcome: a delay that has not elapsed yet
    """A worker reached a delay before its stored wake-up time ``at``: the unit is
    given back, and the instance waits."""

    def __init__(self, at: float) -> None:
        super().__init__(at)
        self.at = at
