"""TaskThreads: the pool of threads sync task bodies run in, which can give up a thread.

A Python thread cannot be killed, so a sync task that timed out (or whose run was
cancelled) keeps running until its body returns. In a ``ThreadPoolExecutor`` that
thread still holds one of the pool's places, so retries and other tasks queue behind
it; and the interpreter joins every such thread at exit (``concurrent.futures``
registers an exit hook), so the process cannot end before the body does.

``TaskThreads.abandon(future)`` lets go of the thread running ``future``: it stops
counting against ``max_threads`` (a new thread takes its place when work is waiting),
and it ends when its body returns instead of taking more work. Every thread is a
daemon, and no exit hook joins them, so an abandoned body never holds the process
up. Whatever the body returns after that is dropped with its future.

>>> pool = TaskThreads(2)
>>> pool.submit(sum, [1, 2, 3]).result()
6
>>> pool.shutdown()
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any

from nbflow.core.errors import ConfigurationError

__all__ = ["TaskThreads", "in_thread"]

_Item = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    __slots__ = ("abandoned", "thread")

    def __init__(self) -> None:
        self.abandoned = False
        self.thread: threading.Thread | None = None


class TaskThreads(concurrent.futures.Executor):
    """At most ``max_threads`` daemon threads running submitted calls, minus the ones
    given up with :meth:`abandon`.

    Args:
        max_threads: threads that may run calls at the same time.
        name: prefix of the threads' names.
    """

    def __init__(self, max_threads: int, name: str = "nbflow-task") -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ConfigurationError("max_threads", max_threads, "a whole number >= 1")
        self.max_threads = max_threads
        self.name = name
        # One lock for all the bookkeeping, so the counts are exact: a thread is added
        # exactly when a queued call has no idle thread to take it, never more.
        self._cond = threading.Condition()
        self._pending: collections.deque[_Item] = collections.deque()
        self._idle = 0  # threads waiting for a call
        self._workers: set[_Worker] = set()  # threads in the pool (given-up ones are not)
        self._running: dict[concurrent.futures.Future[Any], _Worker] = {}
        self._serial = 0
        self._closed = False
        self.abandoned = 0  # threads given up so far (they may still be running)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._pending.append((future, fn, args, kwargs))
            self._grow()
            self._cond.notify()
        return future

    def abandon(self, future: concurrent.futures.Future[Any]) -> bool:
        """Stop waiting for ``future``: cancel it if it has not started; if it is
        running, give its thread up (it ends when the call returns, and another thread
        takes its place in the pool). True if a running thread was given up."""
        if future.cancel():
            return False
        with self._cond:
            worker = self._running.get(future)
            if worker is None or worker.abandoned:
                return False  # it finished meanwhile
            worker.abandoned = True
            self.abandoned += 1
            self._workers.discard(worker)
            self._grow()  # calls waiting for a place get the one just freed
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; the threads end once the queued calls are done (or
        cancelled, with ``cancel_futures``). ``wait`` joins the threads still in the pool."""
        with self._cond:
            self._closed = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            self._cond.notify_all()
            threads = [w.thread for w in self._workers if w.thread is not None]
        if wait:
            for thread in threads:
                thread.join()

    def _grow(self) -> None:
        """Start threads for queued calls that no idle thread will take (lock held)."""
        while len(self._pending) > self._idle and len(self._workers) < self.max_threads:
            self._serial += 1
            worker = _Worker()
            worker.thread = threading.Thread(
                target=self._work, args=(worker,), name=f"{self.name}-{self._serial}", daemon=True
            )
            self._workers.add(worker)
            self._idle += 1  # counted idle until it takes its first call
            worker.thread.start()

    def _take(self, worker: _Worker) -> _Item | None:
        """The next call for ``worker`` (which is counted idle), or None: the pool closed."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._idle -= 1
                    self._workers.discard(worker)
                    return None
                item = self._pending.popleft()
                if item[0].set_running_or_notify_cancel():  # else: cancelled while queued
                    self._idle -= 1
                    self._running[item[0]] = worker  # registered as it starts: abandon() finds it
                    return item

    def _work(self, worker: _Worker) -> None:
        while True:
            item = self._take(worker)
            if item is None:
                return
            future, fn, args, kwargs = item
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)
            del item, fn, args, kwargs  # do not keep the last call's arguments alive
            with self._cond:
                self._running.pop(future, None)
                if worker.abandoned:
                    return  # given up: its place was taken, it takes no more calls
                self._idle += 1

    def __repr__(self) -> str:
        return f"TaskThreads(max_threads={self.max_threads}, abandoned={self.abandoned})"


async def in_thread(executor: concurrent.futures.Executor, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``executor`` with this task's context variables; if the
    awaiting task is cancelled (a timeout, a stopped run), the call's thread is given
    up (``TaskThreads.abandon``) instead of holding the pool."""
    ctx = contextvars.copy_context()
    future = executor.submit(ctx.run, fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        abandon = getattr(executor, "abandon", None)
        if abandon is not None:
            abandon(future)
        else:
            future.cancel()
        raise
