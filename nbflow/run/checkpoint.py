"""Writing and reading one task's checkpoint: encode, store atomically, decode by name.

The runner never touches codecs or payload files directly; it goes through
:class:`CheckpointIO`, which knows the instance, the backend and the codec.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

from nbflow.core.codecs import Codec, codec_by_name
from nbflow.core.errors import CheckpointCorruptError, CodecError, NbflowError
from nbflow.store.base import Backend, CheckpointRecord

__all__ = ["CheckpointIO", "preview"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def preview(value: Any, limit: int = 160) -> str:
    """A short, safe repr of an output for the widget and the CLI."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not fail a task
        text = f"<{type(value).__name__}: repr failed: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CheckpointIO:
    """Encode and store outputs of one instance; read them back by their codec name."""

    def __init__(self, backend: Backend, instance_id: str, codec: Codec) -> None:
        self.backend = backend
        self.instance_id = instance_id
        self.codec = codec

    def encode(self, task_id: str, fingerprint: str, value: Any, **fields: Any) -> tuple[CheckpointRecord, Any]:
        """Encode ``value`` into a backend sink; returns the record and the sink to commit."""
        sink = self.backend.new_sink(self.instance_id)
        try:
            self.codec.dump(value, sink)  # type: ignore[arg-type]
        except Exception as exc:
            discard = getattr(sink, "discard", None)
            if discard is not None:
                discard()
            raise CodecError(self.codec.name, task_id, f"{type(exc).__name__}: {exc}") from exc
        record = CheckpointRecord(task_id=task_id, fingerprint=fingerprint, codec=self.codec.name, **fields)
        return record, sink

    def write(self, task_id: str, fingerprint: str, value: Any, **fields: Any) -> CheckpointRecord:
        """Encode and durably store one output (one atomic backend write)."""
        record, sink = self.encode(task_id, fingerprint, value, **fields)
        return self.backend.put_record(self.instance_id, record, sink)

    def write_many(self, items: list[tuple[CheckpointRecord, Any]]) -> list[CheckpointRecord]:
        """Store several encoded outputs in one commit (map items)."""
        return self.backend.put_records(self.instance_id, items)

    def write_ref(self, task_id: str, fingerprint: str, extra: dict[str, Any], **fields: Any) -> CheckpointRecord:
        """Store a record whose value lives in other records (a merge points at the
        branch that ran, a map at its items): nothing is stored twice."""
        record = CheckpointRecord(task_id=task_id, fingerprint=fingerprint, codec="ref", extra=extra, **fields)
        return self.backend.put_record(self.instance_id, record, self.backend.new_sink(self.instance_id))

    def read(self, record: CheckpointRecord, lookup: Callable[[str], CheckpointRecord | None] | None = None) -> Any:
        """Decode a stored output with the codec named in its record.

        ``ref`` records are followed through ``lookup`` (default: the backend)."""
        if record.codec == "ref":
            find = lookup or (lambda tid: self.backend.get_record(self.instance_id, tid))

            def follow(task_id: str) -> Any:
                target = find(task_id)
                if target is None:
                    raise CheckpointCorruptError(
                        self.instance_id, f"record {record.task_id!r} points at {task_id!r}, which is missing"
                    )
                return self.read(target, find)

            items = record.extra.get("items")
            if items is not None:
                return [follow(f"{record.task_id}[{i}]") for i in range(items)]
            return follow(record.extra["ref"])
        codec = codec_by_name(record.codec)
        try:
            with self.backend.open_payload(self.instance_id, record) as stream:
                return codec.load(stream)
        except NbflowError:
            raise
        except Exception as exc:
            raise CheckpointCorruptError(
                self.instance_id,
                f"the output of task {record.task_id!r} cannot be decoded with codec "
                f"{record.codec!r} ({type(exc).__name__}: {exc})",
            ) from exc
