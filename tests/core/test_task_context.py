"""TaskContext.of_attempt, the runner's constructor, makes the same frozen object as the
dataclass's own constructor."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from nbflow.core.context import TaskContext, get_task_context, reset_task_context, set_task_context


class _Hooks:
    def progress(self, done: float, total: float | None, note: str) -> None:
        self.last = (done, total, note)

    def checkpoint(self, state: object) -> None:
        self.state = state

    def restore(self, default: object = None) -> object:
        return getattr(self, "state", default)


def test_of_attempt_is_the_object_the_constructor_makes() -> None:
    cancel, hooks = threading.Event(), _Hooks()
    args = ("wf", "i-1", "train", 3, {"team": "ml"}, cancel, hooks)
    made, fast = TaskContext(*args), TaskContext.of_attempt(*args)
    assert fast == made
    assert repr(fast) == repr(made)
    assert [getattr(fast, f.name) for f in dataclasses.fields(TaskContext)] == [
        getattr(made, f.name) for f in dataclasses.fields(TaskContext)
    ]
    assert fast.idempotency_key == "wf:i-1:train"
    assert fast.cancel_event is cancel and fast.hooks is hooks and fast.attempt == 3


def test_of_attempt_is_frozen_and_talks_to_its_hooks() -> None:
    cancel, hooks = threading.Event(), _Hooks()
    ctx = TaskContext.of_attempt("wf", "i-1", "t", 1, {}, cancel, hooks)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.attempt = 2  # type: ignore[misc]
    token = set_task_context(ctx)
    try:
        assert get_task_context() is ctx
        ctx.progress(2, 4, note="half")
        ctx.checkpoint({"step": 2})
        assert hooks.last == (2.0, 4.0, "half")
        assert ctx.restore(None) == {"step": 2}
        assert not ctx.cancelled
        cancel.set()
        assert ctx.cancelled
    finally:
        reset_task_context(token)
