"""What tasks display (figures, ``display(...)``): kept per attempt, stored with the output.

The notebook layer sees a task's displays (it wraps IPython's display publisher, see
``nbflow.jupyter.display_capture``) and hands each one, as a Jupyter mimebundle, to the
running attempt's live hooks (``LiveTask.display``). This module is the IPython-free
half of that path:

- :class:`DisplayList` — one attempt's displays, in order; ``display(..., display_id=)``
  followed by ``update_display`` replaces the earlier bundle, ``clear_output`` empties
  it. Bounded (:data:`MAX_DISPLAYS`, :data:`MAX_BYTES`): a task drawing in a loop keeps
  its latest displays, not an unbounded heap.
- the **provider** seam: :func:`set_provider` is called by the notebook layer with an
  object that can capture figures a task leaves open (``begin``/``end``). Outside
  IPython there is none, and nothing is captured: :func:`provider` is None.
- the **stored form**: a finished task's displays are one JSON record,
  ``display_id(task_id)`` (``nbflow.core.keys``), written in the same transaction as the
  task's output (``CheckpointIO``) through the store's payload path, so big images
  spill to blob files like any large output. The output's record names the display
  record by a token (``extra["displays"]``), so a task that later runs again and shows
  nothing is never paired with an older run's pictures. The payload is JSON whatever the
  instance's codec: reading it never runs code, so a ``JsonCodec`` store shows its
  figures too.

A display is ``{"data": {mime: str | JSON}, "metadata": {...}}``; images are base64 text,
as Jupyter sends them.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from nbflow.core.previews import figure_png

__all__ = [
    "DISPLAY_CODEC",
    "MAX_BYTES",
    "MAX_DISPLAYS",
    "DisplayList",
    "DisplayProvider",
    "close_figure",
    "decode",
    "encode",
    "figure_display",
    "figure_numbers",
    "new_figures",
    "normalize",
    "provider",
    "set_provider",
]

DISPLAY_CODEC = "displays"  # the codec name of display records: plain JSON, never a user codec
MAX_DISPLAYS = 50  # displays kept per attempt (the newest)
MAX_BYTES = 32 * 1024 * 1024  # characters of mimebundle data kept per attempt
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

Display = dict[str, Any]


class DisplayProvider(Protocol):
    """What the notebook layer registers: it captures the figures an attempt leaves
    open. ``begin`` runs when the attempt starts, ``end`` when it is over, with the
    attempt's hooks (anything with ``display(data, metadata)``)."""

    def begin(self) -> Any: ...

    def end(self, token: Any, sink: Any) -> None: ...


_provider: DisplayProvider | None = None


def set_provider(value: DisplayProvider | None) -> None:
    """Register (or, with None, remove) the process's display provider."""
    global _provider
    _provider = value


def provider() -> DisplayProvider | None:
    """The registered provider, or None (outside a notebook: nothing is captured)."""
    return _provider


# -- one attempt's displays ----------------------------------------------------------------
def normalize(data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Display | None:
    """A JSON-safe display from a publisher's ``data``/``metadata`` (bytes become
    base64 text; mime types whose value is not JSON are dropped), or None if nothing is left."""
    import base64

    clean: dict[str, Any] = {}
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if isinstance(value, bytes | bytearray | memoryview):
            value = base64.b64encode(bytes(value)).decode("ascii")
        if not isinstance(value, str):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                continue
        clean[mime] = value
    if not clean:
        return None
    md: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        md[str(key)] = value
    return {"data": clean, "metadata": md}


def _size(display: Display) -> int:
    return sum(len(v) if isinstance(v, str) else 64 for v in display["data"].values())


class DisplayList:
    """The displays of one attempt, in the order shown (thread-safe)."""

    __slots__ = ("_ids", "_items", "_lock", "dropped")

    def __init__(self) -> None:
        self._items: list[Display] = []
        self._ids: list[str | None] = []
        self._lock = threading.Lock()
        self.dropped = 0  # displays left out (beyond the bounds)

    def add(self, display: Display, *, display_id: str | None = None, update: bool = False) -> None:
        """Append ``display``; with ``update``, replace the one shown under ``display_id``."""
        with self._lock:
            if display_id is not None and update:
                for i in range(len(self._items) - 1, -1, -1):
                    if self._ids[i] == display_id:
                        self._items[i] = display
                        return
                return  # updating a display this attempt never showed: nothing to update
            self._items.append(display)
            self._ids.append(display_id)
            total = sum(_size(d) for d in self._items)
            while len(self._items) > 1 and (len(self._items) > MAX_DISPLAYS or total > MAX_BYTES):
                total -= _size(self._items.pop(0))
                self._ids.pop(0)
                self.dropped += 1
            if total > MAX_BYTES:  # one display alone is too big: keep only its text
                text = self._items[0]["data"].get("text/plain", "(a display too large to keep)")
                self._items[0] = {"data": {"text/plain": str(text)[:10_000]}, "metadata": {}}

    def clear(self) -> None:
        """``clear_output()`` inside the task: what it showed so far is gone."""
        with self._lock:
            self._items.clear()
            self._ids.clear()

    def items(self) -> tuple[Display, ...]:
        with self._lock:
            return tuple(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


# -- figures a task leaves open (pyplot) ------------------------------------------------------
def figure_numbers() -> frozenset[int] | None:
    """The numbers of pyplot's open figures, or None when pyplot is not imported
    (then no task can have opened one: nothing to look at, nothing imported)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return None
    try:
        return frozenset(plt.get_fignums())
    except Exception:  # noqa: BLE001 - a broken pyplot state must not fail a task
        return None


def new_figures(before: frozenset[int] | None) -> list[Any]:
    """pyplot figures open now that were not open at ``before`` (an attempt's start).

    pyplot's figure list is process-global: two tasks drawing with pyplot at the same
    time share it, and a figure is given to the first of them that ends (the object
    API — ``Figure()`` then ``display(fig)`` — has no such ambiguity)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    try:
        nums = [n for n in plt.get_fignums() if before is None or n not in before]
        return [plt.figure(n) for n in nums]
    except Exception:  # noqa: BLE001 - see figure_numbers
        return []


def close_figure(fig: Any) -> None:
    """Close a captured pyplot figure, so the inline backend does not show it again
    under the cell when the cell ends (it is the task's now)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close(fig)
        except Exception:  # noqa: BLE001 - see figure_numbers
            pass


def figure_display(fig: Any) -> Display:
    """A figure as a display: the PNG the inline backend would show (margins trimmed,
    labels past the figure's edge kept), at the figure's own dpi; drawn once unless
    something reaches past the edge (``nbflow.core.figure_image``)."""
    text = f"<Figure size {fig.bbox.width:g}x{fig.bbox.height:g} with {len(fig.axes)} Axes>"
    return {"data": {"image/png": figure_png(fig), "text/plain": text}, "metadata": {}}


# -- stored form -----------------------------------------------------------------------------
def encode(displays: Sequence[Mapping[str, Any]]) -> bytes:
    """The payload of a display record (strict JSON)."""
    return json.dumps({"v": 1, "displays": list(displays)}, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> tuple[Display, ...]:
    """Displays from a display record's payload; anything not of the stored form is
    left out (a damaged or planted record shows nothing rather than fail a view)."""
    try:
        raw = json.loads(data)
    except (ValueError, TypeError, RecursionError):
        return ()
    items = raw.get("displays") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        return ()
    out: list[Display] = []
    for item in items[:MAX_DISPLAYS]:
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            continue
        bundle = {k: v for k, v in item["data"].items() if isinstance(k, str)}
        if not bundle:
            continue
        md = item.get("metadata")
        out.append({"data": bundle, "metadata": md if isinstance(md, dict) else {}})
    return tuple(out)
