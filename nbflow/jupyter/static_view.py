"""The saved, kernel-free view of a run: one ``text/html`` document per widget.

A notebook reopened without a kernel, an nbconvert HTML page and a headless run
(nbclient, papermill) never run the widget's JavaScript, and JupyterLab shows "model not
found" for a widget output whose model is gone. So next to the live widget the cell
carries a second output, this static view, that needs nothing but HTML: the painted DAG,
a legend, the summary line, the task table and, per task, a collapsible ``<details>``
with its error, its user frames, its captured stdout/stderr (clipped) and displays.

It is written to survive JupyterLab's sanitizer (an *untrusted* notebook, e.g. opened by
a colleague): the DAG is an ``<img>`` with a ``data:`` SVG (inline ``<svg>`` would be
stripped), colours are inline ``style`` attributes and tests find parts by class (the
sanitizer drops ``data-*`` attributes). The ``<style>`` block only adds polish and, when
the output is trusted, hides the widget output just above it if that shows an error
instead of a live widget (``widget.css`` hides this view while the live widget is there).

Pure Python: no IPython, no ipywidgets; ``widget.py`` decides when to publish it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nbflow.core.status import RunState
from nbflow.jupyter.mimebundle import STATE_COLORS, paint_svg
from nbflow.jupyter.progress import ACTIVE_STATES, STATES, format_seconds
from nbflow.jupyter.reports import user_traceback

if TYPE_CHECKING:  # pragma: no cover
    from nbflow.jupyter.progress import ProgressModel
    from nbflow.jupyter.render import Layout

__all__ = [
    "MAX_DETAILS", "MAX_DISPLAY_BYTES", "TEXT_TAIL",
    "error_line", "failure_html", "static_html", "static_view_bundle", "user_frames",
]  # fmt: skip

#: Each task's stdout/stderr is kept to its last this-many characters in the saved view.
TEXT_TAIL = 4_000
#: At most this many tasks get a details section (the table still lists the rest).
MAX_DETAILS = 200
#: Displays (figures, tables) beyond this many bytes in total are left out, with a note.
MAX_DISPLAY_BYTES = 8_000_000
_MAX_TABLE_ROWS = 500
# Preferred mime type of a captured display, best first.
_DISPLAY_ORDER = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "text/markdown", "text/plain")

DetailOf = Callable[[str], Mapping[str, Any]]

# Polish and the hiding rules. `:has()` lets the view hide the output right above it when
# that is a widget output showing an error or a plain-text fallback rather than a live
# widget: JupyterLab's widget renderer (no data-mime-type; "Loading widget..." without a
# kernel, class jupyter-widgets with "model not found" once a new kernel restored) and
# nbconvert's text/plain of the widget.
_STYLE = """<style>
.nbflow-static { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 13px; }
.nbflow-static table.nbflow-static-table { border-collapse: collapse; margin: 6px 0; }
.nbflow-static table.nbflow-static-table th, .nbflow-static table.nbflow-static-table td {
  padding: 1px 8px; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
.nbflow-static pre { white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace); max-height: 300px; overflow: auto; margin: 2px 0;
  background: #f6f8fa; padding: 4px 6px; border-radius: 3px; font-size: 12px; }
.nbflow-static details.nbflow-static-task { margin: 2px 0; }
.nbflow-static details.nbflow-static-task > summary { cursor: pointer; }
.jp-OutputArea-child:has(+ .jp-OutputArea-child .nbflow-static):not(:has(.nbflow-widget)):has(
  > .jp-OutputArea-output.jupyter-widgets, > .jp-OutputArea-output:not([data-mime-type]),
  > [data-mime-type="text/plain"]) { display: none; }
.output_area:has(+ .output_area .nbflow-static):not(:has(.nbflow-widget)) { display: none; }
</style>"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _badge(state: str) -> str:
    color = STATE_COLORS.get(state, STATE_COLORS["pending"])
    border = "1px dashed #374151" if state == "restored" else "1px solid rgba(0,0,0,0.15)"
    return (
        f'<span class="nbflow-badge nbflow-state-{_esc(state)}" style="background-color: {color}; '
        f'border: {border}; border-radius: 8px; padding: 0 6px; color: #111827">{_esc(state.replace("_", " "))}</span>'
    )


def _tail(text: str, limit: int = TEXT_TAIL) -> str:
    """The end of ``text`` (where a failing task's last words are), with what was cut."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    if 0 <= newline < 200:
        cut = cut[newline + 1 :]
    return f"… {len(text) - len(cut)} earlier characters not shown\n{cut}"


def error_line(detail: Mapping[str, Any]) -> str:
    """The one line that says what went wrong: ``ValueError: bad row 3``.

    ``error`` is that line when the engine recorded it; else the last line of the
    traceback (where Python puts ``Type: message``).
    """
    error = str(detail.get("error") or "").strip()
    if error:
        return error.splitlines()[0]
    tb = str(detail.get("traceback") or "").rstrip().splitlines()
    return tb[-1].strip() if tb else ""


def user_frames(traceback: str, line: str = "") -> str:
    """The user's frames of ``traceback`` (``reports.user_traceback``), without the
    "Traceback (most recent call last):" header and without a last line repeating
    ``line`` (shown above them already)."""
    lines = user_traceback(traceback).splitlines()
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        lines = lines[1:]
    if line and lines and lines[-1].strip() == line.strip():
        lines = lines[:-1]
    return "\n".join(lines).strip("\n")


def _display_html(bundle: Mapping[str, Any]) -> tuple[str, int]:
    """One captured display as HTML (best mime type first) and its size in bytes."""
    for mime in _DISPLAY_ORDER:
        value = bundle.get(mime)
        if value is None:
            continue
        if isinstance(value, list):  # nbformat may split text into lines
            value = "".join(map(str, value))
        value = str(value)
        if mime in ("image/png", "image/jpeg"):
            src = f"data:{mime};base64,{value.strip()}"
            return f'<img class="nbflow-static-display-image" alt="figure" src="{src}">', len(value)
        if mime == "image/svg+xml":
            data = base64.b64encode(value.encode()).decode()
            return (
                f'<img class="nbflow-static-display-image" alt="figure" src="data:image/svg+xml;base64,{data}">',
                len(data),
            )
        if mime == "text/html":
            return f'<div class="nbflow-static-display-html">{value}</div>', len(value)
        return f'<pre class="nbflow-static-display-text">{_esc(value)}</pre>', len(value)
    return "", 0


def _section(name: str, body: str, *, raw: bool = False) -> str:
    if not body:
        return ""
    inner = body if raw else f'<pre class="nbflow-static-{name}">{_esc(body)}</pre>'
    return f'<div class="nbflow-static-label" style="color: #57606a; font-size: 0.9em">{name}</div>{inner}'


def failure_html(detail: Mapping[str, Any]) -> str:
    """A failed task: its one-line error, then only the user's frames, then the full
    traceback behind a toggle (the nbflow and event-loop frames are noise to a user)."""
    line = error_line(detail)
    tb = str(detail.get("traceback") or "")
    parts = []
    if line:
        parts.append(f'<div class="nbflow-static-error" style="color: #b91c1c; font-weight: 600">{_esc(line)}</div>')
    if tb:
        mine = user_frames(tb, line)
        if mine.strip():
            parts.append(f'<pre class="nbflow-static-user-traceback">{_esc(mine)}</pre>')
        parts.append(
            '<details class="nbflow-static-full-traceback"><summary>full traceback</summary>'
            f'<pre class="nbflow-static-traceback">{_esc(tb)}</pre></details>'
        )
    return "".join(parts)


def _task_details(task: str, detail: Mapping[str, Any], budget: list[int]) -> str:
    state = str(detail.get("state") or "pending")
    meta = [f"attempts: {detail.get('attempts', 0)}", f"duration: {detail.get('duration_text') or '-'}"]
    if detail.get("worker"):
        meta.append(f"worker: {detail['worker']}")
    if detail.get("progress_text"):
        meta.append(str(detail["progress_text"]))
    body = [f'<div class="nbflow-static-meta" style="color: #57606a">{_esc(" · ".join(meta))}</div>']
    if detail.get("description"):
        body.append(f'<div class="nbflow-static-description">{_esc(detail["description"])}</div>')
    if detail.get("load"):
        body.append(f'<div class="nbflow-static-load">load its output: <code>{_esc(detail["load"])}</code></div>')
    why = str(detail.get("why") or "")
    body.append(_section("why", why))
    if state in ("failed", "retrying") or detail.get("traceback"):
        body.append(failure_html(detail))
    preview_bundle = detail.get("preview_bundle") or {}
    preview_html, _ = _display_html(preview_bundle) if preview_bundle else ("", 0)
    if preview_html:
        body.append(_section("preview", preview_html, raw=True))
    else:
        body.append(_section("preview", str(detail.get("preview") or "")))
    body.append(_section("stdout", _tail(str(detail.get("stdout") or ""))))
    body.append(_section("stderr", _tail(str(detail.get("stderr") or ""))))
    displays: Sequence[Mapping[str, Any]] = detail.get("displays") or []
    shown, left_out = [], 0
    for bundle in displays:
        piece, size = _display_html(bundle)
        if not piece:
            continue
        if size > budget[0]:
            left_out += 1
            continue
        budget[0] -= size
        shown.append(f'<div class="nbflow-static-display">{piece}</div>')
    if left_out:
        shown.append(
            f'<div class="nbflow-static-note">{left_out} display(s) left out of the saved view (too large); '
            "the checkpoint keeps them and the widget shows them.</div>"
        )
    body.append(_section("displays", "".join(shown), raw=True))
    opened = " open" if state == "failed" else ""
    summary = f"<b>{_esc(task)}</b> {_badge(state)} <span style='color: #57606a'>{_esc(detail.get('duration_text') or '')}</span>"
    return (
        f'<details class="nbflow-static-task nbflow-state-{_esc(state)}" title="{_esc(task)}"{opened}>'
        f"<summary>{summary}</summary>{''.join(body)}</details>"
    )


def _legend(states: Mapping[str, str]) -> str:
    present = set(states.values())
    items = [f"{_badge(s)}" for s in STATES if s in present]
    if "restored" in present:
        items.append('<span style="color: #57606a">(dashed: restored from a checkpoint, not run again)</span>')
    return (
        '<div class="nbflow-static-legend" style="margin: 4px 0; display: flex; gap: 6px; flex-wrap: wrap">'
        + "".join(items)
        + "</div>"
    )


def _table(model: ProgressModel, states: Mapping[str, str]) -> str:
    head = "".join(
        f'<th style="text-align: left">{h}</th>' for h in ("Task", "State", "Attempts", "Duration", "Items", "Output")
    )
    rows = []
    for tid in list(states)[:_MAX_TABLE_ROWS]:
        info = model.info(tid)
        items = "" if info.map_total is None else f"{info.map_done or 0}/{info.map_total}"
        duration = format_seconds(info.duration) if info.duration is not None else ""
        note = info.preview.splitlines()[0] if info.preview else ""
        if info.state in ("failed", "retrying") and info.error:
            note = info.error.splitlines()[0]
        elif info.state in ACTIVE_STATES and info.last_line:
            note = info.last_line
        if len(note) > 120:
            note = note[:119] + "…"
        rows.append(
            f'<tr class="nbflow-static-row nbflow-state-{_esc(info.state)}" title="{_esc(tid)}">'
            f'<td class="nbflow-static-col-task" style="text-align: left">{_esc(tid)}</td><td>{_badge(info.state)}</td>'
            f"<td>{info.attempts or ''}</td><td>{duration}</td><td>{items}</td>"
            f'<td style="text-align: left">{_esc(note)}</td></tr>'
        )
    more = len(states) - len(rows)
    tail = f'<div class="nbflow-static-note">{more} more tasks not listed</div>' if more > 0 else ""
    return (
        f'<table class="nbflow-static-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{tail}'
    )


def _note(model: ProgressModel) -> str:
    """What a reader of the saved view must know about the run's state."""
    state = model.run_state
    saved = model.completed
    if state == RunState.RUNNING:
        running = [t for t, s in model.states().items() if s in ACTIVE_STATES]
        during = f" during {', '.join(running[:3])}" if running else ""
        return (
            f"Saved while the run was going{during}: {saved} of {model.total} tasks were done. "
            "If the kernel stopped since, re-run this cell to resume (finished tasks are restored)."
        )
    if state == RunState.FAILED:
        return "The run failed: fix the failed task and re-run this cell; finished tasks are restored."
    if state == "idle":  # the model's word for "no RunStarted yet", not a stored RunState
        name = model.workflow or "<name>"
        return (
            "Saved before this run reported back (a background run, or a kernel that stopped early): "
            f"%workflow status {name} shows where it got to."
        )
    if state in (RunState.CANCELLED, RunState.INTERRUPTED):
        return f"The run stopped: {saved} of {model.total} tasks are saved; re-run this cell to resume."
    return ""


def static_html(model: ProgressModel, layout: Layout | None, detail_of: DetailOf | None = None) -> str:
    """The whole saved view of ``model`` as one HTML fragment (see the module docstring).

    ``detail_of(task)`` gives a task's detail (the widget's detail pane data: stdout,
    stderr, traceback, displays, ...); without it the view has no per-task sections.
    """
    states = model.states()
    progress = model.progress()
    parts = [_STYLE, f'<div class="nbflow-static nbflow-run-{_esc(model.run_state)}">']
    title = model.workflow or "workflow"
    if model.instance_id:
        title += f" / {model.instance_id}"
    parts.append(
        f'<div class="nbflow-static-summary"><b>{_esc(title)}</b> · '
        f'<span class="nbflow-static-progress">{_esc(progress["text"])}</span> · '
        f'<span class="nbflow-static-run-state">{_esc(model.run_state)}</span></div>'
    )
    note = _note(model)
    if note:
        parts.append(f'<div class="nbflow-static-note" style="color: #9a3412">{_esc(note)}</div>')
    if layout is not None:
        svg = paint_svg(layout.svg, states)
        data = base64.b64encode(svg.encode()).decode()
        alt = "workflow graph: " + ", ".join(f"{t} {s}" for t, s in list(states.items())[:50])
        parts.append(
            f'<img class="nbflow-static-dag" style="max-width: 100%" alt="{_esc(alt)}" src="data:image/svg+xml;base64,{data}">'
        )
    parts.append(_legend(states))
    parts.append(_table(model, states))
    if detail_of is not None:
        budget = [MAX_DISPLAY_BYTES]
        sections = []
        order = sorted(states, key=lambda t: 0 if states[t] == "failed" else 1)
        for tid in order[:MAX_DETAILS]:
            sections.append(_task_details(tid, detail_of(tid), budget))
        parts.append('<div class="nbflow-static-tasks">' + "".join(sections) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def static_view_bundle(
    model: ProgressModel, layout: Layout | None, detail_of: DetailOf | None = None
) -> dict[str, Any]:
    """``{"text/html": the saved view, "text/plain": summary}`` for a display output."""
    return {"text/html": static_html(model, layout, detail_of), "text/plain": model.summary()}
