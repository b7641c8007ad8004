"""One instance's task states: small JSON facts about tasks, kept apart from checkpoints.

``Backend.save_task_state(instance, task, {...})`` stores one JSON object per task.
Several parts of a run keep facts there, each under its own keys:

- the retry ledger (``attempts.RetryLedger``): :data:`RETRY_KEYS` — the attempt count,
  when the next attempt is due, the last error, the task's fingerprint, when saved;
- live output (``live.LiveTask``): :data:`LIVE_KEY` — the tail of what an unfinished
  attempt printed, so output printed before a crash or a failure is kept;
- progress (``live.LiveTask``): :data:`PROGRESS_KEY` — the task's last progress, so a
  view opened after a restart says where the task was.

Every write goes through :class:`TaskStates`: a read-modify-write of one task's object
under one lock, so no part ever clobbers another's keys. The states are read once (on
first use) and kept; nothing is written for a task that never has anything to say.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from nbflow.store.base import Backend

__all__ = ["LIVE_KEY", "PROGRESS_KEY", "RETRY_KEYS", "TaskStates", "is_retrying", "stored_progress"]

RETRY_KEYS = ("attempt", "next_retry_at", "last_error", "fingerprint", "saved_at")
LIVE_KEY = "live"
PROGRESS_KEY = "progress"


def is_retrying(state: Mapping[str, Any] | None) -> bool:
    """Whether a stored task state says the task was between retries (not only, say,
    that it reported progress).

    >>> is_retrying({"attempt": 2, "next_retry_at": 1.0}), is_retrying({"progress": {"done": 3}})
    (True, False)
    """
    return bool(state) and isinstance(state.get("attempt"), int)  # type: ignore[union-attr]


def stored_progress(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The last progress a stored task state holds (``done``, ``total``, ``note``,
    ``at``), or None when it has none or it is malformed (the store is data, not trusted).

    >>> stored_progress({"progress": {"done": 57, "total": 100, "note": "epoch 57", "at": 1.5}})
    {'done': 57.0, 'total': 100.0, 'note': 'epoch 57', 'at': 1.5}
    >>> stored_progress({"progress": {"done": "x"}}) is None
    True
    """
    value = state.get(PROGRESS_KEY) if state else None
    if not isinstance(value, Mapping):
        return None
    done, total, note, at = value.get("done"), value.get("total"), value.get("note", ""), value.get("at", 0.0)
    if isinstance(done, bool) or not isinstance(done, int | float) or done < 0:
        return None
    if total is not None and (isinstance(total, bool) or not isinstance(total, int | float) or total <= 0):
        return None
    if not isinstance(at, int | float) or isinstance(at, bool):
        at = 0.0
    return {"done": float(done), "total": None if total is None else float(total), "note": str(note)[:200], "at": at}


class TaskStates:
    """The task states of one instance, read once and updated key by key.

    >>> from nbflow.store.memory import InMemoryBackend
    >>> backend = InMemoryBackend()
    >>> states = TaskStates(backend, "i-1")
    >>> states.update("train", {"attempt": 2})
    >>> states.update("train", {"progress": {"done": 5}})
    >>> backend.load_task_states("i-1")["train"] == {"attempt": 2, "progress": {"done": 5}}
    True
    >>> states.drop("train", ["attempt"])
    >>> backend.load_task_states("i-1")
    {'train': {'progress': {'done': 5}}}
    """

    def __init__(self, backend: Backend, instance_id: str) -> None:
        self.backend, self.instance_id = backend, instance_id
        self._states: dict[str, dict[str, Any]] | None = None
        self._lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self._states is not None

    def all(self) -> dict[str, dict[str, Any]]:
        """Every task's state (read from the store on first use, then kept here)."""
        with self._lock:
            if self._states is None:
                self._states = self.backend.load_task_states(self.instance_id)
            return self._states

    def get(self, task_id: str) -> dict[str, Any] | None:
        return self.all().get(task_id)

    def update(self, task_id: str, values: Mapping[str, Any], drop: Iterable[str] = ()) -> None:
        """Set ``values``' keys in ``task_id``'s state (and remove the keys in ``drop``),
        keeping its other keys: one write."""
        with self._lock:
            states = self.all()
            merged = {**states.get(task_id, {}), **values}
            for key in drop:
                merged.pop(key, None)
            self.backend.save_task_state(self.instance_id, task_id, merged or None)
            if merged:
                states[task_id] = merged
            else:
                states.pop(task_id, None)

    def drop(self, task_id: str, keys: Iterable[str], *, load: bool = False) -> None:
        """Remove ``keys`` from ``task_id``'s state (the whole state once it is empty).
        Writes only if one of the keys is there; unless ``load``, states never read
        are not read now (a task that never stored anything costs nothing)."""
        if self._states is None and not load:  # nothing read, so nothing to drop (not even the lock)
            return
        with self._lock:
            states = self.all()
            old = states.get(task_id)
            if not old or not any(k in old for k in keys):
                return
            kept = {k: v for k, v in old.items() if k not in set(keys)}
            self.backend.save_task_state(self.instance_id, task_id, kept or None)
            if kept:
                states[task_id] = kept
            else:
                del states[task_id]
