"""State colours and the painted DAG: what a view without the widget's JavaScript draws.

``paint_svg`` fills every node of a laid-out DAG in its state's colour as an *inline*
``fill`` attribute (CSS classes are kept too, but an SVG shown as an ``<img>`` or by a
renderer that ignores CSS still shows the colours); ``static_view`` puts it in the saved
view of a run. ``static_bundle`` is the plain pair (text summary, painted SVG) for callers
that want no HTML. Nothing here is live; ``widget.py`` is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nbflow.jupyter.progress import ProgressModel
    from nbflow.jupyter.render import Layout

__all__ = ["STATE_COLORS", "paint_svg", "static_bundle"]

#: Fill colour per state. ``static/widget.css`` uses the same colours for the live view
#: (a test checks that every state has a rule there).
STATE_COLORS: dict[str, str] = {
    "pending": "#ffffff",
    "stale": "#fde68a",
    "running": "#93c5fd",
    "retrying": "#fdba74",
    "waiting": "#c4b5fd",
    "awaiting_signal": "#f0abfc",
    "done": "#86efac",
    "restored": "#bbf7d0",
    "failed": "#fca5a5",
    "cancelled": "#d1d5db",
    "skipped": "#f3f4f6",
    # not a run state: what the live view paints a task that was running when the
    # kernel died (``static/widget.js``)
    "interrupted": "#fed7aa",
}

_NODE = re.compile(
    r'(<g id="nbflow-node-[^"]+" class=")([^"]*)(" data-task=")([^"]*)("[^>]*>\s*<title>[^<]*</title>\s*'
    r'<(?:path|polygon|ellipse|polyline)) fill="white"'
)


def _unescape(text: str) -> str:
    return (
        text.replace("&quot;", '"')
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )


def paint_svg(svg: str, states: Mapping[str, str]) -> str:
    """``svg`` (from ``render.layout``) with each node filled in its state's colour.

    Also adds the ``nbflow-state-<state>`` class, so the painted SVG answers the same
    selectors as the live widget, and a dashed outline on restored tasks (as the live
    widget draws them) as an attribute, since an SVG shown as an image gets no page CSS.
    Tasks missing from ``states`` stay white.
    """

    def paint(m: re.Match[str]) -> str:
        state = states.get(_unescape(m.group(4)), "pending")
        color = STATE_COLORS.get(state, STATE_COLORS["pending"])
        classes = f"{m.group(2)} nbflow-state-{state}"
        dashed = ' stroke-dasharray="4,2"' if state == "restored" else ""
        return f'{m.group(1)}{classes}{m.group(3)}{m.group(4)}{m.group(5)} fill="{color}"{dashed}'

    return _NODE.sub(paint, svg)


def static_bundle(model: ProgressModel, layout: Layout | None) -> dict[str, Any]:
    """``{"text/plain": summary, "image/svg+xml": painted DAG}`` (no SVG without a layout)."""
    data: dict[str, Any] = {"text/plain": model.summary()}
    if layout is not None:
        data["image/svg+xml"] = paint_svg(layout.svg, model.states())
    return data
