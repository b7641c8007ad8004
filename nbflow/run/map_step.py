"""The map step: one function over every item of the previous output, each item
checkpointed on its own (``<step>[<i>]``), so a crash at item 5,000 of 10,000 resumes
at 5,000.

The same code runs a whole map in one process and a part of one in a worker pool
(:class:`MapPart`: items ``[start, stop)`` claimed as one unit); the only differences
are when items are committed (in batches as they finish, or all at once as the
unit's one claimed write) and that a part leaves the step's own record to whoever
finds every item done.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any

from nbflow.core.context import TaskContext
from nbflow.core.errors import CodecError
from nbflow.core.graph import Node
from nbflow.core.keys import item_id
from nbflow.core.typed import types_of
from nbflow.core.vocabulary import PlanStep
from nbflow.run import events as ev
from nbflow.run.attempts import call_sync
from nbflow.run.step_host import StepHost, attempt_fields
from nbflow.run.threads import in_thread
from nbflow.store.base import CheckpointRecord

__all__ = ["MapPart", "reusable", "run_map"]

MAP_BATCH = 256  # map items committed in one transaction at most
MAP_FLUSH = 0.05  # seconds: the longest a finished item waits for its commit
CHUNK_SECONDS = 0.02  # a sync map sends about this much work per thread hop


@dataclass(frozen=True)
class MapPart:
    """Items ``[start, stop)`` of a map, run as one unit of a worker pool.

    ``items`` is the map's input (the worker keeps it between units). The finished
    items are committed in one write at the end — a claimed unit's one write, which
    also gives the claim back — together with ``marker`` if the part ran to its end
    (a chunk's marker record, so a worker that planned before the commit cannot
    claim the chunk again). ``timing`` ([seconds, items]) is how long the map's items
    took so far, shared by the parts one worker runs, so that a part of tiny items
    goes to a thread in one hop from its first item on."""

    start: int
    stop: int
    items: list[Any]
    marker: CheckpointRecord | None = None
    timing: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])


def reusable(host: StepHost, node: Node, key: str, *, recheck: bool = False) -> CheckpointRecord | None:
    """An auxiliary record (iteration, item, deadline) is reused only while the step
    itself had no valid checkpoint and nothing upstream changed (plan says RUN).

    ``recheck``: one the host's records lack is looked up in the store when they may
    lag behind it (``records_may_lag``), so that a deadline another worker stored is
    kept rather than written anew (map items need no such look-up: they are claimed
    by their own records)."""
    if host.plan.get(node.id) != PlanStep.RUN:
        return None
    rec = host.records.get(key)
    if rec is None and recheck and host.settings.records_may_lag:
        rec = host.io.backend.get_record(host.instance_id, key)
        if rec is not None:
            host.records[key] = rec
    return rec if rec is not None and rec.fingerprint == node.fingerprint else None


async def run_map(host: StepHost, node: Node, inline: bool = False, part: MapPart | None = None) -> None:
    """Fan out over the previous output (or ``part``'s items) with ``concurrency``
    items in flight.

    Finished items are committed in batches (one transaction per batch) and only then
    counted as done, so a kill never loses an item that was reported done. A sync
    function without a timeout runs in chunks: each thread hop carries as many items
    as take about 20 ms, which keeps tiny items cheap and slow items committed soon."""
    assert node.fn is not None
    fn = node.fn
    if part is None:
        args, _ = host.arguments(node)
        try:
            items = list(args[0])
        except TypeError:
            exc = TypeError(f"map {node.id!r} needs an iterable input, got {type(args[0]).__name__}")
            raise host.failure(node.id, exc) from None
        indices = range(len(items))
    else:
        items, indices = part.items, range(part.start, part.stop)
    total = len(items)
    started = time.time()
    results: dict[int, Any] = {}
    todo = [i for i in indices if reusable(host, node, item_id(node.id, i)) is None]
    if part is None:
        done = total - len(todo)
        host.publish(ev.MapProgress, task_id=node.id, done=done, total=total)
    else:  # as far as this worker knows
        done = sum(1 for i in range(total) if item_id(node.id, i) in host.records)

    # Each queue entry: ("ok", i, value, capture, attempt, started) | ("error", exc) | ("stopped",) | ("exit",)
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    next_index = iter(todo)
    stop = stopped = False
    executor = host.settings.executor
    chunked = not host.is_async(fn) and node.spec.timeout is None and not hasattr(executor, "submit_task")
    chunked = chunked and types_of(fn) is None  # typed items go through attempts(), which validates them
    if chunked and node.spec.retry.max_retries:
        # Items whose retries were under way when the last run stopped continue their
        # count, one by one (a chunk runs first attempts only).
        chunked = not any(host.retries.pending(item_id(node.id, i)) for i in todo)
    item_seconds = part.timing if part is not None else [0.0, 0.0]  # total, count: sizes the chunks

    def chunk_size() -> int:
        if not chunked or item_seconds[1] == 0:
            return 1
        mean = item_seconds[0] / item_seconds[1]
        return max(1, min(64, int(CHUNK_SECONDS / max(mean, 1e-6))))

    async def one(i: int, failed: Exception | None = None) -> bool:
        """Run item ``i`` (its retries after a first attempt that raised ``failed`` in
        a chunk); False once the map must not go on."""
        try:
            value, cap, attempt, started = await host.attempts(
                node, fn, [items[i]], {}, item_id(node.id, i), False, failed
            )
        except Exception as exc:  # noqa: BLE001 - StepFailed (retries exhausted), reported via the queue
            queue.put_nowait(("error", exc))
            return False
        except asyncio.CancelledError:
            if host.control.requested is None:
                raise
            queue.put_nowait(("stopped",))  # paused between retries: the next run continues the count
            return False
        queue.put_nowait(("ok", i, value, cap, attempt, started))
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
                    for entry in await _first_attempts(host, node, items, batch, item_seconds):
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
    ran_to_end = False
    last_flush = time.monotonic()

    def flush(marker: CheckpointRecord | None = None) -> None:
        nonlocal pending, done, last_flush
        batch = list(pending)
        if marker is not None:  # stamped as it is committed: its finish time is its version
            marker = dataclasses.replace(marker, finished_at=time.time())
            batch.append((marker, host.io.backend.new_sink(host.instance_id)))
        if batch:
            stored = host.io.write_many(batch)
            for record in stored:
                host.records[record.task_id] = record
                host.retries.settle(record.task_id)
            host.live.settled(record.task_id for record in stored)  # items' own saved states
            done += len(pending)
            pending = []
            host.publish(ev.MapProgress, task_id=node.id, done=done, total=total)
        last_flush = time.monotonic()

    exited = 0
    try:
        while exited < len(workers):
            try:
                # a part is committed once, at its end; a whole map at least every MAP_FLUSH
                wait = MAP_FLUSH if pending and part is None else None
                entry = await asyncio.wait_for(queue.get(), wait)
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
                _, i, value, cap, attempt, item_started = entry
                try:
                    # an item's finish time is also its record's version, which claims compare
                    fields = attempt_fields(
                        value, cap, attempt, host.settings.worker, started=item_started, finished=time.time()
                    )
                    encoded = host.io.encode(item_id(node.id, i), node.fingerprint, value, **fields)
                except CodecError as exc:  # the item's output cannot be stored: the map fails on it
                    failure = failure or host.failure(item_id(node.id, i), exc, attempt)
                    stop = True
                    continue
                results[i] = value
                pending.append(encoded)
                if part is None and (len(pending) >= MAP_BATCH or time.monotonic() - last_flush >= MAP_FLUSH):
                    flush()
        ran_to_end = failure is None and not stopped
    finally:
        stop = True
        # whatever finished is kept, even when the step is cancelled
        flush(part.marker if part is not None and ran_to_end else None)
        for w in workers:
            w.cancel()
    if failure is not None:
        raise failure
    if stopped:
        raise asyncio.CancelledError
    if part is not None:
        return
    output = [
        results[i] if i in results else host.io.read(host.records[item_id(node.id, i)], host.lookup)
        for i in range(total)
    ]
    host.commit(node, output, started=started, extra={"items": total})


async def _first_attempts(
    host: StepHost, node: Node, items: list[Any], batch: list[int], item_seconds: list[float]
) -> list[tuple[Any, ...]]:
    """Run the first attempt of several items of a sync map function in one thread hop.

    Returns ("ok", i, value, capture, 1, started) per item that succeeded and ("again", i, exc)
    per item that raised: its retries run through ``host.attempts`` on the loop, so
    their count is stored before each retry like any task's."""
    assert node.fn is not None
    fn, cancel, echo = node.fn, host.cancel_event, host.settings.echo

    def body() -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for i in batch:
            key = item_id(node.id, i)
            live = host.live.attempt(node, key, 1)
            tctx = TaskContext.of_attempt(host.wf.name, host.instance_id, key, 1, host.wf.metadata, cancel, live)
            t0, started = time.perf_counter(), time.time()
            try:
                value, cap = call_sync(fn, [items[i]], {}, tctx, echo)
            except Exception as exc:  # noqa: BLE001 - the user function failed; retried or reported
                live.close(ok=False)
                out.append(("again", i, exc))
            else:
                live.close(ok=True)
                item_seconds[0] += time.perf_counter() - t0
                item_seconds[1] += 1
                out.append(("ok", i, value, cap, 1, started))
            if cancel.is_set():
                break
        return out

    result: list[tuple[Any, ...]] = await in_thread(host.settings.executor, body)
    return result
