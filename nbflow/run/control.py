"""Control signals that stop a run. They derive from BaseException on purpose: a task's
``except Exception:`` must never swallow a cancel or a pause (DBOS does the same)."""

from __future__ import annotations

__all__ = ["RunCancelled", "RunPaused", "RunStop"]


class RunStop(BaseException):
    """Base of the signals that stop a run at a task boundary."""

    state = "cancelled"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class RunCancelled(RunStop):
    """The run was cancelled (``handle.cancel()``, the client, the CLI) or interrupted."""

    def __init__(self, reason: str = "", state: str = "cancelled") -> None:
        super().__init__(reason)
        self.state = state


class RunPaused(RunStop):
    """The run was paused; ``unpause`` then resume continues it."""

    state = "paused"
