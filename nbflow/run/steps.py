"""Control-flow steps: loop, map, durable delay, signal wait.

Each is durable at every point: loop iterations and map items are checkpointed one by
one (``<step>#<n>``, ``<step>[<i>]``), a delay stores its wake-up time, a signal wait
its deadline, so a process killed anywhere resumes where it stopped. The scheduler
decides *when* a step runs; these functions decide *how*.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import TYPE_CHECKING, Any

from nbflow.core.context import TaskContext
from nbflow.core.errors import CodecError, SignalTimeoutError
from nbflow.core.graph import Node
from nbflow.core.keys import item_id, iteration_id, wait_id
from nbflow.core.status import LoopResult, RunState
from nbflow.core.typed import types_of
from nbflow.run import events as ev
from nbflow.run.attempts import call_sync
from nbflow.run.checkpoint import preview
from nbflow.run.outcomes import Parked
from nbflow.run.plan import RUN
from nbflow.run.threads import in_thread
from nbflow.store.base import CheckpointRecord

if TYPE_CHECKING:
    from nbflow.run.scheduler import Scheduler

__all__ = ["run_delay", "run_loop", "run_map", "run_signal", "stored_deadline"]

SIGNAL_POLL = 0.2  # seconds between looks for a signal sent from another process
MAP_BATCH = 256  # map items committed in one transaction at most
MAP_FLUSH = 0.05  # seconds: the longest a finished item waits for its commit
CHUNK_SECONDS = 0.02  # a sync map sends about this much work per thread hop


class LoopLimitError(RuntimeError):
    """A loop hit max_iterations with on_max="fail"."""


def _reusable(sched: Scheduler, node: Node, key: str) -> CheckpointRecord | None:
    """An auxiliary record (iteration, item, deadline) is reused only while the step
    itself had no valid checkpoint and nothing upstream changed (plan says RUN)."""
    if sched.plan.get(node.id) != RUN:
        return None
    rec = sched.records.get(key)
    return rec if rec is not None and rec.fingerprint == node.fingerprint else None


# -- loop ---------------------------------------------------------------------------------
async def run_loop(sched: Scheduler, node: Node, inline: bool) -> None:
    assert node.fn is not None
    args, _ = sched.arguments(node)
    current = args[0]
    max_iterations: int = node.options["max_iterations"]
    on_max: str = node.options["on_max"]
    started = time.time()
    for i in range(1, max_iterations + 1):
        key = iteration_id(node.id, i)
        rec = _reusable(sched, node, key)
        if rec is not None:
            finished, value = sched.io.read(rec)
        else:
            result, cap, attempt, _ = await sched.attempts(node, node.fn, [current], {}, key, inline)
            if not isinstance(result, LoopResult):
                sched.retries.settle(key)
                exc = TypeError(
                    f"loop body {node.id!r} returned {type(result).__name__}; it must return "
                    "LoopResult.again(value) to go round again or LoopResult.done(value) to leave"
                )
                raise sched.failure(node.id, exc, attempt) from None
            finished, value = result.finished, result.value
            try:
                sched.records[key] = sched.io.write(
                    key,
                    node.fingerprint,
                    [finished, value],
                    attempt=attempt,
                    preview=preview(value),
                    stdout=cap.stdout.getvalue(),
                    stderr=cap.stderr.getvalue(),
                    worker=getattr(cap, "worker", None) or sched.worker,
                )
            except CodecError as exc:  # the iteration's value cannot be stored: the step fails
                sched.retries.settle(key)
                raise sched.failure(node.id, exc, attempt) from exc
            sched.retries.settle(key)
            sched.live.settled((key,))  # the iteration's own saved state is no longer needed
        sched.publish(ev.MapProgress, task_id=node.id, done=i, total=max_iterations)
        current = value
        if finished:
            sched.commit(node, current, started=started, extra={"iterations": i})
            return
        if sched.control.poll() is not None:
            raise asyncio.CancelledError
    if on_max == "exit_with_last":
        sched.commit(node, current, started=started, extra={"iterations": max_iterations})
        return
    limit = LoopLimitError(
        f"loop {node.id!r} did not finish within max_iterations={max_iterations}; raise "
        "max_iterations, or use on_max='exit_with_last' to go on with the last value"
    )
    raise sched.failure(node.id, limit) from None


# -- map ----------------------------------------------------------------------------------
async def run_map(sched: Scheduler, node: Node) -> None:
    """Fan out over the previous output with ``concurrency`` items in flight.

    Finished items are committed in batches (one transaction per batch) and only then
    counted as done, so a kill never loses an item that was reported done. A sync
    function without a timeout runs in chunks: each thread hop carries as many items
    as take about 20 ms, which keeps tiny items cheap and slow items committed soon."""
    assert node.fn is not None
    fn = node.fn
    args, _ = sched.arguments(node)
    try:
        items = list(args[0])
    except TypeError:
        exc = TypeError(f"map {node.id!r} needs an iterable input, got {type(args[0]).__name__}")
        raise sched.failure(node.id, exc) from None
    total = len(items)
    started = time.time()
    results: dict[int, Any] = {}
    todo = [i for i in range(total) if _reusable(sched, node, item_id(node.id, i)) is None]
    done = total - len(todo)
    sched.publish(ev.MapProgress, task_id=node.id, done=done, total=total)

    # Each queue entry: ("ok", i, value, capture, attempt) | ("error", exc) | ("stopped",) | ("exit",)
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    next_index = iter(todo)
    stop = stopped = False
    chunked = not sched.is_async(fn) and node.spec.timeout is None and not hasattr(sched.executor, "submit_task")
    chunked = chunked and types_of(fn) is None  # typed items go through attempts(), which validates them
    if chunked and node.spec.retry.max_retries:
        # Items whose retries were under way when the last run stopped continue their
        # count, one by one (a chunk runs first attempts only).
        chunked = not any(sched.retries.pending(item_id(node.id, i)) for i in todo)
    item_seconds = [0.0, 0]  # total, count: sizes the chunks

    def chunk_size() -> int:
        if not chunked or item_seconds[1] == 0:
            return 1
        mean = item_seconds[0] / item_seconds[1]
        return max(1, min(64, int(CHUNK_SECONDS / max(mean, 1e-6))))

    async def one(i: int, failed: Exception | None = None) -> bool:
        """Run item ``i`` (its retries after a first attempt that raised ``failed`` in
        a chunk); False once the map must not go on."""
        try:
            value, cap, attempt, _ = await sched.attempts(node, fn, [items[i]], {}, item_id(node.id, i), False, failed)
        except Exception as exc:  # noqa: BLE001 - StepFailed (retries exhausted), reported via the queue
            queue.put_nowait(("error", exc))
            return False
        except asyncio.CancelledError:
            if sched.control.requested is None:
                raise
            queue.put_nowait(("stopped",))  # paused between retries: the next run continues the count
            return False
        queue.put_nowait(("ok", i, value, cap, attempt))
        return True

    again: collections.deque[tuple[int, Exception]] = collections.deque()  # chunk items to retry

    async def worker() -> None:
        try:
            while not stop:
                if again:  # retries first, each by whichever worker is free (backoffs overlap)
                    if not await one(*again.popleft()):
                        return
                    continue
                batch = list(itertools.islice(next_index, chunk_size()))
                if not batch:
                    return
                if chunked and len(batch) > 1:
                    for entry in await _run_chunk(sched, node, fn, items, batch, item_seconds):
                        if entry[0] == "ok":
                            queue.put_nowait(entry)
                        else:
                            again.append((entry[1], entry[2]))
                    continue
                t0 = time.perf_counter()
                if not await one(batch[0]):
                    return
                item_seconds[0] += time.perf_counter() - t0
                item_seconds[1] += 1
        finally:
            queue.put_nowait(("exit",))

    concurrency = min(node.options["concurrency"], max(1, len(todo)))
    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)] if todo else []
    pending: list[tuple[CheckpointRecord, Any]] = []
    failure: BaseException | None = None
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal pending, done, last_flush
        if pending:
            stored = sched.io.write_many(pending)
            for record in stored:
                sched.records[record.task_id] = record
                sched.retries.settle(record.task_id)
            sched.live.settled(record.task_id for record in stored)  # items' own saved states
            done += len(pending)
            pending = []
            sched.publish(ev.MapProgress, task_id=node.id, done=done, total=total)
        last_flush = time.monotonic()

    exited = 0
    try:
        while exited < len(workers):
            try:
                entry = await asyncio.wait_for(queue.get(), MAP_FLUSH) if pending else await queue.get()
            except TimeoutError:
                flush()
                continue
            if entry[0] == "exit":
                exited += 1
            elif entry[0] == "error":
                failure = failure or entry[1]
                stop = True  # no new items; those in flight finish and are kept
            elif entry[0] == "stopped":
                stopped = stop = True
            else:
                _, i, value, cap, attempt = entry
                try:
                    encoded = sched.io.encode(
                        item_id(node.id, i),
                        node.fingerprint,
                        value,
                        attempt=attempt,
                        preview=preview(value),
                        stdout=cap.stdout.getvalue() if cap else "",
                        stderr=cap.stderr.getvalue() if cap else "",
                        worker=getattr(cap, "worker", None) or sched.worker,
                    )
                except CodecError as exc:  # the item's output cannot be stored: the map fails on it
                    failure = failure or sched.failure(item_id(node.id, i), exc, attempt)
                    stop = True
                    continue
                results[i] = value
                pending.append(encoded)
                if len(pending) >= MAP_BATCH or time.monotonic() - last_flush >= MAP_FLUSH:
                    flush()
    finally:
        stop = True
        flush()  # whatever finished is kept, even when the step is cancelled
        for w in workers:
            w.cancel()
    if failure is not None:
        raise failure
    if stopped:
        raise asyncio.CancelledError
    output = [
        results[i] if i in results else sched.io.read(sched.records[item_id(node.id, i)], sched.lookup)
        for i in range(total)
    ]
    sched.commit(node, output, started=started, extra={"items": total})


async def _run_chunk(
    sched: Scheduler, node: Node, fn: Any, items: list[Any], batch: list[int], item_seconds: list[Any]
) -> list[tuple[Any, ...]]:
    """Run the first attempt of several items of a sync map function in one thread hop.

    Returns ("ok", i, value, capture, 1) per item that succeeded and ("again", i, exc)
    per item that raised: its retries run through ``Scheduler.attempts`` on the loop,
    so their count is stored before each retry like any task's."""
    cancel = sched.cancel_event

    def body() -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for i in batch:
            live = sched.live.attempt(node, item_id(node.id, i), 1)
            tctx = TaskContext(
                sched.wf.name, sched.instance_id, item_id(node.id, i), 1, sched.wf.metadata, cancel, live
            )
            t0 = time.perf_counter()
            try:
                value, cap = call_sync(fn, [items[i]], {}, tctx, sched.echo)
            except Exception as exc:  # noqa: BLE001 - the user function failed; retried or reported
                live.close(ok=False)
                out.append(("again", i, exc))
            else:
                live.close(ok=True)
                item_seconds[0] += time.perf_counter() - t0
                item_seconds[1] += 1
                out.append(("ok", i, value, cap, 1))
            if cancel.is_set():
                break
        return out

    result: list[tuple[Any, ...]] = await in_thread(sched.executor, body)
    return result


# -- durable delay ------------------------------------------------------------------------
async def stored_deadline(sched: Scheduler, node: Node, suffix: str, seconds: float) -> float:
    """The stored deadline of a wait, written the first time the step is reached."""
    key = wait_id(node.id, suffix)
    rec = _reusable(sched, node, key)
    if rec is not None:
        return float(rec.extra["at"])
    at = time.time() + seconds
    sched.records[key] = sched.io.write(key, node.fingerprint, None, extra={"at": at})
    return at


async def run_delay(sched: Scheduler, node: Node) -> None:
    value_src = node.params[0][1]
    wake_at = await stored_deadline(sched, node, "wake", node.options["seconds"])
    remaining = wake_at - time.time()
    if remaining > 0:
        sched.publish(ev.TaskWaiting, task_id=node.id, wake_at=wake_at)
        sched.set_state(RunState.WAITING, wake_at=wake_at)
        try:
            await asyncio.sleep(remaining)
        finally:
            sched.set_state(RunState.RUNNING)
    value = sched.get(value_src)
    sched.release(node)
    ref = value_src.task if value_src.task is not None and value_src.key is None else None
    if ref is None:
        sched.commit(node, value)
    else:
        sched.commit(node, value, ref=ref)


# -- signals ------------------------------------------------------------------------------
async def run_signal(sched: Scheduler, node: Node) -> None:
    name: str = node.options["signal"]
    timeout: float | None = node.options.get("timeout")
    deadline = await stored_deadline(sched, node, "deadline", timeout) if timeout is not None else None
    backend = sched.io.backend
    announced = False
    started = time.time()
    try:
        while True:
            template = CheckpointRecord(
                task_id=node.id,
                fingerprint=node.fingerprint,
                codec=sched.io.codec.name,  # send_signal encodes with the instance's codec
                started_at=started,
                finished_at=time.time(),
                worker=sched.worker,
            )
            record = backend.consume_signal(sched.instance_id, name, template)
            if record is not None:
                payload = sched.io.read(record)
                record.preview = preview(payload)
                sched.commit(node, payload, started=started, record=record)
                return
            if deadline is not None and time.time() >= deadline:
                exc = SignalTimeoutError(sched.instance_id, name, timeout or 0.0)
                raise sched.failure(node.id, exc) from None
            if not announced:
                announced = True
                sched.publish(ev.TaskWaiting, task_id=node.id, signal=name, wake_at=deadline)
                sched.set_state(RunState.AWAITING_SIGNAL, wake_at=deadline, signal=name)
                if sched.park_on_signal:
                    raise Parked(node.id, name)
            await asyncio.sleep(SIGNAL_POLL)
    finally:
        if announced:
            sched.set_state(RunState.RUNNING)
