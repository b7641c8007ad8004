"""The engine loop: runs one instance's DAG on asyncio, checkpointing each task.

Tasks planned "restore" are done before anything runs (their outputs load lazily, only
if a running task needs them). The rest run as soon as their inputs are ready, ordered
by priority; independent tasks overlap (sync ones in threads, async ones on the loop).
When nothing else could run at the same time, a sync task runs on the engine thread
itself: a plain chain then costs no thread hop per task.

A failed task stops new launches; tasks already running finish and are checkpointed,
so their work is never lost. A stop request (cancel, interrupt, pause) is seen at every
task boundary, from this process (``RunControl``) or another (the backend's control
key, polled a few times a second).
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbflow.core.context import TaskContext
from nbflow.core.errors import CodecError
from nbflow.core.graph import Node, WorkflowDefinition
from nbflow.core.status import TaskError
from nbflow.run import events as ev
from nbflow.run.attempts import is_async, run_attempt
from nbflow.run.checkpoint import CheckpointIO, preview
from nbflow.run.plan import RESTORE
from nbflow.store.base import Backend, CheckpointRecord

__all__ = ["Outcome", "RunControl", "Scheduler"]

_POLL_INTERVAL = 0.25  # seconds between reads of the backend's control key


class RunControl:
    """Thread-safe stop requests for one run (cancel, interrupt, pause)."""

    def __init__(self, backend: Backend | None = None, instance_id: str = "") -> None:
        self._lock = threading.Lock()
        self.requested: tuple[str, str] | None = None  # (state, reason)
        self._callback: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend, self._instance_id = backend, instance_id
        self._next_poll = 0.0

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        with self._lock:
            self._loop, self._callback = loop, callback
            pending = self.requested
        if pending:
            loop.call_soon_threadsafe(callback)

    def request(self, state: str, reason: str = "") -> None:
        """Ask the run to stop with ``state`` ("cancelled", "interrupted", "paused")."""
        with self._lock:
            if self.requested is None or state != "paused":
                self.requested = (state, reason)
            loop, callback = self._loop, self._callback
        if loop is not None and callback is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop closed in between: the run is over anyway
                pass

    def poll(self) -> tuple[str, str] | None:
        """The pending request; reads the backend's control key at most every 0.25 s."""
        if self.requested is None and self._backend is not None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + _POLL_INTERVAL
                ctl = self._backend.get_control(self._instance_id)
                if ctl and ctl[0] in ("cancelled", "paused"):
                    self.request(ctl[0], ctl[1])
        return self.requested


@dataclass
class Outcome:
    state: str
    output: Any = None
    error: TaskError | None = None
    reason: str = ""
    done: int = 0
    total: int = 0


class _Failed(Exception):
    def __init__(self, error: TaskError) -> None:
        super().__init__(str(error))
        self.error = error


_MISSING = object()


class Scheduler:
    """Runs one instance of ``wf`` given its plan and stored records."""

    def __init__(
        self,
        *,
        wf: WorkflowDefinition,
        instance_id: str,
        plan: dict[str, str],
        records: dict[str, CheckpointRecord],
        input_value: Any,
        io: CheckpointIO,
        bus: ev.EventBus,
        control: RunControl,
        executor: Any,
        echo: bool,
        inline_sync: bool,
        worker: str | None = None,
    ) -> None:
        self.wf, self.instance_id, self.plan = wf, instance_id, plan
        self.records, self.input_value, self.io = records, input_value, io
        self.bus, self.control, self.executor = bus, control, executor
        self.echo, self.inline_sync, self.worker = echo, inline_sync, worker
        self._values: dict[str, Any] = {}
        self._consumers = {n.id: len(wf.children(n.id)) for n in wf.nodes}
        self._sinks = set(wf.sinks)
        self._running: dict[asyncio.Task[None], str] = {}
        self._contexts: dict[str, TaskContext] = {}
        self._error: TaskError | None = None
        self._crash: BaseException | None = None
        self.done = 0

    # -- helpers ----------------------------------------------------------------------
    def _publish(self, event_type: type[ev.RunEvent], **fields: Any) -> None:
        if self.bus:
            self.bus.publish(event_type(workflow=self.wf.name, instance_id=self.instance_id, **fields))

    def _value(self, task_id: str) -> Any:
        value = self._values.get(task_id, _MISSING)
        if value is _MISSING:
            value = self.io.read(self.records[task_id])
            self._values[task_id] = value
        return value

    def _input(self, key: str | None) -> Any:
        if key is None:
            return self.input_value
        return self.input_value[key]  # validated by the runner before the run starts

    def _arguments(self, node: Node) -> tuple[list[Any], dict[str, Any]]:
        def get(src: Any) -> Any:
            return self._input(src.key) if src.task is None else self._value(src.task)

        if node.mode == "value":
            args, kwargs = [get(node.params[0][1])], {}
        elif node.mode == "dict":
            args, kwargs = [{key: get(src) for key, src in node.params}], {}
        elif node.mode == "kwargs":
            args, kwargs = [], {name: get(src) for name, src in node.params}
        else:
            args, kwargs = [], {}
        for dep in node.deps:  # free outputs nobody needs any more
            self._consumers[dep] -= 1
            if self._consumers[dep] <= 0 and dep not in self._sinks:
                self._values.pop(dep, None)
        return args, kwargs

    def _on_stop(self) -> None:
        """Called on the loop when a stop is requested: cancel what can be cancelled."""
        requested = self.control.requested
        if requested is None or requested[0] == "paused":
            return  # a pause lets running tasks finish and checkpoint
        for tctx in self._contexts.values():
            tctx.cancel_event.set()
        for task in self._running:
            task.cancel()

    # -- one task ---------------------------------------------------------------------
    async def _execute(self, node: Node, inline: bool) -> None:
        assert node.fn is not None
        args, kwargs = self._arguments(node)
        policy = node.spec.retry
        attempt = 0
        while True:
            attempt += 1
            started = time.time()
            self._publish(ev.TaskStarted, task_id=node.id, attempt=attempt, worker=self.worker)
            tctx = TaskContext(self.wf.name, self.instance_id, node.id, attempt, self.wf.metadata)
            self._contexts[node.id] = tctx
            try:
                value, cap = await run_attempt(
                    node.fn,
                    args,
                    kwargs,
                    tctx,
                    timeout=node.spec.timeout,
                    inline=inline,
                    executor=self.executor,
                    echo=self.echo,
                )
            except Exception as exc:
                if attempt <= policy.max_retries and self.control.poll() is None:
                    delay = policy.delay_before(attempt)
                    self._publish(ev.TaskRetrying, task_id=node.id, attempt=attempt, delay=delay, error=_short(exc))
                    await asyncio.sleep(delay)
                    continue
                self._fail(node, exc, attempt)
            finally:
                self._contexts.pop(node.id, None)
            break
        finished = time.time()
        try:
            record = self.io.write(
                node.id,
                node.fingerprint,
                value,
                attempt=attempt,
                started_at=started,
                finished_at=finished,
                preview=preview(value),
                stdout=cap.stdout.getvalue(),
                stderr=cap.stderr.getvalue(),
                worker=self.worker,
            )
        except CodecError as exc:
            self._fail(node, exc, attempt)
        self.records[node.id] = record
        if self._consumers[node.id] or node.id in self._sinks:
            self._values[node.id] = value
        self.done += 1
        self._publish(
            ev.TaskFinished,
            task_id=node.id,
            attempt=attempt,
            duration=finished - started,
            preview=record.preview,
            stdout=record.stdout,
            stderr=record.stderr,
            worker=self.worker,
        )

    def _fail(self, node: Node, exc: BaseException, attempt: int) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        error = TaskError(node.id, type(exc).__name__, str(exc), tb, attempt)
        self._publish(ev.TaskFailed, task_id=node.id, attempt=attempt, error=f"{error.type}: {error.message}", traceback=tb)
        raise _Failed(error) from exc

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> Outcome:
        wf = self.wf
        loop = asyncio.get_running_loop()
        self.control.attach(loop, self._on_stop)
        order = {n.id: i for i, n in enumerate(wf.nodes)}
        waiting: dict[str, int] = {}
        ready: list[tuple[int, int, str]] = []
        for node in wf.nodes:
            if self.plan[node.id] == RESTORE:
                rec = self.records[node.id]
                self.done += 1
                self._publish(
                    ev.TaskRestored,
                    task_id=node.id,
                    duration=rec.duration,
                    attempt=rec.attempt,
                    preview=rec.preview,
                    stdout=rec.stdout,
                    stderr=rec.stderr,
                    worker=rec.worker,
                )
                continue
            missing = sum(1 for d in node.deps if self.plan[d] != RESTORE)
            waiting[node.id] = missing
            if missing == 0:
                heapq.heappush(ready, (-node.spec.priority, order[node.id], node.id))

        def finish(task_id: str) -> None:
            for child in wf.children(task_id):
                if child in waiting:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        node = wf.node(child)
                        heapq.heappush(ready, (-node.spec.priority, order[child], child))

        stopped: tuple[str, str] | None = None
        while True:
            stopped = self.control.poll()
            if stopped is None and self._error is None:
                while ready:
                    _, _, task_id = heapq.heappop(ready)
                    node = wf.node(task_id)
                    alone = not ready and not self._running
                    if alone and self.inline_sync and not is_async(node.fn) and node.spec.timeout is None:
                        try:
                            await self._execute(node, inline=True)
                        except _Failed as failed:
                            self._error = failed.error
                            break
                        finish(task_id)
                        if self.control.poll() is not None:
                            break
                        continue
                    task = loop.create_task(self._execute(node, inline=False))
                    self._running[task] = task_id
                stopped = self.control.requested
            if not self._running:
                break
            done, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task_id = self._running.pop(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    finish(task_id)
                elif isinstance(exc, _Failed):
                    self._error = self._error or exc.error
                else:  # a store problem (e.g. an unreadable checkpoint): stop and report it
                    self._crash = self._crash or exc
                    self.control.request("failed", str(exc))

        if self._crash is not None:
            raise self._crash

        total = len(wf.nodes)
        if self._error is not None:
            return Outcome("failed", error=self._error, done=self.done, total=total)
        stopped = self.control.requested
        if stopped is not None and self.done < total:
            return Outcome(stopped[0], reason=stopped[1], done=self.done, total=total)
        return Outcome("completed", output=self._output(), done=self.done, total=total)

    def _output(self) -> Any:
        sinks = self.wf.sinks
        if len(sinks) == 1:
            return self._value(sinks[0])
        return {sink: self._value(sink) for sink in sinks}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."

