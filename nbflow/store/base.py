"""The backend protocol: what a checkpoint store must do, and the records it keeps.

A backend stores, per instance: one ``InstanceMeta`` (workflow, shape, state...), one
``CheckpointRecord`` per finished task (its output, or a reference to a file holding
it), buffered signals and control requests (pause, cancel). It also hands out an
exclusive per-instance lock so two runners never run one instance at once.

``tests/store/test_contract.py`` runs one suite over every implementation; a new
backend (a server-backed one, say) must pass it. The records are plain data so any
medium can hold them.

Claims (``PooledWorker``): several worker processes share one store and split the
steps of its instances. A worker *claims* one step (or one map item) for a while
(``claim``: an atomic add with an expiry, refused while someone else's claim is live
or when the step's record changed since the worker looked), renews it by heartbeat
(``renew_claim``), and stores the step's records with ``commit_claimed``: a
compare-and-set that writes only while the claim's token is still its own, in the
same transaction. A worker whose claim expired and was taken over therefore cannot
commit a second result. ``tests/store/test_claims.py`` checks this over every backend.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any, Protocol, runtime_checkable

from nbflow.core.errors import InvalidInstanceIdError
from nbflow.core.keys import INPUT_ID

__all__ = [
    "DAMAGED_CODEC",
    "INPUT_KEY",
    "Backend",
    "CheckpointRecord",
    "CheckpointStore",
    "Claim",
    "ClaimStore",
    "ControlChannel",
    "damaged_record",
    "InstanceMeta",
    "InstanceSummary",
    "Lease",
    "PayloadSink",
    "ReadyIndex",
    "ReadyInstances",
    "WorkListener",
    "WorkNotices",
    "matches",
    "summarize",
    "validate_instance_id",
]

INPUT_KEY = INPUT_ID  # the workflow input is stored like a task output under this id
# The codec name of a record that exists but cannot be decoded: listing and planning see
# that the task has a damaged checkpoint (extra["damage"] says why) instead of failing
# for the whole instance; reading its value raises CheckpointCorruptError.
DAMAGED_CODEC = "damaged"


def damaged_record(task_id: str, detail: str) -> CheckpointRecord:
    """The stand-in for a stored record that cannot be decoded."""
    return CheckpointRecord(task_id=task_id, fingerprint="", codec=DAMAGED_CODEC, extra={"damage": detail})


_MAX_ID = 200
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


def validate_instance_id(instance_id: Any) -> str:
    """Return ``instance_id`` if it can be stored, else raise InvalidInstanceIdError."""
    if not isinstance(instance_id, str):
        raise InvalidInstanceIdError(instance_id, f"it is a {type(instance_id).__name__}, not a string")
    if not instance_id.strip():
        raise InvalidInstanceIdError(instance_id, "it is empty")
    if len(instance_id) > _MAX_ID:
        raise InvalidInstanceIdError(instance_id, f"it has {len(instance_id)} characters (at most {_MAX_ID})")
    if _CONTROL_CHARACTERS.search(instance_id):
        raise InvalidInstanceIdError(instance_id, "it contains control characters")
    try:
        instance_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInstanceIdError(instance_id, "it is not valid Unicode text (a lone surrogate)") from None
    return instance_id


@dataclass
class CheckpointRecord:
    """One finished task: enough to re-read its output safely and explain it.

    Either ``payload`` holds the encoded output inline, or ``blob`` names a file the
    backend wrote it to. ``codec`` is the codec's registered name.
    """

    task_id: str
    fingerprint: str
    codec: str
    attempt: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    size: int = 0
    payload: bytes | None = None
    blob: str | None = None
    preview: str = ""
    stdout: str = ""
    stderr: str = ""
    worker: str | None = None
    # A richer preview of the output (mime type -> str: text/plain, text/html, image/png
    # as base64), made when it was stored and bounded in size (nbflow.core.previews), so
    # it is shown without decoding the output. Empty when ``preview`` says it all.
    preview_bundle: dict[str, str] = field(default_factory=dict)
    # Kind-specific facts (a route's branch, a delay's wake-up time, a reference to the
    # record that holds the value); JSON-able.
    extra: dict[str, Any] = field(default_factory=dict)
    # Checksum of the encoded payload ("xxh3:<hex>"), written with it, checked on read.
    checksum: str = ""
    # The instance generation the record was written under (see InstanceMeta).
    generation: str = ""

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies the payload bytes. Read from
        # the instance dict (a plain dataclass): this runs for every checkpoint.
        own = self.__dict__
        data = {name: own[name] for name in _RECORD_FIELDS}
        data["extra"] = dict(self.extra)
        data["preview_bundle"] = dict(self.preview_bundle)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointRecord:
        record = cls(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})
        bundle = record.preview_bundle
        if not isinstance(bundle, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in bundle.items()
        ):
            # a preview is shown, never trusted: anything but {str: str} (a damaged or
            # planted header) is dropped rather than handed to a view
            record.preview_bundle = {}
        return record


_RECORD_FIELDS = tuple(f.name for f in fields(CheckpointRecord))


@dataclass
class InstanceMeta:
    """An instance's identity and where it stands."""

    instance_id: str
    workflow: str
    definition_hash: str
    shape: tuple[str, ...] = ()
    state: str = "running"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    error: dict[str, Any] | None = None
    input_digest: str = ""
    tasks_total: int = 0
    sinks: tuple[str, ...] = ()
    wake_at: float | None = None
    signal: str | None = None
    message: str = ""
    # A new random token each time the instance is created (first run, or a start-over
    # after a clear): a process that loaded an older generation notices and never mixes
    # its records with the new instance's.
    generation: str = ""
    # The codec the instance's payloads are written with (what writers such as
    # send_signal use); readers use their own configured codec and only compare.
    codec: str = "pickle"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: asdict deep-copies
        data["shape"] = list(self.shape)
        data["sinks"] = list(self.sinks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceMeta:
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.shape = tuple(meta.shape)
        meta.sinks = tuple(meta.sinks)
        return meta


@dataclass
class Claim:
    """A step (or map item) held by one worker until ``expires_at`` (wall clock)."""

    task_id: str
    worker: str
    token: str
    expires_at: float

    @property
    def expired(self) -> bool:
        return self.expires_at <= time.time()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def record_version(record: CheckpointRecord | dict[str, Any] | None) -> float | None:
    """What ``claim(seen=...)`` compares: the finish time of a stored record, or None."""
    if record is None:
        return None
    if isinstance(record, dict):
        value = record.get("finished_at")
        return None if value is None else float(value)
    return float(record.finished_at)


class PayloadSink(Protocol):
    """A writable binary file a codec dumps into; the backend decides where bytes go."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class Lease(Protocol):
    """Proof that this runner holds an instance; ``release()`` is idempotent."""

    def release(self) -> None: ...


@dataclass
class InstanceSummary:
    """One row of a store's index of instances: what a listing shows, kept so listing
    and filtering never open an instance's own records. ``tasks_done`` counts the
    finished steps of ``InstanceMeta.shape`` (a completed run counts all of them)."""

    instance_id: str
    workflow: str
    state: str
    tasks_done: int = 0
    tasks_total: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    generation: str = ""
    message: str = ""
    wake_at: float | None = None
    signal: str | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def summarize(meta: InstanceMeta, record_ids: Iterable[str]) -> InstanceSummary:
    """The index row of ``meta`` given the ids of its stored records."""
    done = set(record_ids)
    completed = meta.state == "completed"
    return InstanceSummary(
        instance_id=meta.instance_id,
        workflow=meta.workflow,
        state=meta.state,
        # a completed run's skipped route branches have no record but are done too
        tasks_done=meta.tasks_total if completed else sum(1 for line in meta.shape if line.split("|", 1)[0] in done),
        tasks_total=meta.tasks_total,
        created_at=meta.created_at,
        updated_at=meta.updated_at,
        generation=meta.generation,
        message=meta.message,
        wake_at=meta.wake_at,
        signal=meta.signal,
        error=meta.error,
    )


def matches(summary: InstanceSummary, workflow: str | None, state: str | None) -> bool:
    """Whether an index row passes a listing's filters."""
    return (workflow is None or summary.workflow == workflow) and (state is None or summary.state == str(state))


@runtime_checkable
class CheckpointStore(Protocol):
    """Instances, their checkpoints and task state, the index that lists them, and the
    lock that lets one runner (or a pool of workers) drive an instance."""

    # instances
    def load_instance(self, instance_id: str) -> InstanceMeta | None: ...
    def save_instance(self, meta: InstanceMeta) -> None: ...
    def delete_instance(self, instance_id: str) -> bool: ...
    def list_instances(self) -> list[InstanceMeta]: ...
    def list_summaries(self, workflow: str | None = None, state: str | None = None) -> list[InstanceSummary]:
        """The store index, optionally filtered: one row per instance, read without
        opening the instances. Counts of a running instance may trail its records by
        a moment; they agree again at its next state change."""
        ...

    # checkpoints
    def new_sink(self, instance_id: str) -> PayloadSink: ...
    def put_record(self, instance_id: str, record: CheckpointRecord, sink: PayloadSink) -> CheckpointRecord: ...
    def put_records(
        self, instance_id: str, items: list[tuple[CheckpointRecord, PayloadSink]]
    ) -> list[CheckpointRecord]: ...
    def get_records(self, instance_id: str) -> dict[str, CheckpointRecord]: ...
    def get_record(self, instance_id: str, task_id: str) -> CheckpointRecord | None: ...
    def change_stamp(self, instance_id: str) -> Hashable | None:
        """A value that changes whenever a record of the instance is written or deleted
        (None: no record was ever written). Read it *before* ``get_records``: records
        read after a stamp are at least as new as the stamp, so a cache of records keyed
        by it is never stale. Lets a PooledWorker skip re-reading unchanged instances."""
        ...

    def open_payload(self, instance_id: str, record: CheckpointRecord) -> IO[bytes]: ...
    def delete_records(self, instance_id: str, task_ids: Iterable[str]) -> None: ...

    # task state: JSON-able facts about unfinished tasks (attempts, next retry, progress),
    # kept apart from checkpoints so a resume continues where the last process stopped
    def save_task_state(self, instance_id: str, task_id: str, state: dict[str, Any] | None) -> None: ...
    def load_task_states(self, instance_id: str) -> dict[str, dict[str, Any]]: ...

    # exclusivity: one runner (exclusive) or any number of PooledWorkers (shared) drive
    # an instance, never both; each side's refusal is InstanceLockedError
    def lock(self, instance_id: str, holder: str) -> Lease: ...
    def share(self, instance_id: str, holder: str) -> Lease: ...
    def is_locked(self, instance_id: str) -> bool:
        """Whether a runner holds the instance exclusively (shared holders do not count).
        A probe never makes a concurrent ``lock`` or ``share`` fail."""
        ...


@runtime_checkable
class ControlChannel(Protocol):
    """Messages into a running instance from other processes: named signals (buffered
    until a wait step consumes one) and one pending control request (pause, cancel)."""

    def push_signal(self, instance_id: str, name: str, payload: bytes) -> None: ...
    def pop_signal(self, instance_id: str, name: str) -> bytes | None: ...
    def consume_signal(self, instance_id: str, name: str, record: CheckpointRecord) -> CheckpointRecord | None:
        """Pop the oldest ``name`` signal and store it as ``record`` (the wait step's
        checkpoint, whose payload is the signal's) in one transaction; None if none is
        buffered."""
        ...

    def set_control(self, instance_id: str, action: str | None, reason: str = "") -> None: ...
    def get_control(self, instance_id: str) -> tuple[str, str] | None: ...


@runtime_checkable
class ClaimStore(Protocol):
    """Steps shared out between PooledWorker processes (see the module docstring)."""

    def claim(self, instance_id: str, task_id: str, worker: str, ttl: float, seen: float | None = None) -> str | None:
        """Atomically claim ``task_id`` for ``ttl`` seconds; returns a token, or None if a
        live claim of someone else exists or the task's record version is not ``seen``."""
        ...

    def renew_claim(self, instance_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Extend our claim to now + ``ttl``; False if it is no longer ours."""
        ...

    def release_claim(self, instance_id: str, task_id: str, token: str) -> bool:
        """Drop our claim (idempotent); False if it was not ours any more."""
        ...

    def commit_claimed(
        self,
        instance_id: str,
        task_id: str,
        token: str,
        items: list[tuple[CheckpointRecord, PayloadSink]],
        *,
        release: bool = False,
    ) -> list[CheckpointRecord] | None:
        """Store ``items`` in one transaction only if the claim on ``task_id`` still
        carries ``token``; else store nothing and return None. ``release=True`` also
        drops the claim in that transaction (the unit's last commit: one round trip
        instead of a commit and a ``release_claim``)."""
        ...

    def get_claims(self, instance_id: str) -> dict[str, Claim]:
        """The claims stored for an instance (expired ones included)."""
        ...


class WorkListener(Protocol):
    """One worker's subscription to a store's work notices."""

    def wait(self, timeout: float) -> bool:
        """Block until a notice arrives (True) or ``timeout`` seconds pass (False)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class WorkNotices(Protocol):
    """Optional beside ClaimStore: a store that can *tell* idle PooledWorkers that work
    may have appeared — an instance saved in a runnable state, a claimed unit committed
    or released, a signal sent — so they scan at once instead of at their next poll.
    A store without it is polled; with it the poll stays as the fallback (an expired
    claim of a dead worker, a delay coming due, a notice lost to a cut connection)."""

    def listen_for_work(self) -> WorkListener:
        """A listener that receives every notice committed after this call returns."""
        ...


@dataclass
class ReadyInstances:
    """What a ready index answers a free worker: the instances due for a look, oldest
    first, each with the index version it was read at; and whether any instance of the
    asked workflows (but those skipped) is pending, running or waiting for a delay, due
    or not (a worker that stops when idle keeps going while one is)."""

    due: list[tuple[str, int]]
    busy: bool


@runtime_checkable
class ReadyIndex(Protocol):
    """Optional beside ClaimStore: an index of the instances a PooledWorker may find
    work in, kept in the same transaction as every write that can make a unit ready
    (an instance saved in a runnable state, a claimed unit committed or released, a
    signal, a control request). A free worker asks it which instances to look at
    instead of reading every instance of the store at each scan. Which units are ready
    is still decided by the worker from the records (it depends on the DAG); the index
    only says when an instance is worth a look. A store without it is scanned."""

    def ready_instances(self, workflows: Iterable[str], limit: int, skip: Iterable[str] = ()) -> ReadyInstances:
        """Up to ``limit`` instances of ``workflows`` due for a look (none of ``skip``),
        in one read of the index."""
        ...

    def settle_ready(
        self, instance_id: str, version: int, until: float | None, *, signal: str | None = None, least: float = 0.0
    ) -> bool:
        """Nothing claimable was found in ``instance_id`` at ``version``: put it off until
        ``until`` (epoch seconds; None: until something changes), never past the expiry
        of a claim on it, and at least ``least`` seconds. Refused (False, the instance
        stays due) when the index moved since ``version`` was read, or when ``signal`` —
        the one it awaits — is already buffered."""
        ...


@runtime_checkable
class Backend(CheckpointStore, ControlChannel, ClaimStore, Protocol):
    """A complete store: what runners, workers and clients are given. Implementations:
    InMemoryBackend, DiskcacheBackend."""


class MemorySink(io.BytesIO):
    """The sink for backends that keep payloads inline."""

    def finish(self) -> tuple[bytes, int]:
        data = self.getvalue()
        return data, len(data)
