"""Run events: what a runner tells the world while it works.

The runner publishes frozen, keyword-only event objects on an :class:`EventBus`;
everything that shows progress (the plain-text printer below, the notebook widget)
subscribes to it. This module is the seam between the engine and any UI: the UI never
reaches into the scheduler, it only folds these events. New fields may be added to an
event with a default value; subscribers must ignore what they do not know.

Events are published from the engine's own thread — except :class:`TaskOutput` and
:class:`TaskProgress`, which come from the run's live flusher thread (``live.py``) while
the task runs, at most about 20 per second per task, and :class:`TaskDisplay`, which
comes from the thread of the task that displayed something. Subscribers must be quick, must be
thread-safe, and must not raise: a subscriber that raises is unsubscribed with one
warning, so a broken progress display can never fail a run.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any, ClassVar

from nbflow.core.keys import parse_item_id, parse_iteration_id

__all__ = [
    "EventKind",
    "EventBus",
    "MapProgress",
    "RunEvent",
    "RunFinished",
    "RunStarted",
    "TaskDisplay",
    "TaskFailed",
    "TaskFinished",
    "TaskOutput",
    "TaskProgress",
    "TaskRestored",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "TaskWaiting",
    "TextProgress",
    "item_step",
]


class EventKind(StrEnum):
    """What an event is about: a subscriber names the kinds it wants
    (``subscribe(fn, kinds=...)``) and no event of another kind is even built for it."""

    RUN_STARTED = "run_started"
    TASK_STARTED = "task_started"
    TASK_RESTORED = "task_restored"
    TASK_FINISHED = "task_finished"
    TASK_RETRYING = "task_retrying"
    TASK_FAILED = "task_failed"
    TASK_SKIPPED = "task_skipped"
    TASK_WAITING = "task_waiting"
    MAP_PROGRESS = "map_progress"
    TASK_OUTPUT = "task_output"
    TASK_DISPLAY = "task_display"
    TASK_PROGRESS = "task_progress"
    RUN_FINISHED = "run_finished"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunEvent:
    """Base of every event: which run it belongs to and when it happened."""

    kind: ClassVar[EventKind]  # each event class says which kind it is

    workflow: str
    instance_id: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStarted(RunEvent):
    """A run (new or resumed) begins.

    ``plan`` maps every task id to what the runner will do with it: ``"restore"``
    (a valid checkpoint exists), ``"stale"`` (a checkpoint exists but the task's code,
    or an upstream task, changed, so it runs again) or ``"run"`` (no checkpoint yet).
    ``edges`` lists (upstream, downstream) pairs so a subscriber can draw the graph
    without importing the workflow object; ``kinds`` maps task ids to their kind
    ("task", "map", "loop", "route", "delay", "signal") and ``groups`` maps the tasks
    of a child workflow (``then_flow``) to the child's name, for drawing clusters.
    """

    kind: ClassVar[EventKind] = EventKind.RUN_STARTED

    tasks: tuple[str, ...]
    edges: tuple[tuple[str, str], ...] = ()
    kinds: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)
    plan: Mapping[str, str] = field(default_factory=dict)
    # why each stale task runs again: one line, then a diff of the source that changed
    reasons: Mapping[str, str] = field(default_factory=dict)
    definition_hash: str = ""
    resumed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStarted(RunEvent):
    """One attempt of a task starts running."""

    kind: ClassVar[EventKind] = EventKind.TASK_STARTED

    task_id: str
    attempt: int = 1
    worker: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskRestored(RunEvent):
    """A task's output comes from its checkpoint; the task does not run.

    ``displays`` are what it displayed when it ran (stored with its checkpoint), shown
    again; ``preview_bundle`` is its output's rich preview (mime type -> str)."""

    kind: ClassVar[EventKind] = EventKind.TASK_RESTORED

    task_id: str
    duration: float = 0.0
    attempt: int = 1
    preview: str = ""
    stdout: str = ""
    stderr: str = ""
    worker: str | None = None
    displays: tuple[Mapping[str, Any], ...] = ()
    preview_bundle: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskFinished(RunEvent):
    """A task finished and its checkpoint is durably written (with ``displays``: what
    it displayed, each ``{"data": {mime: str}, "metadata": {...}}``)."""

    kind: ClassVar[EventKind] = EventKind.TASK_FINISHED

    task_id: str
    attempt: int = 1
    duration: float = 0.0
    preview: str = ""
    stdout: str = ""
    stderr: str = ""
    worker: str | None = None
    displays: tuple[Mapping[str, Any], ...] = ()
    preview_bundle: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskRetrying(RunEvent):
    """An attempt failed and another follows after ``delay`` seconds."""

    kind: ClassVar[EventKind] = EventKind.TASK_RETRYING

    task_id: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskFailed(RunEvent):
    """A task failed for good (retries exhausted); ``traceback`` is the text."""

    kind: ClassVar[EventKind] = EventKind.TASK_FAILED

    task_id: str
    attempt: int
    error: str
    traceback: str = ""
    stdout: str = ""
    stderr: str = ""
    displays: tuple[Mapping[str, Any], ...] = ()  # what the failed attempt displayed


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSkipped(RunEvent):
    """A task will not run in this instance (a route branch not taken)."""

    kind: ClassVar[EventKind] = EventKind.TASK_SKIPPED

    task_id: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskWaiting(RunEvent):
    """A task is parked: a durable delay (``wake_at``) or a signal (``signal``)."""

    kind: ClassVar[EventKind] = EventKind.TASK_WAITING

    task_id: str
    wake_at: float | None = None
    signal: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class MapProgress(RunEvent):
    """Items of a ``map`` step done so far (restored items included)."""

    kind: ClassVar[EventKind] = EventKind.MAP_PROGRESS

    task_id: str
    done: int
    total: int
    failed: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskOutput(RunEvent):
    """What a running attempt printed since its last TaskOutput (raw text: ``\\r``
    frames included). Writes are coalesced: a few events per second, whatever the task
    prints; ``cut`` counts characters left out of these events because the task printed
    faster than they are sent (its checkpoint still stores everything)."""

    kind: ClassVar[EventKind] = EventKind.TASK_OUTPUT

    task_id: str
    attempt: int = 1
    stdout: str = ""
    stderr: str = ""
    cut: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskDisplay(RunEvent):
    """A running attempt displayed something (a figure, ``display(df)``): ``bundle``
    maps mime types to data (images as base64 text), as Jupyter's ``display_data``.
    ``display_id`` with ``update`` replaces what was shown under that id; ``clear``
    (``clear_output()`` in the task) empties what the attempt showed so far."""

    kind: ClassVar[EventKind] = EventKind.TASK_DISPLAY

    task_id: str
    attempt: int = 1
    bundle: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    display_id: str | None = None
    update: bool = False
    clear: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskProgress(RunEvent):
    """How far a running task is, in its own words (``nf.progress``, a tqdm bar):
    ``done`` of ``total`` steps (None: unknown). ``stored``: read from the store as the
    run starts — where the task was when its last run stopped — not reported now."""

    kind: ClassVar[EventKind] = EventKind.TASK_PROGRESS

    task_id: str
    done: float
    total: float | None = None
    note: str = ""
    attempt: int = 1
    stored: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFinished(RunEvent):
    """The run stopped: ``state`` is completed, failed, cancelled, interrupted, ..."""

    kind: ClassVar[EventKind] = EventKind.RUN_FINISHED

    state: str
    duration: float = 0.0
    error: str | None = None
    failed_task: str | None = None


# Events about one map item or loop iteration carry its record id (nbflow.core.keys:
# "<step>[<index>]" / "<step>#<n>") as their task id; item_step maps them back to the step.


def item_step(task_id: str) -> str | None:
    """The map/loop step an item or iteration id belongs to, or None for a plain id.

    >>> item_step("square[3]"), item_step("newton#2"), item_step("load")
    ('square', 'newton', None)
    """
    parsed = parse_item_id(task_id) or parse_iteration_id(task_id)
    return parsed[0] if parsed is not None else None


Subscriber = Callable[[RunEvent], None]


class EventBus:
    """Fan events out to subscribers, in subscription order.

    >>> bus = EventBus()
    >>> seen = []
    >>> unsubscribe = bus.subscribe(seen.append)
    >>> bus.publish(TaskStarted(workflow="w", instance_id="i", task_id="a"))
    >>> [e.task_id for e in seen]
    ['a']
    >>> unsubscribe()
    >>> bus.publish(TaskStarted(workflow="w", instance_id="i", task_id="b"))
    >>> len(seen)
    1
    """

    def __init__(self) -> None:
        self._subscribers: tuple[tuple[Subscriber, frozenset[EventKind] | None], ...] = ()
        self._wanted: frozenset[EventKind] | None = frozenset()  # None: every kind
        self._lock = threading.Lock()

    def subscribe(
        self, subscriber: Subscriber, kinds: Iterable[EventKind | type[RunEvent]] | None = None
    ) -> Callable[[], None]:
        """Add ``subscriber`` (for ``kinds`` only, event classes or EventKind values;
        default every kind); returns a function that removes it again."""
        wanted = None if kinds is None else frozenset(k if isinstance(k, EventKind) else k.kind for k in kinds)
        with self._lock:
            self._subscribers = (*self._subscribers, (subscriber, wanted))
            self._recount()

        def unsubscribe() -> None:
            self.unsubscribe(subscriber)

        return unsubscribe

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove ``subscriber``; removing one that is not subscribed is a no-op."""
        with self._lock:
            self._subscribers = tuple(entry for entry in self._subscribers if entry[0] is not subscriber)
            self._recount()

    def _recount(self) -> None:
        kinds: set[EventKind] = set()
        for _, wanted in self._subscribers:
            if wanted is None:
                self._wanted = None
                return
            kinds |= wanted
        self._wanted = frozenset(kinds)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def wants(self, event_type: type[RunEvent]) -> bool:
        """Whether some subscriber takes events of this class: publishers build an event
        only then (the live output of a task with nobody watching costs nothing)."""
        wanted = self._wanted
        return wanted is None or event_type.kind in wanted

    def publish(self, event: RunEvent) -> None:
        """Deliver ``event`` to every subscriber of its kind; a raising subscriber is dropped."""
        for subscriber, wanted in self._subscribers:  # a tuple: safe against concurrent changes
            if wanted is not None and event.kind not in wanted:
                continue
            try:
                subscriber(event)
            except Exception as exc:  # noqa: BLE001 - a UI bug must never fail a run
                self.unsubscribe(subscriber)
                warnings.warn(
                    f"nbflow: event subscriber {subscriber!r} raised {exc!r} and was "
                    "unsubscribed; the run goes on without it.",
                    RuntimeWarning,
                    stacklevel=2,
                )


class TextProgress:
    """A plain-text progress printer for scripts and logs.

    Subscribe it to a runner: ``runner.subscribe(TextProgress())``. It writes one line
    per finished, restored, failed or retried task and one per run start and end.
    """

    #: the kinds it prints (subscribe with ``kinds=TextProgress.KINDS``: nothing else is built)
    KINDS = (
        EventKind.RUN_STARTED,
        EventKind.TASK_RESTORED,
        EventKind.TASK_FINISHED,
        EventKind.TASK_RETRYING,
        EventKind.TASK_FAILED,
        EventKind.TASK_SKIPPED,
        EventKind.TASK_WAITING,
        EventKind.RUN_FINISHED,
    )

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._total = 0
        self._done = 0

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def __call__(self, event: RunEvent) -> None:
        tag = f"[{event.workflow}/{event.instance_id}]"
        if isinstance(event, RunStarted):
            self._total = len(event.tasks)
            self._done = 0
            restore = sum(1 for v in event.plan.values() if v == "restore")
            verb = "resuming" if event.resumed else "starting"
            self._write(f"{tag} {verb}: {self._total} tasks, {restore} restored from checkpoints")
        elif isinstance(event, TaskRestored | TaskFinished):
            self._done += 1
            what = "restored" if isinstance(event, TaskRestored) else f"done in {event.duration:.3f}s"
            self._write(f"{tag} {event.task_id} {what} ({self._done}/{self._total})")
        elif isinstance(event, TaskRetrying):
            self._write(
                f"{tag} {event.task_id} attempt {event.attempt} failed ({event.error}); retrying in {event.delay:.2f}s"
            )
        elif isinstance(event, TaskFailed):
            self._write(f"{tag} {event.task_id} FAILED after {event.attempt} attempt(s): {event.error}")
        elif isinstance(event, TaskSkipped):
            self._write(f"{tag} {event.task_id} skipped ({event.reason})")
        elif isinstance(event, TaskWaiting):
            why = f"signal {event.signal!r}" if event.signal else "a durable delay"
            self._write(f"{tag} {event.task_id} waiting for {why}")
        elif isinstance(event, RunFinished):
            self._write(f"{tag} {event.state} in {event.duration:.2f}s")
