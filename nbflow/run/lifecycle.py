"""The lifecycle of a stored instance: which moves between run states are allowed, and
the one function that makes them (:func:`transition`).

Every change of a stored instance's state — the runner's, a ``PooledWorker``'s, the
``WorkflowClient``'s — goes through :func:`transition`, which refuses a move the table
forbids with ``IllegalTransitionError`` and records who made it (``meta.message``). A
caller that only *may* move an instance (a worker noticing a pause, a late unit of a
cancelled instance) uses :func:`try_transition`, which leaves it be when the answer is
no; :func:`nbflow.run.instances.move_stored` does that on a stored instance.

The rules the table encodes (the same for the runner, workers, the client and the CLI):

- **paused means paused.** Nothing runs a paused instance: workers skip it, and
  ``runner.resume``/``run``/``start``/``rerun_from`` hand back its status (state
  ``paused``, a message saying to unpause first) without running a task — no error, as
  sayiir does. ``WorkflowClient.unpause`` moves it to ``pending``: a worker pool picks it
  up again, and a resume continues it.
- **cancelled is final unless revived.** Workers never pick up a cancelled instance and a
  plain resume hands back its status (state ``cancelled``). It runs again only when
  asked explicitly: ``runner.resume(wf, id, revive=True)`` (``nbflow resume ID
  --revive``), ``runner.rerun_from`` (which names what to run again), or
  ``WorkflowClient.revive(id)`` (back to ``pending``, for a worker pool).
- **completed is final.** A resume of a completed instance restores it without moving
  it; it moves back to ``running`` only when tasks run again — ``rerun_from``, or tasks
  whose code changed under ``on_change="rerun"``. These two and ``revive`` are the only
  *reopening* moves, made with ``reopen=True``.
- ``damaged`` and ``unreadable`` are what a listing shows for records that cannot be
  read; they are never stored, so no move leads to or from them.

This module holds rules only: it never reads or writes the store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from nbflow.core.errors import IllegalTransitionError
from nbflow.core.status import RunState
from nbflow.store.base import InstanceMeta

__all__ = ["MOVES", "REOPEN", "allowed", "begin_run", "hold_reason", "transition", "try_transition"]

_P, _R, _C, _F = RunState.PENDING, RunState.RUNNING, RunState.COMPLETED, RunState.FAILED
_X, _I, _Z = RunState.CANCELLED, RunState.INTERRUPTED, RunState.PAUSED
_W, _A = RunState.WAITING, RunState.AWAITING_SIGNAL

MOVES: Mapping[RunState, frozenset[RunState]] = {
    # submitted; or unpaused / revived, for a worker pool or a resume to continue
    _P: frozenset({_P, _R, _W, _A, _Z, _X, _F, _C}),
    # a run in progress: it waits, finishes, fails, or is stopped (Ctrl-C: interrupted)
    _R: frozenset({_R, _W, _A, _C, _F, _X, _I, _Z}),
    _W: frozenset({_W, _R, _A, _C, _F, _X, _I, _Z}),
    _A: frozenset({_A, _R, _W, _C, _F, _X, _I, _Z}),
    # stopped by Ctrl-C or a kernel restart: a resume continues it
    _I: frozenset({_I, _R, _Z, _X}),
    # only unpause (-> pending) or cancel lead out; a unit in flight when the pause
    # came may still fail for good (a worker then records the failure)
    _Z: frozenset({_Z, _P, _X, _F}),
    _X: frozenset({_X}),
    _C: frozenset({_C}),
    # a resume re-runs the failed task
    _F: frozenset({_F, _R}),
}
"""Ordinary moves: ``MOVES[from]`` is every state ``from`` may move to. Staying in a
state is a move too (it updates the message, the wake-up time or the signal)."""

REOPEN: Mapping[RunState, frozenset[RunState]] = {
    _X: frozenset({_R, _P}),  # runner.resume(revive=True) / rerun_from; client.revive
    _C: frozenset({_R}),  # rerun_from, or tasks whose code changed
}
"""Moves out of a final state, allowed only with ``reopen=True``: the caller was asked
explicitly (``revive=True``, ``rerun_from``, edited code re-running tasks)."""


def _state(value: RunState | str) -> RunState | None:
    try:
        return RunState(value)
    except ValueError:
        return None


def allowed(from_state: RunState | str, to_state: RunState | str, *, reopen: bool = False) -> bool:
    """Whether the table lets an instance move from ``from_state`` to ``to_state``.

    >>> allowed("paused", "pending"), allowed("paused", "running"), allowed("completed", "running")
    (True, False, False)
    >>> allowed("completed", "running", reopen=True)
    True
    """
    frm, to = _state(from_state), _state(to_state)
    if frm is None or to is None:
        return False
    if to in MOVES.get(frm, frozenset()):
        return True
    return reopen and to in REOPEN.get(frm, frozenset())


def transition(
    meta: InstanceMeta,
    to: RunState | str,
    *,
    by: str,
    message: str | None = None,
    reopen: bool = False,
    **fields: Any,
) -> InstanceMeta:
    """Move ``meta`` to state ``to`` (in memory: the caller saves it) and record who did.

    ``by`` names the mover ("runner host:123", "worker w1", "WorkflowClient"); the
    message becomes ``message``, or "<state> (<by>)" when none is given. ``fields`` sets
    other attributes of the instance in the same move (``error``, ``wake_at``,
    ``signal``). Raises ``IllegalTransitionError`` for a move the table forbids.

    >>> meta = InstanceMeta("i-1", "etl", "hash", state="running")
    >>> transition(meta, "completed", by="runner r1").state, meta.message
    ('completed', 'completed (runner r1)')
    >>> transition(meta, "running", by="runner r1")
    Traceback (most recent call last):
    ...
    nbflow.core.errors.IllegalTransitionError: instance 'i-1' cannot move from completed to running (asked by runner r1). ...
    """
    target = _state(to)
    if target is None or not allowed(meta.state, target, reopen=reopen):
        frm = _state(meta.state)
        options = sorted(MOVES.get(frm, frozenset())) if frm is not None else []
        raise IllegalTransitionError(meta.instance_id, str(meta.state), str(to), by, [str(s) for s in options])
    for name in fields:
        if name in ("state", "instance_id", "workflow") or not hasattr(meta, name):
            raise TypeError(f"transition() cannot set {name!r} of an instance")
    for name, value in fields.items():
        setattr(meta, name, value)
    meta.state = target.value
    meta.message = message if message is not None else f"{target.value} ({by})"
    meta.updated_at = time.time()
    return meta


def try_transition(
    meta: InstanceMeta,
    to: RunState | str,
    *,
    by: str,
    message: str | None = None,
    reopen: bool = False,
    **fields: Any,
) -> bool:
    """:func:`transition` if the table allows the move, and True; False, with nothing
    changed, when it does not. For a caller that only *may* move the instance: a worker
    noticing a pause, a late unit of an instance cancelled meanwhile (it stays so).

    >>> meta = InstanceMeta("i-1", "etl", "hash", state="cancelled")
    >>> try_transition(meta, "failed", by="worker w1"), meta.state
    (False, 'cancelled')
    """
    if not allowed(meta.state, to, reopen=reopen):
        return False
    transition(meta, to, by=by, message=message, reopen=reopen, **fields)
    return True


def hold_reason(meta: InstanceMeta, *, revive: bool = False) -> str | None:
    """Why a resume (or a USE_EXISTING run) of ``meta`` must not run anything, or None
    when it may. ``revive``: the caller asked to run a cancelled instance again
    (``revive=True``, or ``rerun_from``).

    >>> print(hold_reason(InstanceMeta("i-1", "etl", "hash", state="paused", message="by ops")))
    instance 'i-1' is paused (by ops); nothing ran. Unpause it first: ...
    >>> hold_reason(InstanceMeta("i-1", "etl", "hash", state="interrupted")) is None
    True
    """
    iid = meta.instance_id
    why = f" ({meta.message})" if meta.message else ""
    if meta.state == _Z:
        return (
            f"instance {iid!r} is paused{why}; nothing ran. Unpause it first: WorkflowClient(backend).unpause({iid!r}) "
            f"(`nbflow unpause {iid}`, `%workflow unpause {iid}`); a resume or a worker then continues it."
        )
    if meta.state == _X and not revive:
        return (
            f"instance {iid!r} is cancelled{why}; nothing ran. To run it again, revive it: runner.resume(wf, {iid!r}, "
            f"revive=True) (`nbflow resume {iid} --revive`), or WorkflowClient(backend).revive({iid!r}) for a "
            "worker pool; or start over with a new instance id."
        )
    return None


def begin_run(meta: InstanceMeta, *, by: str, work: bool, revive: bool = False) -> bool:
    """Move ``meta`` to running for a run that is about to start; False (nothing moved)
    when it only replays a completed instance (``work``: some task will run).

    A completed instance reopens when tasks run again (``work``); a cancelled one only
    when ``revive`` (``hold_reason`` has already turned the other cases away)."""
    if meta.state == _C and not work:
        return False
    reopen = revive if meta.state == _X else work
    transition(meta, _R, by=by, reopen=reopen, error=None)
    return True
