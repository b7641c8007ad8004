"""tqdm inside a task: its progress goes to the task's node, not loose under the cell.

A bar made while a task runs (``tqdm.tqdm``, ``tqdm.auto.tqdm``, ``tqdm.notebook.tqdm``,
``trange``, ... — all subclasses of ``tqdm.std.tqdm``) is picked up without code changes:

- it reports ``n``, ``total`` and ``desc`` to the task's live hooks (``live.Buffered.bar``),
  which the widget draws on the task's node and table row;
- it draws nothing itself: no ``\\r`` frames in the task's stderr, no notebook widget
  (``tqdm.notebook`` would display an ipywidgets bar under the cell, apart from its
  task). Closing a bar with ``leave=True`` writes its final line once to the stream it
  would have drawn on, so the stored output still says "train: 100%|...| 100/100".

How: ``tqdm.std.tqdm`` gets wrappers around ``__init__``, ``update``, ``__iter__``,
``close`` and ``reset``. Outside a task they call tqdm's own methods and nothing else
changes (one dictionary check). Inside a task, a bar drawing on the task's own
stdout/stderr is made *quiet*: after tqdm's ``__init__`` (with drawing sent to a null
stream) it is marked disabled — which also makes ``tqdm.notebook`` skip its widget —
and the wrappers do the counting. What nbflow knows of a bar (the task's hooks, where it
would have drawn) lives beside it in a weak dictionary, not on it: of the user's bar
nbflow sets only tqdm's own ``disable`` and ``n``. A bar writing to a file the user opened is left to
draw, and only reports. Bars in threads the task starts itself have no task context and
behave as usual. The wrappers are installed once per process, when tqdm is imported
(or at once if it already is), never by importing tqdm ourselves.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from nbflow.core.context import current_task_context

__all__ = ["install", "installed"]

_REPORT_EVERY = 0.05  # seconds between reports of an iterating bar (the flusher's rate)
_lock = threading.Lock()
_patched = False
_finder_added = False


class _Null:
    """Where a quiet bar's own drawing goes."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


_NULL = _Null()


def installed() -> bool:
    """Whether tqdm's classes carry the wrappers in this process."""
    return _patched


def install() -> None:
    """Wrap tqdm now if it is imported, else as soon as it is (idempotent, cheap)."""
    global _finder_added
    if _patched:
        return
    module = sys.modules.get("tqdm.std")
    if module is not None:
        _patch(module)
        return
    with _lock:
        if not _finder_added:
            _finder_added = True
            sys.meta_path.insert(0, _OnImport())


class _OnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``tqdm.std`` is being imported it wraps the real
    loader so the classes are patched right after the module runs."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tqdm.std" or _patched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                loader = spec.loader
                exec_module = getattr(loader, "exec_module", None)
                if exec_module is None:
                    return None

                def exec_and_patch(module: ModuleType, exec_module: Any = exec_module) -> None:
                    exec_module(module)
                    _patch(module)

                loader.exec_module = exec_and_patch  # type: ignore[method-assign,union-attr]
                return spec
        return None


def _sink() -> Any:
    ctx = current_task_context()
    if ctx is None:
        return None
    hooks = ctx.hooks
    return hooks if hasattr(hooks, "bar") else None


def _own_stream(file: Any) -> bool:
    """A bar drawing on the task's captured stdout/stderr (the default) is made quiet."""
    return file is None or file is sys.stdout or file is sys.stderr or file is sys.__stderr__ or file is sys.__stdout__


class _Bar:
    """What nbflow knows of one bar made in a task: kept beside the bar (in :data:`_BARS`),
    never on it, so the user's object carries nothing of ours."""

    __slots__ = ("at", "file", "quiet", "sink")

    def __init__(self, sink: Any, quiet: bool, file: Any) -> None:
        self.sink: Any = sink  # the task's live hooks; None once the bar closed
        self.quiet = quiet  # drawing nothing itself: the wrappers count
        self.file = file  # where it would have drawn (its final line goes there)
        self.at = 0.0  # monotonic time of its last report


#: The bars made inside tasks; an entry goes when its bar is collected.
_BARS: weakref.WeakKeyDictionary[Any, _Bar] = weakref.WeakKeyDictionary()
#: tqdm subclasses whose own ``close`` got the quiet-bar wrapper (see ``_wrap_close``).
_CLOSE_WRAPPED: weakref.WeakSet[type] = weakref.WeakSet()


def _state(bar: Any, bars: weakref.WeakKeyDictionary[Any, _Bar] = _BARS) -> _Bar | None:
    # ``bars`` is bound here, and the wrappers hold these functions in closures: a bar
    # closed by ``__del__`` while the interpreter shuts down (module globals gone) still works
    return bars.get(bar) if bars else None


def _patch(module: ModuleType) -> None:
    global _patched
    with _lock:
        if _patched:
            return
        cls = module.tqdm
        orig_init, orig_update, orig_iter = cls.__init__, cls.update, cls.__iter__
        orig_close, orig_reset = cls.close, cls.reset
        state_of, end_quiet = _state, _quiet_close  # held in the closures (see _state)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - tqdm's own name
            sink = _sink()
            if sink is None:
                orig_init(self, *args, **kwargs)
                return
            file = kwargs.get("file", args[4] if len(args) > 4 else None)
            quiet = _own_stream(file) and not kwargs.get("disable")
            if quiet and len(args) <= 4:
                kwargs["file"] = _NULL
            orig_init(self, *args, **kwargs)
            if getattr(self, "disable", False):  # the user disabled it: nothing to report
                return
            _BARS[self] = _Bar(sink, quiet, file)
            if quiet:
                self.disable = True  # tqdm draws nothing now; tqdm.notebook makes no widget
                # A subclass's close() returns at once for a disabled bar (tqdm.notebook's
                # does): its close gets the wrapper too, so close(), __exit__ and __del__ report.
                _wrap_close(type(self), cls)
                with self._lock:
                    self._instances.discard(self)  # frees its screen position for other bars
            sink.bar(id(self), self.n, self.total, self.desc)

        def update(self: Any, n: float = 1) -> Any:
            state = state_of(self)
            if state is None or not state.quiet:
                shown = orig_update(self, n)
                if state is not None and state.sink is not None:
                    state.sink.bar(id(self), self.n, self.total, self.desc)
                return shown
            self.n += n
            now = time.monotonic()
            if state.sink is not None and (now - state.at >= _REPORT_EVERY or (self.total and self.n >= self.total)):
                state.at = now
                state.sink.bar(id(self), self.n, self.total, self.desc)
            return None

        def __iter__(self: Any) -> Iterator[Any]:  # noqa: N807 - tqdm's own name
            state = state_of(self)
            if state is None or not state.quiet:
                return orig_iter(self)  # type: ignore[no-any-return]
            return _count(self, state)

        def close(self: Any) -> None:
            state = state_of(self)
            if state is not None and state.quiet:
                end_quiet(self, state)
                return
            orig_close(self)
            if state is not None and state.sink is not None:
                sink, state.sink = state.sink, None
                sink.bar(id(self), self.n, self.total, getattr(self, "desc", ""), closed=True)

        def reset(self: Any, total: float | None = None) -> Any:
            state = state_of(self)
            if state is None or not state.quiet:
                result = orig_reset(self, total)
            else:
                self.n = 0
                if total is not None:
                    self.total = total
                result = None
            if state is not None and state.sink is not None:
                state.sink.bar(id(self), self.n, self.total, self.desc)
            return result

        cls.__init__ = __init__
        cls.update = update
        cls.__iter__ = __iter__
        cls.close = close
        cls.reset = reset
        _CLOSE_WRAPPED.add(cls)
        _patched = True


def _wrap_close(kind: type, base: type) -> None:
    """Give the class that defines ``kind``'s ``close`` (when it is not ``base``, whose
    close is wrapped already) a close that ends a quiet bar nbflow's way."""
    owner = next((c for c in kind.__mro__ if "close" in vars(c)), base)
    if owner in _CLOSE_WRAPPED:
        return
    with _lock:
        if owner in _CLOSE_WRAPPED:
            return
        original = vars(owner)["close"]
        state_of, end_quiet = _state, _quiet_close  # held in the closure (see _state)

        def close(self: Any, *args: Any, **kwargs: Any) -> Any:
            state = state_of(self)
            if state is not None and state.quiet:
                end_quiet(self, state)
                return None
            return original(self, *args, **kwargs)

        close.__wrapped__ = original  # type: ignore[attr-defined]
        owner.close = close  # type: ignore[attr-defined]
        _CLOSE_WRAPPED.add(owner)


def _count(bar: Any, state: _Bar) -> Iterator[Any]:
    """Iterate a quiet bar: count, report now and then, close at the end (as tqdm)."""
    n = bar.n
    last = time.monotonic()
    sink = state.sink
    key = id(bar)
    try:
        for obj in bar.iterable:
            yield obj
            n += 1
            now = time.monotonic()
            if now - last >= _REPORT_EVERY:
                last = now
                bar.n = n
                if sink is not None:
                    sink.bar(key, n, bar.total, bar.desc)
    finally:
        bar.n = n
        bar.close()


def _final_line(bar: Any, file: Any) -> None:
    """What tqdm leaves on screen when a bar closes, written once as plain text."""
    try:
        text = bar.format_meter(**bar.format_dict)
    except Exception:  # noqa: BLE001 - a custom bar_format that fails: say nothing rather than fail
        return
    try:
        stream = file if file is not None else sys.stderr
        stream.write(text + "\n")
    except Exception:  # noqa: BLE001 - a closed stream (or none, at interpreter exit)
        pass


def _quiet_close(bar: Any, state: _Bar, final_line: Any = _final_line) -> None:
    sink = state.sink
    if sink is None:  # closed already
        return
    state.sink = None
    sink.bar(id(bar), bar.n, bar.total, bar.desc, closed=True)
    if bar.leave or bar.leave is None:
        final_line(bar, state.file)
