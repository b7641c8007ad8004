"""One attempt of one task: where it runs, its timeout, its context and its output.

Sync tasks run in a thread of the runner's pool, so fork branches truly overlap; when
nothing else could run at the same moment (a plain chain) they run on the engine's own
thread, which saves a thread hop per task. Async tasks run on the engine's loop.
``get_task_context()`` and stdout/stderr capture work in all three places.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from nbflow.core.context import TaskContext, reset_task_context, set_task_context
from nbflow.core.errors import TaskTimeoutError
from nbflow.run import capture

__all__ = ["is_async", "run_attempt"]


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
        if inspect.isawaitable(result):
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
    inline: bool,
    executor: Executor | Any,
    echo: bool,
    is_coroutine: bool | None = None,
) -> tuple[Any, capture.Capture]:
    """Run ``fn`` once; returns (output, captured streams) or raises what it raised.

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

    if inline and timeout is None:
        result, cap = call_sync(fn, args, kwargs, tctx, echo)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result, cap

    submit = getattr(executor, "submit_task", None)
    if submit is not None:
        future = submit(fn, args, kwargs, tctx)
    else:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        future = loop.run_in_executor(executor, ctx.run, call_sync, fn, args, kwargs, tctx, echo)
    try:
        if timeout is None:
            result, cap = await future
        else:
            result, cap = await asyncio.wait_for(future, timeout)
    except TimeoutError:
        # The thread cannot be killed; it finishes in the background and its result is
        # discarded. (The cancel flag is shared by the run, so it is not set here.)
        raise TaskTimeoutError(tctx.task_id, timeout or 0.0) from None
    if inspect.isawaitable(result):
        result = await result
    return result, cap
