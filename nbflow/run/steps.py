"""The steps: what each kind of node does when it runs, in one table (:data:`STEPS`).

Each step is an ``async`` function of the :class:`~nbflow.run.step_host.StepHost` that
runs it (the scheduler of a run, or a ``PooledWorker``'s unit) and its node. It is
durable at every point: loop iterations and map items are checkpointed one by one
(``<step>#<n>``, ``<step>[<i>]``), a delay stores its wake-up time, a signal wait its
deadline, so a process killed anywhere resumes where it stopped. The host decides
*when* a step runs; these functions decide *how*. The map step is in
:mod:`nbflow.run.map_step`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from nbflow.core.branching import DEFAULT_BRANCH, branch_label
from nbflow.core.errors import CodecError, RouteKeyError, SignalTimeoutError
from nbflow.core.graph import Node
from nbflow.core.keys import iteration_id, wait_id
from nbflow.core.status import LoopResult, RunState
from nbflow.core.vocabulary import NodeKind
from nbflow.run import events as ev
from nbflow.run.checkpoint import preview
from nbflow.run.map_step import reusable, run_map
from nbflow.run.outcomes import NotDue, Parked
from nbflow.run.step_host import Step, StepHost, attempt_fields
from nbflow.store.base import CheckpointRecord

__all__ = [
    "STEPS",
    "LoopLimitError",
    "run_collect",
    "run_delay",
    "run_loop",
    "run_map",
    "run_merge",
    "run_route",
    "run_signal",
    "run_task",
    "stored_deadline",
]

SIGNAL_POLL = 0.2  # seconds between looks for a signal sent from another process


class LoopLimitError(RuntimeError):
    """A loop hit max_iterations with on_max="fail"."""


# -- tasks and the steps around branches --------------------------------------------------
async def run_task(host: StepHost, node: Node, inline: bool) -> None:
    """A plain task (fork branches and joins are tasks too): run it, commit its output."""
    assert node.fn is not None
    args, kwargs = host.arguments(node)
    value, cap, attempt, started = await host.attempts(node, node.fn, args, kwargs, node.id, inline)
    host.commit(node, value, attempt=attempt, started=started, cap=cap)


async def run_route(host: StepHost, node: Node, inline: bool) -> None:
    """A route: its function's key picks the branch; the label is stored with the key."""
    assert node.fn is not None
    args, kwargs = host.arguments(node)
    key, cap, attempt, started = await host.attempts(node, node.fn, args, kwargs, node.id, inline)
    labels = {n.options.get("when") for n in host.wf.nodes if n.options.get("guard") == node.id}
    label = branch_label(key)
    if label not in labels:
        if DEFAULT_BRANCH not in labels:
            declared = node.options.get("keys") or node.options.get("branches") or []
            exc = RouteKeyError(host.wf.name, node.id, key, declared)
            raise host.failure(node.id, exc, attempt) from None
        label = DEFAULT_BRANCH
    host.branch_of[node.id] = label
    host.commit(node, key, attempt=attempt, started=started, cap=cap, extra={"branch": label})


async def run_merge(host: StepHost, node: Node, inline: bool) -> None:
    """Where a route's branches meet: a reference to the output of the branch that ran."""
    taken = next(src.task for _, src in node.params if src.task not in host.skipped)
    assert taken is not None
    host.release(node)
    host.commit(node, host.value(taken), ref=taken)


async def run_collect(host: StepHost, node: Node, inline: bool) -> None:
    """The outputs of a composed child workflow's final tasks, as one dict."""
    args, _ = host.arguments(node)
    host.commit(node, args[0])


# -- loop ---------------------------------------------------------------------------------
async def run_loop(host: StepHost, node: Node, inline: bool) -> None:
    """Run the body until it returns ``LoopResult.done``; each iteration is checkpointed."""
    assert node.fn is not None
    args, _ = host.arguments(node)
    current = args[0]
    max_iterations: int = node.options["max_iterations"]
    on_max: str = node.options["on_max"]
    started = time.time()
    for i in range(1, max_iterations + 1):
        key = iteration_id(node.id, i)
        rec = reusable(host, node, key, recheck=True)
        if rec is not None:
            finished, value = host.io.read(rec)
        else:
            result, cap, attempt, _ = await host.attempts(node, node.fn, [current], {}, key, inline)
            if not isinstance(result, LoopResult):
                host.retries.settle(key)
                exc = TypeError(
                    f"loop body {node.id!r} returned {type(result).__name__}; it must return "
                    "LoopResult.again(value) to go round again or LoopResult.done(value) to leave"
                )
                raise host.failure(node.id, exc, attempt) from None
            finished, value = result.finished, result.value
            fields = attempt_fields(value, cap, attempt, host.settings.worker)
            try:
                host.records[key] = host.io.write(key, node.fingerprint, [finished, value], **fields)
            except CodecError as exc:  # the iteration's value cannot be stored: the step fails
                host.retries.settle(key)
                raise host.failure(node.id, exc, attempt) from exc
            host.retries.settle(key)
            host.live.settled((key,))  # the iteration's own saved state is no longer needed
        host.publish(ev.MapProgress, task_id=node.id, done=i, total=max_iterations)
        current = value
        if finished:
            host.commit(node, current, started=started, extra={"iterations": i})
            return
        if host.control.poll() is not None:
            raise asyncio.CancelledError
    if on_max == "exit_with_last":
        host.commit(node, current, started=started, extra={"iterations": max_iterations})
        return
    limit = LoopLimitError(
        f"loop {node.id!r} did not finish within max_iterations={max_iterations}; raise "
        "max_iterations, or use on_max='exit_with_last' to go on with the last value"
    )
    raise host.failure(node.id, limit) from None


# -- durable delay ------------------------------------------------------------------------
async def stored_deadline(host: StepHost, node: Node, suffix: str, seconds: float) -> float:
    """The stored deadline of a wait, written the first time the step is reached."""
    key = wait_id(node.id, suffix)
    rec = reusable(host, node, key, recheck=True)
    if rec is not None:
        return float(rec.extra["at"])
    at = time.time() + seconds
    host.records[key] = host.io.write(key, node.fingerprint, None, extra={"at": at})
    return at


async def run_delay(host: StepHost, node: Node, inline: bool = False) -> None:
    """Wait until the stored wake-up time (only what remains of it after a restart),
    then pass the input on. A host that parks on delays gets ``NotDue`` instead."""
    value_src = node.params[0][1]
    wake_at = await stored_deadline(host, node, "wake", node.options["seconds"])
    remaining = wake_at - time.time()
    if remaining > 0:
        if host.settings.park_on_delay:
            raise NotDue(wake_at)
        host.publish(ev.TaskWaiting, task_id=node.id, wake_at=wake_at)
        host.set_state(RunState.WAITING, wake_at=wake_at)
        try:
            await asyncio.sleep(remaining)
        finally:
            host.set_state(RunState.RUNNING)
    value = host.get(value_src)
    host.release(node)
    ref = value_src.task if value_src.task is not None and value_src.key is None else None
    if ref is None:
        host.commit(node, value)
    else:
        host.commit(node, value, ref=ref)


# -- signals ------------------------------------------------------------------------------
async def run_signal(host: StepHost, node: Node, inline: bool = False) -> None:
    """Consume the signal (buffered, FIFO per name); park or wait until it comes, and
    fail at the stored deadline of its timeout."""
    name: str = node.options["signal"]
    timeout: float | None = node.options.get("timeout")
    deadline = await stored_deadline(host, node, "deadline", timeout) if timeout is not None else None
    backend = host.io.backend
    announced = False
    started = time.time()
    try:
        while True:
            template = CheckpointRecord(
                task_id=node.id,
                fingerprint=node.fingerprint,
                codec=host.io.codec.name,  # send_signal encodes with the instance's codec
                started_at=started,
                finished_at=time.time(),
                worker=host.settings.worker,
            )
            record = backend.consume_signal(host.instance_id, name, template)
            if record is not None:
                payload = host.io.read(record)
                record.preview = preview(payload)
                host.commit(node, payload, started=started, record=record)
                return
            if deadline is not None and time.time() >= deadline:
                exc = SignalTimeoutError(host.instance_id, name, timeout or 0.0)
                raise host.failure(node.id, exc) from None
            if not announced:
                announced = True
                host.publish(ev.TaskWaiting, task_id=node.id, signal=name, wake_at=deadline)
                host.set_state(RunState.AWAITING_SIGNAL, wake_at=deadline, signal=name)
                if host.settings.park_on_signal:
                    raise Parked(node.id, name)
            await asyncio.sleep(SIGNAL_POLL)
    finally:
        if announced:
            host.set_state(RunState.RUNNING)


STEPS: Mapping[NodeKind, Step] = {
    NodeKind.TASK: run_task,
    NodeKind.ROUTE: run_route,
    NodeKind.MERGE: run_merge,
    NodeKind.COLLECT: run_collect,
    NodeKind.LOOP: run_loop,
    NodeKind.MAP: run_map,
    NodeKind.DELAY: run_delay,
    NodeKind.SIGNAL: run_signal,
}
"""Every kind of node and the step that runs it (a test checks none is missing)."""
