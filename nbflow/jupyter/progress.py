"""ProgressModel: fold run events into per-task state, counts, elapsed time and ETA.

This is the widget's *model*: pure Python, no ipywidgets, so every rule about what a
task's state is (and what the progress bar says) is unit-tested without a front end.
The widget only renders snapshots of it. A subscriber gets one call per engine event
(10,000 of them for a 10,000-task run), so :meth:`ProgressModel.apply` is O(1) and the
expensive part (building a snapshot for the browser) is left to the caller, which
decides *when* with a :class:`Coalescer` — a few times per second, never per event.

Nothing here draws or imports a UI toolkit; layout lives in ``render.py``, painting in
``widget.py`` and ``static/``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from nbflow.run import events as ev

__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "Coalescer",
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
    if len(text) <= MAX_TEXT:
        return text
    return f"... ({len(text) - MAX_TEXT} characters cut)\n" + text[-MAX_TEXT:]


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

    def detail(self, task_id: str) -> dict[str, Any]:
        """A JSON-ready view of this task for the detail pane."""
        out = asdict(self)
        del out["started_at"]
        out.update(task=task_id, duration_text=format_seconds(self.duration))
        out["map"] = None if self.map_total is None else [self.map_done or 0, self.map_total, self.map_failed]
        return out


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
        clock: Callable[[], float] = time.time,
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
        self._reset(tuple(tasks), kinds or {})
        if plan:
            self.set_plan(plan)

    # -- folding ------------------------------------------------------------------------
    def _reset(self, tasks: tuple[str, ...], kinds: Mapping[str, str]) -> None:
        self._tasks = {tid: TaskInfo(kind=kinds.get(tid, "task")) for tid in tasks}
        self._counts = Counter({"pending": len(tasks)})
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.run_duration: float | None = None
        self._exec_total = 0.0  # summed durations of tasks that really ran (not restored)
        self._exec_count = 0
        self._first_start: float | None = None

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

    def set_plan(self, plan: Mapping[str, str]) -> None:
        """Show what a resume will do before it runs: tasks with a valid checkpoint are
        painted restored, ``"stale"`` ones stale, branches a route did not take skipped."""
        painted = {"stale": "stale", "restore": "restored", "skip": "skipped"}
        with self._lock:
            for tid, what in plan.items():
                info = self._info(tid)
                if info.state in ("pending", "stale", "restored", "skipped"):
                    self._set(info, painted.get(what, "pending"))
            self.version += 1

    def apply(self, event: ev.RunEvent) -> bool:
        """Fold one event in; returns False for events this model does not know."""
        with self._lock:
            self.workflow = self.workflow or event.workflow
            self.instance_id = self.instance_id or event.instance_id
            changed = self._apply(event)
            if changed:
                self.version += 1
            return changed

    __call__ = apply  # so a model can be subscribed to an EventBus directly

    def _apply(self, e: ev.RunEvent) -> bool:
        if isinstance(e, ev.RunStarted):
            self.workflow, self.instance_id = e.workflow, e.instance_id
            self._reset(tuple(e.tasks), e.kinds or {k: i.kind for k, i in self._tasks.items()})
            for tid, what in e.plan.items():
                if what == "stale" and tid in self._tasks:
                    self._set(self._tasks[tid], "stale")
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
            return True
        task_id = getattr(e, "task_id", None)
        if task_id is None:
            return False
        owner = self._item_owner(task_id)
        if owner is not None:
            return self._apply_item(self._tasks[owner], e)
        info = self._info(task_id)
        if isinstance(e, ev.TaskStarted):
            self._set(info, "running")
            info.attempts, info.worker, info.started_at = e.attempt, e.worker, e.time
            info.error = info.traceback = ""
            if self._first_start is None:
                self._first_start = e.time
        elif isinstance(e, ev.TaskFinished | ev.TaskRestored):
            restored = isinstance(e, ev.TaskRestored)
            self._set(info, "restored" if restored else "done")
            info.attempts, info.duration, info.worker = e.attempt, e.duration, e.worker
            info.preview, info.stdout, info.stderr = _clip(e.preview), _clip(e.stdout), _clip(e.stderr)
            if not restored:
                self._exec_total += e.duration
                self._exec_count += 1
        elif isinstance(e, ev.TaskRetrying):
            self._set(info, "retrying")
            info.attempts, info.error = e.attempt, e.error
        elif isinstance(e, ev.TaskFailed):
            self._set(info, "failed")
            info.attempts, info.error, info.traceback = e.attempt, e.error, _clip(e.traceback)
            info.stdout, info.stderr = _clip(e.stdout), _clip(e.stderr)
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
        else:
            return False
        return True

    def _item_owner(self, task_id: str) -> str | None:
        """The map/loop node of an item id (``square[3]``, ``newton#2``), else None."""
        if task_id in self._tasks:
            return None
        step = ev.item_step(task_id)
        return step if step is not None and step in self._tasks else None

    def _apply_item(self, info: TaskInfo, e: ev.RunEvent) -> bool:
        """One map item's or loop iteration's event, folded into its node: items are
        never rows of their own (a 10,000-item map is one node with a counter)."""
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
        """Seconds left: mean duration of executed tasks x remaining tasks / parallelism.

        Restored tasks cost nothing, so they never enter the mean. Parallelism is
        measured, not configured: summed task time over wall time since the first task
        started (about 1 for a chain, about N for N busy threads). None until one task
        has really run, or once the run is over.
        """
        with self._lock:
            if self.run_state != "running" or not self._exec_count:
                return None
            remaining = self.total - self.completed - self._counts["failed"]
            if remaining <= 0:
                return 0.0
            mean = self._exec_total / self._exec_count
            now = self._clock() if now is None else now
            wall = now - self._first_start if self._first_start is not None else 0.0
            parallelism = max(1.0, self._exec_total / wall) if wall > 0 else 1.0
            return mean * remaining / parallelism

    def _headline(self) -> str:
        counts = self._counts
        text = f"{self.completed}/{self.total} done"
        if counts["restored"]:
            text += f" ({counts['restored']} restored)"
        return text + (f", {counts['failed']} failed" if counts["failed"] else "")

    def progress(self, now: float | None = None) -> dict[str, Any]:
        """The progress bar's data (JSON-ready): ``text`` is what the bar says, ``base``
        the same without timings (the front end ticks elapsed/ETA between updates)."""
        with self._lock:
            now = self._clock() if now is None else now
            elapsed, eta, base = self.elapsed(now), self.eta(now), self._headline()
            timing = "" if elapsed is None else f" · elapsed {format_seconds(elapsed)}"
            timing += "" if eta is None else f" · ETA {format_seconds(eta)}"
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

    def delay(self, version: int) -> float | None:
        """None: nothing new to push; else seconds to wait before pushing ``version``."""
        with self._lock:
            if version == self.pushed_version:
                return None
            return max(0.0, self.last_push + self.interval - self._clock())

    def wait(self) -> float:
        """Seconds until a push is allowed (for news the model has not folded yet)."""
        with self._lock:
            return max(0.0, self.last_push + self.interval - self._clock())

    def spent(self, seconds: float) -> None:
        """Record how long the last push took. Pushes may use at most ``budget`` of the
        run's time (they hold the GIL the tasks need), so a slow push — a graph of
        thousands of tasks — spaces the next ones out, up to ``max_interval``.

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

    def mark(self, version: int) -> None:
        """Record that ``version`` was pushed now."""
        with self._lock:
            self.pushed_version, self.last_push = version, self._clock()
            self.pushes += 1
