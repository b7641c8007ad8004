"""The units a PooledWorker claims and the views it plans them from.

``InstanceView`` is one instance as its stored records say it stands; ``Unit`` is one
claimable piece of it (a step, a map item or a chunk of items); ``ClaimedIO`` writes a
unit's records only while its claim is still this worker's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from nbflow.core.codecs import Codec
from nbflow.core.errors import ClaimLostError
from nbflow.core.graph import Node, Source, WorkflowDefinition
from nbflow.core.vocabulary import PlanStep
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.displays import DISPLAY_CODEC
from nbflow.run.plan import compute_plan
from nbflow.store.base import DAMAGED_CODEC, INPUT_KEY, Backend, CheckpointRecord, InstanceMeta, InstanceSummary

__all__ = [
    "CachedView",
    "ClaimedIO",
    "InstanceStates",
    "InstanceView",
    "RecordChanges",
    "Unit",
    "WarmUp",
    "chunk_size",
    "claim_order",
    "place",
    "record_is_valid",
]


@runtime_checkable
class WarmUp(Protocol):
    """Optional: a store that loads what claiming needs ahead of the first claim
    (``DiskcacheBackend``: its native lock module), so a worker pays it as it starts."""

    def warm_up(self) -> None: ...


@runtime_checkable
class InstanceStates(Protocol):
    """Optional beside ``list_summaries``: the store index with the states of the
    instances current but their task counts maybe not (``DiskcacheBackend``), which
    is all a worker looking for runnable instances needs, at a fraction of the cost."""

    def list_states(self) -> list[InstanceSummary]: ...


@runtime_checkable
class RecordChanges(Protocol):
    """Optional beside a store's ``change_stamp``: the records written since a stamp,
    read in one snapshot with the stamp they bring the reader to (``DiskcacheBackend``).
    A worker keeping an instance's records between scans then reads what the other
    workers committed instead of every record again (a map's items are hundreds)."""

    def records_since(
        self, instance_id: str, stamp: Hashable | None, skip: Collection[str] = ()
    ) -> tuple[Hashable | None, dict[str, CheckpointRecord], bool]:
        """(stamp now, records, complete): the records written since ``stamp`` but those
        of ``skip`` (the reader's own), or — ``complete`` True — every record (``stamp``
        None or no longer comparable)."""
        ...


class ClaimedIO(CheckpointIO):
    """CheckpointIO whose every write is a compare-and-set on one claim.

    ``last_commit_releases``: for units that write exactly once (a map item, a chunk,
    a map's final record), that write also drops the claim in the same transaction
    (``released`` then says so), saving a separate ``release_claim`` per unit."""

    def __init__(self, backend: Backend, instance_id: str, codec: Codec, key: str, token: str, worker: str) -> None:
        super().__init__(backend, instance_id, codec)
        self.key, self.token, self.worker = key, token, worker
        self.last_commit_releases = False
        self.released = False
        self.written: list[CheckpointRecord] = []  # every record committed, in order

    def _commit(self, items: list[tuple[CheckpointRecord, Any]]) -> list[CheckpointRecord]:
        release = self.last_commit_releases
        stored = self.backend.commit_claimed(self.instance_id, self.key, self.token, items, release=release)
        if stored is None:
            raise ClaimLostError(self.instance_id, self.key, self.worker)
        self.released = release
        self.written.extend(stored)
        return stored

    def write(self, task_id: str, fingerprint: str, value: Any, **fields: Any) -> CheckpointRecord:
        """The output (and what its task displayed) in one claimed commit."""
        return self._commit(self.with_displays([self.encode(task_id, fingerprint, value, **fields)]))[0]

    def write_many(self, items: list[tuple[CheckpointRecord, Any]]) -> list[CheckpointRecord]:
        full = self.with_displays(items)
        stored = self._commit(full)
        return stored if len(full) == len(items) else [rec for rec in stored if rec.codec != DISPLAY_CODEC]

    def write_ref(self, task_id: str, fingerprint: str, extra: dict[str, Any], **fields: Any) -> CheckpointRecord:
        record = CheckpointRecord(task_id=task_id, fingerprint=fingerprint, codec="ref", extra=extra, **fields)
        return self._commit([(record, self.backend.new_sink(self.instance_id))])[0]


@dataclass
class InstanceView:
    """One instance as the stored records say it stands."""

    meta: InstanceMeta
    wf: WorkflowDefinition
    records: dict[str, CheckpointRecord]
    plan: dict[str, PlanStep]
    io: CheckpointIO
    # unit key -> expiry of another worker's claim on it, as read with the records: a
    # worker skips those units instead of paying a refused claim (a write transaction)
    others: dict[str, float] = field(default_factory=dict)
    # the earliest wake-up of a delay that is not due yet, as the last planning saw it
    due_at: float | None = None
    _values: dict[str, Any] = field(default_factory=dict)
    # a record of the instance cannot be read (the store stands one in that says so):
    # the instance is left alone, as a runner refuses to run it
    damaged: bool = False

    def __post_init__(self) -> None:
        self.damaged = _any_damaged(self.records)

    def refresh(self, changed: dict[str, CheckpointRecord], others: dict[str, float]) -> None:
        """Bring the view up to date with the records written since it was read and
        the claims held now."""
        self.records.update(changed)
        self.damaged = self.damaged or _any_damaged(changed)
        for task_id in changed:
            self._values.pop(task_id, None)
        self.plan, self.others = compute_plan(self.wf, self.records), others

    def value(self, task_id: str) -> Any:
        if task_id not in self._values:
            self._values[task_id] = self.io.read(self.records[task_id], self.records.get)
        return self._values[task_id]

    def get(self, src: Source) -> Any:
        value = self.value(INPUT_KEY if src.task is None else src.task)
        return value if src.key is None else value[src.key]


@dataclass
class CachedView:
    """A view kept between scans, valid while the instance's change stamp is ``stamp``."""

    stamp: Hashable
    definition_hash: str
    view: InstanceView
    # records this worker committed since ``stamp``, folded into the view already: a
    # unit is committed once (a claim is refused once its record exists), so nobody
    # else rewrites them and a refresh need not read them again
    own: set[str] = field(default_factory=set)


@dataclass
class Unit:
    view: InstanceView
    node: Node
    key: str  # the claim key, and the id of the record the unit commits
    seen: float | None  # that record's version when the unit was planned
    item: int | None = None  # a map item
    chunk: tuple[int, int] | None = None  # a chunk of map items [start, stop)
    finalize: bool = False  # a map whose items are all done: store the step's record
    token: str = ""
    refused: bool = False  # the store refused its claim (held by another, or its record moved)
    locked: bool = False  # claimed, but a runner holds the instance (the claim was given back)


def _any_damaged(records: dict[str, CheckpointRecord]) -> bool:
    return any(record.codec == DAMAGED_CODEC for record in records.values())


def record_is_valid(record: CheckpointRecord | None, node: Node) -> bool:
    return record is not None and record.fingerprint == node.fingerprint


def chunk_size(items: int) -> int:
    """Map items per claim: one by one for small maps (they spread best); for bigger
    ones, 16 chunks of equal size (up to 32 items), so tiny items do not pay three store
    transactions each, and a pool of 2, 4, 8 or 16 workers ends a map's chunks
    together instead of one worker running a last odd chunk alone.

    Every worker of a pool must cut a map the same way: the chunk is the claim.

    >>> chunk_size(10), chunk_size(200), chunk_size(10_000)
    (1, 13, 32)
    """
    if items < 32:
        return 1
    return min(32, -(-items // 16))


def place(*parts: str) -> float:
    """A fraction in [0, 1) fixed by ``parts`` (the same in every process, unlike
    ``hash``): where a worker starts in a list, so workers of a pool start apart."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def claim_order(keys: Sequence[str], taken: set[str], cursor: str | None, start: float) -> list[int]:
    """The order in which one worker tries to claim the units ``keys`` of an instance.

    Workers of a pool that walk one instance's units in one shared order all refuse
    each other's claims; walking from random places still runs each into the others'
    finished units. Here a worker keeps walking forward from ``cursor`` (the unit after
    the last one it claimed) while that unit is free; otherwise it starts in the middle
    of the longest run of units nobody is known to hold (``taken``: claimed by others
    or in its own hands), so two workers in one instance work on opposite halves and
    meet only at the end; with nothing known taken, at the fraction ``start`` of the
    list. The units are tried cyclically from there, ``taken`` ones left out.

    >>> claim_order(["a", "b", "c", "d"], set(), None, 0.5)
    [2, 3, 0, 1]
    >>> claim_order(["a", "b", "c", "d", "e", "f"], {"a"}, None, 0.0)
    [3, 4, 5, 1, 2]
    >>> claim_order(["a", "b", "c", "d"], {"a"}, "c", 0.0)
    [2, 3, 1]
    """
    n = len(keys)
    if n == 0:
        return []
    if cursor is not None and cursor in keys and cursor not in taken:
        first = list(keys).index(cursor)
    elif not taken.intersection(keys):
        first = min(n - 1, int(start * n))
    else:
        first, best = 0, -1
        busy = [i for i, key in enumerate(keys) if key in taken]
        for j, at in enumerate(busy):  # free run after each taken unit, up to the next (cyclic)
            end = busy[(j + 1) % len(busy)] + (n if j + 1 == len(busy) else 0)
            length = end - at - 1
            if length > best:
                best, first = length, (at + 1 + length // 2) % n
    return [i % n for i in range(first, first + n) if keys[i % n] not in taken]
