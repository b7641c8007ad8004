"""One attempt of one task: where it runs, its timeout, its context and its output.

Sync tasks run in a thread of the runner's pool, so fork branches truly overlap; when
nothing else could run at the same moment (a plain chain) they run on the engine's own
thread, which saves a thread hop per task. Async tasks run on the engine's loop.
``get_task_context()`` and stdout/stderr capture work in all three places. A sync
attempt that times out (or whose run stops) is told so through
``get_task_context().cancelled`` and its thread is given up (``threads.TaskThreads``):
it no longer holds a place in the pool, nor the process at exit.

``RetryLedger`` keeps the attempt count of a task between retries in the store, so a
run killed during a backoff continues the retry policy instead of starting it over.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from nbflow.core.context import TaskContext, reset_task_context, set_task_context
from nbflow.core.errors import TaskTimeoutError
from nbflow.run import capture
from nbflow.run.task_state import RETRY_KEYS, TaskStates, is_retrying
from nbflow.run.threads import in_thread
from nbflow.store.base import Backend, CheckpointRecord

__all__ = ["RetryLedger", "call_sync", "is_async", "is_awaitable", "run_attempt"]


_NEVER_AWAITABLE = frozenset({int, float, str, bytes, bool, list, tuple, dict, set, type(None)})


def is_awaitable(result: Any) -> bool:
    """inspect.isawaitable, answered at once for the plain values most tasks return."""
    return type(result) not in _NEVER_AWAITABLE and inspect.isawaitable(result)


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def call_sync(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], tctx: TaskContext, echo: bool
) -> tuple[Any, capture.Capture]:
    token = set_task_context(tctx)
    cap, ctoken = capture.begin(echo)
    try:
        return fn(*args, **kwargs), cap
    finally:
        capture.end(ctoken)
        reset_task_context(token)


async def _call_async(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], tctx: TaskContext, echo: bool
) -> tuple[Any, capture.Capture]:
    token = set_task_context(tctx)
    cap, ctoken = capture.begin(echo)
    try:
        result = fn(*args, **kwargs)
        if is_awaitable(result):
            result = await result
        return result, cap
    finally:
        capture.end(ctoken)
        reset_task_context(token)


async def run_attempt(
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    tctx: TaskContext,
    *,
    timeout: float | None,
    executor: Executor | Any,
    echo: bool,
    is_coroutine: bool | None = None,
) -> tuple[Any, capture.Capture]:
    """Run ``fn`` once, on the loop (a coroutine function) or on ``executor``; returns
    (output, captured streams) or raises what it raised. A plain function the engine
    runs on its own thread is called with :func:`call_sync` directly.

    A timeout raises TaskTimeoutError. ``executor`` may be a concurrent.futures
    Executor or any object with ``submit_task(fn, args, kwargs, tctx)`` returning an
    awaitable (the Dask and process executors).
    """
    if is_coroutine if is_coroutine is not None else is_async(fn):
        coro = _call_async(fn, args, kwargs, tctx, echo)
        if timeout is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            raise TaskTimeoutError(tctx.task_id, timeout) from None

    submit = getattr(executor, "submit_task", None)
    future: Awaitable[tuple[Any, capture.Capture]]
    if submit is not None:
        future = submit(fn, args, kwargs, tctx)
    else:
        # in_thread copies the context variables into the thread and gives the thread
        # up if this wait is cancelled (the timeout below, or a stopped run).
        future = in_thread(executor, call_sync, fn, args, kwargs, tctx, echo)
    try:
        if timeout is None:
            result, cap = await future
        else:
            result, cap = await asyncio.wait_for(future, timeout)
    except TimeoutError:
        # A thread cannot be killed: the body is told (ctx.cancelled, this attempt's own
        # flag), its thread left to finish alone, and what it returns later is dropped.
        tctx.cancel_event.set()
        raise TaskTimeoutError(tctx.task_id, timeout or 0.0) from None
    if is_awaitable(result):
        result = await result
    return result, cap


class RetryLedger:
    """The attempt counts of one instance's tasks between retries, kept in the store.

    When an attempt fails and the policy allows another, ``failed`` stores the attempt
    number, when the next one is due and a short error *before* the retry waits, so a
    process killed during the backoff leaves them behind; the next run's ``resume``
    continues the count and waits only what is left of the backoff. ``settle`` drops
    a task's state once its record is stored or it failed for good.

    Cheap on the success path: the states are read once per ledger (one per run, or
    per unit of a PooledWorker), and only when a task that can retry is about to run;
    nothing is written for a task that never fails. An attempt cut short by a crash is
    not counted: it runs again under the same number (at-least-once, as for any task).

    >>> from nbflow.store.memory import InMemoryBackend
    >>> ledger = RetryLedger(InMemoryBackend(), "i-1")
    >>> ledger.failed("t", "fp", 2, next_retry_at=time.time() + 5, error="ValueError: no")
    >>> attempt, wait, error = RetryLedger(ledger.backend, "i-1").resume("t", "fp", None)
    >>> attempt, 4 < wait <= 5, error
    (2, True, 'ValueError: no')
    """

    def __init__(self, backend: Backend, instance_id: str) -> None:
        self.backend, self.instance_id = backend, instance_id
        # Shared with the live output and progress of the run (their own keys): one
        # read-modify-write helper, so neither clobbers the other's keys.
        self.states = TaskStates(backend, instance_id)

    def _loaded(self) -> dict[str, dict[str, Any]]:
        return self.states.all()

    def pending(self, task_id: str) -> bool:
        """Whether ``task_id`` has a stored retry state (its retries were under way)."""
        return is_retrying(self._loaded().get(task_id))

    def resume(self, task_id: str, fingerprint: str, record: CheckpointRecord | None) -> tuple[int, float, str] | None:
        """(attempts made, seconds until the next one is due, last error) if ``task_id``
        was between retries when its last run stopped, else None.

        A state is ignored if the task's code changed since (a fix starts the policy
        over) or a record of the task was stored after it (a leftover)."""
        state = self._loaded().get(task_id)
        if state is None:
            return None
        attempt, due, saved = state.get("attempt"), state.get("next_retry_at"), state.get("saved_at")
        if (
            not isinstance(attempt, int)
            or isinstance(attempt, bool)
            or attempt < 1
            or not isinstance(due, int | float)
            or not isinstance(saved, int | float)
            or state.get("fingerprint") != fingerprint
            or (record is not None and record.finished_at >= saved)
        ):
            return None
        return attempt, max(0.0, float(due) - time.time()), str(state.get("last_error", ""))

    def failed(self, task_id: str, fingerprint: str, attempt: int, *, next_retry_at: float, error: str) -> None:
        """Store that attempt ``attempt`` failed and the next one is due at ``next_retry_at``."""
        state = {
            "attempt": attempt,
            "next_retry_at": next_retry_at,
            "last_error": error,
            "fingerprint": fingerprint,
            "saved_at": time.time(),
        }
        self.states.update(task_id, state)

    def settle(self, task_id: str) -> None:
        """Forget ``task_id``'s retry state: its record is stored, or it failed for good
        (a later resume of a failed instance gives the task a fresh policy)."""
        self.states.drop(task_id, RETRY_KEYS)
