"""Previews of task outputs that read well, made once when the output is checkpointed.

A preview is stored in the output's record header (``CheckpointRecord.preview`` and
``preview_bundle``), so the widget, ``%workflow status`` and the CLI show it without
the codec: a store opened with ``JsonCodec``, or a 2 GB output, previews at once after
a restart, and nothing is unpickled to say what a task returned.

:func:`make_preview` returns two things:

- **a one-line text** (at most :data:`TEXT_LIMIT` characters) for tables and the CLI:
  ``DataFrame 4830x7: date datetime64[ns], region object, … 5 more``;
- **a mimebundle** (mime type → str) for the detail pane, only when it says more than
  the line: a DataFrame/Series as shape, dtypes and an HTML ``head()`` table (and
  ``text/plain``); a numpy array as shape, dtype, min/max and a few values; a
  matplotlib figure as ``image/png`` (base64, as Jupyter sends images); a long string
  or a big container as a ``text/plain`` clipped at a line or item boundary with
  ``… N more``. Simple values get an empty bundle: their line says it all.

Sizes are bounded whatever the value (:data:`HTML_LIMIT`, :data:`PLAIN_LIMIT`,
:data:`PNG_LIMIT`): the header of a record stays small. Making a preview never raises:
a value whose ``repr`` or ``to_html`` fails gets a line saying so.

pandas, numpy and matplotlib are recognised by the module a value's type comes from
and are used only through ``sys.modules``: this module never imports them, so a value
that is not one of theirs costs no import. Pure Python: no IPython, no store.
"""

from __future__ import annotations

import base64
import html
import sys
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HTML_LIMIT",
    "PLAIN_LIMIT",
    "PNG_COMPRESS_LEVEL",
    "PNG_LIMIT",
    "TEXT_LIMIT",
    "clip_text",
    "figure_png",
    "is_figure",
    "make_preview",
    "text_preview",
]

TEXT_LIMIT = 160  # characters of the one-line preview
PLAIN_LIMIT = 2_000  # characters of the bundle's text/plain
HTML_LIMIT = 4_000  # characters of the bundle's text/html
PNG_LIMIT = 96_000  # base64 characters of a figure's preview image (a small PNG)
_ITEMS = 8  # container items shown per level in the line
_PLAIN_ITEMS = 60  # ... and in the detail pane's text
_DEPTH = 3  # container levels shown in the line
_PLAIN_DEPTH = 5  # ... and in the detail pane's text
_PREVIEW_DPI = 60  # a figure preview is a thumbnail: the task's own display keeps full size


# -- clipping -----------------------------------------------------------------------------
def clip_text(text: str, limit: int, *, unit: str = "characters") -> str:
    """``text`` cut to about ``limit`` characters at a line or word boundary, saying how
    much was left out.

    >>> clip_text("alpha beta gamma delta", 12)
    'alpha beta … 12 more characters'
    >>> clip_text("short", 12)
    'short'
    """
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for sep in ("\n", " ", ","):
        at = cut.rfind(sep)
        if at >= limit // 2:
            cut = cut[:at]
            break
    cut = cut.rstrip()
    return f"{cut} … {len(text) - len(cut)} more {unit}"


def _safe_repr(value: Any, limit: int) -> str:
    """``repr(value)`` for a value this module does not know, never longer than about
    ``limit`` and never raising (a broken ``__repr__``, a 10,000-digit int)."""
    try:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
            return f"<int of {value.bit_length()} bits>"
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not fail a checkpoint
        return f"<{_type_name(value)}: repr failed: {type(exc).__name__}>"
    return clip_text(text, limit)


def _type_name(value: Any) -> str:
    try:
        return type(value).__name__
    except Exception:  # noqa: BLE001 - a hostile metaclass
        return "object"


def _short(
    value: Any, budget: int, depth: int, seen: set[int], items_max: int = _ITEMS, depth_max: int = _DEPTH
) -> str:
    """A repr of ``value`` within about ``budget`` characters: containers show their
    first items, then ``… N more``; nested ones down to ``_DEPTH`` levels."""
    if type(value) in _SCALARS:
        return _safe_repr(value, budget)
    if isinstance(value, str):
        if len(value) <= budget:
            return repr(value)
        shown = clip_text(value, max(8, budget - 20))
        head, _, rest = shown.rpartition(" … ")
        return f"{head!r} … {rest}" if head else repr(shown)
    if isinstance(value, bytes | bytearray):
        if len(value) <= budget // 4:
            return repr(value)
        return f"{bytes(value[: max(4, budget // 4)])!r} … {len(value) - max(4, budget // 4)} more bytes"
    opening = _OPEN.get(type(value))
    if opening is None:
        if isinstance(value, Mapping):
            opening = ("{", "}")
        elif isinstance(value, list | tuple | set | frozenset):
            opening = ("[", "]")
        else:
            return _safe_repr(value, budget)
    if id(value) in seen:
        return "…(cycle)"
    try:
        size = len(value)
    except Exception:  # noqa: BLE001 - a container whose len() fails
        return _safe_repr(value, budget)
    if size == 0:
        return _safe_repr(value, budget)
    if depth >= depth_max:
        return f"{opening[0]}… {size} item{'s' if size != 1 else ''}{opening[1]}"
    seen.add(id(value))
    parts: list[str] = []
    used = 2
    try:
        items = value.items() if isinstance(value, Mapping) else value
        for n, item in enumerate(items):
            if n >= items_max or used >= budget:
                break
            room = max(8, (budget - used) // max(1, min(size, items_max) - n))
            if isinstance(value, Mapping):
                key, val = item
                k = _short(key, room // 3, depth + 1, seen, items_max, depth_max)
                text = f"{k}: {_short(val, room, depth + 1, seen, items_max, depth_max)}"
            else:
                text = _short(item, room, depth + 1, seen, items_max, depth_max)
            parts.append(text)
            used += len(text) + 2
    except Exception:  # noqa: BLE001 - a container that fails while iterated
        return _safe_repr(value, budget)
    finally:
        seen.discard(id(value))
    more = size - len(parts)
    body = ", ".join(parts)
    if more > 0:
        body += f", … {more} more"
    if isinstance(value, tuple) and size == 1 and not more:
        body += ","
    return f"{opening[0]}{body}{opening[1]}"


_SCALARS = frozenset({int, float, bool, type(None)})
_OPEN: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
    dict: ("{", "}"),
}


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


# -- the libraries we know, found by module name ------------------------------------------
def _module_of(value: Any) -> str:
    try:
        return type(value).__module__ or ""
    except Exception:  # noqa: BLE001
        return ""


def _pandas_kind(value: Any) -> str | None:
    if not _module_of(value).startswith("pandas"):
        return None
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(value, pd.DataFrame):
        return "frame"
    if isinstance(value, pd.Series):
        return "series"
    return None


def _is_ndarray(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and _module_of(value).startswith("numpy") and isinstance(value, np.ndarray)


def is_figure(value: Any) -> bool:
    """Whether ``value`` is a matplotlib Figure (without importing matplotlib).

    >>> is_figure(42)
    False
    """
    if not _module_of(value).startswith("matplotlib"):
        return False
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(value, figure.Figure)


#: zlib level of the PNGs nbflow draws: 3 compresses a chart about 20% less than the
#: default 6 and in about half the time (the drawing itself costs far more either way).
PNG_COMPRESS_LEVEL = 3


def figure_png(fig: Any, *, dpi: float | None = None, tight: bool = True) -> str:
    """A matplotlib figure as base64 PNG text (what Jupyter sends as ``image/png``),
    rendered with the Agg canvas whatever the backend, so this works in any thread of
    any process and never opens a window. ``tight`` (the default) gives the picture the
    inline backend shows: margins trimmed, labels reaching past the figure's edge kept
    whole (``nbflow.core.figure_image``: one draw unless something reaches past it)."""
    from nbflow.core.figure_image import figure_png_bytes

    png = figure_png_bytes(fig, dpi=dpi, tight=tight, compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(png).decode("ascii")


# -- previews by kind ---------------------------------------------------------------------
def _frame_preview(df: Any, rich: bool) -> tuple[str, dict[str, str]]:
    rows, cols = df.shape
    dtypes = [(str(name), str(dtype)) for name, dtype in df.dtypes.items()]
    listed = ", ".join(f"{n} {d}" for n, d in dtypes[:6])
    more = f", … {len(dtypes) - 6} more" if len(dtypes) > 6 else ""
    line = _one_line(f"DataFrame {rows}x{cols}: {listed}{more}" if cols else f"DataFrame {rows}x0")
    if not rich:
        return line, {}
    shape = f"{rows} rows x {cols} columns"
    types = "\n".join(f"  {clip_text(n, 40)}: {d}" for n, d in dtypes[:20])
    if len(dtypes) > 20:
        types += f"\n  … {len(dtypes) - 20} more columns"
    pd = sys.modules["pandas"]
    top = _clip_cells(df.head(5))
    with pd.option_context("display.max_colwidth", 30, "display.width", 100):
        head = top.to_string(max_cols=8, max_rows=5)
        table = ""
        for max_cols, n_rows in ((10, 5), (6, 5), (4, 3)):
            table = top.head(n_rows).to_html(max_cols=max_cols, max_rows=n_rows, border=0, notebook=False)
            if len(table) <= HTML_LIMIT - 600:
                break
        else:
            table = ""
    plain = clip_text(f"{shape}\n{types}\n\n{head}", PLAIN_LIMIT, unit="characters")
    dtype_html = ", ".join(f"<code>{html.escape(clip_text(n, 40))}</code> {html.escape(d)}" for n, d in dtypes[:12])
    if len(dtypes) > 12:
        dtype_html += f", … {len(dtypes) - 12} more"
    view = f'<div class="nbflow-preview"><div>{shape}</div><div>{dtype_html}</div>{table}</div>'
    bundle = {"text/plain": plain}
    if len(view) <= HTML_LIMIT:
        bundle["text/html"] = view
    return line, bundle


def _clip_cells(head: Any) -> Any:
    """``head`` (a few rows) with long text cells cut, so one long cell cannot take the
    whole table budget (``to_html`` ignores ``display.max_colwidth``)."""

    def cut(v: Any) -> Any:
        return v[:29] + "…" if isinstance(v, str) and len(v) > 30 else v

    texts = [c for c, dtype in head.dtypes.items() if str(dtype) in ("object", "str", "string")]
    if not texts:
        return head
    head = head.copy()
    for column in texts:
        head[column] = head[column].map(cut)
    return head


def _series_preview(s: Any, rich: bool) -> tuple[str, dict[str, str]]:
    name = "" if s.name is None else f" {clip_text(str(s.name), 40)!r}"
    line = _one_line(f"Series{name} of {len(s)} {s.dtype}")
    if not rich:
        return line, {}
    pd = sys.modules["pandas"]
    with pd.option_context("display.max_colwidth", 30):
        head = s.head(5).to_string(max_rows=5)
        frame = s.head(5).to_frame(name=str(s.name) if s.name is not None else "value")
        table = frame.to_html(border=0, max_rows=5, notebook=False)
    plain = clip_text(f"{len(s)} values, dtype {s.dtype}\n\n{head}", PLAIN_LIMIT)
    view = f'<div class="nbflow-preview"><div>{len(s)} values, dtype {html.escape(str(s.dtype))}</div>{table}</div>'
    bundle = {"text/plain": plain}
    if len(view) <= HTML_LIMIT:
        bundle["text/html"] = view
    return line, bundle


_MINMAX_MAX = 10_000_000  # elements: beyond this min/max would cost more than the checkpoint is worth


def _array_preview(a: Any) -> tuple[str, dict[str, str]]:
    np = sys.modules["numpy"]
    shape = "x".join(str(n) for n in a.shape) or "scalar"
    facts = [f"shape {a.shape}", f"dtype {a.dtype}"]
    span = ""
    if 0 < a.size <= _MINMAX_MAX and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN array: min/max say nan
                lo, hi = (np.nanmin(a), np.nanmax(a)) if np.issubdtype(a.dtype, np.floating) else (a.min(), a.max())
            span = f"min {lo!s}, max {hi!s}"
            facts.append(span)
        except (ValueError, TypeError):  # all-NaN, or a dtype without an order
            pass
    elif a.size > _MINMAX_MAX:
        facts.append(f"min/max not computed ({a.size} values)")
    if isinstance(a, np.ma.MaskedArray):  # array2string ignores the mask (shows fill values, warns)
        with np.printoptions(threshold=12, edgeitems=3, precision=4, linewidth=100):
            values = str(a)
    else:
        values = np.array2string(a, threshold=12, edgeitems=3, precision=4, max_line_width=100)
    lines = values.splitlines()
    if len(lines) > 12:
        values = "\n".join(lines[:12]) + f"\n… {len(lines) - 12} more lines"
    line = _one_line(f"array {shape} {a.dtype}" + (f", {span}" if span else ""))
    return line, {"text/plain": clip_text("\n".join(facts) + "\n\n" + values, PLAIN_LIMIT)}


def _figure_preview(fig: Any, rich: bool) -> tuple[str, dict[str, str]]:
    try:
        w, h = fig.get_size_inches() * fig.dpi
        axes = fig.get_axes()
        titles = [t for t in (getattr(ax, "get_title", lambda: "")() for ax in axes) if t]
        suptitle = getattr(fig, "get_suptitle", lambda: "")()  # matplotlib 3.8+
        title = suptitle or (titles[0] if titles else "")
        line = _one_line(
            f"Figure {round(w)}x{round(h)} px, {len(axes)} axes" + (f": {clip_text(title, 60)}" if title else "")
        )
    except Exception:  # noqa: BLE001 - an odd figure subclass: still render it below
        line = "Figure"
    if not rich:
        return line, {}
    bundle = {"text/plain": line}
    try:
        png = figure_png(fig, dpi=_PREVIEW_DPI)
    except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn keeps its line
        bundle["text/plain"] = f"{line} (not drawable: {type(exc).__name__})"
        return line, bundle
    if len(png) <= PNG_LIMIT:
        bundle["image/png"] = png
    return line, bundle


def make_preview(value: Any, *, rich: bool = True) -> tuple[str, dict[str, str]]:
    """(one-line text, mimebundle) previewing ``value``; see the module docstring.
    ``rich=False`` makes only the line (the bundle is then empty).

    >>> make_preview(42)
    ('42', {})
    >>> line, bundle = make_preview(list(range(100)))
    >>> line
    '[0, 1, 2, 3, 4, 5, 6, 7, … 92 more]'
    >>> bundle["text/plain"].endswith("58, 59, … 40 more]")
    True
    >>> make_preview("x" * 10_000)[0].endswith("… 9880 more characters")
    True
    """
    kind_of = type(value)
    if kind_of in _SCALARS:  # the common case (a map of 10,000 numbers): no checks to make
        if kind_of is not int or value.bit_length() <= 4 * TEXT_LIMIT:
            text = repr(value)
            return (text, {}) if len(text) <= TEXT_LIMIT else (_one_line(text), {})
    elif kind_of is str and len(value) <= TEXT_LIMIT // 2:
        return repr(value), {}
    try:
        kind = _pandas_kind(value)
        if kind == "frame":
            return _frame_preview(value, rich)
        if kind == "series":
            return _series_preview(value, rich)
        if _is_ndarray(value):
            line, bundle = _array_preview(value)
            return line, bundle if rich else {}
        if is_figure(value):
            return _figure_preview(value, rich)
    except Exception as exc:  # noqa: BLE001 - a preview must never fail a checkpoint
        return _one_line(f"<{_type_name(value)}: preview failed: {type(exc).__name__}>"), {}
    try:
        line = _short(value, TEXT_LIMIT - 20, 0, set())
        line = line if len(line) <= TEXT_LIMIT else _one_line(line)
        if not rich or ("\n" not in line and (len(line) < TEXT_LIMIT - 20 and "… " not in line)):
            return _one_line(line) if "\n" in line else line, {}
        plain = _short(value, PLAIN_LIMIT - 100, 0, set(), items_max=_PLAIN_ITEMS, depth_max=_PLAIN_DEPTH)
        return _one_line(line), {"text/plain": clip_text(plain, PLAIN_LIMIT)}
    except Exception as exc:  # noqa: BLE001 - see above
        return _one_line(f"<{_type_name(value)}: preview failed: {type(exc).__name__}>"), {}


def text_preview(value: Any) -> str:
    """Only the one-line text of :func:`make_preview`.

    >>> text_preview({"a": 1, "b": [1, 2]})
    "{'a': 1, 'b': [1, 2]}"
    """
    return make_preview(value, rich=False)[0]
