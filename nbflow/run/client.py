"""WorkflowClient: look at and steer stored instances from anywhere that reaches the store.

The client never runs tasks. It reads instance records, and writes requests the
running engine picks up at its next task boundary (cancel, pause), or that a later run
consumes (signals, buffered FIFO per name). It works across processes on a shared
``DiskcacheBackend`` — that is how the CLI cancels a run started by a notebook.
"""

from __future__ import annotations

import io
from typing import Any

from nbflow.core.codecs import Codec, PickleCodec, codec_by_name
from nbflow.core.errors import (
    CheckpointCorruptError,
    CodecError,
    ConfigurationError,
    InstanceExistsError,
    SignalRefusedError,
    UnknownTaskError,
)
from nbflow.core.status import RunState, TaskError, WorkflowStatus
from nbflow.core.typed import record_types
from nbflow.run import lifecycle
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.instances import as_definition, new_instance
from nbflow.run.lookup import live_state, resolve_instance
from nbflow.store.base import DAMAGED_CODEC, INPUT_KEY, Backend, InstanceMeta, InstanceSummary, validate_instance_id

__all__ = ["WorkflowClient"]


class WorkflowClient:
    """Inspect and control instances stored in ``backend``.

    >>> from nbflow import InMemoryBackend
    >>> WorkflowClient(InMemoryBackend()).list_instances()
    []
    """

    def __init__(self, backend: Backend, codec: Codec | None = None) -> None:
        """``codec`` is what outputs are decoded with (default ``PickleCodec``): a client
        made with ``JsonCodec()`` never unpickles anything, whatever the store holds."""
        if not isinstance(backend, Backend):
            raise ConfigurationError("backend", backend, "InMemoryBackend(), DiskcacheBackend(path) or another Backend")
        self.backend = backend
        self.codec: Codec = codec or PickleCodec()

    def _meta(self, instance_id: str) -> InstanceMeta:
        """The instance named: an instance id, or a workflow name (its instance; several
        are an AmbiguousInstanceError), as :func:`nbflow.run.lookup.resolve_instance`."""
        return resolve_instance(self.backend, instance_id)

    # -- reading ------------------------------------------------------------------------
    def list_instances(self, workflow: str | None = None, state: str | None = None) -> list[WorkflowStatus]:
        """Stored instances, newest first, optionally filtered by workflow and (stored)
        state. Read from the store's index: an instance is opened only if it changed
        since it was indexed; one that cannot be read is listed as such."""
        rows = self.backend.list_summaries(workflow=workflow, state=None if state is None else str(state))
        rows.sort(key=lambda row: row.updated_at, reverse=True)
        return [self._summarised(row) for row in rows]

    def _summarised(self, row: InstanceSummary) -> WorkflowStatus:
        """A listing row from an index row; a running instance nobody holds any more
        reads ``interrupted``."""
        stand_in = InstanceMeta(row.instance_id, row.workflow, "", state=row.state)
        try:
            state = RunState(live_state(self.backend, stand_in))
        except ValueError:
            state = RunState.FAILED
        return WorkflowStatus(
            workflow=row.workflow,
            instance_id=row.instance_id,
            state=state,
            error=TaskError.from_dict(row.error) if row.error else None,
            tasks_done=row.tasks_done,
            tasks_total=row.tasks_total,
            wake_at=row.wake_at,
            signal=row.signal,
            message=row.message,
        )

    def status(self, instance_id: str, output: bool = True) -> WorkflowStatus:
        """The stored status; ``output`` is filled in once the instance completed
        (unless ``output=False``: then nothing is decoded)."""
        return self._status(self._meta(instance_id), with_output=output)

    def _status(self, meta: InstanceMeta, with_output: bool) -> WorkflowStatus:
        """The status of ``meta`` (its records read; its output decoded if asked)."""
        state, message = _state(meta, self.backend), meta.message
        readable = state not in (RunState.DAMAGED, RunState.UNREADABLE)  # a store lists such metas too
        records = self.backend.get_records(meta.instance_id) if readable else {}
        damaged = [rid for rid, record in records.items() if record.codec == DAMAGED_CODEC]
        if damaged:
            state = RunState.DAMAGED
            message = f"the checkpoint of {damaged[0]!r} is damaged: " + str(
                records[damaged[0]].extra.get("damage", "")
            )
        output = None
        if with_output and state == RunState.COMPLETED and meta.sinks:
            missing = [s for s in meta.sinks if s not in records]
            if missing:
                raise CheckpointCorruptError(
                    meta.instance_id, f"it is completed but the output of {missing[0]!r} is missing", task_id=missing[0]
                )
            io = CheckpointIO(self.backend, meta.instance_id, self.codec)
            values = {s: io.read(records[s], records.get) for s in meta.sinks}
            output = values[meta.sinks[0]] if len(meta.sinks) == 1 else values
        return WorkflowStatus(
            workflow=meta.workflow,
            instance_id=meta.instance_id,
            state=state,
            output=output,
            error=TaskError.from_dict(meta.error) if meta.error else None,
            # a completed run's skipped route branches have no record but are done too
            tasks_done=meta.tasks_total
            if state == RunState.COMPLETED
            else sum(1 for line in meta.shape if line.split("|", 1)[0] in records),
            tasks_total=meta.tasks_total,
            wake_at=meta.wake_at,
            signal=meta.signal,
            message=message,
        )

    def is_running(self, instance_id: str) -> bool:
        """True while some runner holds the instance (in any process)."""
        return self.backend.is_locked(validate_instance_id(instance_id))

    def get_task_result(self, instance_id: str, task_id: str) -> Any:
        """The checkpointed output of ``task_id`` (UnknownTaskError if none yet);
        ``instance_id`` may also be a workflow name (its instance)."""
        meta = self._meta(instance_id)
        record = self.backend.get_record(meta.instance_id, task_id)
        if record is None or task_id == INPUT_KEY:
            known = [line.split("|", 1)[0] for line in meta.shape]
            raise UnknownTaskError(meta.workflow, f"{task_id} (no checkpoint yet)", known)
        return CheckpointIO(self.backend, meta.instance_id, self.codec).read(record)

    # -- steering -----------------------------------------------------------------------
    def cancel(self, instance_id: str, reason: str = "", by: str = "") -> None:
        """Ask a running instance to stop; a stopped one is marked cancelled."""
        self._request(instance_id, RunState.CANCELLED, _why(reason, by, "cancelled"))

    def pause(self, instance_id: str, reason: str = "", by: str = "") -> None:
        """Ask a running instance to stop after its running tasks finish."""
        self._request(instance_id, RunState.PAUSED, _why(reason, by, "paused"))

    def unpause(self, instance_id: str, by: str = "") -> None:
        """Lift a pause. A paused instance goes back to "pending": a ``PooledWorker``
        on the store continues it, and so does ``runner.resume``. (A run that was asked
        to pause and has not stopped yet simply goes on.)"""
        meta = self._meta(instance_id)
        self.backend.set_control(meta.instance_id, None)  # first: a worker seeing the request would re-pause
        if meta.state == RunState.PAUSED:
            lifecycle.transition(meta, RunState.PENDING, by=by or _CLIENT, message=_why("", by, "unpaused"))
            self.backend.save_instance(meta)

    def revive(self, instance_id: str, by: str = "") -> None:
        """Let a cancelled instance run again: it goes back to "pending" (its finished
        tasks kept) for a ``PooledWorker`` or a resume to continue. Nothing happens to an
        instance in any other state. In this process, ``runner.resume(wf, id,
        revive=True)`` does the same and runs it."""
        meta = self._meta(instance_id)
        if meta.state != RunState.CANCELLED:
            return
        self.backend.set_control(meta.instance_id, None)
        message = _why("", by, "revived")
        lifecycle.transition(meta, RunState.PENDING, by=by or _CLIENT, message=message, reopen=True, error=None)
        self.backend.save_instance(meta)

    def _request(self, instance_id: str, action: RunState, reason: str) -> None:
        """Store the request for a running instance; move a stopped one at once (one
        that cannot move so — completed, failed, cancelled — is left as it is)."""
        meta = self._meta(instance_id)
        self.backend.set_control(meta.instance_id, action, reason)
        locked = self.backend.is_locked(meta.instance_id)
        if not locked and lifecycle.try_transition(meta, action, by=_CLIENT, message=reason):
            self.backend.save_instance(meta)

    def submit(self, wf: Any, instance_id: str, input: Any = None) -> WorkflowStatus:  # noqa: A002
        """Enqueue a new instance (state "pending") for a ``PooledWorker`` to run.

        Raises ``InstanceExistsError`` if the id is taken."""
        definition = as_definition(wf)
        validate_instance_id(instance_id)
        lease = self.backend.lock(instance_id, holder="submit")
        try:
            existing = self.backend.load_instance(instance_id)
            if existing is not None:
                raise InstanceExistsError(existing.workflow, instance_id, existing.state)
            io = CheckpointIO(self.backend, instance_id, definition.codec or PickleCodec())
            io.types = record_types(definition)  # a model input is stored as JSON with JsonCodec
            meta, _ = new_instance(definition, io, input, state=RunState.PENDING)
            self.backend.save_instance(meta)
        finally:
            lease.release()
        return self._status(meta, with_output=False)

    def send_signal(self, instance_id: str, name: str, payload: Any = None) -> None:
        """Buffer a signal (FIFO per name); it may arrive before the workflow waits.

        Raises ``SignalRefusedError`` if the instance completed, failed or was cancelled
        (nothing would consume the signal), and ``CodecError`` if the payload cannot be
        encoded."""
        meta = self._meta(instance_id)
        state = _state(meta)
        if state in _DEAF:
            raise SignalRefusedError(meta.instance_id, name, str(state))
        # The instance's own codec: a JsonCodec workflow reads its signals as JSON only.
        codec = codec_by_name(meta.codec)
        buffer = io.BytesIO()
        try:
            codec.dump(payload, buffer)
            data = buffer.getvalue()
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, named for the signal
            detail = exc.detail if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"
            raise CodecError(codec.name, name, detail, what=f"the payload of signal {name!r}") from None
        self.backend.push_signal(meta.instance_id, name, data)

    def clear(self, instance_id: str) -> bool:
        """Delete an instance and all its checkpoints (refused while it runs)."""
        validate_instance_id(instance_id)
        lease = self.backend.lock(instance_id, holder="clear")
        try:
            return self.backend.delete_instance(instance_id)
        finally:
            lease.release()


_DEAF = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)  # states no signal can reach
_CLIENT = "WorkflowClient"


def _state(meta: InstanceMeta, backend: Backend | None = None) -> RunState:
    """The instance's state; with ``backend``, a dead run reads interrupted (live_state)."""
    try:
        return RunState(meta.state if backend is None else live_state(backend, meta))
    except ValueError:
        return RunState.FAILED


def _why(reason: str, by: str, verb: str) -> str:
    text = reason or verb
    return f"{text} by {by}" if by else text
