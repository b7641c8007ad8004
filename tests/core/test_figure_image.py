"""A figure as the inline backend's PNG, drawn once when nothing reaches past its edge
(``nbflow.core.figure_image``): compared with IPython's own ``print_figure``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nbflow.core.figure_image import figure_png_bytes, trimmed_png

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
np = pytest.importorskip("numpy")
plt = pytest.importorskip("matplotlib.pyplot")
Image = pytest.importorskip("PIL.Image")
pylabtools = pytest.importorskip("IPython.core.pylabtools")


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    plt.close("all")


def pixels(png: bytes) -> Any:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def inline(fig: Any) -> Any:
    """What Jupyter's inline backend shows (``bbox_inches="tight"``)."""
    return pixels(pylabtools.print_figure(fig))


def dark(image: Any) -> int:
    """Pixels of text and lines (dark on the light background)."""
    return int((image.max(axis=2) < 100).sum())


def ink_size(image: Any) -> tuple[int, int]:
    """Height and width of the box around the dark pixels: a label cut at the edge
    makes it smaller."""
    ink = image.max(axis=2) < 100
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def draws(fig: Any) -> list[int]:
    """Counts the figure's draws (matplotlib's layout-only pass of a tight save included)."""
    seen: list[int] = []
    fig.canvas.mpl_connect("draw_event", lambda _event: seen.append(1))
    return seen


def plain() -> Any:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([3, 1, 2])
    ax.set_title("kept")
    return fig


def rotated_past_bottom() -> Any:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.bar(range(4), [3, 1, 2, 4])
    ax.set_xticks(range(4), [f"a long category name {i}" for i in range(4)], rotation=70)
    return fig


def legend_outside() -> Any:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 2], label="a line")
    ax.legend(bbox_to_anchor=(1.4, 1), loc="upper left")  # wholly right of the canvas
    return fig


def text_outside() -> Any:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 2])
    ax.text(1.6, 0.5, "far note", transform=ax.transAxes)
    return fig


def two_by_two() -> Any:
    fig, axs = plt.subplots(2, 2, figsize=(5, 4), dpi=80)
    fig.suptitle("four")
    for i, ax in enumerate(axs.flat):
        ax.plot([i, 1, 2])
    return fig


def assert_like_inline(png: bytes, fig: Any) -> None:
    """Same size within a few pixels, the same ink (anti-aliased edges shift a little
    with the sub-pixel offset of matplotlib's second draw)."""
    mine, theirs = pixels(png), inline(fig)
    assert abs(mine.shape[0] - theirs.shape[0]) <= 4 and abs(mine.shape[1] - theirs.shape[1]) <= 4
    (h, w), (ih, iw) = ink_size(mine), ink_size(theirs)
    assert abs(h - ih) <= 2 and abs(w - iw) <= 2
    assert abs(dark(mine) - dark(theirs)) <= 0.06 * dark(theirs)


@pytest.mark.parametrize("make", [plain, two_by_two], ids=["plain", "2x2-suptitle"])
def test_a_figure_inside_its_canvas_is_drawn_once_and_trimmed_as_inline(make: Callable[[], Any]) -> None:
    fig = make()
    seen = draws(fig)
    png = figure_png_bytes(fig)
    assert len(seen) == 1  # one draw: the tight box came from it
    assert_like_inline(png, fig)
    width, height = fig.bbox.width, fig.bbox.height
    assert pixels(png).shape[0] < height and pixels(png).shape[1] < width  # margins trimmed


def test_the_trimmed_picture_is_the_drawn_one_cut_out() -> None:
    """Cropping keeps the Agg draw's pixels as they are (no resampling): the picture is a
    window of the full-size draw."""
    fig = plain()
    png = trimmed_png(fig)
    assert png is not None
    mine = pixels(png)
    full = pixels(figure_png_bytes(fig, tight=False))
    h, w = mine.shape[:2]
    hits = [
        (y, x)
        for y in range(full.shape[0] - h + 1)
        for x in range(full.shape[1] - w + 1)
        if np.array_equal(full[y + 20, x + 20], mine[20, 20]) and np.array_equal(full[y : y + h, x : x + w], mine)
    ]
    assert hits


@pytest.mark.parametrize(
    "make", [rotated_past_bottom, legend_outside, text_outside], ids=["rotated-labels", "legend", "text"]
)
def test_what_reaches_past_the_edge_is_kept_whole_as_inline(make: Callable[[], Any]) -> None:
    fig = make()
    assert trimmed_png(fig) is None  # the one draw would cut it: drawn again, tight
    png = figure_png_bytes(fig)
    assert_like_inline(png, fig)
    mine = pixels(png)
    assert mine.shape[0] > fig.bbox.height + 10 or mine.shape[1] > fig.bbox.width + 10
    (h, w), (cut_h, cut_w) = ink_size(mine), ink_size(pixels(figure_png_bytes(fig, tight=False)))
    assert h > cut_h + 10 or w > cut_w + 10  # ink the one-pass picture lost at the edge


def test_a_figure_of_another_canvas_keeps_its_canvas() -> None:
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure

    for make in (plain, rotated_past_bottom):
        fig = make()
        other = FigureCanvasBase(fig)  # not Agg: a GUI or a widget canvas
        png = figure_png_bytes(fig)
        assert fig.canvas is other
        assert pixels(png).shape[0] > 100
    empty = Figure(figsize=(2, 2))
    assert trimmed_png(empty) is None  # nothing drawn: matplotlib's own path decides
    assert figure_png_bytes(empty).startswith(b"\x89PNG")


def test_a_figure_with_a_coloured_background_is_padded_with_it() -> None:
    fig = plain()
    fig.set_facecolor("#ffe0c0")
    png = trimmed_png(fig)
    assert png is not None
    mine = pixels(png)
    assert tuple(mine[0, 0]) == tuple(mine[-1, -1]) == (0xFF, 0xE0, 0xC0)
    assert_like_inline(png, fig)
