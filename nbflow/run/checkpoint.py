"""Writing and reading one task's checkpoint: encode, store atomically, decode by name.

The runner never touches codecs or payload files directly; it goes through
:class:`CheckpointIO`, which knows the instance, the backend and the codec.

An output is stored with its previews (``nbflow.core.previews``: a one-line text and a
small mimebundle, made here once, so no view ever decodes an output to say what it is)
and, when the task displayed something, with its displays: one more record in the
same transaction (``nbflow.run.displays``). With a group commit
(``nbflow.run.group_commit``), ``write_soon`` lets a quick task's record wait to be
written with others; every other write and read flushes those first, so the store is
always read and written in the order the run made its records.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from nbflow.core.codecs import Codec, codec_by_name
from nbflow.core.errors import CheckpointCorruptError, CodecError, NbflowError, StoreFullError
from nbflow.core.keys import display_id, item_id
from nbflow.core.previews import make_preview, text_preview
from nbflow.core.typed import MODEL_KEY, RecordTypes
from nbflow.run.displays import DISPLAY_CODEC
from nbflow.run.displays import encode as encode_displays
from nbflow.run.group_commit import GroupCommit
from nbflow.store.base import DAMAGED_CODEC, Backend, CheckpointRecord

__all__ = ["CheckpointIO", "preview", "previews"]

PREVIEW_LIMIT = 160  # characters of the one-line preview a record keeps


def preview(value: Any, limit: int = PREVIEW_LIMIT) -> str:
    """A short, safe one-line preview of an output for the widget and the CLI
    (a DataFrame says its shape and dtypes, a long list how many items it has more)."""
    text = text_preview(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def previews(value: Any, limit: int = PREVIEW_LIMIT) -> tuple[str, dict[str, str]]:
    """The one-line preview and the rich one (a mimebundle), made in one pass over
    ``value`` (a DataFrame is described once, not once per form)."""
    text, bundle = make_preview(value)
    return (text if len(text) <= limit else text[: limit - 1] + "…"), bundle


class CheckpointIO:
    """Encode and store outputs of one instance; read them back by their codec name."""

    def __init__(self, backend: Backend, instance_id: str, codec: Codec) -> None:
        self.backend = backend
        self.instance_id = instance_id
        self.codec = codec
        # Facts the runner adds to the extra of a task's record (its fingerprint's
        # breakdown, why it ran again): see nbflow.run.stale.record_notes.
        self.notes: Mapping[str, Mapping[str, Any]] = {}
        # Which records hold pydantic models (stored as JSON with JsonCodec, rebuilt
        # through the task's annotation on read): see nbflow.core.typed.
        self.types: RecordTypes | None = None
        # What a task displayed, handed over once when its output is written (the
        # run's LiveHub sets it): stored as a display record in the same transaction.
        self.displays_of: Callable[[str], tuple[Mapping[str, Any], ...]] | None = None
        # Quick tasks' records written together (the runner's group_commit window).
        self.group: GroupCommit | None = None

    def encode(self, task_id: str, fingerprint: str, value: Any, **fields: Any) -> tuple[CheckpointRecord, Any]:
        """Encode ``value`` into a backend sink; returns the record and the sink to commit.

        An output (``preview`` given) gets its rich preview here unless it has one."""
        if "preview" in fields and "preview_bundle" not in fields:
            fields["preview_bundle"] = make_preview(value)[1]
        if self.types is not None:
            value, fields = self.types.to_store(task_id, value, self.codec.name, fields)
        sink = self.backend.new_sink(self.instance_id)
        try:
            self.codec.dump(value, sink)  # type: ignore[arg-type]
        except Exception as exc:
            discard = getattr(sink, "discard", None)
            if discard is not None:
                discard()
            if isinstance(exc, StoreFullError) and exc.task_id is None:  # the sink knows no task: name it
                raise StoreFullError(exc.path, exc.detail, exc.instance_id or self.instance_id, task_id) from None
            if isinstance(exc, OSError):
                raise  # a full disk or a broken store: the store layer reports it, not the value
            detail = exc.detail if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"
            raise CodecError(self.codec.name, task_id, detail) from exc
        note = self.notes.get(task_id) if self.notes else None
        if note:
            fields["extra"] = {**note, **fields.get("extra", {})}
        record = CheckpointRecord(task_id=task_id, fingerprint=fingerprint, codec=self.codec.name, **fields)
        return record, sink

    def flush(self) -> None:
        """Write the records a group commit holds (a no-op without one)."""
        if self.group is not None:
            self.group.flush()

    def write_soon(
        self, task_id: str, fingerprint: str, value: Any, on_durable: Callable[[CheckpointRecord], None], **fields: Any
    ) -> CheckpointRecord:
        """Encode and store one output; ``on_durable`` runs once it is durable.

        With a group commit, an output that displayed nothing joins the batch and
        ``on_durable(record)`` runs when the batch is written (possibly on the group's
        timer thread); otherwise it is written now and ``on_durable`` runs before this
        returns."""
        record, sink = self.encode(task_id, fingerprint, value, **fields)
        group = self.group
        if group is not None:
            items = self.with_displays([(record, sink)])
            if len(items) == 1:
                group.add(record, sink, functools.partial(on_durable, record))
                return record
            group.flush()
            stored = self.backend.put_records(self.instance_id, items)[0]
        else:
            stored = self._put_one(record, sink)
        on_durable(stored)
        return stored

    def write(self, task_id: str, fingerprint: str, value: Any, **fields: Any) -> CheckpointRecord:
        """Encode and durably store one output (one atomic backend write)."""
        record, sink = self.encode(task_id, fingerprint, value, **fields)
        self.flush()
        return self._put_one(record, sink)

    def _put_one(self, record: CheckpointRecord, sink: Any) -> CheckpointRecord:
        items = self.with_displays([(record, sink)])
        if len(items) == 1:
            return self.backend.put_record(self.instance_id, record, sink)
        return self.backend.put_records(self.instance_id, items)[0]

    def write_many(self, items: list[tuple[CheckpointRecord, Any]]) -> list[CheckpointRecord]:
        """Store several encoded outputs in one commit (map items); returns their records."""
        full = self.with_displays(items)
        self.flush()
        stored = self.backend.put_records(self.instance_id, full)
        if len(full) == len(items):
            return stored
        return [rec for rec in stored if rec.codec != DISPLAY_CODEC]

    def with_displays(self, items: list[tuple[CheckpointRecord, Any]]) -> list[tuple[CheckpointRecord, Any]]:
        """``items`` plus a display record after each output whose task displayed
        something; the output's record names it by a fresh token, so an older display
        record of the same task (it ran again since, showing nothing) is never its own."""
        take = self.displays_of
        if take is None:
            return items
        out: list[tuple[CheckpointRecord, Any]] = []
        for record, sink in items:
            out.append((record, sink))
            pictures = take(record.task_id)
            if not pictures:
                continue
            token = secrets.token_hex(8)
            record.extra = {**record.extra, "displays": token}
            shown = CheckpointRecord(
                task_id=display_id(record.task_id),
                fingerprint=record.fingerprint,
                codec=DISPLAY_CODEC,
                attempt=record.attempt,
                started_at=record.started_at,
                finished_at=record.finished_at,
                worker=record.worker,
                extra={"for": token, "count": len(pictures)},
            )
            payload = self.backend.new_sink(self.instance_id)
            payload.write(encode_displays(pictures))
            out.append((shown, payload))
        return out

    def write_ref(self, task_id: str, fingerprint: str, extra: dict[str, Any], **fields: Any) -> CheckpointRecord:
        """Store a record whose value lives in other records (a merge points at the
        branch that ran, a map at its items): nothing is stored twice."""
        note = self.notes.get(task_id) if self.notes else None
        record = CheckpointRecord(
            task_id=task_id, fingerprint=fingerprint, codec="ref", extra={**note, **extra} if note else extra, **fields
        )
        self.flush()
        return self.backend.put_record(self.instance_id, record, self.backend.new_sink(self.instance_id))

    def read(
        self, record: CheckpointRecord, lookup: Callable[[str], CheckpointRecord | None] | None = None, _depth: int = 0
    ) -> Any:
        """Decode a stored output.

        The codec used is this reader's own: a record naming another codec is refused
        unless that codec cannot run code (JSON), so a store opened with ``JsonCodec``
        never unpickles, whatever its records say. The payload's checksum is verified
        as it is read. ``ref`` records are followed through ``lookup`` (default: the
        backend)."""
        if self.group is not None and _depth == 0:
            self.group.flush()  # the payload of a queued record is not in the store yet
        if record.codec == DAMAGED_CODEC:
            raise CheckpointCorruptError(
                self.instance_id,
                str(record.extra.get("damage", "its record cannot be decoded")),
                task_id=record.task_id,
            )
        if record.codec == "ref":
            return self._follow(record, lookup or (lambda tid: self.backend.get_record(self.instance_id, tid)), _depth)
        if record.codec != self.codec.name and record.codec not in _SAFE_CODECS:
            raise CheckpointCorruptError(
                self.instance_id,
                f"the output of task {record.task_id!r} says it was written with codec {record.codec!r}, but this "
                f"store is read with {self.codec.name!r}; nbflow does not switch codecs on a record's word (open it "
                f"with the codec it was written with if you trust it)",
                task_id=record.task_id,
            )
        codec = self.codec if record.codec == self.codec.name else codec_by_name(record.codec)
        try:
            with self.backend.open_payload(self.instance_id, record) as stream:
                value = codec.load(stream)
                verify = getattr(stream, "verify", None)
                if verify is not None and not verify():
                    raise CheckpointCorruptError(
                        self.instance_id,
                        f"the output of task {record.task_id!r} fails its checksum",
                        task_id=record.task_id,
                    )
        except NbflowError:
            raise
        except OSError:
            raise
        except Exception as exc:
            raise CheckpointCorruptError(
                self.instance_id,
                f"the output of task {record.task_id!r} cannot be decoded with codec "
                f"{record.codec!r} ({type(exc).__name__}: {exc})",
                task_id=record.task_id,
            ) from exc
        if self.types is not None and MODEL_KEY in record.extra:
            value = self.types.from_store(record.task_id, record.codec, value)
        return value

    def _follow(self, record: CheckpointRecord, find: Callable[[str], CheckpointRecord | None], depth: int) -> Any:
        """The value of a ``ref`` record: the record it names, or a map's items."""
        if depth > _MAX_REF_DEPTH:
            raise CheckpointCorruptError(self.instance_id, f"record {record.task_id!r} is part of a reference cycle")

        def follow(task_id: str) -> Any:
            target = find(task_id)
            if target is None:
                raise CheckpointCorruptError(
                    self.instance_id, f"record {record.task_id!r} points at {task_id!r}, which is missing"
                )
            return self.read(target, find, depth + 1)

        items, ref = record.extra.get("items"), record.extra.get("ref")
        if isinstance(items, int) and not isinstance(items, bool) and 0 <= items <= _MAX_ITEMS:
            return [follow(item_id(record.task_id, i)) for i in range(items)]
        if items is None and isinstance(ref, str):
            return follow(ref)
        raise CheckpointCorruptError(
            self.instance_id, f"record {record.task_id!r} is a reference without a valid target", task_id=record.task_id
        )


_SAFE_CODECS = frozenset({"json"})  # decoding these runs no code, whatever the bytes
_MAX_REF_DEPTH = 64
_MAX_ITEMS = 100_000_000
