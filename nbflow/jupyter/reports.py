"""Text views of runs for the line magic: the per-task run log, ``%workflow status``
and ``%workflow show`` reports, and failure messages stripped of nbflow's own frames.

Pure Python (no IPython): these fold runner events and format statuses, nothing more.
The per-task table comes from :mod:`nbflow.run.report` (what the store says), so
``%workflow status`` in a fresh kernel and ``nbflow status`` in a shell print the
same rows; a run of this kernel adds its live states and its stale reasons.
"""

from __future__ import annotations

import os
import re
from typing import Any

import nbflow
from nbflow import WorkflowStatus
from nbflow.run import events as ev
from nbflow.run.report import TaskRow, format_rows

__all__ = ["RunLog", "StatusReport", "format_failure", "user_traceback"]


class RunLog:
    """Folds one runner's events into per-task states, for ``%workflow status``.

    Subscribed to the runner next to the widget, so the text view works with
    ``--no-widget`` too. Thread-safe enough: events come from one engine thread.
    """

    def __init__(self, instance_id: str, tasks: tuple[str, ...] = ()) -> None:
        self.instance_id = instance_id
        self.tasks: dict[str, str] = dict.fromkeys(tasks, "pending")
        self.attempts: dict[str, int] = {}
        self.reasons: dict[str, str] = {}  # why each stale task runs again (kept after the run)
        self.state = ""
        self.error = ""

    def _owner(self, task_id: str) -> str | None:
        """The step an event is about: map items (``sq[3]``) and loop rounds
        (``newton#2``) belong to their map or loop step."""
        if task_id in self.tasks:
            return task_id
        step = ev.item_step(task_id)
        return step if step is not None and step in self.tasks else None

    def __call__(self, event: ev.RunEvent) -> None:
        if event.instance_id != self.instance_id:
            return
        task_id = getattr(event, "task_id", None)
        if task_id is not None and not isinstance(event, ev.RunStarted):
            owner = self._owner(task_id)
            if owner is None:
                return
            if owner != task_id:  # an item: only its start, retry and failure show on the step
                if isinstance(event, ev.TaskStarted | ev.TaskRetrying | ev.TaskFailed):
                    self.tasks[owner] = {ev.TaskStarted: "running", ev.TaskRetrying: "retrying"}.get(
                        type(event), "failed"
                    )
                return
        if isinstance(event, ev.RunStarted):
            self.tasks = {t: ("stale" if event.plan.get(t) == "stale" else "pending") for t in event.tasks}
            self.attempts, self.state, self.error = {}, "running", ""
            self.reasons = dict(event.reasons)
        elif isinstance(event, ev.TaskStarted):
            self.tasks[event.task_id] = "running"
            self.attempts[event.task_id] = event.attempt
        elif isinstance(event, ev.TaskRestored):
            self.tasks[event.task_id] = "restored"
        elif isinstance(event, ev.TaskFinished):
            self.tasks[event.task_id] = "done"
        elif isinstance(event, ev.TaskRetrying):
            self.tasks[event.task_id] = "retrying"
        elif isinstance(event, ev.TaskFailed):
            self.tasks[event.task_id] = "failed"
        elif isinstance(event, ev.TaskSkipped):
            self.tasks[event.task_id] = "skipped"
        elif isinstance(event, ev.TaskWaiting):
            self.tasks[event.task_id] = "awaiting_signal" if event.signal else "waiting"
        elif isinstance(event, ev.RunFinished):
            self.state = event.state
            self.error = event.error or ""
            if event.state not in ("completed", "failed"):
                for tid, st in self.tasks.items():
                    if st == "running":
                        self.tasks[tid] = event.state  # cancelled / interrupted / paused


class StatusReport:
    """What ``%workflow status`` / ``%workflow show`` return: the stored status, a row
    per task, and why stale tasks are stale.

    Displays as text; ``.status`` is the ``WorkflowStatus``, ``.tasks`` maps task ids
    to their state (this kernel's last run, else the store's) or, for ``show``, to what
    a resume would do ("restore", "stale", "run"); ``.rows`` are the store's
    :class:`~nbflow.run.report.TaskRow` and ``.reasons`` task id -> reason (a line,
    then a diff of the source that changed).
    """

    def __init__(
        self,
        name: str,
        status: WorkflowStatus,
        tasks: dict[str, str],
        note: str = "",
        *,
        rows: list[TaskRow] | None = None,
        reasons: dict[str, str] | None = None,
        plan: bool = False,
        footer: str = "",
    ) -> None:
        self.name, self.status, self.tasks, self.note = name, status, tasks, note
        self.rows = rows or []
        self.reasons = reasons or {}
        self.plan = plan
        self.footer = footer

    @property
    def text(self) -> str:
        st = self.status
        head = f"{self.name} [{st.instance_id}]: {st.state} ({st.tasks_done}/{st.tasks_total} tasks checkpointed)"
        lines = [head]
        if st.error is not None:
            lines.append(f"  error: {st.error}")
        if st.message and st.state != "completed" and st.error is None:
            lines.append(f"  note: {st.message}")
        if st.signal:
            lines.append(f"  waiting for signal {st.signal!r}")
        if self.plan or not self.rows:
            width = max((len(t) for t in self.tasks), default=0)
            for tid, state in self.tasks.items():
                reason = self.reasons.get(tid, "").split("\n", 1)[0]
                lines.append(f"  {tid.ljust(width)}  {state}" + (f"  ({reason})" if reason else ""))
        else:
            live = [
                TaskRow(r.task, r.kind, self.tasks.get(r.task, r.state), r.attempts, r.duration, r.finished_at,
                        r.preview, r.items, "" if r.task in self.reasons and r.note.startswith("ran again") else r.note)
                for r in self.rows
            ]  # fmt: skip
            lines += format_rows(live)
            stopped = [r.task for r in live if r.state == "interrupted"]
            if stopped:
                lines.append(f"  was running when the run stopped: {', '.join(stopped)} (they run again on resume)")
        why = [(t, r) for t, r in self.reasons.items() if r]
        if why:
            lines.append("  why stale:" if not self.plan else "  why:")
            for tid, reason in why:
                first, _, diff = reason.partition("\n")
                lines.append(f"    {tid}: {first}")
                lines += [f"      {d}" for d in diff.splitlines()]
        if self.note:
            lines.append(self.note)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)


_PLUMBING = (os.sep + "concurrent" + os.sep, os.sep + "asyncio" + os.sep, os.sep + "threading.py", "contextvars")
_NBFLOW_DIR = os.path.dirname(os.path.abspath(nbflow.__file__)) + os.sep
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+')


def user_traceback(text: str) -> str:
    """A task's traceback without nbflow's and the event loop's own frames."""
    out: list[str] = []
    skipping = False
    for line in text.rstrip("\n").splitlines():
        m = _FRAME.match(line)
        if m:
            path = m.group(1)
            skipping = path.startswith(_NBFLOW_DIR) or any(p in path for p in _PLUMBING)
            if not skipping:
                out.append(line)
            continue
        if skipping and line.startswith("    "):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def format_failure(name: str, status: WorkflowStatus) -> str:
    """The compact message printed when a task fails for good."""
    err = status.error
    if err is None:
        return f"workflow {name!r} failed: {status.message or 'no error recorded'}"
    if not err.task_id:
        head = f"workflow {name!r} failed: {err.type}: {err.message}"
    else:
        tries = f" (after {err.attempt} attempts)" if err.attempt > 1 else ""
        head = f"workflow {name!r} failed: task {err.task_id!r} raised {err.type}: {err.message}{tries}"
    lines = [head]
    tb = user_traceback(err.traceback) if err.traceback else ""
    if tb:
        lines += ["", tb, ""]
    if err.task_id:
        lines.append(
            f"{status.tasks_done}/{status.tasks_total} tasks are checkpointed. Fix {err.task_id!r} and re-run "
            f"the cell: finished tasks are restored, {err.task_id!r} and what depends on it run again."
        )
    return "\n".join(lines)
