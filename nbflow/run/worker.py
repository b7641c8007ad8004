"""PooledWorker: several processes share one store and split the steps of its instances.

``WorkflowClient(backend).submit(wf, instance_id, input)`` stores a "pending" instance;
every ``PooledWorker`` on the same store (a ``DiskcacheBackend`` directory on one
machine) repeatedly:

1. looks at the instances of the workflows it knows (pending, running — also one a
   dead runner left "running" — waiting for a delay, awaiting a signal), skipping any a
   ``CheckpointingRunner`` holds locked;
2. computes the ready steps from the stored records alone (``compute_plan``: a step is
   ready when everything it reads has a record and no route skipped it). Fork branches
   are separate steps and a map's items are units of their own (one by one,
   ``step[i]``, or in chunks, ``step[i:j]``), so the branches and items of one
   instance spread over all workers;
3. *claims* a ready unit: an atomic add with an expiry (``claim_ttl``) in the
   instance's store, refused while another worker's claim is live or if the unit's
   record changed since step 2 looked (so a unit finished meanwhile never runs again);
4. runs it with the single-process engine's own steps (:data:`nbflow.run.steps.STEPS`:
   retries, timeouts, loop iteration checkpoints, route branch choice, merge, collect,
   delay, signal; a map's items as a :class:`~nbflow.run.map_step.MapPart` of the map
   step), hosted by a ``Scheduler`` over the stored records that writes through the
   claim, while a heartbeat thread renews its claims every ``heartbeat``;
5. *commits* the unit's records with ``commit_claimed``: a compare-and-set in one
   transaction that writes only while the claim still carries this worker's token. A
   worker whose heartbeat was too slow — its claim expired and another worker took
   the unit over — gets its commit refused: one unit never has two committed results;
6. releases the claim — for a map item, a chunk or a map's final record, in the same
   transaction as that single commit (``commit_claimed(release=True)``). Whoever
   finds every step done marks the instance completed (its output is read from the
   sinks' records); a step that fails after its retries marks it failed.

Between scans a worker keeps each instance's records and plan, with its own commits
folded in. It picks units to claim from that kept view even after the instance's
``change_stamp`` moved (a claim is refused if the unit's record changed since), and
re-reads the records when the view offers nothing it can claim, or before deciding
that the instance is done; a claim refused at one record version is not retried for
a poll interval (whoever holds it either commits — a new version — or releases it).
Within an instance a worker walks on from the unit after the last one it claimed, and
on meeting another worker starts afresh in the middle of the longest run of units
nobody holds (the claims are read with the records), so two workers take apart halves
instead of turning up at each other's finished units; a claim refused on a kept view
stops claiming from it until it is re-read (``stats["refused"]`` counts refusals).
A view offering only units this worker holds already is not re-read, and a view that
says the instance is done is checked against its step records as stored (not every
map item's). The store's index is listed again only when a scan left slots free
(at most once a second while units are in hand), and always before a worker with
``until_idle`` calls it a day.

On the disk store a worker lists instances with ``list_states`` (the index, with the
state of an instance in progress read from its instance record instead of counting its
finished tasks from every record), brings a kept view up to date with the records
written since its stamp alone (``records_since``, leaving out its own commits), trusts
a lock probe that found no runner for a poll interval (the share taken with each claim
is what excludes a runner), and loads the native lock module when it is made.

A worker killed mid-unit simply stops renewing: after ``claim_ttl`` another worker
claims the unit and runs it again (at-least-once execution, exactly-once commit; use
``get_task_context().idempotency_key`` for side effects). A delay is skipped until its
stored wake-up time; a signal wait is retried each poll and consumes a buffered
signal atomically (``backend.consume_signal``). Graceful shutdown (``shutdown()``,
Ctrl-C, SIGTERM for ``nbflow worker``) claims nothing new and finishes the units in
hand (``finish=False`` releases them at once instead).

A store that sends work notices (``WorkNotices``: ``PostgresBackend`` with
``LISTEN``/``NOTIFY``) wakes an idle worker as soon as another process submits an
instance, commits or releases a unit or sends a signal; the poll interval is then only
the fallback (an expired claim of a dead worker, a delay coming due, a notice lost to a
cut connection). The listening session is opened before the first scan, so a notice
of anything the first scan did not see is never missed.

A store with a ready index (``ReadyIndex``: ``PostgresBackend``) is not listed at all:
each scan asks the index, in one read, for the instances due for a look, and a worker
that finds nothing to claim in one — every ready unit held, a delay not due, only the
wait for a signal nobody sent — *settles* it: the index leaves it out until a write
that may make a unit ready (a claimed commit, a released claim, a signal, a control
request, a state change; each one moves the index in its own transaction), its time
comes, or a claim on it expires (its holder may be dead). A settle is refused if the
index moved since the worker read it, so a change it did not see is never lost. Idle
workers then read nothing of instances that are parked, held or finished.

What a server-backed store needs to host workers on many machines (``PostgresBackend``
does all four): (a) an atomic "add if absent or expired" with an expiry per claim,
(b) a compare-and-set commit that checks the claim token in the same transaction,
(c) an index of instances, so workers do not open every instance each poll, and
(d) a server clock for expiries (a disk store's workers share the machine's clock).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from nbflow.core.codecs import Codec, PickleCodec
from nbflow.core.errors import ClaimLostError, ConfigurationError, InstanceLockedError
from nbflow.core.graph import Node, WorkflowDefinition
from nbflow.core.keys import chunk_id, item_id, wait_id
from nbflow.core.retry import parse_duration
from nbflow.core.status import RunState, TaskError
from nbflow.core.typed import record_types
from nbflow.core.vocabulary import NodeKind
from nbflow.run import events as ev
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.control import RunControl
from nbflow.run.instances import as_definition, move_stored
from nbflow.run.map_step import MapPart, run_map
from nbflow.run.outcomes import NotDue, Parked, StepFailed
from nbflow.run.plan import RESTORE, RUN, SKIP, compute_plan
from nbflow.run.scheduler import Scheduler
from nbflow.run.step_host import EngineSettings
from nbflow.run.threads import TaskThreads
from nbflow.run.worker_units import (
    CachedView,
    ClaimedIO,
    InstanceStates,
    InstanceView,
    RecordChanges,
    Unit,
    WarmUp,
    chunk_size,
    claim_order,
    place,
    record_is_valid,
)
from nbflow.store.base import (
    INPUT_KEY,
    Backend,
    CheckpointRecord,
    InstanceMeta,
    Lease,
    ReadyIndex,
    WorkNotices,
    record_version,
)

__all__ = ["ClaimLostError", "PooledWorker", "WorkerHandle"]

log = logging.getLogger("nbflow.worker")

# Never picked up: paused, cancelled, interrupted (a runner's Ctrl-C), completed, failed.
# unpause and revive move an instance back to pending (see nbflow.run.lifecycle).
RUNNABLE = (RunState.PENDING, RunState.RUNNING, RunState.WAITING, RunState.AWAITING_SIGNAL)
_BUSY = (RunState.PENDING, RunState.RUNNING, RunState.WAITING)  # keeps ``run(until_idle=True)`` going
RELIST_BUSY = 1.0  # seconds between listings of the store while a worker has units in hand
_NOTICE_CHECK = 0.1  # seconds between looks at the work-notice flag (and the listener's stop)
READY_LIMIT = 64  # instances asked of a ready index per scan (a scan rarely gets past a few)


class WorkerHandle:
    """A worker running in a background thread (what ``PooledWorker.start()`` returns)."""

    def __init__(self, worker: PooledWorker, thread: threading.Thread) -> None:
        self.worker, self._thread = worker, thread

    def shutdown(self, wait: bool = True, *, finish: bool = True, timeout: float | None = None) -> None:
        """Stop claiming; ``finish=True`` lets the units in hand finish and commit,
        ``finish=False`` releases their claims at once (another worker re-runs them)."""
        self.worker.request_stop(finish=finish)
        if wait:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has stopped (after ``shutdown``, or when idle with
        ``until_idle=True``); re-raises a crash of the worker loop."""
        self._thread.join(timeout)
        if self.worker.crash is not None and not self._thread.is_alive():
            raise self.worker.crash

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.worker.worker_id!r} {'running' if self.is_alive() else 'stopped'}>"


class PooledWorker:
    """One worker of a pool sharing ``backend``; runs units of the ``workflows`` it knows.

    Args:
        worker_id: a name, stored in every record it commits (the widget shows it).
        backend: the shared store (``DiskcacheBackend(path)``; pickles as its path).
        workflows: the workflow definitions (or builders) this worker can run.
        claim_ttl: how long a claim lives without a heartbeat ("5m", 300, ...).
        heartbeat: how often claims in hand are renewed; keep it well under claim_ttl.
        poll_interval: how often to look for work when there is none.
        concurrency: units this worker runs at once (sync bodies in threads).
        executor: run task bodies elsewhere (``ProcessExecutor``, ``DaskExecutor``).
        codec: default codec for outputs (a workflow's own codec wins).

    >>> from nbflow import InMemoryBackend, Workflow, WorkflowClient
    >>> store = InMemoryBackend()
    >>> wf = Workflow("inc").then(lambda x: x + 1).build()
    >>> _ = WorkflowClient(store).submit(wf, "i-1", 41)
    >>> PooledWorker("w1", store, [wf], poll_interval=0.05).run(until_idle=True)
    >>> WorkflowClient(store).status("i-1").output
    42
    """

    def __init__(
        self,
        worker_id: str,
        backend: Backend,
        workflows: Iterable[Any],
        *,
        claim_ttl: str | float = "5m",
        heartbeat: str | float = "30s",
        poll_interval: str | float = "1s",
        concurrency: int = 1,
        executor: Any = None,
        codec: Codec | None = None,
        echo_output: bool = False,
    ) -> None:
        if not isinstance(worker_id, str) or not worker_id.strip():
            raise ConfigurationError("worker_id", worker_id, "a non-empty name such as 'worker-1'")
        if not isinstance(backend, Backend):
            raise ConfigurationError("backend", backend, "DiskcacheBackend(path), InMemoryBackend() or another Backend")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency", concurrency, "a whole number >= 1")
        defs = [as_definition(w) for w in workflows]
        if not defs:
            raise ConfigurationError("workflows", [], "at least one workflow this worker can run")
        self.worker_id = worker_id
        self.backend = backend
        self.workflows: dict[str, WorkflowDefinition] = {d.name: d for d in defs}
        self.claim_ttl = parse_duration(claim_ttl, "claim_ttl")
        self.heartbeat = parse_duration(heartbeat, "heartbeat")
        self.poll_interval = parse_duration(poll_interval, "poll_interval")
        if self.claim_ttl <= 0 or self.heartbeat <= 0 or self.poll_interval <= 0:
            raise ConfigurationError(
                "claim_ttl/heartbeat/poll_interval", (claim_ttl, heartbeat, poll_interval), "positive durations"
            )
        self.concurrency = concurrency
        self.executor = executor
        if isinstance(backend, WarmUp):  # its first claim would otherwise pay for it
            backend.warm_up()
        # what the store offers beyond Backend, looked up once (isinstance of a
        # runtime protocol inspects its methods each time)
        self._changes = backend if isinstance(backend, RecordChanges) else None
        self._states = backend if isinstance(backend, InstanceStates) else None
        self._index = backend if isinstance(backend, ReadyIndex) else None
        self.codec = codec or PickleCodec()
        self.echo_output = echo_output
        self.events = ev.EventBus()
        # woken: scans started early by a work notice of the store (WorkNotices);
        # refused: claims the store turned down (each one a wasted write transaction)
        self.stats = {"units": 0, "committed": 0, "lost": 0, "failed": 0, "released": 0, "woken": 0, "refused": 0}
        self.crash: BaseException | None = None
        self._held: dict[tuple[str, str], str] = {}
        self._shares: dict[str, tuple[Lease, int]] = {}  # instance -> (shared lease, units in hand)
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._finish = True
        self._warned: set[str] = set()
        self._known: list[str] = []
        self._known_at = 0.0
        self._short = True  # the last scan left slots free: the next may list the store again
        self._items: dict[tuple[str, str, float | None], list[Any]] = {}
        self._keys: dict[tuple[str, int], list[str]] = {}
        self._views: dict[str, CachedView] = {}
        self._timing: dict[tuple[str, str], list[float]] = {}  # (workflow, map) -> [seconds, items]
        self._spread = place(worker_id)  # where in the list of instances this worker starts looking
        # instance -> the unit after the last one this worker claimed there (see claim_order)
        self._cursor: dict[str, str] = {}
        # instances where a claim from a kept view was refused: another worker commits
        # there, so that view is re-read (when slots are left) before claiming from it again
        self._contended: set[str] = set()
        # (instance, unit key, record version seen) -> monotonic time until which a
        # refused claim is not retried: another worker holds it, and its commit changes
        # the version (a new key) or its release lets us in after one poll interval.
        self._refused: dict[tuple[str, str, float | None], float] = {}
        # On a store with a ready index (ReadyIndex): the instances due at this scan, with
        # the index version each was read at (settling one is refused if it moved since),
        # and whether any instance of ours is busy, due or not.
        self._due: dict[str, int] = {}
        self._due_busy = False
        # instance -> monotonic time until which its last lock probe (no runner holds
        # it) is taken as still true: probing takes the instance's guard file, which
        # the other workers take too. The share taken with a claim is what excludes a
        # runner; a runner that locked it since only costs that claim and its release.
        self._unlocked: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"PooledWorker({self.worker_id!r}, {self.backend!r}, workflows={sorted(self.workflows)})"

    @property
    def _by(self) -> str:
        """Who this worker is, in the lifecycle's record of state changes."""
        return f"worker {self.worker_id}"

    def subscribe(
        self, subscriber: Callable[[ev.RunEvent], None], kinds: Iterable[ev.EventKind | type[ev.RunEvent]] | None = None
    ) -> Callable[[], None]:
        """Receive this worker's task events (they carry ``worker``)."""
        return self.events.subscribe(subscriber, kinds)

    # -- running ----------------------------------------------------------------------
    def start(self, *, until_idle: bool = False) -> WorkerHandle:
        """Run in a background thread; returns a handle with ``shutdown()``/``join()``."""
        self._stop.clear()
        self._known_at = 0.0  # list the instances afresh: some may have been unpaused or revived since
        thread = threading.Thread(
            target=self._thread_main, args=(until_idle,), name=f"nbflow-worker-{self.worker_id}", daemon=True
        )
        thread.start()
        return WorkerHandle(self, thread)

    def run(self, *, until_idle: bool = False) -> None:
        """Work until ``request_stop()``/Ctrl-C (graceful), or — ``until_idle=True`` —
        until no instance of its workflows is pending, running or waiting for a delay."""
        handle = self.start(until_idle=until_idle)
        try:
            while handle.is_alive():
                handle.join(0.2)
        except KeyboardInterrupt:
            handle.shutdown(finish=True)
            raise
        handle.join()

    def request_stop(self, *, finish: bool = True) -> None:
        """Ask the loop to stop (thread-safe); see ``WorkerHandle.shutdown``."""
        self._finish = finish
        self._stop.set()

    def _thread_main(self, until_idle: bool) -> None:
        try:
            asyncio.run(self._main(until_idle))
        except BaseException as exc:
            self.crash = exc
            log.exception("worker %s crashed", self.worker_id)

    async def _main(self, until_idle: bool) -> None:
        pool = TaskThreads(self.concurrency, f"nbflow-{self.worker_id}")  # gives up timed-out threads
        executor = self.executor if self.executor is not None else pool
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(beat_stop,), name=f"nbflow-heartbeat-{self.worker_id}", daemon=True
        )
        beat.start()
        woken, listening = self._listen(beat_stop)  # before the first scan: no notice after it is missed
        running: dict[asyncio.Task[None], Unit] = {}
        next_scan = 0.0
        try:
            while not self._stop.is_set():
                free = self.concurrency - len(running)
                now = time.monotonic()
                if woken.is_set():  # the store says work may have appeared: look (and list) now
                    woken.clear()
                    next_scan = self._known_at = 0.0
                if free > 0 and now >= next_scan:
                    units, busy = self._scan(free)
                    for unit in units:
                        running[asyncio.ensure_future(self._run_unit(unit, executor))] = unit
                    if not units:
                        next_scan = now + self.poll_interval
                        if until_idle and not running and not busy:
                            break
                # with every slot busy, still wake each poll interval: a stop request must not wait for a unit
                timeout = (
                    max(0.01, min(self.poll_interval, next_scan - time.monotonic())) if free > 0 else self.poll_interval
                )
                if listening and free > 0:
                    timeout = min(timeout, _NOTICE_CHECK)
                if running:
                    done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        running.pop(task)
                        task.result()  # _run_unit handles its own errors; a raise here is a bug
                    if done:
                        next_scan = 0.0  # a unit finished: look again at once
                else:
                    await asyncio.sleep(min(timeout or self.poll_interval, 0.1))
            # graceful stop: claim nothing new; finish (or give back) what is in hand
            if running and not self._finish:
                self._release_all()
                for task in running:
                    task.cancel()
            if running:
                await asyncio.wait(running)
        finally:
            beat_stop.set()
            beat.join(5)
            if listening is not None:
                listening.join(5)
            self._release_all()
            pool.shutdown(wait=False, cancel_futures=True)

    def _listen(self, stop: threading.Event) -> tuple[threading.Event, threading.Thread | None]:
        """On a store that sends work notices, a thread that sets the returned event at
        each one (until ``stop``); the listening session is open when this returns."""
        woken = threading.Event()
        if not isinstance(self.backend, WorkNotices):
            return woken, None
        try:
            listener = self.backend.listen_for_work()
        except Exception:  # noqa: BLE001 - no wake-ups then; the poll finds the work
            log.warning("worker %s: no work notices from %r; polling only", self.worker_id, self.backend)
            return woken, None

        def run() -> None:
            try:
                while not stop.is_set():
                    if listener.wait(_NOTICE_CHECK):
                        self.stats["woken"] += 1
                        woken.set()
            finally:
                listener.close()

        thread = threading.Thread(target=run, name=f"nbflow-notices-{self.worker_id}", daemon=True)
        thread.start()
        return woken, thread

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            with self._held_lock:
                held = list(self._held.items())
            for (iid, key), token in held:
                try:
                    if not self.backend.renew_claim(iid, key, token, self.claim_ttl) and self._holds(iid, key, token):
                        log.warning("worker %s: claim on %s/%s was taken over", self.worker_id, iid, key)
                except Exception:  # a store hiccup: the next beat tries again
                    log.exception("heartbeat of %s failed", self.worker_id)

    def _holds(self, iid: str, key: str, token: str) -> bool:
        """Still in hand? (A unit whose last commit released its claim is not.)"""
        with self._held_lock:
            return self._held.get((iid, key)) == token

    def _release_all(self) -> None:
        with self._held_lock:
            held, self._held = dict(self._held), {}
        for (iid, key), token in held.items():
            try:
                if self.backend.release_claim(iid, key, token):
                    self.stats["released"] += 1
            except Exception:  # noqa: BLE001 - the claim expires on its own anyway
                pass
        with self._held_lock:
            shares, self._shares = list(self._shares.values()), {}
        for lease, _ in shares:
            lease.release()

    # -- finding work -----------------------------------------------------------------
    def _instances(self, *, relist: bool = False) -> tuple[list[str], bool]:
        """The instances to look at, oldest first (instances finish in order): those of
        this worker's workflows that were runnable when last listed; and whether this
        call listed them.

        The store is listed again only when the last scan of the kept list left slots
        free — at most once a poll interval, or once a second (``RELIST_BUSY``) while
        units are in hand — or when ``relist`` asks: a new, unpaused or revived
        instance matters only to a worker with room for it, and an instance that
        stopped being runnable is seen in its meta at the scan. Listing re-reads every
        instance that changed since (on disk, all of its records), which cost a busy
        worker more than its units did.

        On a store with a ready index, the index is asked at every scan instead (one
        read): only the instances due for a look come back, never one that is settled
        (every unit held, a delay not due, a signal not sent)."""
        if self._index is not None:
            answer = self._index.ready_instances(self.workflows, READY_LIMIT, skip=self._warned)
            self._due, self._due_busy = dict(answer.due), answer.busy
            self._known = [iid for iid, _ in answer.due]
            return self._known, True
        now = time.monotonic()
        with self._held_lock:
            busy = bool(self._held)
        due = self._known_at + (max(0.0, RELIST_BUSY - self.poll_interval) if busy else 0.0)
        if relist or (now >= due and self._short):
            listing = self._states.list_states() if self._states is not None else self.backend.list_summaries()
            rows = [row for row in listing if row.workflow in self.workflows]  # the store index
            rows.sort(key=lambda row: row.created_at)
            self._known = [row.instance_id for row in rows if row.state in RUNNABLE]
            for row in rows:
                if row.state not in RUNNABLE:
                    self._forget(row.instance_id)
            self._known_at = now + self.poll_interval
            return self._known, True
        return self._known, False

    def _forget(self, iid: str) -> None:
        """Drop what is kept of an instance no longer runnable."""
        self._views.pop(iid, None)
        self._cursor.pop(iid, None)
        self._contended.discard(iid)
        self._unlocked.pop(iid, None)

    def _scan(self, free: int) -> tuple[list[Unit], bool]:
        """Claim up to ``free`` ready units; also returns whether any instance is busy."""
        claimed, busy, listed = self._scan_known(free, relist=False)
        if not claimed and not busy and not listed:  # before calling it idle, look at a fresh list
            claimed, busy, listed = self._scan_known(free, relist=True)
        self._short = len(claimed) < free
        return claimed, busy

    def _scan_known(self, free: int, *, relist: bool) -> tuple[list[Unit], bool, bool]:
        claimed: list[Unit] = []
        busy = False
        known, listed = self._instances(relist=relist)
        # Oldest first, from this worker's own place in the list: workers of a pool
        # start on different instances instead of all refusing each other's claims on
        # the oldest (and re-reading it after every commit of the others).
        start = int(self._spread * len(known))
        stale: list[tuple[InstanceMeta, WorkflowDefinition, bool]] = []
        for iid in known[start:] + known[:start]:
            meta = self.backend.load_instance(iid)
            if meta is None or meta.state not in RUNNABLE:
                self._forget(iid)
                if iid in self._known:  # not looked at again before the next listing
                    self._known.remove(iid)
                continue
            wf = self.workflows[meta.workflow]
            if meta.definition_hash != wf.definition_hash:
                if iid not in self._warned:
                    self._warned.add(iid)
                    log.warning(
                        "worker %s skips %s: it was submitted with another shape of %r", self.worker_id, iid, wf.name
                    )
                continue
            if meta.state in _BUSY:
                busy = True
            with self._held_lock:
                shared = iid in self._shares  # held shared here: no runner can hold it locked
            if not shared and self._unlocked.get(iid, 0.0) <= time.monotonic():
                if self.backend.is_locked(iid):  # a CheckpointingRunner runs it in one process
                    self._settle(iid, time.time() + self.poll_interval)  # its lock may go with a dead runner
                    continue
                self._unlocked[iid] = time.monotonic() + self.poll_interval
            control = self.backend.get_control(iid)
            if control is not None and control[0] in (RunState.CANCELLED, RunState.PAUSED):
                self._set_state(iid, RunState(control[0]), message=control[1])
                continue
            running = meta.state == RunState.RUNNING
            view, current = self._view(meta, wf, current=False)
            if view.damaged:  # a listing of every record would call it damaged (InstanceStates does not look)
                self._forget(iid)
                if iid in self._known:
                    self._known.remove(iid)
                continue
            if not current and iid in self._contended:
                stale.append((meta, wf, running))
                continue
            if not current:  # a kept view whose stamp moved: claim from it, re-read if it offers nothing
                got, in_hand = self._claim_ready(view, free - len(claimed), running, current=False)
                claimed.extend(got)
                if len(claimed) >= free:
                    return claimed, True, listed
                if got or in_hand:
                    # every unit it shows ready is in this worker's hands: a re-read could
                    # only show the commits of others, and one of ours ends first (then
                    # this worker looks again at once)
                    continue
                if self._done(view.plan) and self._done_as_stored(view):
                    self._complete(view)
                    continue
                # re-read it only if the other instances' kept views do not fill the
                # free slots: a refused claim means another worker is on this one, and
                # re-reading all its records costs more than a unit elsewhere
                stale.append((meta, wf, running))
                continue
            if self._plan_and_claim(view, free - len(claimed), running, claimed):
                return claimed, True, listed
        for meta, wf, running in stale:
            view, _ = self._view(meta, wf, current=True)
            if self._plan_and_claim(view, free - len(claimed), running, claimed):
                return claimed, True, listed
        return claimed, busy or self._due_busy, listed

    def _plan_and_claim(self, view: InstanceView, limit: int, running: bool, claimed: list[Unit]) -> bool:
        """Complete the instance of a current ``view`` if it is done, else claim up to
        ``limit`` of its ready units into ``claimed``; True once the slots are full."""
        if view.damaged:
            return False
        if self._done(view.plan):
            self._complete(view)
            return False
        got = self._claim_ready(view, limit, running, current=True)[0]
        claimed.extend(got)
        return len(got) >= limit

    @staticmethod
    def _done(plan: dict[str, Any]) -> bool:
        return all(p in (RESTORE, SKIP) for p in plan.values())

    def _done_as_stored(self, view: InstanceView) -> bool:
        """Whether the records stored now say the instance is done, read one step record
        at a time: the plan looks at no other record (map items, chunk markers), and a
        kept view that says "done" has this worker's own commits folded in but may miss
        a deletion by someone else. Used instead of re-reading every record only when
        the steps are few against the records (a map of many items): False sends the
        caller to the full re-read."""
        ids = [node.id for node in view.wf.nodes]
        if len(ids) * 4 >= len(view.records):
            return False
        iid = view.meta.instance_id
        stored = {}
        for task_id in ids:
            record = self.backend.get_record(iid, task_id)
            if record is not None:
                stored[task_id] = record
        return self._done(compute_plan(view.wf, stored))

    def _claim_ready(self, view: InstanceView, limit: int, running: bool, *, current: bool) -> tuple[list[Unit], bool]:
        """Claim up to ``limit`` of the units ``view`` shows ready; the instance is
        marked running with the first one that does work (a wait does none). Also
        returns whether every unit it shows ready is one this worker holds already.

        Units are tried in :func:`claim_order`, leaving out those another worker held
        when the view was read. A refusal on a kept view that is not ``current`` means
        another worker is committing in this instance: claiming stops there and the
        instance waits for a re-read instead of refusing claim after claim on units
        the others finished since (each refusal a write transaction)."""
        units = self._ready(view)
        iid = view.meta.instance_id
        now = time.time()
        with self._held_lock:
            mine = {key for (held_iid, key) in self._held if held_iid == iid}
        keys = [unit.key for unit in units]
        if units and mine.issuperset(keys):
            # not settled: a unit whose last commit released its claim is still in hand
            # here until its run ends, and that commit's touch of the index is past
            return [], True
        taken = mine | {key for key, until in view.others.items() if until > now}
        if current:
            self._contended.discard(iid)
        # only the wait for a signal that was not sent: put off until it is sent (or its
        # timeout comes), refused when it is buffered already; a kept view is re-read
        # first (the caller does that when nothing was claimed from it)
        parked, deadline = self._parked(view, [unit for unit in units if unit.key not in taken])
        if parked and (
            not current
            or not self._all_held(iid, [key for key in keys if key in taken])
            or self._settle(iid, deadline, signal=view.meta.signal)
        ):
            return [], False
        claimed: list[Unit] = []
        for index in claim_order(keys, taken, self._cursor.get(iid), place(self.worker_id, iid)):
            unit = units[index]
            if self._claim(unit) is None:
                if unit.locked:  # a runner holds the instance: none of its units can be run here
                    break
                if unit.refused:
                    self._cursor.pop(iid, None)  # met another worker: start afresh in the largest free run
                    if not current:
                        self._contended.add(iid)
                        break
                continue
            self._cursor[iid] = keys[(index + 1) % len(keys)]
            if not running and not unit.node.kind.waits:
                self._set_state(view.meta.instance_id, RunState.RUNNING)
                running = True
            claimed.append(unit)
            if len(claimed) >= limit:
                break
        if not claimed and current and taken.issuperset(keys) and self._all_held(iid, keys):
            self._settle(iid, view.due_at)  # each unit held (a dead holder's claim expires) or none ready
        return claimed, False

    def _all_held(self, iid: str, keys: list[str]) -> bool:
        """Whether every unit of ``keys`` is claimed now, as stored (read after the
        index, so a release since is either seen here or refuses the settle): the
        claims kept with a view may be older than its records (a release does not
        move the change stamp). If they are, the kept view is dropped: the next scan
        reads the instance afresh and claims what was released."""
        if not keys:
            return True
        now = time.time()
        held = {key for key, claim in self.backend.get_claims(iid).items() if claim.expires_at > now}
        if held.issuperset(keys):
            return True
        self._views.pop(iid, None)
        return False

    def _settle(self, iid: str, until: float | None, *, signal: str | None = None) -> bool:
        """Tell a ready index that this scan found nothing to claim in ``iid``: it is
        not due again until ``until`` (None: until a change), a claim on it expires, or
        anything is written that may make a unit ready — and for a poll interval at
        least (a claim left behind expired brings it back then, not at every scan). At
        most once per reading of the index; refused when the index moved since."""
        version = self._due.pop(iid, None)
        if version is None or self._index is None:
            return False
        return self._index.settle_ready(iid, version, until, signal=signal, least=self.poll_interval)

    def _parked(self, view: InstanceView, free: list[Unit]) -> tuple[bool, float | None]:
        """Whether the only units free to claim are the wait for the signal the instance
        is parked on (it ran, found no signal, and stored its deadline, if it has one,
        which has not come: then the step must run, to fail), on a store with a ready
        index (which says when that signal is sent); and that deadline."""
        meta, now = view.meta, time.time()
        if not free or meta.instance_id not in self._due or meta.state != RunState.AWAITING_SIGNAL:
            return False, None
        deadline: float | None = None
        for unit in free:
            node = unit.node
            if node.kind != NodeKind.SIGNAL or meta.signal is None or node.options.get("signal") != meta.signal:
                return False, None
            if node.options.get("timeout") is not None:
                stored = view.records.get(wait_id(node.id, "deadline"))
                at = None if stored is None or stored.fingerprint != node.fingerprint else stored.extra.get("at")
                if at is None or float(at) <= now:
                    return False, None
                deadline = float(at) if deadline is None else min(deadline, float(at))
        return True, deadline

    def _claim(self, unit: Unit) -> str | None:
        """Claim ``unit`` for this worker, skipping the store round trip (a write
        transaction, serialised across processes) when the answer is known to be no:
        the unit is already in hand here, or was refused lately at this version."""
        iid, now = unit.view.meta.instance_id, time.monotonic()
        with self._held_lock:
            if (iid, unit.key) in self._held:
                return None
        refused = (iid, unit.key, unit.seen)
        if self._refused.get(refused, 0.0) > now:
            return None
        token = self.backend.claim(iid, unit.key, self.worker_id, self.claim_ttl, seen=unit.seen)
        if token is None:
            unit.refused = True
            self.stats["refused"] += 1
            if len(self._refused) > 4096:
                self._refused = {k: t for k, t in self._refused.items() if t > now}
            self._refused[refused] = now + self.poll_interval
            return None
        if not self._enter(iid):  # a runner took the instance meanwhile: leave it to it
            self.backend.release_claim(iid, unit.key, token)
            self._unlocked.pop(iid, None)  # probed again at the next scan
            unit.locked = True
            return None
        unit.token = token
        with self._held_lock:
            self._held[(iid, unit.key)] = token
        return token

    def _enter(self, iid: str) -> bool:
        """Hold the instance shared while this worker has units of it in hand: a
        CheckpointingRunner's exclusive lock and a worker pool exclude each other."""
        with self._held_lock:
            entry = self._shares.get(iid)
            if entry is not None:
                self._shares[iid] = (entry[0], entry[1] + 1)
                return True
        try:
            lease = self.backend.share(iid, holder=f"worker {self.worker_id}")
        except InstanceLockedError:
            return False
        with self._held_lock:
            entry = self._shares.get(iid)
            if entry is None:
                self._shares[iid] = (lease, 1)
                return True
            self._shares[iid] = (entry[0], entry[1] + 1)  # another thread of this worker got there first
        lease.release()
        return True

    def _leave(self, iid: str) -> None:
        with self._held_lock:
            entry = self._shares.get(iid)
            if entry is None:
                return
            if entry[1] > 1:
                self._shares[iid] = (entry[0], entry[1] - 1)
                return
            del self._shares[iid]
        entry[0].release()

    def _view(self, meta: InstanceMeta, wf: WorkflowDefinition, *, current: bool) -> tuple[InstanceView, bool]:
        """The instance's records and plan, and whether they are current.

        They are re-read only when the instance's change stamp moved (the stamp is read
        first, so a kept view is never older than the stamp) — and, unless ``current``
        is asked for, not even then: a kept view (with this worker's own commits folded
        in) is good enough to pick units to claim, since a claim is refused when the
        unit's record changed since the view was read. Re-reading every record after
        each commit of any worker was most of a worker's time on small units. Whether
        the instance is done is only ever decided on a current view. A store that can
        say which records were written since a stamp (``RecordChanges``: the disk
        store) brings a kept view up to date with those alone."""
        iid = meta.instance_id
        stamp: Hashable | None = self.backend.change_stamp(iid)
        cached = self._views.get(iid)
        kept = cached is not None and stamp is not None and cached.definition_hash == wf.definition_hash
        if cached is not None and kept and (cached.stamp == stamp or not current):
            cached.view.meta = meta
            return cached.view, cached.stamp == stamp
        if self._changes is not None:  # only what changed since the kept view
            since, own = (cached.stamp, cached.own) if cached is not None and kept else (None, set())
            stamp, records, complete = self._changes.records_since(iid, since, own)
            if cached is not None and kept and not complete and stamp is not None:
                view = cached.view
                view.meta = meta
                view.refresh(records, self._others(iid))
                cached.stamp, cached.own = stamp, set()
                return view, True
        else:
            records = self.backend.get_records(iid)
        io = CheckpointIO(self.backend, iid, wf.codec or self.codec)
        io.types = record_types(wf)  # pydantic outputs stored as JSON are rebuilt as models
        view = InstanceView(meta, wf, records, compute_plan(wf, records), io, self._others(iid))
        if stamp is not None:
            self._views[iid] = CachedView(stamp, wf.definition_hash, view)
        return view, True

    def _others(self, iid: str) -> dict[str, float]:
        """The units other workers hold claimed, with their expiries (a read: no write
        transaction, unlike a claim the store would refuse)."""
        now = time.time()
        return {
            key: claim.expires_at
            for key, claim in self.backend.get_claims(iid).items()
            if claim.worker != self.worker_id and claim.expires_at > now
        }

    def _absorb(self, iid: str, written: list[CheckpointRecord]) -> None:
        """Fold the records a unit of this worker committed into the kept view, so it
        does not offer that unit again before it is re-read."""
        cached = self._views.get(iid)
        if cached is None or not written:
            return
        view = cached.view
        for record in written:
            view.records[record.task_id] = record
        cached.own.update(record.task_id for record in written)
        view.plan = compute_plan(view.wf, view.records)

    def _ready(self, view: InstanceView) -> list[Unit]:
        units: list[Unit] = []
        plan, records = view.plan, view.records
        now = time.time()
        view.due_at = None
        for node in view.wf.nodes:
            state = plan[node.id]
            if state in (RESTORE, SKIP) or any(plan[d] not in (RESTORE, SKIP) for d in node.deps):
                continue
            seen = record_version(records.get(node.id))
            if node.kind == NodeKind.MAP and state == RUN:
                items = self._map_items(view, node)
                if items is None:  # not iterable: let the step itself fail with the message
                    units.append(Unit(view, node, node.id, seen))
                    continue
                size = chunk_size(len(items))
                keys = self._item_keys(node.id, len(items))
                todo = []
                for start in range(0, len(items), size):
                    stop = min(start + size, len(items))
                    if all(record_is_valid(records.get(keys[i]), node) for i in range(start, stop)):
                        continue
                    if size == 1:
                        rec = records.get(keys[start])
                        todo.append(Unit(view, node, keys[start], record_version(rec), item=start))
                    else:  # claimed and committed as one unit; its marker record ends it
                        key = chunk_id(node.id, start, stop)
                        todo.append(Unit(view, node, key, record_version(records.get(key)), chunk=(start, stop)))
                units.extend(todo or [Unit(view, node, node.id, seen, finalize=True)])
                continue
            if node.kind == NodeKind.DELAY and state == RUN:
                wake = records.get(f"{node.id}#wake")
                at = None if wake is None else float(wake.extra.get("at", 0))
                if wake is not None and at is not None and wake.fingerprint == node.fingerprint and at > now:
                    view.due_at = at if view.due_at is None else min(view.due_at, at)
                    continue  # not due yet
            units.append(Unit(view, node, node.id, seen))
        return units

    def _item_keys(self, node_id: str, count: int) -> list[str]:
        """The record ids of a map's items (made once per map and length: planning
        looks them up at every scan)."""
        keys = self._keys.get((node_id, count))
        if keys is None:
            if len(self._keys) > 256:
                self._keys.clear()
            keys = self._keys[(node_id, count)] = [item_id(node_id, i) for i in range(count)]
        return keys

    def _map_items(self, view: InstanceView, node: Node) -> list[Any] | None:
        src = node.params[0][1]
        dep = src.task or INPUT_KEY
        cache_key = (view.meta.instance_id, node.id, record_version(view.records.get(dep)))
        items = self._items.get(cache_key)
        if items is None:
            try:
                items = list(view.get(src))
            except TypeError:
                return None
            if len(self._items) > 256:
                self._items.clear()
            self._items[cache_key] = items
        return items

    # -- running one unit -------------------------------------------------------------
    async def _run_unit(self, unit: Unit, executor: Any) -> None:
        view, node = unit.view, unit.node
        iid = view.meta.instance_id
        io = ClaimedIO(self.backend, iid, view.io.codec, unit.key, unit.token, self.worker_id)
        io.types = view.io.types
        io.last_commit_releases = unit.item is not None or unit.chunk is not None or unit.finalize
        sched = Scheduler(
            wf=view.wf,
            instance_id=iid,
            plan=dict(view.plan),
            records=dict(view.records),
            input_value=view.value(INPUT_KEY) if INPUT_KEY in view.records else None,
            io=io,
            bus=self.events,
            control=RunControl(self.backend, iid),
            settings=EngineSettings(
                executor,
                echo=self.echo_output,
                worker=self.worker_id,
                park_on_signal=True,
                park_on_delay=True,
                records_may_lag=True,  # read before the claim, maybe from a kept view
            ),
            skipped=(t for t, p in view.plan.items() if p == SKIP),
        )
        self.stats["units"] += 1
        try:
            part = self._part(unit)
            if part is not None:  # map items: the map step's own code, over these items
                await run_map(sched, node, part=part)
            else:  # any step, a map whose items are all done included (it stores the step's record)
                await sched.execute(node, inline=False)
        except ClaimLostError as exc:
            self.stats["lost"] += 1
            log.warning("%s", exc)
        except StepFailed as failed:
            self.stats["failed"] += 1
            self._fail(iid, failed.error)
        except Parked as parked:
            self._set_state(iid, RunState.AWAITING_SIGNAL, signal=parked.signal)
            # looked for its signal just now: again after a poll interval, not at the
            # next scan (which comes at once, as a unit just ended); a ready index
            # instead leaves the instance out until the signal is sent
            if self._index is None:
                self._refused[(iid, unit.key, unit.seen)] = time.monotonic() + self.poll_interval
        except NotDue as due:
            self._set_state(iid, RunState.WAITING, wake_at=due.at)
        except asyncio.CancelledError:
            pass  # shutdown(finish=False): the claim is released below
        except Exception as exc:  # noqa: BLE001 - a store problem (unreadable checkpoint, ...)
            self.stats["failed"] += 1
            self._fail(iid, TaskError(unit.key, type(exc).__name__, str(exc)))
        else:
            self.stats["committed"] += 1
        finally:
            self._absorb(iid, io.written)
            with self._held_lock:
                token = self._held.pop((iid, unit.key), None)
            if token is not None and not io.released:
                try:
                    self.backend.release_claim(iid, unit.key, token)
                except Exception:  # noqa: BLE001 - it expires on its own
                    pass
            self._leave(iid)

    def _part(self, unit: Unit) -> MapPart | None:
        """The map items a unit runs (one item, or a chunk ended by its marker record)."""
        if unit.item is None and unit.chunk is None:
            return None
        items = self._map_items(unit.view, unit.node) or []
        # how long this map's items take, learnt from the parts run so far (per step of a workflow)
        timing = self._timing.setdefault((unit.view.wf.name, unit.node.id), [0.0, 0.0])
        if unit.item is not None:
            return MapPart(unit.item, unit.item + 1, items, timing=timing)
        start, stop = unit.chunk or (0, 0)
        marker = CheckpointRecord(
            task_id=unit.key,
            fingerprint=unit.node.fingerprint,
            codec="ref",
            finished_at=time.time(),
            worker=self.worker_id,
            extra={"chunk": [start, stop]},
        )
        return MapPart(start, stop, items, marker, timing)

    # -- instance states --------------------------------------------------------------
    def _set_state(
        self, iid: str, state: RunState, *, wake_at: float | None = None, signal: str | None = None, message: str = ""
    ) -> None:
        # a late unit of an instance paused or cancelled meanwhile leaves it so
        move_stored(self.backend, iid, state, by=self._by, message=message or None, wake_at=wake_at, signal=signal)

    def _fail(self, iid: str, error: TaskError) -> None:
        message = f"failed on worker {self.worker_id}"
        meta = move_stored(self.backend, iid, RunState.FAILED, by=self._by, message=message, error=error.to_dict())
        if meta is None:  # completed or cancelled meanwhile: it stays so
            return
        self.events.publish(
            ev.RunFinished(
                workflow=meta.workflow,
                instance_id=iid,
                state=RunState.FAILED,
                error=str(error),
                failed_task=error.task_id,
            )
        )

    def _complete(self, view: InstanceView) -> None:
        message = f"completed by worker {self.worker_id}"
        iid = view.meta.instance_id
        fields: dict[str, Any] = {"wake_at": None, "signal": None, "error": None}
        meta = move_stored(self.backend, iid, RunState.COMPLETED, by=self._by, message=message, **fields)
        if meta is None:  # completed already (by another worker), or cancelled meanwhile
            return
        self.events.publish(
            ev.RunFinished(workflow=meta.workflow, instance_id=meta.instance_id, state=RunState.COMPLETED)
        )
