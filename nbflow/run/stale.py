"""Why a task is stale, said in words, and keeping a checkpoint after a cosmetic edit.

A checkpoint is stale when its task's fingerprint changed (:mod:`nbflow.run.plan`
decides *that*). This module says *why*, from what each record keeps: when a task is
checkpointed, its record's ``extra["fp"]`` holds the fingerprint's breakdown (a digest
per component — the task's body, its defaults, each closure value, each helper it
calls, each pinned package — and the source of its functions, bounded in size; see
:meth:`nbflow.core.fingerprint.Breakdown.to_json`). Comparing that with today's
breakdown names the component that changed and diffs its source:

- ``helper `utils.norm` changed`` (+ a unified diff of ``norm``), ``its own code
  changed``, ``closure value `rate` changed (0.5 -> 0.7)``, ``a default value changed``;
- ``upstream `clean` changed`` for a task that is stale only because what feeds it runs
  again; ``re-run requested`` for ``rerun_from``;
- ``input `path` changed`` for a task of a *new* instance whose previous instance (same
  workflow, other inputs) had a valid checkpoint of it: the input record of every
  instance keeps a digest and a preview per input (:func:`input_facts`).

:func:`accept` keeps a checkpoint valid for the current code (a cosmetic edit): the
record is stored again with today's fingerprint and a note of the one it replaced.
"""

from __future__ import annotations

import difflib
import hashlib
import pickle
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nbflow.core.errors import ConfigurationError, UnknownTaskError
from nbflow.core.fingerprint import Breakdown, breakdown_of, explain
from nbflow.core.graph import Node, WorkflowDefinition
from nbflow.run.plan import RESTORE, RUN, SKIP, STALE
from nbflow.store.base import INPUT_KEY, Backend, CheckpointRecord, validate_instance_id

__all__ = [
    "PreviousRun",
    "StaleReason",
    "accept",
    "code_changes",
    "explain_plan",
    "input_facts",
    "previous_run",
    "record_notes",
    "stored_breakdown",
]

MAX_DIFF_LINES = 30  # per function; a reason is read in a widget pane or a terminal
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class StaleReason:
    """Why one task runs again (or, for a new instance, why it cannot reuse the last one).

    ``kind``: "code", "upstream", "input", "forced" or "accepted"; ``text`` is one line;
    ``diff`` a unified diff of the source that changed ("" when it is not known).
    """

    task: str
    kind: str
    text: str
    diff: str = ""

    def __str__(self) -> str:
        return self.text + ("\n" + self.diff if self.diff else "")


def _breakdown(node: Node) -> Breakdown | None:
    """Today's breakdown of ``node``'s fingerprint (None for steps without code)."""
    found = breakdown_of(node.fingerprint)
    if found is not None:
        return found
    if node.fn is None:
        return None
    fresh = explain(node.fn, node.spec.version, node.spec.pin)
    return fresh if fresh.digest == node.fingerprint else None


def _label(component: str) -> str:
    kind, _, name = component.partition(":")
    return {"helper": f"helper `{name}`", "closure": f"closure value `{name}`", "pin": f"package `{name}`"}.get(
        kind, component
    )


def code_changes(old: Mapping[str, Any] | None, new: Breakdown | None, task: str = "task") -> tuple[str, str]:
    """(one line, diff) saying what changed between a record's stored breakdown
    (``record.extra["fp"]``) and today's.

    >>> def make(k):
    ...     def scale(x):
    ...         return x * k
    ...     return scale
    >>> code_changes(explain(make(2)).to_json(), explain(make(3)))[0]
    'closure value `k` changed (2 -> 3)'
    """
    if not isinstance(old, Mapping) or not isinstance(old.get("parts"), Mapping) or new is None:
        return "its code changed (the checkpoint does not record what went into its fingerprint)", ""
    before: Mapping[str, Any] = old["parts"]
    values: Mapping[str, Any] = old.get("values") if isinstance(old.get("values"), Mapping) else {}  # type: ignore[assignment]
    sources: Mapping[str, Any] = old.get("src") if isinstance(old.get("src"), Mapping) else {}  # type: ignore[assignment]
    words: list[str] = []
    diffs: list[str] = []
    now_sources: dict[str, str] | None = None
    for component in sorted(set(before) | set(new.parts), key=_order):
        was, now = before.get(component), new.parts.get(component)
        if was == now:
            continue
        if was is None:
            words.append(_added(component, new.values.get(component, "")))
            continue
        if now is None:
            words.append(_removed(component))
            continue
        words.append(_changed(component, str(values.get(component, "")), new.values.get(component, "")))
        old_src = sources.get(component)
        if isinstance(old_src, str) and component in new.functions:
            if now_sources is None:
                now_sources = new.sources()
            new_src = now_sources.get(component)
            if new_src is not None:
                diffs.append(_diff(old_src, new_src, component.partition(":")[2] or task))
    if not words:
        return "its code changed", ""
    return "; ".join(words), "\n".join(d for d in diffs if d)


def _order(component: str) -> tuple[int, str]:
    rank = {"body": 0, "version": 0, "defaults": 1, "closure": 2, "helper": 3, "pin": 4}
    return rank.get(component.partition(":")[0], 5), component


def _changed(component: str, was: str, now: str) -> str:
    if component == "body":
        return "its own code changed"
    if component == "defaults":
        return "a default value changed" + (f" ({was} -> {now})" if was and now and was != now else "")
    if component == "version":
        return f"its version changed ({was} -> {now})"
    if component.startswith("pin:"):
        return f"{_label(component)} changed version ({was} -> {now})"
    if component.startswith("closure:") and was and now and was != now:
        return f"{_label(component)} changed ({was} -> {now})"
    return f"{_label(component)} changed"


def _added(component: str, value: str) -> str:
    if component.startswith("helper:"):
        return f"it now calls {_label(component)}"
    if component.startswith("pin:"):
        return f"it now pins {_label(component)} ({value})"
    if component == "version":
        return f"version={value} was set"
    if component == "body":
        return "version= was removed: its code counts again"
    return f"{_label(component)} is new"


def _removed(component: str) -> str:
    if component.startswith("helper:"):
        return f"it no longer calls {_label(component)}"
    if component.startswith("pin:"):
        return f"it no longer pins {_label(component)}"
    if component == "version":
        return "version= was removed"
    return f"{_label(component)} is gone"


def _diff(old: str, new: str, name: str) -> str:
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"{name} (checkpointed)", f"{name} (now)", n=1, lineterm=""
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more diff lines)"]
    return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------
def _digest(value: Any) -> str:
    try:
        data = pickle.dumps(value, protocol=4)
    except Exception:  # noqa: BLE001 - unpicklable: its repr without addresses stands in
        data = _ADDRESS.sub("", f"{type(value).__qualname__}:{value!r}").encode("utf-8", "replace")
    return hashlib.sha256(data).hexdigest()[:16]


def _preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ only loses the preview
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def input_facts(value: Any) -> dict[str, Any]:
    """What the input record keeps about the inputs (JSON): a digest and a preview per
    item of a dict input, or of the whole input, so a later process can tell which
    input changed between two instances without decoding either.

    >>> input_facts({"path": "a.csv"})["inputs"]["path"]["preview"]
    "'a.csv'"
    """
    named = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    items: list[tuple[str, Any]] = list(value.items()) if named else [("", value)]
    return {"inputs": {k: {"digest": _digest(v), "preview": _preview(v)} for k, v in items}}


@dataclass(frozen=True)
class PreviousRun:
    """Another instance of the same workflow and shape: what a new instance is compared with."""

    instance_id: str
    records: Mapping[str, CheckpointRecord]


def previous_run(backend: Backend, wf: WorkflowDefinition, instance_id: str) -> PreviousRun | None:
    """The most recently updated other instance of ``wf`` with the same shape, if any."""
    rows = sorted(backend.list_summaries(workflow=wf.name), key=lambda row: -row.updated_at)  # the store index
    for row in rows:
        if row.instance_id == instance_id:
            continue
        meta = backend.load_instance(row.instance_id)
        if meta is not None and meta.definition_hash == wf.definition_hash:  # the newest of the same shape
            return PreviousRun(meta.instance_id, backend.get_records(meta.instance_id))
    return None


def _inputs_of(records: Mapping[str, CheckpointRecord]) -> dict[str, Any]:
    record = records.get(INPUT_KEY)
    facts = record.extra.get("inputs") if record is not None else None
    return dict(facts) if isinstance(facts, Mapping) else {}


# -- the plan, explained ---------------------------------------------------------------------
def explain_plan(
    wf: WorkflowDefinition,
    records: Mapping[str, CheckpointRecord],
    plan: Mapping[str, str],
    *,
    force: tuple[str, ...] = (),
    previous: PreviousRun | None = None,
) -> dict[str, StaleReason]:
    """A reason for every task ``plan`` says is stale; with ``previous``, also for the
    tasks of a new instance that the previous instance had valid checkpoints of."""
    reasons: dict[str, StaleReason] = {}
    current_inputs = _inputs_of(records)
    previous_inputs = _inputs_of(previous.records) if previous is not None else {}
    for node in wf.nodes:
        nid, what = node.id, plan.get(node.id)
        if what == STALE:
            record = records[nid]
            if nid in force:
                reasons[nid] = StaleReason(nid, "forced", "re-run requested")
            elif record.fingerprint != node.fingerprint:
                text, diff = code_changes(stored_breakdown(record, records), _breakdown(node), nid)
                reasons[nid] = StaleReason(nid, "code", text, diff)
            else:
                reasons[nid] = _upstream(node, plan, reasons)
        elif what == RUN and previous is not None:
            old = previous.records.get(nid)
            if old is None or old.fingerprint != node.fingerprint:
                continue
            changed = [
                key
                for key in node.input_keys
                if (key or "") in previous_inputs
                and (previous_inputs.get(key or "") or {}).get("digest")
                != (current_inputs.get(key or "") or {}).get("digest")
            ]
            if changed:
                reasons[nid] = StaleReason(
                    nid, "input", _input_words(changed, previous, previous_inputs, current_inputs)
                )
            elif any(dep in reasons for dep in node.deps):
                reasons[nid] = _upstream(node, plan, reasons)
    return reasons


def _upstream(node: Node, plan: Mapping[str, str], reasons: Mapping[str, StaleReason]) -> StaleReason:
    moved = [d for d in node.deps if plan.get(d) not in (RESTORE, SKIP)]
    dep = next((d for d in moved if d in reasons), moved[0] if moved else "?")
    return StaleReason(node.id, "upstream", f"upstream `{dep}` changed")


def _input_words(
    keys: list[str | None], previous: PreviousRun, before: Mapping[str, Any], after: Mapping[str, Any]
) -> str:
    parts = []
    for key in keys:
        name = key or ""
        was = (before.get(name) or {}).get("preview", "?")
        now = (after.get(name) or {}).get("preview", "?")
        label = f"input `{name}`" if name else "the input"
        parts.append(f"{label} changed ({was} -> {now})")
    return "; ".join(parts) + f" since instance {previous.instance_id!r}"


# -- what the runner adds to each record -------------------------------------------------------
def stored_breakdown(record: CheckpointRecord, records: Mapping[str, CheckpointRecord]) -> Any:
    """The fingerprint breakdown stored for ``record`` (see :class:`_Notes`): its own
    ``extra["fp"]``, or that of the record its ``extra["fp_at"]`` names while that
    record still has the same fingerprint; None when neither holds it."""
    kept = record.extra.get("fp")
    if kept is not None:
        return kept
    holder_id = record.extra.get("fp_at")
    holder = records.get(holder_id) if isinstance(holder_id, str) else None
    if holder is None:
        return None
    if holder.fingerprint == record.fingerprint:
        return holder.extra.get("fp")
    accepted = holder.extra.get("accepted")
    if isinstance(accepted, Mapping) and accepted.get("from") == record.fingerprint:
        return holder.extra.get("fp_was")  # the holder was accepted under new code: its old breakdown
    return None


class _Notes(Mapping[str, Mapping[str, Any]]):
    """Per task that runs: the ``extra`` facts its record gets (``fp``: the breakdown;
    ``stale``: why it ran again). Built on first use per task, on the engine thread,
    so a run pays only for the tasks it writes.

    Tasks that share code share a breakdown, and it can hold their source: the first
    record of a fingerprint in a run keeps it (``fp``), later ones name that record
    (``fp_at``) instead of storing it again — in a chain of 10,000 calls of one
    function that is half of every record. A reader follows the name only while the
    named record has the same fingerprint (:func:`stored_breakdown`)."""

    def __init__(self, wf: WorkflowDefinition, plan: Mapping[str, str], reasons: Mapping[str, StaleReason]) -> None:
        self._wf, self._reasons = wf, reasons
        self._ids = frozenset(t for t, what in plan.items() if what in (RUN, STALE))
        self._made: dict[str, Mapping[str, Any]] = {}
        self._json: dict[str, dict[str, Any]] = {}
        self._holder: dict[str, str] = {}  # fingerprint -> the task whose record keeps its breakdown

    def __getitem__(self, task_id: str) -> Mapping[str, Any]:
        made = self._made.get(task_id)
        if made is not None:
            return made
        if task_id not in self._ids:
            raise KeyError(task_id)
        note: dict[str, Any] = {}
        node = self._wf.node(task_id)
        kept = self._json.get(node.fingerprint)  # tasks sharing code share one breakdown
        if kept is None:
            breakdown = _breakdown(node)
            kept = self._json[node.fingerprint] = breakdown.to_json() if breakdown is not None else {}
        if kept:
            holder = self._holder.setdefault(node.fingerprint, task_id)
            if holder == task_id:
                note["fp"] = kept
            else:
                note["fp_at"] = holder
        reason = self._reasons.get(task_id)
        if reason is not None:
            note["stale"] = reason.text
        self._made[task_id] = note
        return note

    def get(self, task_id: str, default: Any = None) -> Any:
        """``self[task_id]``, or ``default`` for a task that does not run: looked up
        for every checkpoint, so no KeyError is raised and caught on the way."""
        made = self._made.get(task_id)
        if made is not None:
            return made
        return self[task_id] if task_id in self._ids else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids


def record_notes(
    wf: WorkflowDefinition, plan: Mapping[str, str], reasons: Mapping[str, StaleReason] | None = None
) -> Mapping[str, Mapping[str, Any]]:
    """What :class:`~nbflow.run.checkpoint.CheckpointIO` adds to the ``extra`` of each
    record the run writes (see :class:`_Notes`)."""
    return _Notes(wf, plan, reasons or {})


# -- accept -------------------------------------------------------------------------------------
def accept(backend: Backend, wf: WorkflowDefinition, instance_id: str, task_id: str) -> CheckpointRecord:
    """Keep ``task_id``'s checkpoint valid for its current code: store the record again
    with today's fingerprint (and breakdown), noting the fingerprint it replaces in
    ``extra["accepted"]``. The payload is copied as is. Refused while the instance runs
    (the instance lock is taken)."""
    validate_instance_id(instance_id)
    node = wf.node(task_id)
    lease = backend.lock(instance_id, holder=f"accept of {task_id!r}")
    try:
        record = backend.get_record(instance_id, task_id)
        if record is None:
            raise UnknownTaskError(wf.name, f"{task_id} (no checkpoint to accept in {instance_id!r})", wf.task_ids)
        if record.codec == "ref" and ("items" in record.extra):
            raise ConfigurationError(
                "task", task_id, "a task whose checkpoint is its own output (a map keeps one per item)"
            )
        if record.fingerprint == node.fingerprint:
            return record
        extra = dict(record.extra)
        extra["accepted"] = {"from": record.fingerprint, "at": time.time()}
        breakdown = _breakdown(node)
        if breakdown is not None:
            if "fp" in extra:  # records of the same old code may name this one's breakdown
                extra["fp_was"] = extra["fp"]
            extra.pop("fp_at", None)
            extra["fp"] = breakdown.to_json()
        extra.pop("stale", None)
        copy = CheckpointRecord.from_dict({**record.to_dict(), "fingerprint": node.fingerprint, "extra": extra})
        sink = backend.new_sink(instance_id)
        if record.codec != "ref":
            with backend.open_payload(instance_id, record) as stream:
                while True:
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    sink.write(chunk)
        return backend.put_record(instance_id, copy, sink)
    finally:
        lease.release()
