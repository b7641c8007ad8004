"""WorkflowWidget: the live DAG, progress bar, task table and task detail of a run.

An anywidget (one ipywidgets ``DOMWidget``), so it renders the same in JupyterLab 4,
Notebook 7 and VS Code. The DAG is laid out once (``render.layout``) and shipped as SVG
*markup* into the widget's own DOM — not as an ``image/svg+xml`` output, which Lab shows
as an ``<img>`` whose nodes cannot be painted, clicked or tested. States are painted by
the front end (``static/widget.js``) as ``nbflow-state-<state>`` classes on the nodes.

Threading: events arrive on the engine's thread and are folded into a pure
:class:`~nbflow.jupyter.progress.ProgressModel` (cheap). The synced traits' values are
made in one place, :meth:`WorkflowWidget._snapshot`: for the comm's opening message, then
by :meth:`WorkflowWidget._push`, which runs from a throttling timer (at most once per
``min_interval``, and within ``PUSH_BUDGET`` of the run's time), from :meth:`flush` and
when the user selects a task — so a 10,000-task run sends a handful of comm messages
per second, not 10,000. The table's rows go as JSON text (see ``_json_text``).

While tasks run, ``live`` carries each running task's last line, progress and the tail
of what it printed, so the front end can show a running task's detail at once — even
when a blocking cell keeps the kernel from answering a click. Creating the widget keeps
the cell reported busy while it runs (``kernel_busy``: JupyterLab's widget subshells
would otherwise make the status bar read "Idle").

Displayed (:meth:`WorkflowWidget.display`), the widget is two outputs: the live view and
its static view (``static_view``), plain HTML that a notebook without a kernel, nbconvert
and a headless run show instead of JupyterLab's "model not found". The front end watches
the kernel too: once it restarted or died, the view says the run was interrupted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import traitlets as t

from nbflow.core.errors import MissingDependencyError
from nbflow.jupyter import kernel_busy, render
from nbflow.jupyter.progress import ACTIVE_STATES, Coalescer, ProgressModel, format_seconds
from nbflow.jupyter.static_view import error_line, static_view_bundle, user_frames
from nbflow.jupyter.ticker import Ticker

try:
    import anywidget
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("anywidget", "The nbflow widget", 'pip install "nbflow[jupyter]"') from exc

if TYPE_CHECKING:  # pragma: no cover
    from nbflow.core.graph import WorkflowDefinition
    from nbflow.run.events import EventBus, RunEvent

__all__ = [
    "FOLD_INTERVAL", "LIVE_TAIL", "MAX_LIVE", "MAX_ROWS", "PUSH_BUDGET", "STATIC_BYTES_PER_SECOND", "STATIC_INTERVAL",
    "WidgetControls", "WorkflowWidget",
]  # fmt: skip

STATIC = Path(__file__).parent / "static"
#: The task table shows at most this many rows (the most interesting first).
MAX_ROWS = 500
#: ``live`` covers at most this many running tasks, with this many characters of each stream.
MAX_LIVE = 50
LIVE_TAIL = 4_000
#: Share of a run's time that pushes (folding events, snapshots, comm messages) may take:
#: they hold the GIL the engine needs, so a big graph's pushes are spaced out (a 1,000-task
#: graph's about once a second; a small one's still every ``min_interval``).
PUSH_BUDGET = 0.005
#: While no push is due, the events that came are folded into the model this often
#: (seconds): on the widget's thread during the run, not all at once in the final flush,
#: which the run's caller waits for (a 1,002-task fork's last 0.2 s of events took ~3 ms there).
FOLD_INTERVAL = 0.05
#: While a run goes, the saved static view is refreshed at most this often (seconds), so a
#: notebook saved after the kernel died still shows where the run was.
STATIC_INTERVAL = 5.0
#: ... and a big view (a 500-task graph is over 1 MB of HTML) less often: at most this many
#: bytes per second on average go to the browser for it.
STATIC_BYTES_PER_SECOND = 100_000
# Table order when there are more tasks than rows: what needs attention comes first.
_ROW_PRIORITY = {
    "failed": 0,
    "retrying": 1,
    "running": 2,
    "awaiting_signal": 3,
    "waiting": 4,
    "cancelled": 5,
    "stale": 6,
}


def _json_text(value: Any, _widget: Any) -> str:
    """A synced value sent as one JSON string (``widget.js`` parses it). Before each send
    ipywidgets walks every list and dict of a value in Python looking for binary buffers
    (~2 ms for the 500 rows of the table, every push); a string it passes over, and the
    encoder that makes it is C."""
    return json.dumps(value, separators=(",", ":"))


def _now(info: Any) -> str:
    """A table row's "now" column: the task's progress and (while it runs) its last line."""
    text = info.progress_text()
    if info.state in ACTIVE_STATES and info.last_line:
        text = f"{text} · {info.last_line}" if text else info.last_line
    return str(text)


class WidgetControls(Protocol):
    """What the widget's buttons call; given only for ``--background`` runs (a blocking
    cell cannot receive clicks while it runs)."""

    def cancel(self) -> None: ...
    def send_signal(self, name: str, payload: Any) -> None: ...
    def rerun_from(self, task_id: str) -> None: ...


class WorkflowWidget(anywidget.AnyWidget):
    """Live view of one workflow instance; subscribe it with :meth:`listen`.

    ``plan`` (from ``runner.plan(wf, instance_id)``) paints stale tasks before the run
    starts, and ``reasons`` says why each is stale (the run keeps them). ``load_code``
    gives the line that loads a finished task's output (``%workflow result etl clean``),
    shown in its detail pane. ``min_interval`` bounds how often the browser is updated.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    workflow = t.Unicode("").tag(sync=True)
    instance_id = t.Unicode("").tag(sync=True)
    svg = t.Unicode("").tag(sync=True)  # laid out once; never re-sent
    svg_note = t.Unicode("").tag(sync=True)  # why there is no graph, if there is none
    # [[task id, kind], ...] in topological order; sent as JSON text (see _json_text)
    tasks: t.List[list[Any]] = t.List().tag(sync=True, to_json=_json_text)
    states = t.Dict().tag(sync=True)  # {task id: state}
    progress = t.Dict().tag(sync=True)  # done, total, counts, elapsed, eta, text, ...
    # table rows: [task, state, attempts, duration, items, expected duration, now (progress · last line)];
    # sent as JSON text (see _json_text)
    rows: t.List[list[Any]] = t.List().tag(sync=True, to_json=_json_text)
    live = t.Dict().tag(sync=True)  # running tasks: {task: {line, progress, text, stdout, stderr, ...}}
    selected = t.Unicode("").tag(sync=True)  # set by the front end (node or row click)
    detail = t.Dict().tag(sync=True)  # the selected task: stdout, stderr, traceback, ...
    controls_enabled = t.Bool(False).tag(sync=True)
    message = t.Unicode("").tag(sync=True)  # outcome of the last button action

    def __init__(
        self,
        wf: WorkflowDefinition,
        *,
        instance_id: str = "",
        plan: Mapping[str, str] | None = None,
        controls: WidgetControls | None = None,
        min_interval: float = 0.2,
        reasons: Mapping[str, str] | None = None,
        load_code: Callable[[str], str] | None = None,
    ) -> None:
        kernel_busy.hold_current_cell()  # before the comm opens (see kernel_busy)
        lay = render.layout(wf)
        if lay is None:
            note = (
                f"Graph not drawn: {len(wf.nodes)} tasks is more than {render.MAX_NODES}."
                if len(wf.nodes) > render.MAX_NODES
                else "Graph not drawn: graphviz is not installed (apt-get install graphviz, or conda install graphviz)."
            )
        else:
            note = ""
        self._wf = wf
        self._layout = lay
        self._model = ProgressModel(
            wf.task_ids,
            workflow=wf.name,
            instance_id=instance_id,
            kinds={n.id: n.kind for n in wf.nodes},
            plan=plan,
            reasons=reasons,
            edges=wf.edges,
            history="auto",  # expected durations from earlier runs in the run's store
        )
        self._load_code = load_code
        self._controls = controls
        self._coalescer = Coalescer(min_interval, budget=PUSH_BUDGET)
        self._push_lock = threading.RLock()
        self._timer_lock = threading.Lock()
        self._armed = False  # a push or fold is scheduled on the ticker
        self._ticker: Ticker | None = None  # its thread lives while someone listens
        self._unsubscribers: list[Callable[[], None]] = []
        # Events wait here until a push folds them: the engine thread only appends (the
        # engine loop is the bottleneck of a wide run, so nothing else happens there).
        self._inbox: deque[RunEvent] = deque()
        self._folding = 0.0  # seconds spent folding events since the last push (part of its cost)
        self._pending_message = ""
        self._display_handle: Any = None
        self._static_handle: Any = None
        self._static_version = -1
        self._static_at = 0.0
        self._static_wait = STATIC_INTERVAL
        # The first snapshot goes out with the comm's opening message, not as an update
        # right after it: one message, and one pass of ipywidgets over the state, not two.
        # Its cost counts as a push's (cpu_seconds).
        cpu, started = time.thread_time(), time.perf_counter()
        version = self._model.version
        first = self._snapshot(selected="")
        self._cpu = time.thread_time() - cpu  # CPU seconds of folds and pushes, on whichever thread ran them
        first_cost = time.perf_counter() - started
        super().__init__(
            workflow=wf.name,
            svg=lay.svg if lay is not None else "",
            svg_note=note,
            tasks=[[n.id, n.kind] for n in wf.nodes],
            **first,
        )
        self._coalescer.mark(version)
        self._coalescer.spent(first_cost)
        self.on_msg(self._on_front_end_message)
        self.observe(self._on_selected, names=["selected"])

    # -- public contract ------------------------------------------------------------------
    @property
    def model(self) -> ProgressModel:
        """The pure progress model behind the view (read it, don't feed it directly)."""
        self._drain()
        return self._model

    def listen(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe to a runner's events; returns the function that unsubscribes."""
        with self._timer_lock:
            if self._ticker is None:
                # started here, on the caller's thread, not by the first event on the engine's
                self._ticker = Ticker(self._on_timer, name=f"nbflow-widget-{self.instance_id}")
                self._ticker.start()
        unsubscribe_bus = bus.subscribe(self._on_event)

        def unsubscribe() -> None:
            unsubscribe_bus()
            if unsubscribe in self._unsubscribers:
                self._unsubscribers.remove(unsubscribe)
            if not self._unsubscribers:
                self._stop_ticker()

        self._unsubscribers.append(unsubscribe)
        return unsubscribe

    def set_controls(self, controls: WidgetControls | None) -> None:
        """Attach the cancel/signal/re-run buttons (a background run keeps them after it ends, so
        re-run-from works), or detach them with None."""
        self._controls = controls
        self._push(force=True)

    def set_plan(self, plan: Mapping[str, str], reasons: Mapping[str, str] | None = None) -> None:
        """Show a resume's plan (stale tasks, and why) before it runs."""
        self._drain()
        self._model.set_plan(plan, reasons)
        self._push(force=True)

    def flush(self) -> None:
        """Push the latest state now (call it at run end: the throttle may hold the last
        events back). On the kernel's main thread it also refreshes the saved static view."""
        self._cancel_timer()
        self._push(force=True)
        if self._display_handle is not None and threading.current_thread() is threading.main_thread():
            self.update_display()

    @property
    def cpu_seconds(self) -> float:
        """CPU time this widget spent folding events and pushing snapshots (on its timer
        thread, in :meth:`flush`, on a click): its own cost to the run, which a 2-core
        machine's noise cannot blur the way it blurs the run's wall time."""
        return self._cpu

    def summary(self) -> str:
        """Deterministic plain text (no timings or addresses): ``etl: 5/5 done (2 restored) | ...``."""
        return self.model.summary()

    def display(self) -> None:
        """Show the live widget and, right under it, its static view (``static_view``).

        Two outputs, because JupyterLab renders a widget output with the widget's renderer
        whenever the notebook is trusted, and says "model not found" once the kernel is
        gone, whatever else the output carries. The static view is a plain ``text/html``
        output: hidden while the live widget is on the page (``widget.css``), it is what a
        saved notebook, nbconvert and a headless run show. Both have display ids, so
        :meth:`update_display` (called by :meth:`flush` on the main thread) brings the
        static view up to the run's final state. ``display(widget)`` ends up here too.
        """
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.display import display

        if not InteractiveShell.initialized():  # a script: IPython would print the raw bundles
            print(self.summary())
            return
        bundle = self._repr_mimebundle_()
        if bundle is None:  # pragma: no cover - anywidget returns None only without a view
            return
        data, metadata = bundle
        # What shows where the widget cannot (an untrusted notebook, a text export): never
        # refreshed, since re-sending a widget output makes the front end draw the live view
        # anew (a flash of "Loading widget...", the pane's state lost), so it says nothing
        # that the run could make untrue.
        data = {
            **data,
            "text/plain": f"{self.workflow}: live view of the run (it needs the kernel that ran it); its saved view follows",
        }
        self._display_handle = display(data, metadata=metadata, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        self._static_version = self._model.version
        self._static_at = time.monotonic()
        self._static_handle = display(self._static_bundle(), raw=True, display_id=True)  # type: ignore[no-untyped-call]

    def _ipython_display_(self) -> None:
        self.display()

    def update_display(self) -> None:
        """Re-send the static view of :meth:`display` with the run as it is now (the live
        output is left alone: it updates itself through the comm)."""
        self._update_static()

    def _update_static(self) -> None:
        handle = self._static_handle
        if handle is None:
            return
        self._static_version = self._model.version
        self._static_at = time.monotonic()
        bundle = self._static_bundle()
        self._static_wait = max(STATIC_INTERVAL, len(bundle["text/html"]) / STATIC_BYTES_PER_SECOND)
        handle.update(bundle, raw=True)

    def _static_bundle(self) -> dict[str, Any]:
        with self._push_lock:
            self._drain()
            return static_view_bundle(self._model, self._layout, self._detail)

    def static_html(self) -> str:
        """The saved view of the run as it is now (what a notebook without a kernel shows)."""
        return str(self._static_bundle()["text/html"])

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Live widget view plus a deterministic text/plain summary (the static view is a
        separate output, see :meth:`display`)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:  # pragma: no cover - anywidget returns None only without a view
            return None
        data, metadata = bundle
        data = {**data, "text/plain": self.model.summary()}
        return data, metadata

    def __repr__(self) -> str:
        model = self.model
        return (
            f"<WorkflowWidget {self.workflow!r} instance {self.instance_id!r}: "
            f"{model.completed}/{model.total} done, {model.run_state}>"
        )

    # -- engine side --------------------------------------------------------------------------
    def _on_event(self, event: RunEvent) -> None:
        """Runs on the engine thread: queue the event (a push folds it) and make sure a
        push is scheduled. Kept to an append: this is on the engine's hot path."""
        self._inbox.append(event)
        if not self._armed:  # unlocked peek; _schedule re-checks under the lock
            self._schedule()

    def _drain(self) -> None:
        """Fold the queued events into the model (on whichever thread reads it), as one
        batch: the model is locked once, not once per event. Under the push lock, so
        this is the queue's one reader while the engine appends: the ``len(inbox)``
        events there now can be taken without a check each."""
        with self._push_lock:
            inbox = self._inbox
            if not inbox:
                return
            take = inbox.popleft
            self._model.apply_all([take() for _ in range(len(inbox))])

    def _schedule(self) -> None:
        with self._timer_lock:
            ticker = self._ticker
            if self._armed or ticker is None:
                return
            if self._inbox:  # fold them before a push is due (see _on_timer)
                # A run's first events are folded at once: folding its RunStarted reads the
                # expected durations from the store's listing, which reads the records of a
                # run in progress, and the run writes hundreds a second (1,002-task fork:
                # ~0.5 ms at once, ~2.3 ms 50 ms later).
                starting = self._model.run_state != "running"  # unlocked peek: at worst one early fold
                delay: float | None = 0.0 if starting else min(self._coalescer.wait(), FOLD_INTERVAL)
            else:
                delay = self._coalescer.delay(self._model.version)
                if delay is not None:  # a push waits: fold what comes meanwhile (see _on_timer)
                    delay = min(delay, FOLD_INTERVAL)
            if delay is None:
                return
            self._armed = True
            ticker.arm(delay)

    def _on_timer(self) -> None:
        try:
            if self._coalescer.wait() > 0:
                # No push is due yet: fold what came meanwhile, here, while the engine
                # writes to its store (without the GIL), rather than all at once later,
                # in the push or in the final flush that the run waits for.
                self._fold()
            else:
                self._push()
        finally:
            with self._timer_lock:
                self._armed = False
        self._schedule()  # events that arrived during the push get a trailing update

    def _cancel_timer(self) -> None:
        with self._timer_lock:
            self._armed = False
            if self._ticker is not None:
                self._ticker.cancel()

    def close(self) -> None:
        """Close the widget's comm and end its timer thread."""
        if hasattr(self, "_timer_lock"):  # ipywidgets closes from __del__, even after a failed __init__
            self._stop_ticker()
        super().close()

    def _stop_ticker(self) -> None:
        """Nobody listens any more: the ticker's thread ends (a later listen starts one)."""
        with self._timer_lock:
            ticker, self._ticker = self._ticker, None
            self._armed = False
        if ticker is not None:
            ticker.close()

    def _fold(self) -> None:
        with self._push_lock:
            started, cpu = time.perf_counter(), time.thread_time()
            self._drain()
            seconds = time.perf_counter() - started
            self._folding += seconds
            self._coalescer.owe(seconds)  # the next push waits until the run can pay for it too
            self._cpu += time.thread_time() - cpu

    # -- where synced traits are assigned (besides the first snapshot, in __init__) ------------
    def _push(self, *, force: bool = False) -> None:
        with self._push_lock:
            cpu = time.thread_time()
            try:
                self._push_locked(force)
            finally:
                self._cpu += time.thread_time() - cpu

    def _push_locked(self, force: bool) -> None:
        """Fold what came, and assign the synced traits if a push is due (the push lock is held)."""
        started = time.perf_counter() - self._folding  # folding the events counts as the push's cost too
        self._folding = 0.0
        self._drain()
        version = self._model.version
        if not force and self._coalescer.delay(version) is None:
            return
        self._coalescer.mark(version)
        snapshot = self._snapshot(self.selected)
        with self.hold_sync():
            for name, value in snapshot.items():
                setattr(self, name, value)
            if self._pending_message:
                self.message, self._pending_message = self._pending_message, ""
        if (
            self._static_handle is not None
            and self._model.run_state == "running"
            and self._model.version != self._static_version
            and time.monotonic() - self._static_at >= max(STATIC_INTERVAL, self._static_wait)
        ):
            self._update_static()
        self._coalescer.spent(time.perf_counter() - started)

    def _snapshot(self, selected: str) -> dict[str, Any]:
        """The synced traits' values for the model as it is now."""
        model = self._model
        states = model.states()
        progress = model.progress()
        waiting = [tid for tid, state in states.items() if state == "awaiting_signal"]
        progress["signals"] = sorted({s for s in (model.info(tid).signal for tid in waiting) if s})
        return {
            "instance_id": model.instance_id or self.instance_id,
            "states": states,
            "progress": progress,
            "rows": self._rows(states),
            "live": self._live(states),
            "controls_enabled": self._controls is not None,
            "detail": self._detail(selected) if selected else {},
        }

    def _rows(self, states: Mapping[str, str]) -> list[list[Any]]:
        """The table: every task in graph order, or, past MAX_ROWS, what needs attention
        first (by _ROW_PRIORITY, in graph order within one) and then the rest in graph order."""
        if len(states) > MAX_ROWS:
            urgent = [tid for tid, state in states.items() if state in _ROW_PRIORITY]
            urgent.sort(key=lambda tid: _ROW_PRIORITY[states[tid]])  # stable: graph order within a state
            order = urgent[:MAX_ROWS]
            if len(order) < MAX_ROWS:
                rest = (tid for tid, state in states.items() if state not in _ROW_PRIORITY)
                order += islice(rest, MAX_ROWS - len(order))
        else:
            order = list(states)
        info_of = self._model.info
        rows = []
        for tid in order:
            info = info_of(tid)
            items = "" if info.map_total is None else f"{info.map_done or 0}/{info.map_total}"
            duration = "" if info.duration is None else format_seconds(info.duration)
            expected = "" if info.expected is None else format_seconds(info.expected)
            now = _now(info) if info.progress is not None or info.last_line else ""
            rows.append([tid, info.state, info.attempts, duration, items, expected, now])
        return rows

    def _live(self, states: Mapping[str, str]) -> dict[str, Any]:
        """What the front end shows of running tasks without asking the kernel."""
        out: dict[str, Any] = {}
        model = self._model
        for tid, state in states.items():
            if state not in ACTIVE_STATES:
                continue
            info = model.info(tid)
            remaining = model.task_remaining(tid)
            out[tid] = {
                "state": state,
                "attempts": info.attempts,
                "line": info.last_line,
                "progress": None if info.progress is None else list(info.progress),
                "text": info.progress_text(),
                "stdout": info.live_stdout[-LIVE_TAIL:],
                "stderr": info.live_stderr[-LIVE_TAIL:],
                "expected": info.expected,
                "remaining": remaining,
                "map": None if info.map_total is None else [info.map_done or 0, info.map_total, info.map_failed],
            }
            if len(out) >= MAX_LIVE:
                break
        return out

    def _detail(self, task_id: str) -> dict[str, Any]:
        if task_id not in self._wf:
            return {}
        detail = self._model.info(task_id).detail(task_id)
        spec = self._wf.node(task_id).spec
        detail["description"] = spec.description
        detail["tags"] = list(spec.tags)
        detail["deps"] = list(self._wf.node(task_id).deps)
        if self._load_code is not None and detail["state"] in ("done", "restored"):
            detail["load"] = self._load_code(task_id)
        if detail.get("error") or detail.get("traceback"):
            # what the pane shows first: the one-line error and only the user's frames
            # (the full traceback stays, behind a toggle)
            detail["error_line"] = error_line(detail)
            tb = str(detail.get("traceback") or "")
            detail["user_traceback"] = user_frames(tb, detail["error_line"]) if tb else ""
        detail.setdefault("displays", [])
        detail.setdefault("preview_bundle", {})
        return detail

    # -- front-end side -------------------------------------------------------------------
    def _on_selected(self, change: Mapping[str, Any]) -> None:
        self._push(force=True)

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        """Button actions from widget.js: ``{"action": "cancel" | "signal" | "rerun", ...}``."""
        if not isinstance(content, dict):
            return
        self._pending_message = self.handle_action(content)
        self._push(force=True)

    def handle_action(self, content: Mapping[str, Any]) -> str:
        """Run one button action; returns the line shown under the buttons."""
        controls = self._controls
        action = content.get("action")
        if controls is None:
            return "Controls need a background run (%%workflow ... --background)."
        try:
            if action == "cancel":
                controls.cancel()
                return "Cancel requested."
            if action == "signal":
                name = str(content.get("name") or "").strip()
                if not name:
                    return "Type the name of the signal to send."
                try:
                    payload = json.loads(str(content.get("payload") or "null"))
                except json.JSONDecodeError as exc:
                    return f'The payload is not valid JSON ({exc.msg}); e.g. true, 42 or {{"ok": true}}.'
                controls.send_signal(name, payload)
                return f"Signal {name!r} sent."
            if action == "rerun":
                task_id = str(content.get("task") or self.selected)
                if task_id not in self._wf:
                    return "Select a task in the graph or the table first."
                controls.rerun_from(task_id)
                return f"Re-running from {task_id!r}."
        except Exception as exc:  # noqa: BLE001 - shown to the user instead of a lost traceback
            return f"{action} failed: {type(exc).__name__}: {exc}"
        return f"Unknown action {action!r}."
