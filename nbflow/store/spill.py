"""A payload sink that buffers small payloads and spills large ones to a file.

Both stores take a codec's output the same way: up to a limit it stays in memory (it
will be stored inline in its record), past it everything written so far and after goes
to a file as it arrives, so a large output is never held in memory whole, let alone
twice. The checksum is summed as the bytes pass, over the writer's own buffers (no
copy, no second pass). Where the file lives is the store's business (``_spill``).
"""

from __future__ import annotations

import io
from typing import IO, TYPE_CHECKING, Any

from nbflow.store.records import checksum_bytes, checksum_of, new_hasher

if TYPE_CHECKING:
    import xxhash

__all__ = ["SpillingSink"]

_PIECE = 1 << 20  # bytes summed and written at a time


class SpillingSink(io.RawIOBase):
    """Buffers up to ``limit`` bytes, then streams to the file ``_spill()`` opens."""

    __slots__ = ("_buf", "_file", "_limit", "_sum", "size")  # one sink per checkpoint: made often

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # The usual small output arrives in one write of one bytes object: it is kept as
        # it is (no copy); a second write turns the buffer into a bytearray.
        self._buf: bytes | bytearray = b""
        self._file: IO[bytes] | None = None
        self.size = 0
        # A payload that stays in the buffer is summed once at the end (one call for a
        # small output); the running sum starts only when it spills.
        self._sum: xxhash.xxh3_64 | None = None

    def _spill(self) -> IO[bytes]:
        """Open the file the payload continues in, once it outgrows the buffer."""
        raise NotImplementedError

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = data if type(data) is bytes else memoryview(data).cast("B")  # a codec mostly writes bytes
        n = len(view)
        self.size += n
        if self._file is None:
            buf = self._buf
            if len(buf) + n <= self._limit:
                if not buf and type(data) is bytes:
                    self._buf = data
                elif type(buf) is bytes:
                    self._buf = bytearray(buf) + view
                else:
                    buf += view
                return n
            # Over the limit: spill what is buffered, then write `data` straight through
            # (never copy a large buffer into memory first).
            self._sum = new_hasher()
            self._sum.update(self._buf)
            self._file = self._spill()
            self._file.write(self._buf)
            self._buf = b""
        # Summed and written piece by piece: each piece is still in the CPU's cache when
        # it is copied out, so a large buffer is read from memory once, not twice.
        total = self._sum
        assert total is not None
        whole = memoryview(view)
        for start in range(0, n, _PIECE):
            piece = whole[start : start + _PIECE]
            total.update(piece)
            self._file.write(piece)
        return n

    @property
    def checksum(self) -> str:
        return checksum_bytes(self._buf) if self._sum is None else checksum_of(self._sum)

    @property
    def spill_file(self) -> IO[bytes] | None:
        """The file the payload went on in; None while it fits the buffer."""
        return self._file

    def buffered(self) -> bytes:
        """The payload, when it fit the buffer (check ``spill_file`` first)."""
        buf = self._buf
        return buf if type(buf) is bytes else bytes(buf)

    def discard(self) -> None:
        """Drop the payload (a refused or failed commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf = b""
        self._sum = None
