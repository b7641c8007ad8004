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
from nbflow.store.records import checksum_of, new_hasher

__all__ = ["CHUNK", "INLINE_LIMIT", "ChunkReader", "PgSink"]

CHUNK = 4 * 1024 * 1024


class PgSink(io.RawIOBase):
    """Where a codec writes one payload before it is committed."""

    def __init__(self, limit: int = INLINE_LIMIT) -> None:
        super().__init__()
        self._limit = limit
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0
        self._sum = new_hasher()
        self.blob: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.size += n
        self._sum.update(view)
        if self._file is None:
            if len(self._buf) + n <= self._limit:
                self._buf += view
                return n
            self._file = tempfile.TemporaryFile(prefix="nbflow-payload-")  # noqa: SIM115 - closed by discard()
            self._file.write(self._buf)
            self._buf = bytearray()
            self.blob = uuid.uuid4().hex + ".bin"
        self._file.write(view)
        return n

    @property
    def checksum(self) -> str:
        return checksum_of(self._sum)

    @property
    def inline(self) -> bytes | None:
        """The payload if it stays in the record row; None if it goes to chunks."""
        return None if self._file is not None else bytes(self._buf)

    def chunks(self) -> Iterator[bytes]:
        """The spilled payload, ``CHUNK`` bytes at a time (one chunk in memory)."""
        assert self._file is not None
        self._file.flush()
        self._file.seek(0)
        while data := self._file.read(CHUNK):
            yield data

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf = bytearray()


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
