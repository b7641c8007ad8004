"""Where every task of a stored instance stands, read from the store alone.

"Where was I?" after a restart: a fresh process (a new kernel, a shell) has no run
events, only what the store keeps — the instance record, one checkpoint record per
finished task (attempt, start and finish time, a preview of the output), retry states,
worker claims. :func:`task_rows` turns those into one :class:`TaskRow` per task, in
the workflow's order, using the shape stored with the instance (no workflow code is
needed, so ``nbflow status`` works from a shell). For a run that stopped (its process
died, or it was interrupted or cancelled) the tasks that were ready to run and have no
checkpoint are the ones it was running: they read ``interrupted`` and run again on
resume. :func:`format_rows` prints the rows as an aligned table; both ``%workflow
status`` and ``nbflow status`` use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from nbflow.core.keys import parse_item_id, parse_iteration_id
from nbflow.core.status import RunState
from nbflow.core.vocabulary import NodeKind
from nbflow.run.lookup import live_state
from nbflow.run.task_state import is_retrying, stored_progress
from nbflow.store.base import Backend, CheckpointRecord, InstanceMeta

__all__ = ["ShapeNode", "TaskRow", "format_rows", "parse_shape", "task_rows"]

# the instance stopped so: what its tasks that were running read
_STOPPED: dict[str, str] = {
    RunState.INTERRUPTED: "interrupted",
    RunState.CANCELLED: "cancelled",
    RunState.FAILED: "cancelled",
}


@dataclass(frozen=True)
class ShapeNode:
    """One task as the instance's stored shape describes it."""

    id: str
    kind: str
    deps: tuple[str, ...]
    guard: str | None = None
    when: str | None = None


def parse_shape(shape: tuple[str, ...] | list[str]) -> list[ShapeNode]:
    """The stored shape lines (``Node.shape_line``) -> nodes with their dependencies.

    >>> [(n.id, n.deps) for n in parse_shape(["a|task|value|<-$input||||{}", "b|task|value|<-a||||{}"])]
    [('a', ()), ('b', ('a',))]
    """
    nodes = []
    for line in shape:
        parts = line.split("|", 6)
        if len(parts) < 7:
            nodes.append(ShapeNode(parts[0], "task", ()))
            continue
        tid, kind, _mode, params, after, _group, opts = parts
        deps: dict[str, None] = {}
        for param in filter(None, params.split(",")):
            src = param.rpartition("<-")[2]
            if src and not src.startswith("$input"):
                deps.setdefault(src)
        for dep in filter(None, after.split(",")):
            deps.setdefault(dep)
        try:
            options = json.loads(opts) if opts else {}
        except ValueError:
            options = {}
        guard = options.get("guard") if isinstance(options, dict) else None
        when = options.get("when") if isinstance(options, dict) else None
        nodes.append(
            ShapeNode(tid, kind, tuple(deps), guard if isinstance(guard, str) else None, str(when) if when else None)
        )
    return nodes


@dataclass(frozen=True)
class TaskRow:
    """One task of a stored instance: ``state`` is done, failed, retrying, running,
    interrupted, cancelled, awaiting_signal, waiting, skipped or pending."""

    task: str
    kind: str
    state: str
    attempts: int | None = None
    duration: float | None = None
    finished_at: float | None = None
    preview: str = ""
    items: int = 0  # map items / loop rounds checkpointed so far
    note: str = ""


def _owner(record_id: str) -> str | None:
    parsed = parse_item_id(record_id) or parse_iteration_id(record_id)
    return parsed[0] if parsed is not None else None


def task_rows(
    backend: Backend, meta: InstanceMeta, records: Mapping[str, CheckpointRecord] | None = None
) -> list[TaskRow]:
    """Every task of ``meta``'s instance, in workflow order, as the store has it."""
    records = backend.get_records(meta.instance_id) if records is None else records
    state = live_state(backend, meta)
    states = backend.load_task_states(meta.instance_id)
    # a task state may hold only live output or progress (a killed task): not a retry
    retrying = {tid: st for tid, st in states.items() if is_retrying(st)}
    now = time.time()
    claims = {c.task_id: c for c in backend.get_claims(meta.instance_id).values() if c.expires_at > now}
    items: dict[str, int] = {}
    for rid in records:
        owner = _owner(rid)
        if owner is not None:
            items[owner] = items.get(owner, 0) + 1
    error = meta.error or {}
    rows: list[TaskRow] = []
    done: dict[str, str] = {}  # task -> "done" / "skipped"
    for node in parse_shape(meta.shape):
        tid = node.id
        record = records.get(tid)
        if record is not None:
            note = ""
            if "accepted" in record.extra:
                note = "checkpoint accepted for edited code"
            elif record.extra.get("stale"):
                note = f"ran again: {record.extra['stale']}"
            rows.append(
                TaskRow(
                    tid,
                    node.kind,
                    "done",
                    record.attempt,
                    record.duration,
                    record.finished_at,
                    record.preview,
                    items.get(tid, 0),
                    note,
                )
            )
            done[tid] = "done"
            continue
        if _skipped(node, records, done):
            rows.append(TaskRow(tid, node.kind, "skipped", note="its route took another branch"))
            done[tid] = "skipped"
            continue
        ready = all(d in done for d in node.deps)
        row_state, note, attempts = "pending", "", None
        if error.get("task_id") == tid:
            row_state, attempts = "failed", error.get("attempt")
            note = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
        elif tid in claims or any(_owner(k) == tid for k in claims):
            row_state = "running"
            claim = claims.get(tid) or next(c for k, c in claims.items() if _owner(k) == tid)
            note = f"on worker {claim.worker}"
        elif tid in retrying and state != RunState.COMPLETED:
            st = retrying[tid]
            row_state, attempts = "retrying", st.get("attempt")
            due = st.get("next_retry_at")
            note = f"attempt {st.get('attempt')} failed: {st.get('last_error', '')}"
            if isinstance(due, int | float):
                note += f"; next attempt at {_when(float(due))}"
        elif (was := stored_progress(states.get(tid))) is not None and state != RunState.COMPLETED:
            total = f"/{was['total']:g}" if was.get("total") else ""
            note = f"was at {was['done']:g}{total}" + (f" ({was['note']})" if was.get("note") else "")
        elif ready and node.kind == NodeKind.SIGNAL and state == RunState.AWAITING_SIGNAL:
            row_state, note = "awaiting_signal", f"waiting for signal {meta.signal!r}" if meta.signal else ""
        elif ready and node.kind == NodeKind.DELAY and state == RunState.WAITING:
            row_state = "waiting"
            note = f"wakes at {_when(meta.wake_at)}" if meta.wake_at else ""
        elif ready and state == RunState.RUNNING:
            row_state = "running"
        elif ready and state in _STOPPED:
            row_state = _STOPPED[state]
            note = "was running when the run stopped; runs again on resume"
        if items.get(tid):
            note = "; ".join(filter(None, [f"{items[tid]} items checkpointed", note]))
        rows.append(TaskRow(tid, node.kind, row_state, attempts, note=note, items=items.get(tid, 0)))
    return rows


def _skipped(node: ShapeNode, records: Mapping[str, CheckpointRecord], done: Mapping[str, str]) -> bool:
    if node.guard is not None:
        route = records.get(node.guard)
        branch = route.extra.get("branch") if route is not None else None
        if branch is not None and str(branch) != node.when:
            return True
    if node.kind == NodeKind.MERGE:
        return bool(node.deps) and all(done.get(d) == "skipped" for d in node.deps)
    return any(done.get(d) == "skipped" for d in node.deps)


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    local = time.localtime(ts)
    today = time.localtime()
    same_day = (local.tm_year, local.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", local)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def format_rows(rows: list[TaskRow], *, indent: str = "  ", preview_width: int = 48) -> list[str]:
    """The rows as an aligned table (task, state, attempts, duration, finished, output),
    a note under a task when it has one."""
    header = ("TASK", "STATE", "ATTEMPTS", "DURATION", "FINISHED", "OUTPUT")
    cells = []
    for r in rows:
        flat = " ".join(r.preview.split())  # a DataFrame's repr has newlines: one line here
        preview = flat if len(flat) <= preview_width else flat[: preview_width - 3] + "..."
        cells.append(
            (
                r.task,
                r.state.replace("_", " "),
                "" if r.attempts is None else str(r.attempts),
                _seconds(r.duration),
                _when(r.finished_at),
                preview,
            )
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    out = [indent + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row, cell in zip(rows, cells, strict=True):
        out.append(indent + "  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
        if row.note:
            out.append(f"{indent}  {''.ljust(widths[0])}{row.note}")
    return out
