"""Per-task capture of stdout/stderr, for sync tasks in threads and async tasks alike.

``sys.stdout`` is process-global, so redirecting it per task would mix the output of
concurrent tasks. Instead nbflow installs, once, a thin proxy on ``sys.stdout`` and
``sys.stderr`` that looks up a ``contextvars`` variable: inside a task the text goes to
that task's buffer (and, if asked, on to the real stream); everywhere else it goes
straight to the stream that was there before. Context variables follow asyncio tasks
and the runner copies the context into worker threads, so every task sees its own.

A task's capture also hands each write to the attempt's live hooks (``live.py``), which
stream it to the widget while the task runs: the buffers here are what is stored with
the checkpoint, the live copy is what is shown meanwhile.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from typing import Any, TextIO

from nbflow.core.context import current_task_context

__all__ = ["Capture", "install"]


class Capture:
    """The buffers of one task attempt (and where its writes are streamed live).

    A buffer is made on the first write to it: most tasks print nothing, and a
    chain of trivial tasks would otherwise spend a noticeable part of each task
    making two empty ones."""

    __slots__ = ("_stderr", "_stdout", "echo", "live")

    def __init__(self, echo: bool, live: Any = None) -> None:
        self._stdout: io.StringIO | None = None
        self._stderr: io.StringIO | None = None
        self.echo = echo
        self.live = live  # an object with write(which, text), or None

    @property
    def stdout(self) -> io.StringIO:
        if self._stdout is None:
            self._stdout = io.StringIO()
        return self._stdout

    @property
    def stderr(self) -> io.StringIO:
        if self._stderr is None:
            self._stderr = io.StringIO()
        return self._stderr

    def texts(self) -> tuple[str, str]:
        """What the attempt printed: (stdout, stderr)."""
        out, err = self._stdout, self._stderr
        return (out.getvalue() if out is not None else "", err.getvalue() if err is not None else "")


_active: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("nbflow_capture", default=None)
_install_lock = threading.Lock()


class _Proxy(io.TextIOBase):
    def __init__(self, target: TextIO, which: str) -> None:
        self._target = target
        self._which = which

    def write(self, text: str) -> int:
        cap = _active.get()
        if cap is None:
            return self._target.write(text)
        getattr(cap, self._which).write(text)
        if cap.live is not None:
            cap.live.write(self._which, text)
        if cap.echo:
            self._target.write(text)
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty ... of the real stream
        return getattr(self._target, name)


def install() -> None:
    """Put the proxies on sys.stdout/sys.stderr (idempotent, and re-done if something
    else replaced the streams since, as ipykernel may)."""
    with _install_lock:
        if not isinstance(sys.stdout, _Proxy):
            sys.stdout = _Proxy(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Proxy):
            sys.stderr = _Proxy(sys.stderr, "stderr")


def begin(echo: bool) -> tuple[Capture, contextvars.Token[Capture | None]]:
    """Start capturing this context's writes; streamed to the running task's live
    hooks, if its context has some (set the task context first)."""
    ctx = current_task_context()
    hooks = ctx.hooks if ctx is not None else None
    cap = Capture(echo, hooks if hasattr(hooks, "write") else None)
    return cap, _active.set(cap)


def end(token: contextvars.Token[Capture | None]) -> None:
    _active.reset(token)
