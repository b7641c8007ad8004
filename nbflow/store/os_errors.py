"""What a failed store operation means, said truthfully.

The operating system and SQLite report a full disk, a permission problem and a damaged
file in their own words; users need to know which one it is, because only damage is a
reason to discard anything. :func:`store_error` maps an exception to the matching
``NbflowError``: ``StoreFullError`` (out of space), ``StoreUnreadableError``
(permissions, a read-only filesystem, the device's I/O error), ``CheckpointCorruptError``
(bytes that are not valid) — or returns None for anything else, which then propagates unchanged. SQLite
reports a full disk as "disk I/O error" when the shared-memory file of a database
opened fresh cannot be sized; an I/O error on a filesystem with no space left is
therefore a full disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from nbflow.core.errors import CheckpointCorruptError, NbflowError, StoreFullError, StoreUnreadableError
from nbflow.store.records import RecordFormatError
from nbflow.store.sqlite_rows import ForeignRowError

__all__ = ["store_error"]

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def store_error(
    exc: BaseException, path: str, instance_id: str | None = None, task_id: str | None = None
) -> NbflowError | None:
    """The NbflowError that says what ``exc`` means for the store at ``path``."""
    if isinstance(exc, NbflowError):
        return exc
    if isinstance(exc, RecordFormatError | ForeignRowError):
        return CheckpointCorruptError(instance_id or "?", str(exc), path, task_id)
    if isinstance(exc, OSError):
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink: nbflow never makes one in a store
            where = exc.filename or path
            return CheckpointCorruptError(instance_id or "?", f"{where} is a symbolic link", path, task_id)
        if exc.errno in _FULL:
            return StoreFullError(path, exc.strerror or str(exc), instance_id, task_id)
        if exc.errno in _DENIED:
            return StoreUnreadableError(path, exc.strerror or str(exc), instance_id)
        if exc.errno == errno.EIO:
            return StoreUnreadableError(path, f"{exc.strerror or exc}: an I/O error", instance_id)
        return None
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc).lower()
        if "full" in text:
            return StoreFullError(path, f"SQLite: {exc}", instance_id, task_id)
        if _is_io_error(exc) and _out_of_space(path):
            # SQLite says "disk I/O error" when it cannot size the shared-memory file a
            # write-ahead-log database needs (SQLITE_IOERR_SHMSIZE): a full disk, not damage.
            name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
            return StoreFullError(path, f"SQLite: {exc} ({name}) with no space left on the disk", instance_id, task_id)
        if _is_io_error(exc):
            # The disk failed a read or write: that says nothing about the bytes stored
            # (they may be whole once the device answers), so it is not called damage.
            name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
            return StoreUnreadableError(path, f"SQLite: {exc} ({name}), an I/O error", instance_id)
        if "readonly" in text or "read-only" in text or "unable to open" in text or "access permission" in text:
            if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
                return StoreUnreadableError(path, f"SQLite: {exc}", instance_id)
            if "readonly" in text or "read-only" in text:
                return StoreUnreadableError(path, f"SQLite: {exc} (the filesystem is read-only)", instance_id)
            return None
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return None
        return CheckpointCorruptError(instance_id or "?", f"SQLite says: {exc}", path, task_id)
    return None


_SQLITE_IOERR = 10  # SQLite's primary result code for an I/O error (extended codes keep it in the low byte)
_NEARLY_FULL = 1 << 20  # bytes: less free space than this makes an I/O error a full disk's


def _is_io_error(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF == _SQLITE_IOERR if isinstance(code, int) else "disk i/o error" in str(exc).lower()


def _out_of_space(path: str) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing folder) has
    (almost) no space left for this process."""
    where = os.path.abspath(path)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        if hasattr(os, "statvfs"):
            vfs = os.statvfs(where)
            blocks = vfs.f_bfree if os.geteuid() == 0 else vfs.f_bavail  # root may use the reserve
            return blocks * vfs.f_frsize < _NEARLY_FULL
        import shutil  # pragma: no cover - Windows

        return shutil.disk_usage(where).free < _NEARLY_FULL  # pragma: no cover
    except OSError:
        return False
