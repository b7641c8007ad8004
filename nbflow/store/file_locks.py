"""Instance locks between processes: exclusive for a runner, shared for PooledWorkers.

A lock is an OS file lock (``flock``) on ``locks/<name>.lock``, so the operating system
drops it when the holding process dies, kill -9 included: a crashed runner never leaves
an instance locked. A runner holds it exclusively; every PooledWorker working on the
instance holds it shared — so a runner and a worker pool can never drive one instance
at once, whichever comes first.

Probing (``probe``) must not disturb real lockers: taking the lock for an instant to see
whether it is free would make a ``lock()`` at that instant fail. So probes and
acquisitions pass through a second, short-held *guard* lock (``<name>.guard``): a
lock attempt never meets a probe's momentary hold.

The exclusive holder writes who it is (pid, host, holder text) into the lock file;
refusals quote it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Literal

from nbflow.core.errors import InstanceLockedError

__all__ = ["FileLease", "FileLocks"]

Holding = Literal["exclusive", "shared"]


def _fcntl() -> ModuleType:
    """fcntl, imported when first needed so that importing nbflow never requires it."""
    import fcntl

    return fcntl


class FileLease:
    """A held lock; ``release()`` is idempotent."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                _fcntl().flock(fd, _fcntl().LOCK_UN)
            finally:
                os.close(fd)


class FileLocks:
    """The lock files of one store folder (``folder`` is created 0700)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _open(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        fcntl = _fcntl()
        fd = self._open(self.folder / f"{name}.guard")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds by anyone
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def acquire(self, name: str, instance_id: str, holder: str, shared: bool = False) -> FileLease:
        """Take the lock without waiting, or raise InstanceLockedError naming the holder."""
        fcntl = _fcntl()
        path = self.folder / f"{name}.lock"
        with self._guard(name):
            fd = self._open(path)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                fd = -1
        if fd < 0:  # described outside the guard: describing probes, which takes it again
            raise InstanceLockedError(instance_id, self._describe(path, shared))
        if not shared:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "holder": holder, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        return FileLease(fd)

    def probe(self, name: str) -> Holding | None:
        """Who holds the lock now: ``"exclusive"`` (a runner), ``"shared"`` (workers) or None."""
        fcntl = _fcntl()
        path = self.folder / f"{name}.lock"
        if not path.exists():
            return None
        with self._guard(name):
            fd = self._open(path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass
                else:
                    return None
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return "exclusive"
                return "shared"
            finally:
                os.close(fd)

    def _describe(self, path: Path, wanted_shared: bool) -> str:
        if wanted_shared:
            who = self._holder_text(path)
            return f"a runner holds it{': ' + who if who else ''}"
        if self.probe(path.stem) == "shared":
            return "PooledWorker processes are running it"
        return self._holder_text(path)

    @staticmethod
    def _holder_text(path: Path) -> str:
        try:
            who = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return ""
        if not isinstance(who, dict):
            return ""
        return f"pid {who.get('pid')} on {who.get('host')}: {who.get('holder')}"
