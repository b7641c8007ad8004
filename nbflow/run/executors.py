"""Run task bodies somewhere else: other processes on this machine, or a Dask cluster.

Both executors plug into the runner as ``CheckpointingRunner(executor=...)``; the
runner keeps scheduling, retries, timeouts and checkpoints, and only the task body
travels. A body, its arguments and the task context are shipped with cloudpickle, so
functions and classes defined in a notebook (they live in ``__main__``) work too; the
output travels back the same way. In the other process ``get_task_context()`` works
(a fresh ``TaskContext`` is rebuilt there: a ``threading.Event`` cannot travel, so
``cancelled`` is always False remotely) and stdout/stderr are captured and returned,
so the checkpoint and the widget show them. The checkpoint records *where* the body
ran (``host:pid`` of the process, or the Dask worker's address). While the body runs,
its output, progress and ``ctx.checkpoint`` states travel back to the runner, which
shows and commits them (``live_remote.py``); ``ctx.restore`` there gets the state the
runner read before shipping the call.

- :class:`ProcessExecutor` — a ``concurrent.futures.ProcessPoolExecutor`` for CPU-bound
  pure-Python work on one machine (``spawn`` processes by default: safe next to the
  threads of a Jupyter kernel; a *script* that uses it needs the usual
  ``if __name__ == "__main__":`` guard). A worker process that dies breaks the pool;
  the executor replaces the pool and the task fails, so its retry policy applies.
- :class:`DaskExecutor` — ``distributed.Client.submit(..., pure=False)``. A Dask worker
  lost mid-task: Dask itself re-runs the task elsewhere up to
  ``distributed.scheduler.allowed-failures`` times, then raises ``KilledWorker``; that
  error is an ordinary task failure, so the task's ``retries=`` re-submit it. Either
  way a lost worker costs a retried task, never the run.

Async task bodies still run on the runner's event loop (they are I/O-bound by
nature). A timeout stops *waiting* for a remote body and cancels a Dask future that
has not started; a body already running in a process is not interrupted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import io
import multiprocessing
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import cloudpickle

from nbflow.core.context import TaskContext, reset_task_context, set_task_context
from nbflow.core.errors import ConfigurationError, MissingDependencyError
from nbflow.run import capture, tqdm_hook
from nbflow.run.live import LiveTask
from nbflow.run.live_remote import RemoteHooks, link_for

if TYPE_CHECKING:
    import distributed

__all__ = ["DaskExecutor", "ProcessExecutor", "RemoteCapture", "run_shipped"]


class RemoteCapture:
    """What a remote attempt printed, and where it ran (``worker``)."""

    __slots__ = ("stderr", "stdout", "worker")

    def __init__(self, stdout: str, stderr: str, worker: str | None) -> None:
        self.stdout, self.stderr, self.worker = io.StringIO(stdout), io.StringIO(stderr), worker


def ship(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], tctx: TaskContext) -> bytes:
    """Pickle one attempt (body, arguments, context, live link) for another process."""
    link = link_for(tctx.hooks) if isinstance(tctx.hooks, LiveTask) else None
    ctx = (tctx.workflow_id, tctx.instance_id, tctx.task_id, tctx.attempt, dict(tctx.metadata), link)
    data: bytes = cloudpickle.dumps((fn, args, kwargs, ctx))
    return data


def run_shipped(payload: bytes, where: str | None = None) -> bytes:
    """Run a shipped attempt here (in the worker process); returns the pickled outcome.

    Never raises for a task error: the exception travels back pickled (with its
    traceback text), or as a RuntimeError naming it if it cannot be pickled.
    """
    fn, args, kwargs, ctx = cloudpickle.loads(payload)
    link = ctx[5] if len(ctx) > 5 else None
    hooks = RemoteHooks(link) if link is not None else None
    tctx = (
        TaskContext(ctx[0], ctx[1], ctx[2], ctx[3], ctx[4])
        if hooks is None
        else TaskContext(ctx[0], ctx[1], ctx[2], ctx[3], ctx[4], hooks=hooks)
    )
    capture.install()
    tqdm_hook.install()
    token = set_task_context(tctx)
    cap, ctoken = capture.begin(False)
    ok, tb = True, ""
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which retries or fails
        ok, value, tb = False, exc, traceback.format_exc()
    finally:
        capture.end(ctoken)
        reset_task_context(token)
    unsent = hooks.close() if hooks is not None else None  # a state the runner has not stored yet
    where = where or f"{socket.gethostname()}:{os.getpid()}"
    out, err = cap.stdout.getvalue(), cap.stderr.getvalue()
    try:
        data: bytes = cloudpickle.dumps((ok, value, out, err, where, tb, unsent))
        return data
    except Exception as exc:  # noqa: BLE001 - an output or error that cannot travel back
        if ok:
            problem = RuntimeError(
                f"task {tctx.task_id!r} returned a {type(value).__name__} that cannot be pickled "
                f"to travel back from the worker ({type(exc).__name__}: {exc})"
            )
        else:
            problem = RuntimeError(f"{type(value).__name__}: {value}")
        fallback: bytes = cloudpickle.dumps((False, problem, out, err, where, tb, unsent))
        return fallback


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def unpack(data: bytes, hooks: Any = None) -> tuple[Any, RemoteCapture]:
    """The runner's side of ``run_shipped``: the output and capture, or raise the error.

    A failed attempt's last state that did not reach the runner while it ran comes with
    the outcome: it is committed here (``hooks``: the attempt's LiveTask), so a retry or
    a resume continues from it."""
    ok, value, out, err, where, tb, unsent = cloudpickle.loads(data)
    cap = RemoteCapture(out, err, where)
    if not ok and unsent is not None and isinstance(hooks, LiveTask):
        hooks.checkpoint_encoded(unsent)
    if not ok:
        if tb and isinstance(value, BaseException):
            value.add_note(f"Raised in worker {where}:\n{tb.rstrip()}")
        raise value
    return value, cap


class ProcessExecutor:
    """Run sync task bodies in a pool of worker processes on this machine.

    Args:
        max_workers: processes in the pool (default: the number of CPUs).
        mp_context: multiprocessing start method, "spawn" (default), "forkserver" or
            "fork".

    Use it for CPU-bound pure-Python tasks (threads would share one GIL). Call
    ``shutdown()`` (or use it as a context manager) to stop the processes.

    >>> ex = ProcessExecutor(max_workers=2)
    >>> ex.max_workers
    2
    >>> ex.shutdown()
    """

    def __init__(self, max_workers: int | None = None, *, mp_context: str = "spawn") -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigurationError("max_workers", max_workers, "a whole number >= 1, or None for one per CPU")
        if mp_context not in multiprocessing.get_all_start_methods():
            raise ConfigurationError("mp_context", mp_context, f"one of {multiprocessing.get_all_start_methods()}")
        self.max_workers = max_workers or os.cpu_count() or 1
        self.mp_context = mp_context
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.max_workers, mp_context=multiprocessing.get_context(self.mp_context)
                )
            return self._pool

    def _discard(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def submit_task(
        self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], tctx: TaskContext
    ) -> Awaitable[tuple[Any, RemoteCapture]]:
        """Called by the runner for each attempt; resolves to (output, capture)."""
        payload = ship(fn, args, kwargs, tctx)
        pool = self._get_pool()
        try:
            future = pool.submit(run_shipped, payload)
        except BrokenProcessPool:
            self._discard(pool)
            pool = self._get_pool()
            future = pool.submit(run_shipped, payload)
        return self._result(asyncio.wrap_future(future), pool, tctx.hooks)

    async def _result(
        self, future: asyncio.Future[bytes], pool: concurrent.futures.ProcessPoolExecutor, hooks: Any = None
    ) -> tuple[Any, RemoteCapture]:
        try:
            data = await future
        except BrokenProcessPool as exc:
            self._discard(pool)  # the next attempt gets fresh processes
            raise RuntimeError(f"a worker process died while running the task ({exc})") from exc
        return unpack(data, hooks)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker processes (a later task starts a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"ProcessExecutor(max_workers={self.max_workers})"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError("dask[distributed]", "DaskExecutor", 'pip install "nbflow[dask]"') from exc
    return distributed


def _on_dask_worker(payload: bytes) -> bytes:
    """Runs on a Dask worker: name the worker in the outcome."""
    try:
        from distributed import get_worker

        where = f"dask {get_worker().address}"
    except Exception:  # noqa: BLE001 - not on a worker (e.g. a local test scheduler)
        where = None
    return run_shipped(payload, where)


class DaskExecutor:
    """Run task bodies on a Dask ``distributed`` cluster; checkpoints stay with the runner.

    Args:
        client: a (synchronous) ``distributed.Client``; default: the current client.

    Fork branches and map items run side by side on the cluster's workers. Install with
    ``pip install "nbflow[dask]"``.
    """

    def __init__(self, client: distributed.Client | None = None) -> None:
        distributed = _import_distributed()
        if client is None:
            client = distributed.default_client()
        if not isinstance(client, distributed.Client):
            raise ConfigurationError("client", client, "a distributed.Client, e.g. Client(LocalCluster())")
        if getattr(client, "asynchronous", False):
            raise ConfigurationError("client", client, "a synchronous Client (asynchronous=False)")
        self.client = client

    def submit_task(
        self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], tctx: TaskContext
    ) -> Awaitable[tuple[Any, RemoteCapture]]:
        """Called by the runner for each attempt; resolves to (output, capture)."""
        payload = ship(fn, args, kwargs, tctx)
        key = f"nbflow-{tctx.task_id}-{tctx.attempt}-{uuid.uuid4().hex[:12]}"
        dask_future = self.client.submit(_on_dask_worker, payload, pure=False, key=key)
        bridge: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def done(fut: Any) -> None:  # a Dask callback thread: hand the outcome to the loop
            try:
                result = fut.result()
            except BaseException as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            try:
                if outcome[0]:
                    bridge.set_result(outcome[1])
                else:
                    bridge.set_exception(outcome[1])
            except concurrent.futures.InvalidStateError:  # the runner stopped waiting
                pass

        dask_future.add_done_callback(done)
        return self._result(asyncio.wrap_future(bridge), dask_future, tctx.hooks)

    @staticmethod
    async def _result(future: asyncio.Future[bytes], dask_future: Any, hooks: Any = None) -> tuple[Any, RemoteCapture]:
        try:
            data = await future
        except asyncio.CancelledError:
            dask_future.cancel()  # a timeout or a stop: do not leave work queued
            raise
        return unpack(data, hooks)

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client!r})"
