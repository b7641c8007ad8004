"""ProgressModel: fold run events into per-task state, counts, elapsed time and ETA.

This is the widget's *model*: pure Python, no ipywidgets, so every rule about what a
task's state is (and what the progress bar says) is unit-tested without a front end.
The widget only renders snapshots of it. A subscriber gets one call per engine event
(10,000 of them for a 10,000-task run), so :meth:`ProgressModel.apply` is O(1) and the
expensive part (building a snapshot for the browser) is left to the caller, which
decides *when* with a :class:`Coalescer` — a few times per second, never per event.

While a task runs the model also folds what it prints (``TaskOutput``, shown as a
terminal would: ``\r`` frames collapse to the line they end with) and how far it says
it is (``TaskProgress``). The ETA is honest: each unfinished task's remaining time
comes from its own progress rate when it reports progress, else from how long the same
task took in earlier runs of the workflow (:class:`DurationHistory`, read once per
process from the store's records), and the run's ETA is the longest remaining path
through the graph. With nothing to go on it is None ("unknown"), never a guess.

It also keeps what each task displayed (``TaskDisplay`` events while it runs, then the
``displays`` of its ``TaskFinished``/``TaskRestored``/``TaskFailed``) and its output's
rich preview, for the detail pane.

**The detail contract** (:meth:`TaskInfo.detail`, what ``widget.js`` and the static
views render), besides the text fields:

- ``detail["displays"]``: a list, in the order shown, of mimebundles — ``{mime: str}``
  as Jupyter's ``display_data`` carries them: ``image/png`` and ``image/jpeg`` are
  base64 text, ``image/svg+xml``/``text/html``/``text/markdown``/``text/plain`` are
  text, JSON mime types are JSON text. Render the richest type you can (html, svg,
  png, …) and fall back to ``text/plain``. ``detail["display_items"]`` is a parallel
  list naming the map item that displayed each one (``"m[3]"``), or "" for the task
  itself. A restored task's list is the one stored when it ran.
- ``detail["preview_bundle"]``: the output's rich preview, ``{mime: str}`` with the same
  encodings (a DataFrame: ``text/html`` head table + ``text/plain``; an array:
  ``text/plain``; a figure: ``image/png``); empty when ``detail["preview"]`` (one line)
  says it all.

HTML in either comes from the task's own objects (its DataFrames, its
``_repr_html_``), as under a notebook cell; the front end shows it the way
JupyterLab shows cell outputs.

This module installs the notebook layer's display capture
(``nbflow.jupyter.display_capture``) when a model is made inside IPython, since a model
is what shows the displays it captures.

Nothing here draws or imports a UI toolkit; layout lives in ``render.py``, painting in
``widget.py`` and ``static/``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

from nbflow.core.keys import INPUT_ID, parse_item_id, parse_iteration_id, parse_state_id
from nbflow.jupyter import display_capture
from nbflow.run import events as ev
from nbflow.run.displays import MAX_DISPLAYS
from nbflow.run.live import collapse, store_of
from nbflow.run.live import last_line as _last_line

__all__ = [
    "ACTIVE_STATES",
    "HISTORY",
    "STATES",
    "Coalescer",
    "DurationHistory",
    "ProgressModel",
    "TaskInfo",
    "format_seconds",
]

#: Every state a task can be painted in (the CSS classes are ``nbflow-state-<state>``).
STATES = (
    "pending", "stale", "running", "retrying", "waiting", "awaiting_signal",
    "done", "restored", "failed", "cancelled", "skipped",
)  # fmt: skip
#: States of a task that is in flight: a stopped run turns them into "cancelled".
ACTIVE_STATES = frozenset({"running", "retrying", "waiting", "awaiting_signal"})
#: States that count towards "done/total" on the progress bar.
COMPLETE_STATES = frozenset({"done", "restored", "skipped"})
_PARKED_RUN_STATES = frozenset({"paused", "waiting", "awaiting_signal"})

# Text shown to the user is capped: a task printing megabytes must not be shipped to
# the browser several times a second.
MAX_TEXT = 20_000


def _clip(text: str) -> str:
    text = collapse(text)
    if len(text) <= MAX_TEXT:
        return text
    return f"... ({len(text) - MAX_TEXT} characters cut)\n" + text[-MAX_TEXT:]


def _append(tail: str, chunk: str, limit: int = MAX_TEXT) -> str:
    """``tail`` + ``chunk`` as a terminal shows it, at most ``limit`` characters."""
    text = collapse(tail + chunk)
    if len(text) <= limit:
        return text
    text = text[-limit:]
    newline = text.find("\n")
    return text[newline + 1 :] if 0 <= newline < 200 else text


def format_seconds(seconds: float | None) -> str:
    """Short human duration: ``0.25s``, ``12.3s``, ``4m05s``, ``1h02m``; ``-`` for None.

    >>> [format_seconds(s) for s in (0.25, 12.34, 245, 3720, None)]
    ['0.25s', '12.3s', '4m05s', '1h02m', '-']
    """
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


@dataclass(slots=True)
class TaskInfo:
    """What the widget knows about one task (mutable: the model updates it in place)."""

    state: str = "pending"
    kind: str = "task"
    attempts: int = 0
    duration: float | None = None
    started_at: float | None = None
    preview: str = ""
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    traceback: str = ""
    worker: str | None = None
    map_done: int | None = None
    map_total: int | None = None
    map_failed: int = 0
    wake_at: float | None = None
    signal: str | None = None
    reason: str = ""
    why: str = ""  # why a stale task runs again: one line, then a diff (kept once it ran)
    # live, while the task runs: what it printed so far (collapsed), its last line and
    # its own progress (done, total, note); ``progress_stored``: that progress was read
    # from the store (where the task was when its last run stopped), not reported now
    live_stdout: str = ""
    live_stderr: str = ""
    last_line: str = ""
    progress: tuple[float, float | None, str] | None = None
    progress_stored: bool = False
    expected: float | None = None  # how long it took in earlier runs (median), if known
    rate_first: tuple[float, float] | None = None  # (time, done) of its first report this attempt
    rate_last: tuple[float, float] | None = None  # (time, done) of its latest report
    # what it displayed: {"data": {mime: str}, "metadata": {...}, "id": display id, "item": map item}
    displays: list[dict[str, Any]] = field(default_factory=list)
    preview_bundle: dict[str, str] = field(default_factory=dict)

    def detail(self, task_id: str) -> dict[str, Any]:
        """A JSON-ready view of this task for the detail pane (the module docstring has
        the contract). While it runs (or after it was cut short) ``stdout``/``stderr``
        are what it printed so far."""
        # shallow (asdict would deep-copy every image); every non-scalar is rebuilt below
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        shown = list(self.displays)
        for private in ("started_at", "rate_first", "rate_last", "live_stdout", "live_stderr"):
            del out[private]
        out["displays"] = [_as_text(d["data"]) for d in shown]
        out["display_items"] = [str(d.get("item") or "") for d in shown]
        out["preview_bundle"] = dict(self.preview_bundle)
        if not self.stdout and not self.stderr:
            out["stdout"], out["stderr"] = self.live_stdout, self.live_stderr
        out.update(task=task_id, duration_text=format_seconds(self.duration))
        out["map"] = None if self.map_total is None else [self.map_done or 0, self.map_total, self.map_failed]
        out["progress"] = None if self.progress is None else list(self.progress)
        out["progress_text"] = self.progress_text()
        out["expected_text"] = "" if self.expected is None else format_seconds(self.expected)
        out["live"] = self.state in ACTIVE_STATES
        return out

    def progress_text(self) -> str:
        """``57/100 (57%) epoch 57`` (``57 done`` without a total); '' without progress."""
        if self.progress is None:
            return ""
        done, total, note = self.progress
        text = f"{_num(done)}/{_num(total)} ({100 * min(done, total) / total:.0f}%)" if total else f"{_num(done)} done"
        if note:
            text += f" {note}"
        return ("was at " if self.progress_stored else "") + text


def _as_text(bundle: Mapping[str, Any]) -> dict[str, str]:
    """A mimebundle with every value as text (JSON mime types as JSON text)."""
    out: dict[str, str] = {}
    for mime, value in bundle.items():
        if isinstance(value, str):
            out[str(mime)] = value
        else:
            try:
                out[str(mime)] = json.dumps(value)
            except (TypeError, ValueError):
                continue
    return out


def _bundle_of(value: Any) -> dict[str, str]:
    """A stored preview bundle as {str: str} (anything else in it is left out)."""
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _stored_displays(displays: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in displays:
        if isinstance(d, Mapping) and isinstance(d.get("data"), Mapping):
            md = d.get("metadata")
            md = md if isinstance(md, Mapping) else {}
            out.append({"data": dict(d["data"]), "metadata": dict(md), "id": None, "item": md.get("nbflow_item")})
    return out[-MAX_DISPLAYS:]


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


class ProgressModel:
    """Per-task state of one workflow run, folded from :mod:`nbflow.run.events`.

    Thread-safe: the engine thread calls :meth:`apply` while the widget's flusher reads
    snapshots. ``version`` goes up on every change, so a reader can tell cheaply whether
    there is anything new to push.

    >>> from nbflow.run import events as ev
    >>> m = ProgressModel(["a", "b"], plan={"a": "restore", "b": "stale"})
    >>> m.state("b")
    'stale'
    >>> m.apply(ev.TaskRestored(workflow="w", instance_id="i", task_id="a"))
    True
    >>> m.apply(ev.TaskFinished(workflow="w", instance_id="i", task_id="b", duration=0.5))
    True
    >>> m.summary()
    'w: 2/2 done (1 restored) | a restored | b done'
    """

    def __init__(
        self,
        tasks: Iterable[str] = (),
        *,
        workflow: str = "",
        instance_id: str = "",
        kinds: Mapping[str, str] | None = None,
        plan: Mapping[str, str] | None = None,
        reasons: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        edges: Iterable[tuple[str, str]] = (),
        history: Mapping[str, float] | str | None = None,
    ) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        self.run_state = "idle"
        self.run_error: str | None = None
        self.version = 0
        self._clock = clock
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskInfo] = {}
        self._counts: Counter[str] = Counter()
        self._deps: dict[str, list[str]] = {}
        self._edges: tuple[tuple[str, str], ...] = ()
        self._set_edges(edges)
        # expected durations: given, or "auto" — read from the run's store at RunStarted
        # (HISTORY, cached per process) and kept up to date as tasks finish
        self._auto_history = history == "auto"
        self._history: dict[str, float] = dict(history) if isinstance(history, Mapping) else {}
        self._history_store: Any = None
        self._finished: dict[str, float] = {}  # durations not yet handed to the history
        self._reset(tuple(tasks), kinds or {})
        if plan:
            self.set_plan(plan, reasons)
        display_capture.install()  # a no-op outside IPython

    # -- folding ------------------------------------------------------------------------
    def _set_edges(self, edges: Iterable[tuple[str, str]]) -> None:
        self._edges = tuple(edges)
        deps: dict[str, list[str]] = {}
        for upstream, downstream in self._edges:
            deps.setdefault(downstream, []).append(upstream)
        self._deps = deps

    def _is_fresh(self, tasks: Iterable[str], kinds: Mapping[str, str]) -> bool:
        """Nothing was folded, planned or set since the model was made for these tasks."""
        if self.version != 0 or tuple(tasks) != tuple(self._tasks):
            return False
        return all(info.kind == kinds.get(tid, "task") for tid, info in self._tasks.items())

    def set_history(self, durations: Mapping[str, float]) -> None:
        """Expected duration of each task (seconds; e.g. from :data:`HISTORY`): shown
        on its row and used for the ETA of tasks that report no progress."""
        with self._lock:
            self._history = dict(durations)
            for tid, info in self._tasks.items():
                info.expected = self._history.get(tid)
            self.version += 1

    def _reset(self, tasks: tuple[str, ...], kinds: Mapping[str, str]) -> None:
        history = getattr(self, "_history", {})
        self._tasks = {tid: TaskInfo(kind=kinds.get(tid, "task"), expected=history.get(tid)) for tid in tasks}
        self._counts = Counter({"pending": len(tasks)})
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.run_duration: float | None = None

    def _info(self, task_id: str) -> TaskInfo:
        info = self._tasks.get(task_id)
        if info is None:  # an event for a task we were not told about: show it anyway
            info = self._tasks[task_id] = TaskInfo()
            self._counts["pending"] += 1
        return info

    def _set(self, info: TaskInfo, state: str) -> None:
        if info.state != state:
            self._counts[info.state] -= 1
            self._counts[state] += 1
            info.state = state

    def set_plan(self, plan: Mapping[str, str], reasons: Mapping[str, str] | None = None) -> None:
        """Show what a resume will do before it runs: tasks with a valid checkpoint are
        painted restored, ``"stale"`` ones stale (``reasons`` says why), branches a
        route did not take skipped."""
        painted = {"stale": "stale", "restore": "restored", "skip": "skipped"}
        with self._lock:
            for tid, what in plan.items():
                info = self._info(tid)
                if info.state in ("pending", "stale", "restored", "skipped"):
                    self._set(info, painted.get(what, "pending"))
            for tid, why in (reasons or {}).items():
                if tid in self._tasks:
                    self._tasks[tid].why = why
            self.version += 1

    def apply(self, event: ev.RunEvent) -> bool:
        """Fold one event in; returns False for events this model does not know."""
        with self._lock:
            self.workflow = self.workflow or event.workflow
            self.instance_id = self.instance_id or event.instance_id
            changed = self._apply(event)
            if changed:
                self.version += 1
            if self._finished:
                self._note_durations()
            return changed

    __call__ = apply  # so a model can be subscribed to an EventBus directly

    def apply_all(self, events: Iterable[ev.RunEvent]) -> int:
        """Fold a batch of events in (one lock, one history update); returns how many
        changed the model. What a view that folds events in batches calls.

        A task of the graph starting or finishing — nearly every event of a wide run —
        is folded right here in the loop: the same as :meth:`apply` does, without its
        calls and type tests (~0.4 us of ~1.1 us an event)."""
        changed = 0
        with self._lock:
            fold, started, done = self._apply, self._started, self._done
            tasks = self._tasks
            for event in events:
                if not self.instance_id:
                    self.workflow = self.workflow or event.workflow
                    self.instance_id = event.instance_id
                kind = type(event)
                if kind is ev.TaskFinished:
                    info = tasks.get(event.task_id)  # type: ignore[attr-defined]
                    if info is not None:
                        done(info, event, restored=False)  # type: ignore[arg-type]
                        changed += 1
                        continue
                elif kind is ev.TaskStarted:
                    info = tasks.get(event.task_id)  # type: ignore[attr-defined]
                    if info is not None:
                        started(info, event)  # type: ignore[arg-type]
                        changed += 1
                        continue
                if fold(event):
                    changed += 1
                tasks = self._tasks  # a RunStarted may have made them anew
            self.version += changed
            if self._finished:
                self._note_durations()
        return changed

    def _apply(self, e: ev.RunEvent) -> bool:
        kind = type(e)
        if kind is ev.TaskStarted or kind is ev.TaskFinished:
            # most events of a wide run: straight to a task of the graph (not an item, no other kind to try)
            task = cast("ev.TaskStarted | ev.TaskFinished", e)
            known = self._tasks.get(task.task_id)
            if known is not None:
                if isinstance(task, ev.TaskStarted):
                    self._started(known, task)
                else:
                    self._done(known, task, restored=False)
                return True
        if isinstance(e, ev.RunStarted):
            self.workflow, self.instance_id = e.workflow, e.instance_id
            kinds = e.kinds or {k: i.kind for k, i in self._tasks.items()}
            if not self._is_fresh(e.tasks, kinds):  # a fresh model already is what _reset makes
                self._reset(tuple(e.tasks), kinds)
            for tid, what in e.plan.items():
                if what == "stale" and tid in self._tasks:
                    self._set(self._tasks[tid], "stale")
            for tid, why in e.reasons.items():
                if tid in self._tasks:
                    self._tasks[tid].why = why
            if e.edges and tuple(e.edges) != self._edges:
                self._set_edges(e.edges)
            if self._auto_history:
                self._load_history(resumed=e.resumed)
            self.run_state, self.run_error, self.started_at = "running", None, e.time
            return True
        if isinstance(e, ev.RunFinished):
            self.run_state, self.run_error = e.state, e.error
            self.finished_at, self.run_duration = e.time, e.duration
            # A stopped run leaves nothing in flight; a parked one (paused, waiting for a
            # signal) keeps its waiting tasks waiting, since a resume continues them.
            in_flight = ACTIVE_STATES if e.state not in _PARKED_RUN_STATES else {"running", "retrying"}
            for info in self._tasks.values():
                if info.state in in_flight:
                    self._set(info, "cancelled")
                    if not info.stdout and not info.stderr:  # what it printed before it was cut short
                        info.stdout, info.stderr = info.live_stdout, info.live_stderr
            return True
        task_id = getattr(e, "task_id", None)
        if task_id is None:
            return False
        owner = self._item_owner(task_id)
        if owner is not None:
            return self._apply_item(self._tasks[owner], e)
        info = self._info(task_id)
        if isinstance(e, ev.TaskDisplay):
            return self._display(info, e)
        if isinstance(e, ev.TaskOutput):
            return self._output(info, e)
        if isinstance(e, ev.TaskProgress):
            self._progress(info, e.time, e.done, e.total, e.note, stored=e.stored)
            return True
        if isinstance(e, ev.TaskStarted):
            self._started(info, e)
        elif isinstance(e, ev.TaskFinished | ev.TaskRestored):
            self._done(info, e, restored=isinstance(e, ev.TaskRestored))
        elif isinstance(e, ev.TaskRetrying):
            self._set(info, "retrying")
            info.attempts, info.error = e.attempt, e.error
        elif isinstance(e, ev.TaskFailed):
            self._set(info, "failed")
            info.attempts, info.error, info.traceback = e.attempt, e.error, _clip(e.traceback)
            info.stdout, info.stderr = _clip(e.stdout), _clip(e.stderr)
            if not info.stdout and not info.stderr:
                info.stdout, info.stderr = info.live_stdout, info.live_stderr
            if e.displays:
                info.displays = _stored_displays(e.displays)
            if info.started_at is not None:
                info.duration = max(0.0, e.time - info.started_at)
        elif isinstance(e, ev.TaskSkipped):
            self._set(info, "skipped")
            info.reason = e.reason
        elif isinstance(e, ev.TaskWaiting):
            self._set(info, "awaiting_signal" if e.signal else "waiting")
            info.signal, info.wake_at = e.signal, e.wake_at
        elif isinstance(e, ev.MapProgress):
            info.map_done, info.map_total, info.map_failed = e.done, e.total, e.failed
            if info.state in ("pending", "stale"):
                self._set(info, "running")
            note = info.progress[2] if info.progress is not None and not info.progress_stored else ""
            self._progress(info, e.time, e.done, e.total, note)
        else:
            return False
        return True

    def _output(self, info: TaskInfo, e: ev.TaskOutput, prefix: str = "") -> bool:
        if e.cut:
            marker = f"... ({e.cut} characters printed too fast to show; the checkpoint keeps them)\n"
            if e.stdout:
                info.live_stdout = _append(info.live_stdout, marker)
            if e.stderr:
                info.live_stderr = _append(info.live_stderr, marker)
        if e.stdout:
            info.live_stdout = _append(info.live_stdout, e.stdout)
        if e.stderr:
            info.live_stderr = _append(info.live_stderr, e.stderr)
        line = _last_line(e.stdout) or _last_line(e.stderr)
        if line:
            info.last_line = prefix + line
        return True

    def _display(self, info: TaskInfo, e: ev.TaskDisplay, item: str | None = None) -> bool:
        """A running attempt (or map item) displayed something, updated or cleared it."""
        if e.clear:
            info.displays = [d for d in info.displays if d.get("item") != item] if item else []
            return True
        if e.update and e.display_id is not None:
            for d in reversed(info.displays):
                if d.get("id") == e.display_id and d.get("item") == item:
                    d["data"], d["metadata"] = dict(e.bundle), dict(e.metadata)
                    return True
            return False
        info.displays.append({"data": dict(e.bundle), "metadata": dict(e.metadata), "id": e.display_id, "item": item})
        if len(info.displays) > MAX_DISPLAYS:
            del info.displays[0]
        return True

    def _progress(
        self, info: TaskInfo, at: float, done: float, total: float | None, note: str, *, stored: bool = False
    ) -> None:
        info.progress, info.progress_stored = (done, total, note), stored
        if stored:
            return
        last = info.rate_last
        if info.rate_first is None or last is None or done < last[1]:  # first report, or a reset bar
            info.rate_first = (at, done)
        info.rate_last = (at, done)

    def _started(self, info: TaskInfo, e: ev.TaskStarted) -> None:
        if info.state != "running":  # _set, inlined: this runs for every task of a run
            counts = self._counts
            counts[info.state] -= 1
            counts["running"] += 1
            info.state = "running"
        info.attempts, info.worker, info.started_at = e.attempt, e.worker, e.time
        info.error = info.traceback = ""
        info.stdout = info.stderr = info.live_stdout = info.live_stderr = ""
        if info.displays:
            info.displays = []  # a new attempt shows its own
        info.rate_first = info.rate_last = None
        info.progress_stored = info.progress is not None  # "was at ..." until it reports again

    def _done(self, info: TaskInfo, e: ev.TaskFinished | ev.TaskRestored, *, restored: bool) -> None:
        state = "restored" if restored else "done"
        if info.state != state:  # _set, inlined: this runs for every task of a run
            counts = self._counts
            counts[info.state] -= 1
            counts[state] += 1
            info.state = state
        info.attempts, info.duration, info.worker = e.attempt, e.duration, e.worker
        preview, stdout, stderr = e.preview, e.stdout, e.stderr
        # _clip only what could need it: a short text without a carriage return is its own clip
        info.preview = (preview if len(preview) < 200 and "\r" not in preview else _clip(preview)) if preview else ""
        info.stdout = _clip(stdout) if stdout else ""
        info.stderr = _clip(stderr) if stderr else ""
        info.live_stdout = info.live_stderr = ""
        info.progress_stored = False
        bundle = e.preview_bundle
        if bundle:
            info.preview_bundle = _bundle_of(bundle)
        elif info.preview_bundle:
            info.preview_bundle = {}
        if e.displays:  # else: what came live (a map's items) stays
            info.displays = _stored_displays(e.displays)
        if not restored:
            self._finished[e.task_id] = e.duration

    def _item_owner(self, task_id: str) -> str | None:
        """The map/loop node of an item id (``square[3]``, ``newton#2``), else None."""
        if task_id in self._tasks:
            return None
        step = ev.item_step(task_id)
        return step if step is not None and step in self._tasks else None

    def _apply_item(self, info: TaskInfo, e: ev.RunEvent) -> bool:
        """One map item's or loop iteration's event, folded into its node: items are
        never rows of their own (a 10,000-item map is one node with a counter). Their
        output goes to the node's output, their progress to its note, their displays
        to its displays (each naming its item)."""
        if isinstance(e, ev.TaskDisplay):
            return self._display(info, e, item=e.task_id)
        if isinstance(e, ev.TaskOutput):
            return self._output(info, e, prefix=f"{e.task_id}: ")
        if isinstance(e, ev.TaskProgress):
            if e.stored:
                return False
            item = TaskInfo(progress=(e.done, e.total, e.note))
            note = f"{e.task_id} {item.progress_text()}"
            info.last_line = note
            if info.progress is not None and info.kind == "map":
                info.progress = (info.progress[0], info.progress[1], note)
            elif info.progress is None:
                info.progress = (0.0, None, note) if info.kind == "map" else None
            return True
        if isinstance(e, ev.TaskStarted):
            if info.state not in ("pending", "stale", "retrying"):
                return False
            self._set(info, "running")
            info.started_at = info.started_at or e.time
        elif isinstance(e, ev.TaskRetrying):
            self._set(info, "retrying")
            info.error = e.error
        elif isinstance(e, ev.TaskFailed):
            self._set(info, "failed")
            info.attempts, info.error, info.traceback = e.attempt, e.error, _clip(e.traceback)
            info.stdout, info.stderr = _clip(e.stdout), _clip(e.stderr)
        else:
            return False
        return True

    # -- reading ------------------------------------------------------------------------
    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def state(self, task_id: str) -> str:
        return self._tasks[task_id].state

    def info(self, task_id: str) -> TaskInfo:
        return self._tasks[task_id]

    def states(self) -> dict[str, str]:
        """``{task_id: state}`` in task order: what the widget paints."""
        with self._lock:
            return {tid: info.state for tid, info in self._tasks.items()}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {s: n for s, n in self._counts.items() if n}

    @property
    def total(self) -> int:
        return len(self._tasks)

    @property
    def completed(self) -> int:
        """Tasks that need no more work: done, restored or skipped."""
        return sum(self._counts[s] for s in COMPLETE_STATES)

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds since RunStarted; frozen at the run's duration once it finished."""
        if self.started_at is None:
            return None
        if self.run_duration is not None and self.run_state != "running":
            return self.run_duration
        return max(0.0, (self._clock() if now is None else now) - self.started_at)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the run ends, or None when there is nothing honest to say.

        Each unfinished task's remaining time (:meth:`task_remaining`) comes from its
        own progress rate if it reports progress, else from its expected duration
        (earlier runs, :meth:`set_history`) minus the time it has run; the run's ETA is
        the longest chain of remaining times through the graph (branches overlap). One
        task with nothing to go on — no progress and no history, an overrun, a signal
        nobody sent, a failure — makes the whole ETA None: unknown, not a guess. None
        too once the run is over.

        >>> from nbflow.run import events as ev
        >>> m = ProgressModel(["a", "b"], edges=[("a", "b")], history={"a": 4.0, "b": 6.0})
        >>> _ = m.apply(ev.RunStarted(workflow="w", instance_id="i", tasks=("a", "b"), time=0.0))
        >>> _ = m.apply(ev.TaskStarted(workflow="w", instance_id="i", task_id="a", time=0.0))
        >>> m.eta(now=1.0)                    # 3 s left of a, then b's 6 s
        9.0
        >>> _ = m.apply(ev.TaskProgress(workflow="w", instance_id="i", task_id="a", done=1, total=4, time=1.0))
        >>> _ = m.apply(ev.TaskProgress(workflow="w", instance_id="i", task_id="a", done=2, total=4, time=3.0))
        >>> m.eta(now=3.0)                    # a reports 1 step per 2 s: 4 s left, then b
        10.0
        """
        return self._eta(now)[0]

    def eta_floor(self, now: float | None = None) -> float | None:
        """Seconds the run needs at least: the longest chain through the graph of the
        remaining times that are known (see :meth:`eta`), an unknown one counting 0.
        Always true, so the progress bar can say it while the ETA itself is unknown (a
        task's "about 59 s left" under a bar reading only "ETA unknown" looked like a
        contradiction). None once the run is over, and when nothing is known.

        >>> from nbflow.run import events as ev
        >>> m = ProgressModel(["a", "b"], edges=[("a", "b")], history={"a": 4.0})
        >>> _ = m.apply(ev.RunStarted(workflow="w", instance_id="i", tasks=("a", "b"), time=0.0))
        >>> _ = m.apply(ev.TaskStarted(workflow="w", instance_id="i", task_id="a", time=0.0))
        >>> m.eta(now=1.0) is None, m.eta_floor(now=1.0)    # b has no history
        (True, 3.0)
        """
        return self._eta(now)[1]

    def _eta(self, now: float | None) -> tuple[float | None, float | None]:
        """(:meth:`eta`, :meth:`eta_floor`) in one pass over the graph."""
        with self._lock:
            if self.run_state != "running":
                return None, None
            now = self._clock() if now is None else now
            finish: dict[str, float] = {}  # when each task ends; one absent ends at 0
            longest = 0.0
            unknown = False
            deps = self._deps
            complete = COMPLETE_STATES
            for tid, info in self._tasks.items():
                if info.state in complete:  # nothing left: it ends when its inputs do
                    if finish:  # (while nothing ends after 0, most of a wide run is skipped here)
                        start = -1.0
                        for dep in deps.get(tid, ()):
                            at = finish.get(dep)
                            if at is not None and at > start:
                                start = at
                        if start >= 0.0:
                            finish[tid] = start
                    continue
                state = info.state
                # _remaining, inlined for a task not started yet (most of a wide graph)
                left = info.expected if state == "pending" or state == "stale" else self._remaining(info, now)
                if left is None:
                    unknown, left = True, 0.0
                    if not finish:  # it would end at 0, as an absent task does
                        continue
                start = 0.0
                for dep in deps.get(tid, ()):
                    start = max(start, finish.get(dep, 0.0))
                end = finish[tid] = start + left
                longest = max(longest, end)
            if unknown:
                return None, (longest or None)
            return longest, longest

    def task_remaining(self, task_id: str, now: float | None = None) -> float | None:
        """Seconds ``task_id`` still needs by itself (see :meth:`eta`), or None."""
        with self._lock:
            return self._remaining(self._tasks[task_id], self._clock() if now is None else now)

    def _remaining(self, info: TaskInfo, now: float) -> float | None:
        state = info.state
        if state in COMPLETE_STATES:
            return 0.0
        if state == "waiting":
            return max(0.0, info.wake_at - now) if info.wake_at is not None else None
        if state in ("running", "retrying"):
            by_rate = _by_rate(info, now)
            if by_rate is not None:
                return by_rate
            if info.expected is None or info.started_at is None:
                return info.expected if info.started_at is None else None
            left = info.expected - (now - info.started_at)
            return left if left >= 0 else None  # it overran its history: say nothing rather than 0
        if state in ("pending", "stale"):
            return info.expected
        return None  # failed, cancelled, awaiting a signal: the run will not end by itself

    # -- history --------------------------------------------------------------------------
    def _load_history(self, *, resumed: bool) -> None:
        """Expected durations from the store of this instance's run (``store_of``).

        A new instance's own records are left out: they are only those this run writes,
        noted as its tasks finish, and reading them back (up to the whole run, while it
        goes) would cost the engine's time for nothing. A resumed one's earlier run counts."""
        store = store_of(self.instance_id)
        self._history_store = store
        if store is None:
            return
        skip = () if resumed else (self.instance_id,)
        durations = HISTORY.durations(store, self.workflow, skip=skip)
        if durations:
            self._history = durations
            for tid, info in self._tasks.items():
                info.expected = durations.get(tid)

    def _note_durations(self) -> None:
        """Hand the durations of tasks that finished since the last call to the history."""
        finished, self._finished = self._finished, {}
        if self._history_store is not None:
            HISTORY.note_all(self._history_store, self.workflow, self.instance_id, finished)

    def _headline(self) -> str:
        counts = self._counts
        text = f"{self.completed}/{self.total} done"
        if counts["restored"]:
            text += f" ({counts['restored']} restored)"
        return text + (f", {counts['failed']} failed" if counts["failed"] else "")

    def progress(self, now: float | None = None) -> dict[str, Any]:
        """The progress bar's data (JSON-ready): ``text`` is what the bar says, ``base``
        the same without timings (the front end ticks elapsed/ETA between updates). An
        unknown ETA reads "ETA at least <eta_floor>" when part of what is left is known."""
        with self._lock:
            now = self._clock() if now is None else now
            (eta, floor), elapsed, base = self._eta(now), self.elapsed(now), self._headline()
            unknown = eta is None and self.run_state == "running" and self.completed < self.total
            timing = "" if elapsed is None else f" · elapsed {format_seconds(elapsed)}"
            if eta is not None:
                timing += f" · ETA {format_seconds(eta)}"
            elif unknown:
                timing += f" · ETA at least {format_seconds(floor)}" if floor else " · ETA unknown"
            done, total = self.completed, self.total
            return {
                "done": done,
                "total": total,
                "fraction": done / total if total else 0.0,
                "counts": self.counts(),
                "run_state": self.run_state,
                "error": self.run_error,
                "elapsed": elapsed,
                "eta": eta,
                "eta_unknown": unknown,
                "eta_floor": floor if unknown else None,
                "base": base,
                "text": base + timing,
            }

    def summary(self, *, max_tasks: int = 50) -> str:
        """Deterministic one-line text (no timings): the saved-notebook fallback.

        Example: ``etl: 5/5 done (2 restored) | load restored | clean done``; a failed or
        stopped run says so (``etl: 2/5 done, 1 failed [failed] | ...``).
        """
        with self._lock:
            head = f"{self.workflow or 'workflow'}: {self._headline()}"
            if self.run_state not in ("idle", "running", "completed"):
                head += f" [{self.run_state}]"
            parts = [head]
            items = list(self._tasks.items())
            for tid, info in items[:max_tasks]:
                label = info.state.replace("_", " ")
                if info.map_total is not None:
                    label += f" {info.map_done or 0}/{info.map_total}"
                parts.append(f"{tid} {label}")
            if len(items) > max_tasks:
                parts.append(f"... {len(items) - max_tasks} more")
            return " | ".join(parts)


def _by_rate(info: TaskInfo, now: float) -> float | None:
    """Remaining seconds from a task's own progress rate (two reports at least), or None.
    A loop's total is only its iteration limit: no rate from that."""
    if info.kind == "loop" or info.progress is None or not info.progress[1]:
        return None
    first, last = info.rate_first, info.rate_last
    if first is None or last is None or last[0] <= first[0] or last[1] <= first[1]:
        return None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return max(0.0, (info.progress[1] - last[1]) / rate - max(0.0, now - last[0]))


class DurationHistory:
    """How long each task of a workflow took in earlier runs, per store (a process cache).

    A store's records carry every finished task's ``started_at``/``finished_at``; the
    first time a workflow's history is asked for, the records of its most recent
    instances (at most :attr:`MAX_INSTANCES`) are read once, and runs in this process add
    their tasks as they finish. ``durations`` gives the median per task id.

    >>> from nbflow.store.memory import InMemoryBackend
    >>> h, store = DurationHistory(), InMemoryBackend()
    >>> h.durations(store, "etl")
    {}
    >>> for instance, seconds in (("i-1", 2.0), ("i-2", 4.0), ("i-3", 30.0)):
    ...     h.note(store, "etl", instance, "load", seconds)
    >>> h.durations(store, "etl")
    {'load': 4.0}
    """

    MAX_INSTANCES = 20

    def __init__(self) -> None:
        self._runs: dict[tuple[Any, str], dict[str, dict[str, float]]] = {}  # instance -> task -> seconds
        self._lock = threading.Lock()

    @staticmethod
    def _key(store: Any, workflow: str) -> tuple[Any, str]:
        directory = getattr(store, "directory", None)
        return ((type(store).__name__, str(directory)) if directory is not None else id(store)), workflow

    def durations(self, store: Any, workflow: str, *, skip: Iterable[str] = ()) -> dict[str, float]:
        """``{task id: median seconds}`` over the instances of ``workflow`` in ``store``
        (the first read of a store leaves the instances in ``skip`` out)."""
        key = self._key(store, workflow)
        with self._lock:
            runs = self._runs.get(key)
        if runs is None:
            runs = _read_durations(store, workflow, self.MAX_INSTANCES, frozenset(skip))
            with self._lock:
                runs = self._runs.setdefault(key, runs)
        per_task: dict[str, list[float]] = {}
        with self._lock:
            for by_task in runs.values():
                for tid, seconds in by_task.items():
                    per_task.setdefault(tid, []).append(seconds)
        return {tid: statistics.median(samples) for tid, samples in per_task.items()}

    def note(self, store: Any, workflow: str, instance_id: str, task_id: str, duration: float) -> None:
        """Add (or replace) one instance's duration of ``task_id``."""
        self.note_all(store, workflow, instance_id, {task_id: duration})

    def note_all(self, store: Any, workflow: str, instance_id: str, durations: Mapping[str, float]) -> None:
        """:meth:`note` for several tasks of one instance at once. Kept per instance (the
        newest :attr:`MAX_INSTANCES`), so a run's last batch — every task of a wide graph,
        noted as the run ends — is one dict update, not a lookup per task."""
        if not durations:
            return
        key = self._key(store, workflow)
        clean = {tid: max(0.0, float(seconds)) for tid, seconds in durations.items()}
        with self._lock:
            runs = self._runs.setdefault(key, {})
            mine = runs.pop(instance_id, None)  # re-inserted: the newest
            if mine is None:
                mine = clean
            else:
                mine.update(clean)
            runs[instance_id] = mine
            while len(runs) > self.MAX_INSTANCES:
                del runs[next(iter(runs))]

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()


def _read_durations(
    store: Any, workflow: str, limit: int, skip: frozenset[str] = frozenset()
) -> dict[str, dict[str, float]]:
    """``{instance: {task id: seconds}}`` of the newest ``limit`` instances of ``workflow``,
    oldest first (nothing on errors: history is a nicety, a damaged or closed store must
    not break a view)."""
    out: dict[str, dict[str, float]] = {}
    try:
        rows = sorted(
            (row for row in store.list_summaries(workflow=workflow) if row.instance_id not in skip),
            key=lambda row: row.updated_at,
        )
        for row in rows[-limit:]:
            for rid, record in store.get_records(row.instance_id).items():
                if (
                    rid == INPUT_ID
                    or parse_item_id(rid) is not None
                    or parse_iteration_id(rid) is not None
                    or parse_state_id(rid) is not None
                    or "#" in rid
                    or "[" in rid
                    or record.finished_at <= 0
                    or record.started_at <= 0
                ):
                    continue
                out.setdefault(row.instance_id, {})[rid] = max(0.0, record.finished_at - record.started_at)
    except Exception:  # noqa: BLE001 - see the docstring
        return out
    return out


#: The process-wide history the widget reads (one store read per workflow and process).
HISTORY = DurationHistory()


class Coalescer:
    """Decides when a new snapshot may be pushed: at most one per ``min_interval``.

    Leading edge: the first change after a quiet period goes out at once. Trailing edge:
    :meth:`delay` says how long to wait before the next push is allowed, so the caller
    can schedule one timer instead of pushing per event. Thread-safe.

    >>> now = [0.0]
    >>> c = Coalescer(0.2, clock=lambda: now[0])
    >>> c.delay(version=1), c.mark(1)
    (0.0, None)
    >>> c.delay(version=2) > 0    # too soon after the last push
    True
    >>> now[0] = 0.25
    >>> c.delay(version=2)
    0.0
    >>> c.delay(version=1) is None  # nothing new since the last push
    True
    """

    def __init__(
        self,
        min_interval: float = 0.2,
        *,
        budget: float = 0.02,
        max_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval = max(0.0, float(min_interval))
        self.max_interval = max(self.min_interval, float(max_interval))
        self.budget = budget
        self.interval = self.min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self.pushed_version = -1
        self.last_push = float("-inf")
        self.pushes = 0
        self._last_cost = 0.0  # seconds the last push took (see spent)
        self._owed = 0.0  # seconds of work for the next push done since (see owe)

    def delay(self, version: int) -> float | None:
        """None: nothing new to push; else seconds to wait before pushing ``version``."""
        with self._lock:
            if version == self.pushed_version:
                return None
            return self._wait_locked()

    def wait(self) -> float:
        """Seconds until a push is allowed (for news the model has not folded yet)."""
        with self._lock:
            return self._wait_locked()

    def _wait_locked(self) -> float:
        # the last push and the work owed since (see owe) are paid for at the budget's rate
        spacing = (self._last_cost + self._owed) / self.budget if self.budget > 0 else 0.0
        spacing = min(self.max_interval, max(self.interval, spacing))
        return max(0.0, self.last_push + spacing - self._clock())

    def owe(self, seconds: float) -> None:
        """Record work done for the next push ahead of it (folding events into the model):
        it counts towards the budget before that push, not only after it, so the first
        push of a busy run is not due before the run can pay for it.

        >>> now = [0.0]
        >>> c = Coalescer(0.2, budget=0.01, clock=lambda: now[0])
        >>> c.mark(1); c.delay(2)
        0.2
        >>> c.owe(0.005); c.delay(2)    # 5 ms of folding: 0.5 s of run at 1%
        0.5
        >>> c.owe(1.0); c.delay(2)      # never more than max_interval
        2.0
        """
        with self._lock:
            self._owed += seconds

    def spent(self, seconds: float) -> None:
        """Record how long the last push took (with the folding owed since the one
        before, which it ends). Pushes may use at most ``budget`` of the run's time (they
        hold the GIL the tasks need), so a slow push — a graph of thousands of tasks —
        spaces the next ones out, up to ``max_interval``.

        >>> c = Coalescer(0.2, budget=0.02)
        >>> c.spent(0.001); c.interval
        0.2
        >>> c.spent(0.01); c.interval
        0.5
        >>> c.spent(1.0); c.interval
        2.0
        """
        with self._lock:
            wanted = seconds / self.budget if self.budget > 0 else 0.0
            self.interval = min(self.max_interval, max(self.min_interval, wanted))
            self._last_cost, self._owed = seconds, 0.0

    def mark(self, version: int) -> None:
        """Record that ``version`` was pushed now."""
        with self._lock:
            self.pushed_version, self.last_push = version, self._clock()
            self.pushes += 1
