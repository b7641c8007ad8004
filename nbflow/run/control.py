"""Stop requests for one run: cancel, interrupt, pause.

A request comes from this process (``RunHandle.cancel``, Ctrl-C, the widget) through
``RunControl.request``, or from another process (``WorkflowClient``, the CLI) through
the backend's control key, which ``poll`` reads at task boundaries. Stopping is not
done with exceptions a task could swallow: running async tasks are cancelled
(``asyncio.CancelledError`` is a ``BaseException``), and sync tasks see
``get_task_context().cancelled``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from nbflow.core.status import RunState
from nbflow.store.base import Backend

__all__ = ["POLL_INTERVAL", "RunControl"]

POLL_INTERVAL = 0.25  # seconds between reads of the backend's control key


class RunControl:
    """Thread-safe stop requests for one run (cancel, interrupt, pause)."""

    def __init__(self, backend: Backend | None = None, instance_id: str = "") -> None:
        self._lock = threading.Lock()
        self.requested: tuple[RunState, str] | None = None  # (state, reason)
        self._callback: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify: Callable[[], None] | None = None
        self._backend, self._instance_id = backend, instance_id
        self._next_poll = 0.0

    def attach(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], notify: Callable[[], None] | None = None
    ) -> None:
        """``callback`` runs on the loop; ``notify`` runs at once on the requesting thread
        (a sync task running inline blocks the loop, so only ``notify`` can reach it)."""
        with self._lock:
            self._loop, self._callback, self._notify = loop, callback, notify
            pending = self.requested
        if pending:
            loop.call_soon_threadsafe(callback)

    def request(self, state: RunState | str, reason: str = "") -> None:
        """Ask the run to stop with ``state`` (cancelled, interrupted, paused; failed
        when the engine itself cannot go on)."""
        state = RunState(state)
        with self._lock:
            if self.requested is None or state != RunState.PAUSED:
                self.requested = (state, reason)
            loop, callback, notify = self._loop, self._callback, self._notify
        if notify is not None and state != RunState.PAUSED:
            notify()
        if loop is not None and callback is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop closed in between: the run is over anyway
                pass

    def poll(self) -> tuple[RunState, str] | None:
        """The pending request; reads the backend's control key at most every 0.25 s."""
        if self.requested is None and self._backend is not None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + POLL_INTERVAL
                ctl = self._backend.get_control(self._instance_id)
                if ctl and ctl[0] in (RunState.CANCELLED, RunState.PAUSED):
                    self.request(ctl[0], ctl[1])
        return self.requested

    def boundary(self) -> None:
        """A step just finished: the next ``poll`` reads the backend whatever the time,
        so a cancel or pause sent while the step ran stops the run right here."""
        self._next_poll = 0.0
