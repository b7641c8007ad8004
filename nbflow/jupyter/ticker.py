"""One thread that runs a callback after a delay, re-armed at will: the widget's push timer.

A ``threading.Timer`` per scheduled push starts a new thread each time, and
``Thread.start()`` waits until that thread has run its first lines: a GIL hand-off on
whichever thread scheduled the push — the engine's, for the first event after a quiet
spell. A run re-arms the widget's timer a few times a second, so the engine waited
~1.5 ms per push on a loaded 2-core machine. Here one daemon thread per listening
widget waits on a condition; arming it is a notify, which does not wait for the thread.

>>> import threading
>>> fired = threading.Event()
>>> ticker = Ticker(fired.set, name="doc")
>>> ticker.arm(0.01)
>>> fired.wait(5)
True
>>> ticker.close()
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

__all__ = ["IDLE_EXIT", "Ticker"]

#: Seconds the thread waits unarmed before it ends (the next arming starts another): a
#: widget left listening to a run that never finishes does not keep a thread for good.
IDLE_EXIT = 30.0


class Ticker:
    """Runs ``fire`` on its own thread once per :meth:`arm`, after the delay armed last.

    ``fire`` runs without the ticker's lock held, so it may arm the ticker again. The
    thread starts at the first :meth:`arm` (or :meth:`start`) and ends at :meth:`close`
    or after :data:`IDLE_EXIT` seconds unarmed; a closed ticker ignores :meth:`arm`."""

    def __init__(self, fire: Callable[[], None], *, name: str = "nbflow-ticker") -> None:
        self._fire = fire
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._due: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread now (from a thread where waiting for it is harmless)."""
        with self._cond:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def arm(self, delay: float) -> None:
        """Run ``fire`` once, ``delay`` seconds from now (replacing an earlier arming)."""
        with self._cond:
            if self._closed:
                return
            self._due = time.monotonic() + max(0.0, delay)
            if self._thread is None:
                self._start_locked()
            else:
                self._cond.notify()

    def cancel(self) -> None:
        """Forget the pending arming, if any (``fire`` already running goes on)."""
        with self._cond:
            self._due = None
            self._cond.notify()

    def close(self) -> None:
        """Let the thread end (after ``fire``, if it is running: not waited for, so a
        caller holding a lock ``fire`` takes cannot deadlock); later arms are ignored."""
        with self._cond:
            self._closed = True
            self._due = None
            self._cond.notify()

    def alive(self) -> bool:
        """Whether the thread is still running (it ends soon after :meth:`close`)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                due = self._due
                if due is None:
                    if not cond.wait(IDLE_EXIT) and self._due is None:
                        self._thread = None  # idle: end; the next arm starts a thread again
                        return
                    continue
                left = due - time.monotonic()
                if left > 0:
                    cond.wait(left)
                    continue
                self._due = None
                cond.release()
                try:
                    self._fire()
                except Exception:  # noqa: BLE001 - reported like a Timer thread's error; the ticker goes on
                    threading.excepthook(threading.ExceptHookArgs((*sys.exc_info(), threading.current_thread())))
                finally:
                    cond.acquire()
