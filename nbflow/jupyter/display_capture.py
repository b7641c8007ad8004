"""Displays made inside a task go to that task, not loose under the cell.

IPython sends everything that is displayed — ``display(obj)``, ``plt.show()`` with the
inline backend, ``update_display``, a rich ``_repr_*_`` — through one object, the
shell's ``display_pub`` (``publish(data, metadata, ..., transient=, update=)`` and
``clear_output``). :func:`install` wraps those two methods on the running shell, once:

- **inside a task** (the calling thread or asyncio task has a task context whose hooks
  take displays: ``get_task_context().hooks``, routed exactly as stdout is, with
  ``contextvars``), the mimebundle goes to the running attempt
  (``LiveTask.display``), which streams it to the widget and stores it with the
  task's checkpoint; it is *not* published under the cell;
- **anywhere else** the original method runs: nothing changes outside tasks.

It also registers itself as the run layer's display provider (``nbflow.run.displays``):
when an attempt ends, pyplot figures it opened and left open are drawn (PNG, in one
pass), given to the attempt, and closed — so
the inline backend does not draw them again under the cell when the cell ends, and a
task that never calls ``plt.show()`` still keeps its chart.

**Captured displays do not appear under the cell.** They belong to their task: the
widget's detail pane shows them (``detail.displays``), the saved notebook's static view
and the headless log list them per task, and a task restored after a restart shows
them the same way from its checkpoint — so a restored run looks like the original one,
and a cell with 200 plotting tasks is not a wall of 200 charts. An ipywidget displayed
in a task is the one exception: it is a live object with no stored form, so it is shown
under the cell as usual.

Outside IPython (scripts, workers, tests without a shell) :func:`install` does nothing
and nothing is captured. Executor processes (``ProcessExecutor``, ``DaskExecutor``) have
no shell: there the figures a task leaves open come back over the live channel
(``live_remote``); an explicit ``display()`` in such a process prints its text form.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

from nbflow.core.context import current_task_context
from nbflow.run import displays

__all__ = ["DisplayCapture", "install", "installed", "uninstall"]

WIDGET_MIME = displays.WIDGET_MIME
_lock = threading.Lock()


def _hooks() -> Any:
    """The running attempt's hooks if they take displays, else None."""
    ctx = current_task_context()
    if ctx is None:
        return None
    hooks = ctx.hooks
    return hooks if hasattr(hooks, "display") else None


class DisplayCapture:
    """The wrapper installed on one shell's display publisher (see the module docstring)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        pub = shell.display_pub
        self.publisher = pub
        self.original_publish = pub.publish
        self.original_clear = getattr(pub, "clear_output", None)
        pub.publish = self.publish
        if self.original_clear is not None:
            pub.clear_output = self.clear_output

    def publish(
        self, data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        hooks = _hooks()
        if hooks is None or WIDGET_MIME in data:
            return self.original_publish(data, metadata, *args, **kwargs)
        transient = kwargs.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, Mapping) else None
        hooks.display(data, metadata, display_id=display_id, update=bool(kwargs.get("update", False)))
        return None

    def clear_output(self, *args: Any, **kwargs: Any) -> Any:
        hooks = _hooks()
        if hooks is None:
            assert self.original_clear is not None
            return self.original_clear(*args, **kwargs)
        clear = getattr(hooks, "clear_displays", None)
        if clear is not None:
            clear()
        return None

    def remove(self) -> None:
        """Put the publisher's own methods back."""
        self.publisher.publish = self.original_publish
        if self.original_clear is not None:
            self.publisher.clear_output = self.original_clear

    # -- the run layer's display provider --
    def begin(self) -> Any:
        return displays.figure_numbers()

    def end(self, token: Any, sink: Any) -> None:
        for fig in displays.new_figures(token):
            try:
                data, metadata = self._format(fig)
                sink.display(data, metadata)
            finally:
                displays.close_figure(fig)

    def _format(self, fig: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A figure left open, as a display: drawn by nbflow in one pass (PNG at the
        figure's dpi). ``plt.show()``/``display(fig)`` go through the shell's own
        formatters (the inline backend's format and options); a figure nobody showed
        is drawn the cheap way, as a task may leave one open per call."""
        shown = displays.figure_display(fig)
        return dict(shown["data"]), dict(shown["metadata"])


def install(shell: Any = None) -> bool:
    """Capture displays made inside tasks on ``shell`` (default: the running IPython
    shell); returns whether a shell is being captured. Idempotent; a no-op outside IPython."""
    if shell is None:
        if "IPython" not in sys.modules:
            return False
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None or getattr(shell, "display_pub", None) is None:
        return False
    with _lock:
        capture = getattr(shell, "nbflow_display_capture", None)
        pub = shell.display_pub
        if (
            not isinstance(capture, DisplayCapture)
            or capture.publisher is not pub
            or getattr(pub.publish, "__self__", None) is not capture  # replaced since: wrap again
        ):
            capture = DisplayCapture(shell)
            shell.nbflow_display_capture = capture
        displays.set_provider(capture)
    return True


def installed() -> bool:
    """Whether displays made in tasks are captured in this process."""
    return isinstance(displays.provider(), DisplayCapture)


def uninstall(shell: Any) -> None:
    """Stop capturing on ``shell`` (``%unload_ext nbflow``, tests)."""
    with _lock:
        capture = getattr(shell, "nbflow_display_capture", None)
        if isinstance(capture, DisplayCapture):
            capture.remove()
            shell.nbflow_display_capture = None
            if displays.provider() is capture:
                displays.set_provider(None)
