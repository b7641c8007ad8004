"""CheckpointingRunner: run, resume, start and re-run durable workflow instances.

A run goes in two steps. *Prepare* happens on the caller's thread: take the instance
lock, apply the conflict policy, check the shape, load the checkpoint records in one
pass, and compute the plan (restore / stale / run per task). Errors there — a taken id,
a changed shape, a locked instance — raise at once, before anything runs. *Execute*
happens on an engine thread (see ``handle.py``): the scheduler runs the plan while the
runner publishes events, then stores the final state and releases the lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from nbflow.core.builder import WorkflowBuilder
from nbflow.core.codecs import Codec, PickleCodec
from nbflow.core.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    InstanceExistsError,
    NbflowError,
    ShapeChangedError,
    TaskChangedError,
    UnknownInstanceError,
    WorkflowMismatchError,
)
from nbflow.core.graph import WorkflowDefinition
from nbflow.core.status import ConflictPolicy, RunState, TaskError, WorkflowStatus
from nbflow.core.typed import record_types
from nbflow.run import capture, lifecycle
from nbflow.run import events as ev
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.client import WorkflowClient
from nbflow.run.control import RunControl
from nbflow.run.group_commit import MAX_WINDOW, GroupCommit
from nbflow.run.handle import RunHandle, launch
from nbflow.run.instances import as_definition, new_instance
from nbflow.run.lookup import resolve_instance
from nbflow.run.plan import RESTORE, SKIP, PlanStep, changed_tasks, compute_plan
from nbflow.run.scheduler import Scheduler
from nbflow.run.stale import accept as accept_task
from nbflow.run.stale import explain_plan, record_notes
from nbflow.run.step_host import EngineSettings
from nbflow.run.threads import TaskThreads
from nbflow.store.base import (
    DAMAGED_CODEC,
    INPUT_KEY,
    Backend,
    CheckpointRecord,
    InstanceMeta,
    Lease,
    validate_instance_id,
)

__all__ = ["CheckpointingRunner"]

ON_CHANGE = ("rerun", "fail")


@dataclass
class _Prepared:
    wf: WorkflowDefinition
    meta: InstanceMeta
    records: dict[str, CheckpointRecord]
    plan: dict[str, PlanStep]
    input_value: Any
    io: CheckpointIO
    lease: Lease
    resumed: bool
    control: RunControl = field(default_factory=RunControl)
    reasons: Mapping[str, Any] = field(default_factory=dict)  # task id -> StaleReason


def describe_shape_change(old: Iterable[str], new: Iterable[str]) -> list[str]:
    """Human words for the difference between two stored shapes."""
    old_map = {line.split("|", 1)[0]: line for line in old}
    new_map = {line.split("|", 1)[0]: line for line in new}
    changes = [f"task {t!r} added" for t in new_map if t not in old_map]
    changes += [f"task {t!r} removed" for t in old_map if t not in new_map]
    for tid, line in new_map.items():
        if tid in old_map and old_map[tid] != line:
            old_parts, new_parts = old_map[tid].split("|"), line.split("|")
            what = "inputs" if old_parts[3] != new_parts[3] or old_parts[4] != new_parts[4] else "settings"
            changes.append(f"{what} of task {tid!r} changed")
    return changes or ["the order of tasks changed"]


class CheckpointingRunner:
    """Runs workflows durably: every finished task is checkpointed to ``backend``.

    Args:
        backend: where checkpoints live; default ``DiskcacheBackend("./.nbflow")``.
        conflict_policy: what ``run`` does with an existing instance id (default FAIL).
        on_change: "rerun" re-runs tasks whose code changed (and everything downstream)
            when an instance resumes; "fail" refuses with ``TaskChangedError``.
        codec: default codec for outputs (a workflow's own codec wins); PickleCodec.
        max_threads: threads for sync tasks that run side by side (fork branches).
        echo_output: also print tasks' stdout/stderr (it is always captured and stored).
        inline_sync: run a sync task on the engine thread when nothing else could run
            beside it (fast); the notebook turns this off so an interrupt never waits
            for a running task.
        executor: run task bodies elsewhere (``DaskExecutor``, ``ProcessExecutor``).
        worker_id: a name stored with each checkpoint (default host:pid).
        group_commit: seconds (at most 0.05; default 0: off) a finished task's record
            may wait to be written in one transaction with the records of the tasks
            that finish after it. For workflows of sub-millisecond tasks it cuts the
            cost of a checkpoint several times; a task is still reported done only
            once its record is durable. The price: a crash loses the records of the
            last window, and those tasks (which all finished in it) run again on resume.

    >>> from nbflow import InMemoryBackend, Workflow
    >>> wf = Workflow("double").then(lambda x: 2 * x).build()
    >>> CheckpointingRunner(InMemoryBackend()).run(wf, "d-1", 21).output
    42
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        conflict_policy: ConflictPolicy | str = ConflictPolicy.FAIL,
        on_change: str = "rerun",
        codec: Codec | None = None,
        max_threads: int = 64,
        echo_output: bool = True,
        inline_sync: bool = True,
        executor: Any = None,
        worker_id: str | None = None,
        group_commit: float = 0.0,
    ) -> None:
        if backend is None:
            from nbflow.store.disk import DiskcacheBackend

            backend = DiskcacheBackend(".nbflow")
        if not isinstance(backend, Backend):
            raise ConfigurationError("backend", backend, "InMemoryBackend(), DiskcacheBackend(path) or another Backend")
        if on_change not in ON_CHANGE:
            raise ConfigurationError("on_change", on_change, "'rerun' or 'fail'")
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ConfigurationError("max_threads", max_threads, "a whole number >= 1")
        self._backend = backend
        self.conflict_policy = ConflictPolicy.coerce(conflict_policy)
        self.on_change = on_change
        self.codec = codec or PickleCodec()
        self.max_threads = max_threads
        self.echo_output = echo_output
        self.inline_sync = inline_sync
        self.executor = executor
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        if (
            isinstance(group_commit, bool)
            or not isinstance(group_commit, int | float)
            or not 0 <= group_commit <= MAX_WINDOW
        ):
            raise ConfigurationError(
                "group_commit", group_commit, f"seconds between 0 (off) and {MAX_WINDOW}, e.g. 0.002"
            )
        self.group_commit = float(group_commit)
        self.events = ev.EventBus()
        self._pool: TaskThreads | None = None
        self._pool_lock = threading.Lock()
        self._client = WorkflowClient(backend)  # reads stored statuses and results

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_shared(cls, backend: Backend, **options: Any) -> Self:
        """A runner on a backend shared with other runners, clients and workers."""
        return cls(backend, **options)

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def _by(self) -> str:
        """Who this runner is, in the lifecycle's record of state changes."""
        return f"runner {self.worker_id}"

    def with_conflict_policy(self, policy: ConflictPolicy | str) -> Self:
        """This runner with another conflict policy (same backend, same subscribers)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.conflict_policy = ConflictPolicy.coerce(policy)
        return clone

    def subscribe(
        self, subscriber: Callable[[ev.RunEvent], None], kinds: Iterable[ev.EventKind | type[ev.RunEvent]] | None = None
    ) -> Callable[[], None]:
        """Receive this runner's events; returns the function that unsubscribes."""
        return self.events.subscribe(subscriber, kinds)

    def _threads(self) -> Any:
        if self.executor is not None:
            return self.executor
        with self._pool_lock:
            if self._pool is None:
                self._pool = TaskThreads(self.max_threads, "nbflow-task")  # gives up timed-out threads
            return self._pool

    # -- the public verbs ---------------------------------------------------------------
    def run(self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str, input: Any = None) -> WorkflowStatus:  # noqa: A002
        """Run an instance to its end and return its status (completed, failed, ...).

        With an existing ``instance_id`` the conflict policy decides: FAIL raises
        ``InstanceExistsError``, USE_EXISTING continues it (its stored input is used),
        TERMINATE_EXISTING discards it and starts over. Ctrl-C (or the notebook's
        stop button) stops the run cleanly, marks it interrupted and re-raises.
        """
        return self._wait(self._launch(self._prepare(wf, instance_id, input, resume=False), park=True))

    def resume(
        self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str, *, revive: bool = False
    ) -> WorkflowStatus:
        """Continue a stored instance: finished tasks are restored, the rest run.

        A failed instance re-runs its failed task (after you fixed it) and goes on. A
        paused instance is not run: its status comes back (state ``paused``, a message
        saying to unpause it first). Nor is a cancelled one, unless ``revive=True`` asks
        to run it again. See :mod:`nbflow.run.lifecycle`.
        """
        return self._wait(self._launch(self._prepare(wf, instance_id, None, resume=True, revive=revive), park=True))

    def rerun_from(self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str, task_id: str) -> WorkflowStatus:
        """Re-run ``task_id`` and everything downstream of it; reuse the rest.

        It names what to run again, so it also revives a cancelled instance; a paused
        one stays paused (its status comes back) until it is unpaused."""
        definition = as_definition(wf)
        definition.node(task_id)  # UnknownTaskError with the known ids
        prepared = self._prepare(definition, instance_id, None, resume=True, force=(task_id,))
        return self._wait(self._launch(prepared, park=True))

    def start(
        self,
        wf: WorkflowDefinition | WorkflowBuilder,
        instance_id: str,
        input: Any = None,  # noqa: A002 - the seed's (and DESIGN's) name
        *,
        resume: bool = False,
        revive: bool = False,
    ) -> RunHandle:
        """Start a run in the background; returns a handle (wait, cancel, status).

        A paused instance (or a cancelled one without ``revive``) is not run: the handle
        is already done, with its status (see ``resume``)."""
        return self._launch(self._prepare(wf, instance_id, input, resume=resume, revive=revive))

    async def run_async(
        self,
        wf: WorkflowDefinition | WorkflowBuilder,
        instance_id: str,
        input: Any = None,  # noqa: A002 - the seed's (and DESIGN's) name
    ) -> WorkflowStatus:
        """``await`` form of ``run``: the caller's event loop stays free meanwhile."""
        return await self._await(self._launch(self._prepare(wf, instance_id, input, resume=False), park=True))

    async def resume_async(
        self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str, *, revive: bool = False
    ) -> WorkflowStatus:
        """``await`` form of ``resume``."""
        prepared = self._prepare(wf, instance_id, None, resume=True, revive=revive)
        return await self._await(self._launch(prepared, park=True))

    def plan(self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str) -> dict[str, PlanStep]:
        """What a resume would do with each task: "restore", "stale" or "run"."""
        definition = as_definition(wf)
        records = self._backend.get_records(validate_instance_id(instance_id))
        return compute_plan(definition, records)

    def accept(self, wf: WorkflowDefinition | WorkflowBuilder, instance_id: str, task_id: str) -> CheckpointRecord:
        """Keep ``task_id``'s checkpoint valid for its current code after a cosmetic edit:
        the next run restores it instead of re-running it (and what depends on it).
        ``instance_id`` may be a workflow name (see :mod:`nbflow.run.lookup`)."""
        iid = resolve_instance(self._backend, instance_id).instance_id
        return accept_task(self._backend, as_definition(wf), iid, task_id)

    def status(self, instance_id: str) -> WorkflowStatus:
        """The stored status of an instance (output included once it completed)."""
        return self._client.status(instance_id)

    def get_task_result(self, instance_id: str, task_id: str) -> Any:
        """The checkpointed output of one task of an instance."""
        return self._client.get_task_result(instance_id, task_id)

    # -- prepare ------------------------------------------------------------------------
    def _prepare(
        self,
        wf: Any,
        instance_id: str,
        input_value: Any,
        *,
        resume: bool,
        force: tuple[str, ...] = (),
        revive: bool = False,
    ) -> _Prepared | WorkflowStatus:
        """The run, ready to launch; or the status of an instance the lifecycle holds
        (paused; cancelled without ``revive``), which nothing may run."""
        definition = as_definition(wf)
        validate_instance_id(instance_id)
        backend = self._backend
        codec = definition.codec or self.codec
        io = CheckpointIO(backend, instance_id, codec)
        io.types = record_types(definition)  # pydantic outputs stored as JSON are rebuilt as models
        lease = backend.lock(instance_id, holder=f"runner of {definition.name!r}")
        try:
            meta = backend.load_instance(instance_id)
            if not resume and meta is not None:
                if self.conflict_policy is ConflictPolicy.FAIL:
                    raise InstanceExistsError(meta.workflow, instance_id, meta.state)
                if self.conflict_policy is ConflictPolicy.TERMINATE_EXISTING:
                    backend.delete_instance(instance_id)
                    meta = None
            if resume and meta is None:
                raise UnknownInstanceError(instance_id, repr(backend))
            records: dict[str, CheckpointRecord]
            if meta is not None:
                if meta.workflow != definition.name:
                    raise WorkflowMismatchError(instance_id, meta.workflow, definition.name)
                if meta.definition_hash != definition.definition_hash:
                    raise ShapeChangedError(
                        definition.name, instance_id, describe_shape_change(meta.shape, definition.shape())
                    )
                hold = lifecycle.hold_reason(meta, revive=revive or bool(force))
                if hold is not None:
                    # as stored, with the reason as its message
                    held = dataclasses.replace(self._client.status(instance_id, output=False), message=hold)
                    lease.release()
                    return held
                records = backend.get_records(instance_id)
                input_record = records.get(INPUT_KEY)
                input_value = io.read(input_record) if input_record is not None else None
                resumed = True
            else:
                meta, record = new_instance(definition, io, input_value)
                records = {INPUT_KEY: record}
                resumed = False
            if self.on_change == "fail":
                changed = changed_tasks(definition, records)
                if changed:
                    raise TaskChangedError(definition.name, instance_id, changed)
            records = _without_repaired_damage(definition, instance_id, records, force)
            plan = compute_plan(definition, records, force)
            reasons = explain_plan(definition, records, plan, force=force)
            io.notes = record_notes(definition, plan, reasons)  # fingerprint breakdowns into records
            backend.set_control(instance_id, None)  # an old cancel/pause must not stop this run
            work = any(step not in (RESTORE, SKIP) for step in plan.values())
            # a completed instance with nothing to run is only replayed: it stays completed
            if lifecycle.begin_run(meta, by=self._by, work=work, revive=revive or bool(force)):
                backend.save_instance(meta)
        except BaseException:
            lease.release()
            raise
        control = RunControl(backend, instance_id)
        return _Prepared(definition, meta, records, plan, input_value, io, lease, resumed, control, reasons)

    # -- execute ------------------------------------------------------------------------
    def _launch(self, prep: _Prepared | WorkflowStatus, park: bool = False) -> RunHandle:
        """Start the prepared run on its engine thread. ``park``: a blocking run that
        reaches a signal nobody sent yet returns ``awaiting_signal`` (send the signal,
        then resume); a background run keeps waiting for it instead. A held instance
        (a status) gets a handle that is already done."""
        if isinstance(prep, WorkflowStatus):
            return _done_handle(prep)
        capture.install()
        meta = prep.meta

        def on_state(state: RunState, wake_at: float | None, signal: str | None) -> None:
            lifecycle.transition(meta, state, by=self._by, wake_at=wake_at, signal=signal)
            self._backend.save_instance(meta)

        group = None
        if self.group_commit:
            group = prep.io.group = GroupCommit(self._backend, meta.instance_id, self.group_commit)
        scheduler = Scheduler(
            wf=prep.wf,
            instance_id=prep.meta.instance_id,
            plan=prep.plan,
            records=prep.records,
            input_value=prep.input_value,
            io=prep.io,
            bus=self.events,
            control=prep.control,
            settings=EngineSettings(
                self._threads(),
                echo=self.echo_output,
                # a remote executor (Dask, processes) runs every body remotely, even a lone one
                inline_sync=self.inline_sync and not hasattr(self.executor, "submit_task"),
                worker=self.worker_id,
                park_on_signal=park,
            ),
            on_state=on_state,
        )
        wf = prep.wf

        async def body() -> WorkflowStatus:
            started = time.monotonic()
            self.events.publish(
                ev.RunStarted(
                    workflow=wf.name,
                    instance_id=meta.instance_id,
                    tasks=wf.task_ids,
                    edges=wf.edges,
                    kinds={n.id: n.kind for n in wf.nodes},
                    groups={n.id: n.group for n in wf.nodes if n.group},
                    plan=dict(prep.plan),
                    reasons={t: str(r) for t, r in prep.reasons.items()},
                    definition_hash=wf.definition_hash,
                    resumed=prep.resumed,
                )
            )

            def finished(state: RunState, error: str | None = None, failed_task: str | None = None) -> None:
                self.events.publish(
                    ev.RunFinished(
                        workflow=wf.name,
                        instance_id=meta.instance_id,
                        state=state,
                        duration=time.monotonic() - started,
                        error=error,
                        failed_task=failed_task,
                    )
                )

            try:
                try:
                    outcome = await scheduler.run()
                finally:
                    if group is not None:
                        group.close()
            except BaseException as exc:  # a store problem: recorded, announced, re-raised
                if lifecycle.allowed(meta.state, RunState.FAILED):  # a replayed completed instance stays so
                    crash = TaskError("", type(exc).__name__, str(exc)).to_dict()
                    lifecycle.transition(meta, RunState.FAILED, by=self._by, error=crash)
                    _save_quietly(self._backend, meta)
                finished(RunState.FAILED, str(exc))
                raise
            lifecycle.transition(
                meta,
                outcome.state,
                by=self._by,
                message=outcome.reason or None,
                signal=outcome.signal,
                wake_at=None,
                error=outcome.error.to_dict() if outcome.error else None,
            )
            self._backend.save_instance(meta)
            error = outcome.error
            finished(outcome.state, str(error) if error else None, error.task_id if error else None)
            return WorkflowStatus(
                workflow=wf.name,
                instance_id=meta.instance_id,
                state=RunState(outcome.state),
                output=outcome.output,
                error=outcome.error,
                tasks_done=outcome.done,
                tasks_total=outcome.total,
                message=outcome.reason,
                signal=outcome.signal,
            )

        def snapshot() -> WorkflowStatus:
            return WorkflowStatus(
                workflow=wf.name,
                instance_id=meta.instance_id,
                state=RunState(scheduler.state),
                tasks_done=scheduler.done,
                wake_at=meta.wake_at,
                signal=meta.signal,
                tasks_total=len(wf.nodes),
            )

        return launch(meta.instance_id, body, prep.control, snapshot, prep.lease.release)

    @staticmethod
    def _wait(handle: RunHandle) -> WorkflowStatus:
        try:
            return handle.wait()
        except KeyboardInterrupt:
            handle.cancel("interrupted (KeyboardInterrupt)", state=RunState.INTERRUPTED)
            try:
                handle.wait(timeout=30)
            except (KeyboardInterrupt, TimeoutError, NbflowError):
                pass
            raise

    @staticmethod
    async def _await(handle: RunHandle) -> WorkflowStatus:
        try:
            return await asyncio.shield(asyncio.wrap_future(handle.future))
        except asyncio.CancelledError:
            handle.cancel("the awaiting task was cancelled", state=RunState.CANCELLED)
            raise

    def __repr__(self) -> str:
        return f"CheckpointingRunner({self._backend!r}, conflict_policy={self.conflict_policy.name})"


def _without_repaired_damage(
    wf: WorkflowDefinition, instance_id: str, records: dict[str, CheckpointRecord], force: tuple[str, ...]
) -> dict[str, CheckpointRecord]:
    """Drop damaged records that this run re-runs anyway (``rerun_from`` of the task or
    of something upstream of it); any other damaged record stops the run: it would
    otherwise be recomputed without anyone being told."""
    damaged = [rid for rid, record in records.items() if record.codec == DAMAGED_CODEC]
    if not damaged:
        return records
    rerun = set(force).union(*(wf.descendants(f) for f in force))
    for rid in damaged:
        task = re.split(r"[\[#]", rid, maxsplit=1)[0]  # a map item or loop iteration belongs to its step
        if task not in rerun:
            raise CheckpointCorruptError(instance_id, str(records[rid].extra.get("damage", "")), task_id=task)
    return {rid: record for rid, record in records.items() if record.codec != DAMAGED_CODEC}


def _done_handle(status: WorkflowStatus) -> RunHandle:
    """A handle whose run is already over (nothing was started)."""
    future: concurrent.futures.Future[WorkflowStatus] = concurrent.futures.Future()
    future.set_result(status)
    return RunHandle(status.instance_id, future, RunControl(), lambda: status, threading.current_thread())


def _save_quietly(backend: Backend, meta: InstanceMeta) -> None:
    try:
        backend.save_instance(meta)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
