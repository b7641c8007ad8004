"""InMemoryBackend: the reference implementation, for tests and throw-away runs.

Dicts behind one lock. Nothing survives the process; everything else behaves like the
disk store (same contract suite), so a workflow tested here runs the same on disk.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from nbflow.core.errors import InstanceLockedError, StaleInstanceError
from nbflow.store.base import (
    CheckpointRecord,
    Claim,
    InstanceMeta,
    InstanceSummary,
    MemorySink,
    PayloadSink,
    matches,
    record_version,
    summarize,
    validate_instance_id,
)

__all__ = ["InMemoryBackend"]


@dataclass
class _Instance:
    meta: InstanceMeta | None = None
    records: dict[str, CheckpointRecord] = field(default_factory=dict)
    signals: dict[str, deque[bytes]] = field(default_factory=dict)
    control: tuple[str, str] | None = None
    claims: dict[str, Claim] = field(default_factory=dict)
    task_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    stamp: int | None = None  # see change_stamp


class _MemoryLease:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class InMemoryBackend:
    """Checkpoints in this process's memory (lost when it exits).

    >>> from nbflow.store.base import InstanceMeta
    >>> b = InMemoryBackend()
    >>> b.save_instance(InstanceMeta("i-1", "wf", "hash"))
    >>> [m.instance_id for m in b.list_instances()]
    ['i-1']
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._instances: dict[str, _Instance] = {}
        self._locks: dict[str, str] = {}
        self._shared: dict[str, int] = {}
        # One counter for the whole store: a deleted and resubmitted instance never
        # repeats a stamp it had before.
        self._stamps = itertools.count(1)

    def __repr__(self) -> str:
        return f"InMemoryBackend({len(self._instances)} instances)"

    def _get(self, instance_id: str) -> _Instance:
        inst = self._instances.get(instance_id)  # an id already stored was checked when it was
        if inst is None:
            inst = self._instances[validate_instance_id(instance_id)] = _Instance()
        return inst

    # -- instances ----------------------------------------------------------------------
    def load_instance(self, instance_id: str) -> InstanceMeta | None:
        with self._lock:
            inst = self._instances.get(instance_id)
            return copy.copy(inst.meta) if inst and inst.meta else None

    def save_instance(self, meta: InstanceMeta) -> None:
        with self._lock:
            inst = self._instances.get(meta.instance_id)
            stored = inst.meta.generation if inst is not None and inst.meta is not None else None
            if not meta.generation:  # a new instance: nothing of an older one stays visible
                meta.generation = uuid.uuid4().hex
                if inst is not None and stored is not None:
                    inst.records.clear()
                    inst.task_states.clear()
                    inst.stamp = next(self._stamps)  # the records changed: readers must see it
            elif stored != meta.generation:
                raise StaleInstanceError(meta.instance_id, "it was cleared" if stored is None else "it was restarted")
            self._get(meta.instance_id).meta = copy.copy(meta)

    def delete_instance(self, instance_id: str) -> bool:
        with self._lock:
            inst = self._instances.pop(instance_id, None)
            return bool(inst and inst.meta)

    def list_instances(self) -> list[InstanceMeta]:
        with self._lock:
            return [copy.copy(i.meta) for i in self._instances.values() if i.meta]

    def list_summaries(self, workflow: str | None = None, state: str | None = None) -> list[InstanceSummary]:
        with self._lock:
            rows = [summarize(i.meta, i.records) for i in self._instances.values() if i.meta]
        return [row for row in rows if matches(row, workflow, state)]

    # -- checkpoints --------------------------------------------------------------------
    def new_sink(self, instance_id: str) -> PayloadSink:
        return MemorySink()

    def put_record(self, instance_id: str, record: CheckpointRecord, sink: PayloadSink) -> CheckpointRecord:
        return self.put_records(instance_id, [(record, sink)])[0]

    def put_records(
        self, instance_id: str, items: list[tuple[CheckpointRecord, PayloadSink]]
    ) -> list[CheckpointRecord]:
        stored = []
        for record, sink in items:
            assert isinstance(sink, MemorySink)
            record.payload, record.size = sink.finish()
            record.blob = None
            stored.append(record)
        with self._lock:
            inst = self._get(instance_id)
            for record in stored:
                inst.records[record.task_id] = record
            inst.stamp = next(self._stamps)
        return stored

    def get_records(self, instance_id: str) -> dict[str, CheckpointRecord]:
        with self._lock:
            inst = self._instances.get(instance_id)
            return dict(inst.records) if inst else {}

    def get_record(self, instance_id: str, task_id: str) -> CheckpointRecord | None:
        with self._lock:
            inst = self._instances.get(instance_id)
            return inst.records.get(task_id) if inst else None

    def open_payload(self, instance_id: str, record: CheckpointRecord) -> IO[bytes]:
        return io.BytesIO(record.payload or b"")

    def delete_records(self, instance_id: str, task_ids: Iterable[str]) -> None:
        with self._lock:
            inst = self._instances.get(instance_id)
            if inst:
                for tid in task_ids:
                    inst.records.pop(tid, None)
                inst.stamp = next(self._stamps)

    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None:
        """Store (or with None, drop) the JSON-able facts about a task that is not
        finished yet: its attempt count, next retry time, last progress."""
        frozen = None if state is None else json.loads(json.dumps(state))  # same refusals as on disk
        with self._lock:
            inst = self._get(instance_id)
            if frozen is None:
                inst.task_states.pop(task_id, None)
            else:
                inst.task_states[task_id] = frozen

    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            inst = self._instances.get(instance_id)
            return copy.deepcopy(inst.task_states) if inst else {}

    def change_stamp(self, instance_id: str) -> int | None:
        """A value that changes whenever a record of the instance is written or deleted."""
        with self._lock:
            inst = self._instances.get(instance_id)
            return inst.stamp if inst else None

    # -- exclusivity --------------------------------------------------------------------
    def lock(self, instance_id: str, holder: str) -> _MemoryLease:
        validate_instance_id(instance_id)  # same refusals as the disk store (contract)
        with self._lock:
            if instance_id in self._locks:
                raise InstanceLockedError(instance_id, self._locks[instance_id])
            if self._shared.get(instance_id):
                raise InstanceLockedError(instance_id, "PooledWorker processes are running it")
            self._locks[instance_id] = holder

        def release() -> None:
            with self._lock:
                self._locks.pop(instance_id, None)

        return _MemoryLease(release)

    def share(self, instance_id: str, holder: str) -> _MemoryLease:
        validate_instance_id(instance_id)
        with self._lock:
            if instance_id in self._locks:
                raise InstanceLockedError(instance_id, f"a runner holds it: {self._locks[instance_id]}")
            self._shared[instance_id] = self._shared.get(instance_id, 0) + 1

        def release() -> None:
            with self._lock:
                left = self._shared.get(instance_id, 0) - 1
                if left > 0:
                    self._shared[instance_id] = left
                else:
                    self._shared.pop(instance_id, None)

        return _MemoryLease(release)

    def is_locked(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._locks

    # -- signals and control ------------------------------------------------------------
    def push_signal(self, instance_id: str, name: str, payload: bytes) -> None:
        with self._lock:
            self._get(instance_id).signals.setdefault(name, deque()).append(payload)

    def pop_signal(self, instance_id: str, name: str) -> bytes | None:
        with self._lock:
            queue = self._get(instance_id).signals.get(name)
            return queue.popleft() if queue else None

    def consume_signal(self, instance_id: str, name: str, record: CheckpointRecord) -> CheckpointRecord | None:
        """Atomically take the oldest ``name`` signal and store it as ``record``."""
        with self._lock:
            inst = self._get(instance_id)
            queue = inst.signals.get(name)
            if not queue:
                return None
            record.payload = queue.popleft()
            record.size, record.blob = len(record.payload), None
            inst.records[record.task_id] = record
            inst.stamp = next(self._stamps)
            return record

    def set_control(self, instance_id: str, action: str | None, reason: str = "") -> None:
        with self._lock:
            self._get(instance_id).control = (action, reason) if action else None

    def get_control(self, instance_id: str) -> tuple[str, str] | None:
        with self._lock:
            inst = self._instances.get(instance_id)
            return inst.control if inst else None

    # -- claims (PooledWorker) ----------------------------------------------------------
    def claim(self, instance_id: str, task_id: str, worker: str, ttl: float, seen: float | None = None) -> str | None:
        now = time.time()
        with self._lock:
            inst = self._get(instance_id)
            current = inst.claims.get(task_id)
            if current is not None and current.expires_at > now:
                return None
            if record_version(inst.records.get(task_id)) != seen:
                return None
            token = uuid.uuid4().hex
            inst.claims[task_id] = Claim(task_id, worker, token, now + ttl)
            return token

    def renew_claim(self, instance_id: str, task_id: str, token: str, ttl: float) -> bool:
        with self._lock:
            inst = self._instances.get(instance_id)
            current = inst.claims.get(task_id) if inst else None
            if current is None or current.token != token:
                return False
            current.expires_at = time.time() + ttl
            return True

    def release_claim(self, instance_id: str, task_id: str, token: str) -> bool:
        with self._lock:
            inst = self._instances.get(instance_id)
            current = inst.claims.get(task_id) if inst else None
            if current is None or current.token != token:
                return False
            del inst.claims[task_id]  # type: ignore[union-attr]
            return True

    def commit_claimed(
        self,
        instance_id: str,
        task_id: str,
        token: str,
        items: list[tuple[CheckpointRecord, PayloadSink]],
        *,
        release: bool = False,
    ) -> list[CheckpointRecord] | None:
        with self._lock:
            inst = self._instances.get(instance_id)
            current = inst.claims.get(task_id) if inst else None
            if inst is None or current is None or current.token != token:
                return None
            stored = self.put_records(instance_id, items)
            if release:
                del inst.claims[task_id]
            return stored

    def get_claims(self, instance_id: str) -> dict[str, Claim]:
        with self._lock:
            inst = self._instances.get(instance_id)
            return {k: copy.copy(v) for k, v in inst.claims.items()} if inst else {}
