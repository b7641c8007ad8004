"""The static fallback of the widget: what a saved notebook shows without a kernel.

nbconvert, GitHub and nbval never run widget JavaScript, so next to the live widget view
``_repr_mimebundle_`` carries a ``text/plain`` summary (deterministic: no timings, no
addresses, so nbval can compare it) and an ``image/svg+xml`` DAG with every node's state
painted as an *inline* ``fill`` colour (CSS classes are kept too, but a renderer that
ignores CSS still shows the colours). Nothing here is live; ``widget.py`` is.
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
    selectors as the live widget. Tasks missing from ``states`` stay white.
    """

    def paint(m: re.Match[str]) -> str:
        state = states.get(_unescape(m.group(4)), "pending")
        color = STATE_COLORS.get(state, STATE_COLORS["pending"])
        classes = f"{m.group(2)} nbflow-state-{state}"
        return f'{m.group(1)}{classes}{m.group(3)}{m.group(4)}{m.group(5)} fill="{color}"'

    return _NODE.sub(paint, svg)


def static_bundle(model: ProgressModel, layout: Layout | None) -> dict[str, Any]:
    """``{"text/plain": summary, "image/svg+xml": painted DAG}`` (no SVG without a layout)."""
    data: dict[str, Any] = {"text/plain": model.summary()}
    if layout is not None:
        data["image/svg+xml"] = paint_svg(layout.svg, model.states())
    return data
