"""The engine loop: runs one instance's DAG on asyncio, checkpointing each step.

Steps planned "restore" are done before anything runs (their outputs load lazily, only
if a running step needs them); steps planned "skip" (a route chose another branch) are
marked skipped. The rest run as soon as their inputs are ready, ordered by priority;
independent steps overlap (sync ones in threads, async ones on the loop). When nothing
else could run at the same time, a sync task runs on the engine thread itself: a plain
chain then costs no thread hop per task.

A failed task stops new launches; tasks already running finish and are checkpointed,
so their work is never lost. A stop request (cancel, interrupt, pause) is seen at every
task boundary, from this process (``RunControl``) or another (the backend's control
key, polled a few times a second).

What each step does lives in ``steps.py`` (one function per node kind, in one table);
this module decides *when* each step runs, and is the host the steps run in
(:class:`~nbflow.run.step_host.StepHost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from nbflow.core.context import TaskContext
from nbflow.core.errors import CodecError, TaskInputError
from nbflow.core.graph import Node, Source, WorkflowDefinition
from nbflow.core.status import RunState, TaskError
from nbflow.core.typed import types_of
from nbflow.core.vocabulary import NodeKind, PassMode
from nbflow.run import events as ev
from nbflow.run.attempts import RetryLedger, call_sync, is_awaitable, run_attempt
from nbflow.run.attempts import is_async as is_coroutine_function
from nbflow.run.capture import Capture
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.control import POLL_INTERVAL, RunControl
from nbflow.run.live import LiveHub
from nbflow.run.outcomes import Outcome, Parked, StepFailed
from nbflow.run.plan import RESTORE, SKIP, PlanStep
from nbflow.run.step_host import EngineSettings, attempt_fields
from nbflow.run.steps import STEPS
from nbflow.store.base import INPUT_KEY, CheckpointRecord

__all__ = ["Scheduler"]

# steps that may run on the engine thread when nothing else could run beside them
_INLINE_KINDS = (NodeKind.TASK, NodeKind.ROUTE, NodeKind.MERGE, NodeKind.COLLECT, NodeKind.LOOP)


_MISSING = object()


class Scheduler:
    """Runs one instance of ``wf`` given its plan and stored records; the
    :class:`~nbflow.run.step_host.StepHost` of its steps.

    Args:
        wf, instance_id: what runs.
        plan: what to do with each step (``compute_plan``).
        records: the instance's stored records by id (kept up to date as steps commit).
        input_value: the workflow input.
        io: reads and writes the instance's records.
        bus: where events go.
        control: stop requests for this run.
        settings: how steps run (executor, echo, inline, worker name, parking).
        on_state: told where the run stands (waiting, awaiting_signal, running).
        skipped: steps already known to be skipped (a worker's unit: from the plan).
    """

    def __init__(
        self,
        *,
        wf: WorkflowDefinition,
        instance_id: str,
        plan: dict[str, PlanStep],
        records: dict[str, CheckpointRecord],
        input_value: Any,
        io: CheckpointIO,
        bus: ev.EventBus,
        control: RunControl,
        settings: EngineSettings,
        on_state: Callable[[RunState, float | None, str | None], None] | None = None,
        skipped: Iterable[str] = (),
    ) -> None:
        self.wf, self.instance_id, self.plan = wf, instance_id, plan
        self.records, self.input_value, self.io = records, input_value, io
        self.bus, self.control, self.settings, self.on_state = bus, control, settings, on_state
        self.state = RunState.RUNNING
        self._values: dict[str, Any] = {}
        self._consumers = {n.id: len(wf.children(n.id)) for n in wf.nodes}
        self._sinks = set(wf.sinks)
        self._running: dict[asyncio.Task[None], str] = {}
        self._contexts: dict[str, TaskContext] = {}
        self.branch_of: dict[str, str] = {}
        self.skipped: set[str] = set(skipped)
        self._error: TaskError | None = None
        self._crash: BaseException | None = None
        self._parked: Parked | None = None
        self.cancel_event = threading.Event()  # set when the run stops; each attempt's own flag follows it
        self.retries = RetryLedger(io.backend, instance_id)  # attempt counts that survive a restart
        # live output, progress and saved states of running tasks (shares the task states)
        self.live = LiveHub(self.publish, io, self.retries.states, records)
        self._stopping = asyncio.Event()  # set on the loop by a stop request: ends retry waits
        self._async_cache: dict[int, bool] = {}
        self.done = 0

    def is_async(self, fn: Callable[..., Any]) -> bool:
        """is_async(fn), computed once per function per run (inspect is slow)."""
        flag = self._async_cache.get(id(fn))
        if flag is None:
            flag = self._async_cache[id(fn)] = is_coroutine_function(fn)
        return flag

    # -- values -----------------------------------------------------------------------
    def publish(self, event_type: type[ev.RunEvent], **fields: Any) -> None:
        """Build and deliver an event, only when some subscriber takes its kind."""
        if self.bus.wants(event_type):
            self.bus.publish(event_type(workflow=self.wf.name, instance_id=self.instance_id, **fields))

    def lookup(self, task_id: str) -> CheckpointRecord | None:
        return self.records.get(task_id)

    def value(self, task_id: str) -> Any:
        if task_id == INPUT_KEY:
            return self.input_value
        value = self._values.get(task_id, _MISSING)
        if value is _MISSING:
            value = self.io.read(self.records[task_id], self.lookup)
            self._values[task_id] = value
        return value

    def get(self, src: Source) -> Any:
        value = self.input_value if src.task is None else self.value(src.task)
        return value if src.key is None else value[src.key]

    def arguments(self, node: Node) -> tuple[list[Any], dict[str, Any]]:
        get = self.get
        args: list[Any]
        kwargs: dict[str, Any]
        if node.mode == PassMode.VALUE:
            args, kwargs = [get(node.params[0][1])], {}
        elif node.mode == PassMode.DICT:
            args, kwargs = [{key: get(src) for key, src in node.params}], {}
        elif node.mode == PassMode.KWARGS:
            args, kwargs = [], {name: get(src) for name, src in node.params}
        else:
            args, kwargs = [], {}
        self.release(node)
        return args, kwargs

    def release(self, node: Node) -> None:
        """Free outputs nobody needs any more (big intermediate values)."""
        for dep in node.deps:
            self._consumers[dep] -= 1
            if self._consumers[dep] <= 0 and dep not in self._sinks:
                self._values.pop(dep, None)

    def set_state(self, state: RunState, wake_at: float | None = None, signal: str | None = None) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state, wake_at, signal)

    def _tell_tasks(self) -> None:
        """Set running tasks' ``cancelled`` flags from the thread asking for the stop."""
        self.cancel_event.set()
        for tctx in list(self._contexts.values()):
            tctx.cancel_event.set()

    def _on_stop(self) -> None:
        """Called on the loop when a stop is requested: cancel what can be cancelled."""
        requested = self.control.requested
        if requested is None:
            return
        self._stopping.set()  # a retry wait ends now, for a pause too (its state is stored)
        for task, task_id in self._running.items():
            if requested[0] != RunState.PAUSED or self.wf.node(task_id).kind.waits:
                task.cancel()  # a pause lets running tasks finish and checkpoint, but stops waits
        if requested[0] != RunState.PAUSED:
            self._tell_tasks()

    # -- attempts and commits -----------------------------------------------------------
    async def attempts(
        self,
        node: Node,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        task_id: str,
        inline: bool,
        failed: Exception | None = None,
    ) -> tuple[Any, Capture, int, float]:
        """Run ``fn`` with ``node``'s retry policy and timeout; raises StepFailed.

        The count continues where a stopped run left it (``RetryLedger``): attempt n+1
        after the stored attempt n, once the stored retry time has come. ``failed``:
        attempt 1 already ran elsewhere (a chunk of map items) and raised this.

        Arguments and output are validated against ``fn``'s pydantic annotations, if it
        has any (:mod:`nbflow.core.typed`); an invalid argument fails the step at once."""
        typed = types_of(fn)  # None for a function without model annotations: called as is
        if typed is not None:
            try:
                args, kwargs = typed.inputs(task_id, args, kwargs)
            except TaskInputError as exc:
                raise self.failure(task_id, exc) from None
        policy = node.spec.retry
        attempt = 0
        if failed is not None:
            attempt = 1
            await self._after_failure(node, task_id, attempt, failed)
        elif policy.max_retries:
            resumed = self.retries.resume(task_id, node.fingerprint, self.records.get(task_id))
            if resumed is not None:
                attempt, wait, error = resumed
                wait = min(wait, policy.delay_before(attempt))  # never longer than the policy's wait
                self.publish(ev.TaskRetrying, task_id=task_id, attempt=attempt, delay=wait, error=error)
                await self._backoff(wait)
        # a plain function the engine runs on its own thread, without a timeout: called here
        direct = inline and node.spec.timeout is None and not self.is_async(fn)
        while True:
            attempt += 1
            started = time.time()
            self.publish(ev.TaskStarted, task_id=task_id, attempt=attempt, worker=self.settings.worker)
            # An attempt with a timeout has its own cancel flag, which its timeout sets;
            # a stop of the run sets every running attempt's (_tell_tasks). Without a
            # timeout the run's flag serves (no Event to make per attempt).
            cancel = self.cancel_event
            if node.spec.timeout is not None:
                cancel = threading.Event()
                if self.cancel_event.is_set():
                    cancel.set()
            live = self.live.attempt(node, task_id, attempt)
            tctx = TaskContext.of_attempt(
                self.wf.name, self.instance_id, task_id, attempt, self.wf.metadata, cancel, live
            )
            self._contexts[task_id] = tctx
            try:
                if direct:
                    value, cap = call_sync(fn, args, kwargs, tctx, self.settings.echo)
                    if is_awaitable(value):  # a plain function that returned a coroutine
                        value = await value
                else:
                    value, cap = await run_attempt(
                        fn,
                        args,
                        kwargs,
                        tctx,
                        timeout=node.spec.timeout,
                        executor=self.settings.executor,
                        echo=self.settings.echo,
                        is_coroutine=self.is_async(fn),
                    )
                if typed is not None and typed.result is not None:
                    value = typed.output(task_id, value)  # TaskOutputError: a failed attempt
            except Exception as exc:  # noqa: BLE001 - the task's own error: retried or reported below
                live.close(ok=False)  # first: TaskFailed carries what the attempt printed
                await self._after_failure(node, task_id, attempt, exc)
                continue
            except BaseException:
                live.close(ok=False)  # cut short (a stop, a timeout): what it printed is kept
                raise
            finally:
                self._contexts.pop(task_id, None)
            live.close(ok=True)
            return value, cap, attempt, started

    async def _after_failure(self, node: Node, task_id: str, attempt: int, exc: Exception) -> None:
        """Attempt ``attempt`` raised ``exc``: store the count and wait for the retry, or
        raise StepFailed (no retries left) or CancelledError (the run is stopping)."""
        stop = self.control.requested
        if stop is not None and stop[0] != RunState.PAUSED:
            # It gave up because the run is being stopped (it saw ctx.cancelled):
            # a stop, not a failure, as when a task running in a thread is cancelled.
            raise asyncio.CancelledError(stop[1]) from exc
        policy = node.spec.retry
        if attempt > policy.max_retries:
            raise self.failure(task_id, exc, attempt) from exc
        delay = policy.delay_before(attempt)
        # Durable before the retry: a kill during the wait (or the retry) resumes here.
        self.retries.failed(task_id, node.fingerprint, attempt, next_retry_at=time.time() + delay, error=_short(exc))
        self.publish(ev.TaskRetrying, task_id=task_id, attempt=attempt, delay=delay, error=_short(exc))
        await self._backoff(delay)

    async def _backoff(self, seconds: float) -> None:
        """Wait before a retry. A stop request (a pause too) ends the wait and raises
        CancelledError: the count is stored, so the next run makes the retry."""
        if seconds > 0 and not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                pass
        stop = self.control.poll()
        if stop is not None:
            raise asyncio.CancelledError(stop[1])

    def failure(self, task_id: str, exc: BaseException, attempt: int = 1, message: str | None = None) -> StepFailed:
        """The StepFailed to raise for ``task_id`` failing for good (announced here)."""
        with contextlib.suppress(Exception):  # a batch that cannot be written fails the run at its end
            self.io.flush()  # tasks that finished before this one are announced before its failure
        self.retries.settle(task_id)  # a later resume of the failed instance starts its policy over
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        error = TaskError(task_id, type(exc).__name__, message or str(exc), tb, attempt)
        out, err = self.live.last_output(task_id)  # what the failed attempt printed
        self.publish(
            ev.TaskFailed,
            task_id=task_id,
            attempt=attempt,
            error=f"{error.type}: {error.message}",
            traceback=tb,
            stdout=out,
            stderr=err,
            **self.live.display_fields(task_id),  # what the failed attempt displayed
        )
        return StepFailed(error)

    def commit(
        self,
        node: Node,
        value: Any,
        *,
        attempt: int = 1,
        started: float | None = None,
        cap: Capture | None = None,
        extra: dict[str, Any] | None = None,
        ref: str | None = None,
        record: CheckpointRecord | None = None,
    ) -> None:
        """Checkpoint a step's output (or a reference to where it already lives), then
        announce it. After this returns, the step is durably done — or, with a group
        commit, queued to be, and announced (its retry and saved states dropped) once
        its batch is durable."""
        finished = time.time()
        started = finished if started is None else started
        by_ref = ref is not None or bool(extra and "items" in extra)
        fields = attempt_fields(
            value, cap, attempt, self.settings.worker, started=started, finished=finished, rich=not by_ref
        )
        deferred = False
        if record is None:
            try:
                if by_ref:
                    record = self.io.write_ref(
                        node.id, node.fingerprint, {**(extra or {}), **({"ref": ref} if ref else {})}, **fields
                    )
                elif self.io.group is not None:
                    deferred = True
                    announce = functools.partial(self._announce, node.id, attempt, finished - started)
                    record = self.io.write_soon(node.id, node.fingerprint, value, announce, extra=extra or {}, **fields)
                else:
                    record = self.io.write(node.id, node.fingerprint, value, extra=extra or {}, **fields)
            except CodecError as exc:
                raise self.failure(node.id, exc, attempt) from exc
        self.records[node.id] = record
        if self._consumers[node.id] or node.id in self._sinks:
            self._values[node.id] = value
        self.done += 1
        self.control.boundary()
        if not deferred:
            self._announce(node.id, attempt, finished - started, record)

    def _announce(self, task_id: str, attempt: int, duration: float, record: CheckpointRecord) -> None:
        """A step's record is durable: drop what it no longer needs, and say it is done."""
        self.retries.settle(task_id)  # after the record: a kill in between leaves a state the record outdates
        self.live.settled((task_id,))  # its own saved state is no longer needed
        if not self.bus.wants(ev.TaskFinished):  # nobody listens: its fields are not even gathered
            self.live.forget_displays(task_id)
            return
        self.publish(
            ev.TaskFinished,
            task_id=task_id,
            attempt=attempt,
            duration=duration,
            preview=record.preview,
            stdout=record.stdout,
            stderr=record.stderr,
            worker=record.worker or self.settings.worker,
            **self.live.display_fields(task_id, record),  # its displays and rich preview
        )

    # -- one step ---------------------------------------------------------------------
    async def execute(self, node: Node, inline: bool) -> None:
        """Run one step (see :data:`nbflow.run.steps.STEPS`); it commits or raises."""
        await STEPS[node.kind](self, node, inline)

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> Outcome:
        """Run the plan's steps; returns how the run ended. Records a group commit
        still holds are written before this returns, so the outcome is durable."""
        try:
            outcome = await self._run_steps()
        except BaseException:
            with contextlib.suppress(Exception):
                self.io.flush()  # what finished before the crash is kept; the crash is what is raised
            raise
        self.io.flush()  # a batch that cannot be written is a store problem, raised as one
        return outcome

    async def _run_steps(self) -> Outcome:
        wf = self.wf
        loop = asyncio.get_running_loop()
        self.control.attach(loop, self._on_stop, notify=self._tell_tasks)
        order = {n.id: i for i, n in enumerate(wf.nodes)}
        node_of = {n.id: n for n in wf.nodes}.__getitem__  # wf.node, without its error handling per call
        waiting: dict[str, int] = {}
        ready: list[tuple[int, int, str]] = []
        if self.bus:  # where unfinished tasks were when the last run stopped (their stored progress)
            self.live.announce_stored(n.id for n in wf.nodes if self.plan[n.id] not in (RESTORE, SKIP))

        def push(task_id: str) -> None:
            heapq.heappush(ready, (-node_of(task_id).spec.priority, order[task_id], task_id))

        for node in wf.nodes:
            step = self.plan[node.id]
            if step == RESTORE:
                rec = self.records[node.id]
                if node.kind == NodeKind.ROUTE:
                    self.branch_of[node.id] = rec.extra.get("branch", "")
                self.done += 1
                self.publish(
                    ev.TaskRestored,
                    task_id=node.id,
                    duration=rec.duration,
                    attempt=rec.attempt,
                    preview=rec.preview,
                    stdout=rec.stdout,
                    stderr=rec.stderr,
                    worker=rec.worker,
                    **self.live.display_fields(node.id, rec, restored=True),  # shown again, from the store
                )
            elif step == SKIP:
                self._skip_one(node.id, "route took another branch")
            else:
                missing = sum(1 for d in node.deps if self.plan[d] not in (RESTORE, SKIP))
                waiting[node.id] = missing
                if missing == 0:
                    push(node.id)

        def resolve(child: str) -> None:
            waiting[child] -= 1
            if waiting[child] == 0:
                cnode = node_of(child)
                if cnode.kind == NodeKind.MERGE and all(d in self.skipped for d in cnode.deps):
                    skip(child)
                else:
                    push(child)

        def skip(task_id: str) -> None:
            waiting.pop(task_id, None)
            self._skip_one(task_id, "route took another branch")
            for child in wf.children(task_id):
                if child not in waiting:
                    continue
                if node_of(child).kind == NodeKind.MERGE:
                    resolve(child)
                else:
                    skip(child)

        def finish(task_id: str) -> None:
            node = node_of(task_id)
            for child in wf.children(task_id):
                if child not in waiting:
                    continue
                cnode = node_of(child)
                if (
                    node.kind == NodeKind.ROUTE
                    and cnode.options.get("guard") == task_id
                    and cnode.options.get("when") != self.branch_of.get(task_id)
                ):
                    skip(child)
                else:
                    resolve(child)

        while True:
            if self.control.poll() is None and self._error is None and self._parked is None:
                while ready:
                    _, _, task_id = heapq.heappop(ready)
                    node = node_of(task_id)
                    alone = not ready and not self._running
                    if (
                        alone
                        and self.settings.inline_sync
                        and node.kind in _INLINE_KINDS
                        and (node.fn is None or not self.is_async(node.fn))
                        and node.spec.timeout is None
                    ):
                        try:
                            await STEPS[node.kind](self, node, True)  # as execute(node, inline=True)
                        except StepFailed as failed:
                            self._error = failed.error
                            break
                        except asyncio.CancelledError:
                            if self.control.requested is None:
                                raise
                            break  # the inline task stopped on request: the run ends as requested
                        finish(task_id)
                        if self.control.poll() is not None:
                            break
                        continue
                    task = loop.create_task(self.execute(node, inline=False))
                    self._running[task] = task_id
            if not self._running:
                break
            # Wake up now and then even if nothing finishes: a cancel or pause sent from
            # another process (the backend's control key) must reach a long task or a wait.
            done, _ = await asyncio.wait(self._running, timeout=POLL_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task_id = self._running.pop(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    finish(task_id)
                elif isinstance(exc, StepFailed):
                    self._error = self._error or exc.error
                elif isinstance(exc, Parked):
                    self._parked = self._parked or exc
                    for other, other_id in self._running.items():  # waits hold no work: stop them
                        if node_of(other_id).kind.waits:
                            other.cancel()
                else:  # a store problem (e.g. an unreadable checkpoint): stop and report it
                    self._crash = self._crash or exc
                    self.control.request(RunState.FAILED, str(exc))

        if self._crash is not None:
            raise self._crash
        total = len(wf.nodes)
        if self._error is not None:
            return Outcome(RunState.FAILED, error=self._error, done=self.done, total=total)
        stopped = self.control.requested
        if stopped is not None and self.done < total:
            return Outcome(stopped[0], reason=stopped[1], done=self.done, total=total)
        if self._parked is not None:
            return Outcome(
                RunState.AWAITING_SIGNAL,
                reason=f"waiting for signal {self._parked.signal!r}",
                done=self.done,
                total=total,
                signal=self._parked.signal,
            )
        return Outcome(RunState.COMPLETED, output=self._output(), done=self.done, total=total)

    def _skip_one(self, task_id: str, reason: str) -> None:
        if task_id in self.skipped:
            return
        self.skipped.add(task_id)
        self.done += 1
        self.publish(ev.TaskSkipped, task_id=task_id, reason=reason)

    def _output(self) -> Any:
        sinks = [s for s in self.wf.sinks if s not in self.skipped]
        if len(sinks) == 1:
            return self.value(sinks[0])
        return {sink: self.value(sink) for sink in sinks}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
