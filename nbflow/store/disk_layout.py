"""How the disk store lays things out: row keys, folder names, SQLite settings and the
spill-to-file payload sink. Instance folder names come from ``names.py``.

``disk.py`` (the backend) composes these pieces; this module holds no backend state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from nbflow.store.names import instance_dirname, resolve_dirname
from nbflow.store.os_errors import store_error
from nbflow.store.spill import SpillingSink

__all__ = [
    "CACHE_SETTINGS",
    "CLAIM_PREFIX",
    "CONTROL",
    "CONTROL_FLAG",
    "GENERATION",
    "INLINE_LIMIT",
    "MAX_OPEN",
    "META",
    "PRIVATE_DIR",
    "RECORD_PREFIX",
    "SIGNAL_PREFIX",
    "STAMP",
    "TASK_STATE_PREFIX",
    "SpillSink",
    "instance_dirname",
    "make_private_dir",
    "resolve_dirname",
]

INLINE_LIMIT = 256 * 1024  # larger encoded outputs go to their own file
CACHE_SETTINGS: dict[str, Any] = {
    # Checkpoints must never be evicted or culled, whatever their size.
    "eviction_policy": "none",
    "size_limit": 2**62,
    "cull_limit": 0,
    # Rows hold bytes inline; nbflow writes large outputs to files itself.
    "disk_min_file_size": 2**24,
    "statistics": 0,
    "tag_index": 0,
}
PRIVATE_DIR = 0o700  # checkpoints are the user's data: other local users see nothing

# Row keys. Every key kind has its own prefix, and what follows it is a record id
# (see nbflow.core.keys), so no task id can land on another kind's row.
META = "meta"
GENERATION = "gen"
CONTROL = "control"
STAMP = "stamp"  # a fresh token at every record write: see DiskcacheBackend.change_stamp
RECORD_PREFIX, SIGNAL_PREFIX, CLAIM_PREFIX, TASK_STATE_PREFIX = "t:", "s:", "c:", "a:"
CONTROL_FLAG = "control.flag"  # a file beside the database; its mtime says "control changed"
MAX_OPEN = 64


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by this user only."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)


class SpillSink(SpillingSink):
    """Buffers in memory up to INLINE_LIMIT, then streams to a temp file in ``blobs/``
    that ``commit`` makes durable and names (see spill.py)."""

    __slots__ = ("_instance_dir", "_instance_id", "tmp_path")

    def __init__(self, instance_dir: Path, instance_id: str = "", limit: int = INLINE_LIMIT) -> None:
        super().__init__(limit)
        self._instance_dir, self._instance_id = instance_dir, instance_id
        self.tmp_path: Path | None = None

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:  # a full disk mid-dump is the store's problem, not the value's
            self.discard()
            err = store_error(exc, str(self._instance_dir), self._instance_id)
            if err is None:
                raise
            raise err from None

    def _spill(self) -> IO[bytes]:
        blob_dir = self._instance_dir / "blobs"
        make_private_dir(blob_dir)
        self.tmp_path = blob_dir / f".tmp-{os.urandom(16).hex()}"
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        return os.fdopen(fd, "wb")

    def commit(self) -> tuple[bytes | None, str | None]:
        """Make the bytes durable; returns (inline payload, blob file name)."""
        file = self.spill_file
        if file is None:
            return self.buffered(), None
        file.flush()
        os.fsync(file.fileno())
        file.close()
        assert self.tmp_path is not None
        name = self.tmp_path.name[len(".tmp-") :] + ".bin"
        os.replace(self.tmp_path, self.tmp_path.with_name(name))
        return None, name

    def discard(self) -> None:
        super().discard()
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)
