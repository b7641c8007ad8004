"""A matplotlib figure as the PNG Jupyter's inline backend would show, usually in one draw.

The inline backend saves figures with ``bbox_inches="tight"``: matplotlib lays the figure
out once (a draw with rendering disabled), measures every artist
(``Figure.get_tightbbox``), then draws it again on a canvas cut to that box plus
``savefig.pad_inches``. Margins are trimmed, and a label that reaches beyond the figure
(long rotated tick labels, an ``xlabel`` on a small figure, a legend placed outside the
axes) is kept whole instead of cut off at the edge.

Here the figure is drawn once, on its own size, and the tight box is read from that
draw instead of measured again:

- the **ink box** — the pixels that differ from the figure's background — covers the
  axes, their ticks and tick labels, lines and patches;
- the **free artists** (titles, axis labels, legends, texts, anything not clipped to its
  axes) are measured with ``get_window_extent`` on the renderer that just drew them.
  Those are the artists that can lie wholly outside the canvas and leave no ink in it.

When both lie inside the canvas, and the ink keeps :data:`EDGE_PX` pixels away from its
edge (text cut off at the edge leaves ink on it), the drawn buffer is cropped to that box
plus the pad and encoded: one draw. Otherwise something may be cut off, and the figure
is drawn again with ``bbox_inches="tight"``, as the inline backend does.

Why not ``Figure.get_tightbbox`` on the first draw: it recomputes every axis's ticks and
measures every tick label again, about a third of a draw here (~15 ms of a ~45 ms draw
for a 4x3 in figure), while the ink box is one numpy pass over the buffer (< 1 ms). The
cropped picture can differ from the inline backend's by a few pixels of margin (the ink
of a text line is a little smaller than its text box); nothing is ever cut.

Used only when the value is a matplotlib figure, so matplotlib, numpy and PIL (both
matplotlib's own dependencies) are imported inside the functions.
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["EDGE_PX", "figure_png_bytes", "trimmed_png"]

EDGE_PX = 3  # ink this close to the canvas edge may belong to text that runs past it


def figure_png_bytes(fig: Any, *, dpi: float | None = None, tight: bool = True, compress_level: int = 6) -> bytes:
    """``fig`` as PNG bytes on an Agg canvas (any backend, any thread, no window).

    ``tight`` trims the margins and keeps what reaches past the figure's edge, as the
    inline backend shows it (one draw when nothing reaches past the edge, two
    otherwise); without it the figure is drawn at its own size, once. ``dpi`` other than
    the figure's always takes matplotlib's own path."""
    if tight and (dpi is None or dpi == fig.dpi):
        png = trimmed_png(fig, compress_level=compress_level)
        if png is not None:
            return png
    return _print_png(fig, dpi=dpi, tight=tight, compress_level=compress_level)


def _print_png(fig: Any, *, dpi: float | None, tight: bool, compress_level: int) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else None
    kwargs: dict[str, Any] = {"format": "png", "pil_kwargs": {"compress_level": compress_level}}
    if tight:
        # the inline backend's call (IPython's print_figure): the figure's own colours
        kwargs.update(bbox_inches="tight", facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor())
    if dpi is not None:
        kwargs["dpi"] = dpi
    if canvas is None:
        # print_figure on a temporary Agg canvas; the figure keeps its own canvas
        old = fig.canvas
        try:
            FigureCanvasAgg(fig).print_figure(buffer, **kwargs)
        finally:
            fig.set_canvas(old)
    else:
        canvas.print_figure(buffer, **kwargs)
    return buffer.getvalue()


def trimmed_png(fig: Any, *, compress_level: int = 6) -> bytes | None:
    """``fig`` drawn once and cropped to its tight box plus the pad (see the module
    docstring), or None when the box may reach past the canvas (then draw it again
    with ``bbox_inches="tight"``)."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from PIL import Image

    pad_inches = matplotlib.rcParams["savefig.pad_inches"]
    if not isinstance(pad_inches, int | float) or getattr(fig, "subfigs", None):
        return None  # "layout" pads and subfigures: matplotlib's own path knows them
    old = fig.canvas
    # the user's canvas when it is plain Agg (the inline backend's); any other (ipympl,
    # a GUI) is not redrawn under the user: a temporary Agg canvas draws the picture
    canvas: Any = old if type(old) is FigureCanvasAgg else FigureCanvasAgg(fig)
    try:
        canvas.draw()
        renderer = canvas.get_renderer()
        rgba = np.asarray(canvas.buffer_rgba())
        height, width = rgba.shape[:2]
        background = np.array([round(c * 255) for c in to_rgba(fig.get_facecolor())], dtype=np.uint8)
        corners = rgba[[0, 0, -1, -1], [0, -1, 0, -1]]
        if (corners != background).any(axis=1).sum() > 1:
            return None  # the background is not the facecolor (an edge, a full-bleed image)
        background = corners[(corners == background).all(axis=1)][0]
        ink = (rgba != background).any(axis=2)
        rows = np.flatnonzero(ink.any(axis=1))
        if not rows.size:
            return None  # nothing drawn: let matplotlib decide what an empty figure is
        cols = np.flatnonzero(ink.any(axis=0))
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if min(top, left, height - bottom, width - right) < EDGE_PX:
            return None
        for x0, y0, x1, y1 in _free_extents(fig, renderer):
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                return None
            left, right = min(left, math.floor(x0)), max(right, math.ceil(x1))
            top, bottom = min(top, math.floor(height - y1)), max(bottom, math.ceil(height - y0))
        pad = round(pad_inches * fig.dpi)
        out = np.empty((bottom - top + 2 * pad, right - left + 2 * pad, 4), dtype=np.uint8)
        out[:] = background
        y_from, y_to = max(top - pad, 0), min(bottom + pad, height)
        x_from, x_to = max(left - pad, 0), min(right + pad, width)
        out[y_from - (top - pad) : y_to - (top - pad), x_from - (left - pad) : x_to - (left - pad)] = rgba[
            y_from:y_to, x_from:x_to
        ]
    finally:
        if canvas is not old:
            fig.set_canvas(old)
    buffer = io.BytesIO()
    Image.fromarray(out, "RGBA").save(buffer, format="png", compress_level=compress_level, dpi=(fig.dpi, fig.dpi))
    return buffer.getvalue()


def _free_extents(fig: Any, renderer: Any) -> list[tuple[float, float, float, float]]:
    """Window extents (pixels, y up) of the artists that may leave no ink in the canvas:
    every visible, in-layout artist of the figure and of each axes that is not clipped to
    its axes, except the axes' own axis and spines (their ink is on the canvas, joined
    to the axes) — titles, axis labels, legends, texts, annotations, inset axes."""
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.spines import Spine

    artists: list[Any] = []
    for ax in fig.axes:
        artists.append(ax)
        artists += [ax.xaxis.label, ax.yaxis.label, ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()]
        for a in ax.get_children():
            if isinstance(a, Axis | Spine) or a is ax.patch or _clipped_to(a, ax):
                continue
            artists.append(a)
    artists.extend(a for a in fig.get_children() if a is not fig.patch and not isinstance(a, Axes))
    boxes = []
    for a in artists:
        if not a.get_visible() or not a.get_in_layout():
            continue
        box = a.get_window_extent(renderer)
        x0, y0, x1, y1 = (float(v) for v in box.extents)
        if all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def _clipped_to(artist: Any, ax: Any) -> bool:
    """Whether ``artist`` is drawn only inside ``ax``: clipped to its box (what a
    rectangular axes gives what it plots) or to a path (a polar axes' patch)."""
    if not artist.get_clip_on():
        return False
    box = artist.get_clip_box()
    if box is not None and tuple(box.extents) == tuple(ax.bbox.extents):
        return True
    return artist.get_clip_path() is not None
