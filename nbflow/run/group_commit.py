"""Group commit: the checkpoints of quick tasks written together, one transaction a window.

A durable checkpoint costs one database commit; for a task that runs in microseconds
that commit is most of its cost. With a window of ``w`` seconds, a finished task's
record waits (in memory) for at most ``w`` for others to join it, and the batch is
written in one transaction. The engine goes on to the next task meanwhile, but a task
is *reported* done (``TaskFinished``, its retry and saved states dropped) only after
its batch is durable: what a view shows as done is on disk.

What a crash can cost is bounded by the window: the records of a batch not yet
written are lost and those tasks run again on resume, and they all finished less
than ``w`` before the crash. Nothing else changes: an instance's other writes (map
items, references, reads of stored outputs) flush the batch first, and the end of a
run flushes it before the run's final state is stored.

The window is kept by a timer thread, so a batch is written on time even while the
engine runs a long task after it. The store is written from whichever thread flushes;
every nbflow backend serialises its writes, so that is safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from nbflow.store.base import Backend, CheckpointRecord, PayloadSink

__all__ = ["MAX_WINDOW", "GroupCommit"]

MAX_WINDOW = 0.05
"""The longest window accepted (seconds): past this, grouping saves nothing more and
the work a crash may cost stops being "a few milliseconds"."""


class GroupCommit:
    """Records of one instance waiting to be written together.

    ``add`` queues a record with what to do once it is durable; the batch is written
    when the window since its first record has passed (by the timer thread or by the
    next ``add``), or at once by ``flush``. Batches are written in order, and their
    callbacks run in order, after their transaction committed. A write that fails
    (a full disk, a cleared instance) is raised by the next ``add`` or ``flush`` on
    the engine's thread; its callbacks never run."""

    def __init__(self, backend: Backend, instance_id: str, window: float) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"a group-commit window is between 0 and {MAX_WINDOW} seconds, not {window!r}")
        self.backend, self.instance_id, self.window = backend, instance_id, window
        self._items: list[tuple[CheckpointRecord, PayloadSink]] = []
        self._done: list[Callable[[], None]] = []
        self._due = 0.0  # monotonic time by which the queued batch must be written
        self._queue = threading.Condition(threading.Lock())  # guards the queue; wakes the timer
        self._writing = threading.Lock()  # one batch at a time, in order
        self._error: BaseException | None = None
        self._closed = False
        self._timer: threading.Thread | None = None
        self.batches = 0  # transactions written (for tests and benchmarks)

    @property
    def pending(self) -> int:
        """Records queued and not yet written."""
        with self._queue:
            return len(self._items)

    def add(self, record: CheckpointRecord, sink: PayloadSink, on_durable: Callable[[], None]) -> None:
        """Queue ``record`` (its payload in ``sink``); ``on_durable`` runs once it is written."""
        self._raise_failure()
        with self._queue:
            if self._closed:
                raise RuntimeError("this group commit is closed")
            if not self._items:  # a new batch: the timer is told when it is due (only then)
                self._due = time.monotonic() + self.window
                self._start_timer()
                self._queue.notify()
            self._items.append((record, sink))
            self._done.append(on_durable)
            due = time.monotonic() >= self._due
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (on the caller's thread); raise a failed write."""
        self._write()
        self._raise_failure()

    def close(self) -> None:
        """Stop the timer thread; later ``add`` calls are refused. What is still queued
        is not written (the engine flushes at the end of a run; after a crash the
        queued tasks run again on resume, as after a kill)."""
        with self._queue:
            self._closed = True
            self._queue.notify()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()

    # -- inside --------------------------------------------------------------------------
    def _raise_failure(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _write(self) -> None:
        with self._writing:
            with self._queue:
                items, done = self._items, self._done
                self._items, self._done = [], []
            if not items or self._error is not None:
                return
            try:
                self.backend.put_records(self.instance_id, items)
            except BaseException as exc:  # noqa: BLE001 - kept for the engine's thread; these records are lost
                self._error = exc
                return
            self.batches += 1
            for callback in done:
                try:
                    callback()
                except BaseException as exc:  # noqa: BLE001 - e.g. dropping a task state hit a full disk
                    self._error = self._error or exc

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._keep_time, name="nbflow-group-commit", daemon=True)
            self._timer.start()

    def _keep_time(self) -> None:
        """The timer thread: writes each batch when its window has passed."""
        while True:
            with self._queue:
                while not self._closed and (not self._items or time.monotonic() < self._due):
                    timeout = None if not self._items else max(0.0, self._due - time.monotonic())
                    self._queue.wait(timeout)
                if self._closed:
                    return
            self._write()
