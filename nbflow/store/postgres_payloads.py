"""Payload streams of a PostgreSQL store: the sink a codec dumps into, and the reader
that streams a large payload back out of its chunk rows.

A payload up to ``INLINE_LIMIT`` stays in memory and is stored inline in its record
row. A larger one spills to an anonymous temporary file as it is written (so it is
never held in memory whole, let alone twice) and is copied into ``nbflow_chunks`` rows
of ``CHUNK`` bytes inside the commit's transaction: a kill or a refused commit leaves
no row behind. The checksum is summed as the bytes pass, over the writer's buffers.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

from nbflow.store.disk_layout import INLINE_LIMIT
from nbflow.store.spill import SpillingSink

__all__ = ["CHUNK", "INLINE_LIMIT", "ChunkReader", "PgSink"]

CHUNK = 4 * 1024 * 1024


class PgSink(SpillingSink):
    """Where a codec writes one payload before it is committed; a large one continues
    in an anonymous temporary file (see spill.py)."""

    def __init__(self, limit: int = INLINE_LIMIT) -> None:
        super().__init__(limit)
        self.blob: str | None = None

    def _spill(self) -> IO[bytes]:
        self.blob = uuid.uuid4().hex + ".bin"
        return tempfile.TemporaryFile(prefix="nbflow-payload-")

    @property
    def inline(self) -> bytes | None:
        """The payload if it stays in the record row; None if it goes to chunks."""
        return None if self.spill_file is not None else self.buffered()

    def chunks(self) -> Iterator[bytes]:
        """The spilled payload, ``CHUNK`` bytes at a time (one chunk in memory)."""
        file = self.spill_file
        assert file is not None
        file.flush()
        file.seek(0)
        while data := file.read(CHUNK):
            yield data


class ChunkReader(io.RawIOBase):
    """A read-only stream over a payload's chunk rows, fetched one at a time.

    ``fetch(seq)`` returns chunk ``seq`` or None past the end. A chunk missing before
    ``size`` bytes were read is reported by ``on_missing`` (damage, or the record was
    replaced while it was being read)."""

    def __init__(self, fetch: Callable[[int], bytes | None], size: int, on_missing: Callable[[], Exception]) -> None:
        super().__init__()
        self._fetch, self._size, self._on_missing = fetch, size, on_missing
        self._seq, self._chunk, self._at, self._read = 0, b"", 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._at >= len(self._chunk):
            if self._read >= self._size:
                return 0
            chunk = self._fetch(self._seq)
            if not chunk:
                raise self._on_missing()
            self._chunk, self._at, self._seq = chunk, 0, self._seq + 1
        n = min(len(view), len(self._chunk) - self._at)
        view[:n] = self._chunk[self._at : self._at + n]
        self._at += n
        self._read += n
        return n
