"""WorkflowClient: look at and steer stored instances from anywhere that reaches the store.

The client never runs tasks. It reads instance records, and writes requests the
running engine picks up at its next task boundary (cancel, pause), or that a later run
consumes (signals, buffered FIFO per name). It works across processes on a shared
``DiskcacheBackend`` — that is how the CLI cancels a run started by a notebook.
"""

from __future__ import annotations

import io
import time
from typing import Any

from nbflow.core.codecs import Codec, PickleCodec, codec_by_name
from nbflow.core.errors import (
    CodecError,
    ConfigurationError,
    InstanceExistsError,
    SignalRefusedError,
    UnknownInstanceError,
    UnknownTaskError,
)
from nbflow.core.status import RunState, TaskError, WorkflowStatus
from nbflow.run.checkpoint import CheckpointIO
from nbflow.store.base import INPUT_KEY, Backend, InstanceMeta, validate_instance_id

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
        meta = self.backend.load_instance(validate_instance_id(instance_id))
        if meta is None:
            raise UnknownInstanceError(instance_id, repr(self.backend))
        return meta

    # -- reading ------------------------------------------------------------------------
    def list_instances(self, workflow: str | None = None, state: str | None = None) -> list[WorkflowStatus]:
        """Stored instances, newest first, optionally filtered by workflow and state."""
        metas = [
            m
            for m in self.backend.list_instances()
            if (workflow is None or m.workflow == workflow) and (state is None or m.state == str(state))
        ]
        metas.sort(key=lambda m: m.updated_at, reverse=True)
        return [self._status(m, with_output=False) for m in metas]

    def status(self, instance_id: str, output: bool = True) -> WorkflowStatus:
        """The stored status; ``output`` is filled in once the instance completed
        (unless ``output=False``: then nothing is decoded)."""
        return self._status(self._meta(instance_id), with_output=output)

    def _status(self, meta: InstanceMeta, with_output: bool) -> WorkflowStatus:
        records = self.backend.get_records(meta.instance_id) if meta.state != "damaged" else {}
        output = None
        state = _state(meta)
        if with_output and state == RunState.COMPLETED and meta.sinks:
            io = CheckpointIO(self.backend, meta.instance_id, self.codec)
            values = {s: io.read(records[s], records.get) for s in meta.sinks if s in records}
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
            message=meta.message,
        )

    def is_running(self, instance_id: str) -> bool:
        """True while some runner holds the instance (in any process)."""
        return self.backend.is_locked(validate_instance_id(instance_id))

    def get_task_result(self, instance_id: str, task_id: str) -> Any:
        """The checkpointed output of ``task_id`` (UnknownTaskError if none yet)."""
        meta = self._meta(instance_id)
        record = self.backend.get_record(instance_id, task_id)
        if record is None or task_id == INPUT_KEY:
            known = [line.split("|", 1)[0] for line in meta.shape]
            raise UnknownTaskError(meta.workflow, f"{task_id} (no checkpoint yet)", known)
        return CheckpointIO(self.backend, instance_id, self.codec).read(record)

    # -- steering -----------------------------------------------------------------------
    def cancel(self, instance_id: str, reason: str = "", by: str = "") -> None:
        """Ask a running instance to stop; a stopped one is marked cancelled."""
        self._request(instance_id, "cancelled", _why(reason, by, "cancelled"))

    def pause(self, instance_id: str, reason: str = "", by: str = "") -> None:
        """Ask a running instance to stop after its running tasks finish."""
        self._request(instance_id, "paused", _why(reason, by, "paused"))

    def unpause(self, instance_id: str) -> None:
        """Lift a pause; resume the instance (runner.resume) to continue it."""
        meta = self._meta(instance_id)
        self.backend.set_control(instance_id, None)
        if meta.state == RunState.PAUSED:
            meta.state, meta.updated_at, meta.message = RunState.INTERRUPTED.value, time.time(), "unpaused"
            self.backend.save_instance(meta)

    def _request(self, instance_id: str, action: str, reason: str) -> None:
        meta = self._meta(instance_id)
        self.backend.set_control(instance_id, action, reason)
        if not self.backend.is_locked(instance_id) and not RunState(_state(meta)).finished:
            meta.state, meta.message, meta.updated_at = action, reason, time.time()
            self.backend.save_instance(meta)

    def submit(self, wf: Any, instance_id: str, input: Any = None) -> WorkflowStatus:  # noqa: A002
        """Enqueue a new instance (state "pending") for a ``PooledWorker`` to run.

        Raises ``InstanceExistsError`` if the id is taken."""
        from nbflow.run.runner import as_definition, new_instance

        definition = as_definition(wf)
        validate_instance_id(instance_id)
        lease = self.backend.lock(instance_id, holder="submit")
        try:
            existing = self.backend.load_instance(instance_id)
            if existing is not None:
                raise InstanceExistsError(existing.workflow, instance_id, existing.state)
            io = CheckpointIO(self.backend, instance_id, definition.codec or PickleCodec())
            meta, _ = new_instance(definition, io, input, state=RunState.PENDING.value)
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
            raise SignalRefusedError(instance_id, name, str(state))
        # The instance's own codec: a JsonCodec workflow reads its signals as JSON only.
        codec = codec_by_name(meta.codec)
        buffer = io.BytesIO()
        try:
            codec.dump(payload, buffer)
            data = buffer.getvalue()
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, named for the signal
            detail = exc.detail if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"
            raise CodecError(codec.name, name, detail, what=f"the payload of signal {name!r}") from None
        self.backend.push_signal(instance_id, name, data)

    def clear(self, instance_id: str) -> bool:
        """Delete an instance and all its checkpoints (refused while it runs)."""
        validate_instance_id(instance_id)
        lease = self.backend.lock(instance_id, holder="clear")
        try:
            return self.backend.delete_instance(instance_id)
        finally:
            lease.release()


_DEAF = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)  # states no signal can reach


def _state(meta: InstanceMeta) -> RunState:
    try:
        return RunState(meta.state)
    except ValueError:
        return RunState.FAILED


def _why(reason: str, by: str, verb: str) -> str:
    text = reason or verb
    return f"{text} by {by}" if by else text
