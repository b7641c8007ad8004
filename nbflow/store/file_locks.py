"""Instance locks between processes: exclusive for a runner, shared for PooledWorkers.

Every lock is an operating-system file lock, the one ``filelock.lock_descriptor`` takes:
``flock`` on the whole file on POSIX (called here directly), ``LockFileEx`` on byte 0 on
Windows (through filelock). The operating system drops it when the holding process
dies, kill -9 included: a crashed runner never leaves an instance locked. Two descriptors conflict even inside one process, so a
second runner in the same process is refused too.

The files of one instance, in ``locks/``::

    <name>.lock     held by a runner (exclusive)
    <name>.s0, .s1  one per PooledWorker process holding the instance (together: shared)
    <name>.guard    held for microseconds by whoever checks or changes the others
    <name>.holder   who holds <name>.lock (pid, host, holder text), quoted by refusals

filelock has no shared lock, so the shared side is a set of exclusive *slots*. Both
sides check the other under the guard: a runner takes ``.lock`` without waiting, then
tries every slot (one it cannot take is a worker's: it lets ``.lock`` go and is
refused); a worker tries ``.lock`` and lets it go at once (a runner holding it refuses
the worker), then takes the first free slot. Slots are created in order and never
removed, so a check stops at the first missing one: no folder listing, and no deleting
(Windows cannot delete a file another process has open). The files stay, as
``.lock`` and ``.guard`` always did.

Probing (``probe``) must not disturb real lockers: taking a lock for an instant to see
whether it is free would make an acquisition at that instant fail. So probes pass
through the guard as well: a lock attempt never meets a probe's momentary hold.

Why ``lock_descriptor`` rather than ``filelock.FileLock``: it is the same native lock
on a descriptor nbflow owns, without FileLock's machinery, which fights this design:
FileLock holds are per thread (``thread_local``: a lease released from the engine
thread would stay held), a blocking acquire of a path another FileLock of the process
holds raises ``RuntimeError("Deadlock ...")`` (the guard blocks by design), on a
filesystem without ``flock`` UnixFileLock quietly becomes a SoftFileLock that a dead
process never releases, and WindowsFileLock deletes its file on release. On POSIX filelock
is not imported at all (its imports cost ~25 ms, which a listing that probes a lock would
pay); ``socket``, for the holder's host name, is imported by the first runner that
writes one.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from nbflow.core.errors import InstanceLockedError

__all__ = ["FileLease", "FileLocks", "preload"]

Holding = Literal["exclusive", "shared"]

# Descriptors no child process inherits (POSIX: close-on-exec; Windows: no-inherit), and
# never through a symlink planted in the store (POSIX: O_NOFOLLOW refuses it).
_FLAGS = os.O_RDWR | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_MAX_SLOTS = 4096  # PooledWorker processes on one instance at once
_POLL_FIRST, _POLL_MAX = 0.0001, 0.005  # guard waits: the guard is held for microseconds

# Threads of this process queue for a guard here, not by polling its file.
_STRIPES = [threading.Lock() for _ in range(64)]


def _reset_stripes() -> None:  # a forked child must not inherit a lock held by a thread it lacks
    _STRIPES[:] = [threading.Lock() for _ in range(64)]


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_reset_stripes)


def preload() -> None:
    """Import filelock now, for a process about to lock or claim (a PooledWorker as it
    starts): its ~25 ms of imports (more on a busy machine) would otherwise land on the
    first unit the process claims, after the work was submitted."""
    import filelock  # noqa: F401


def _try_lock(fd: int) -> bool:
    """Take ``fd``'s lock without waiting (filelock's native descriptor lock: ``flock``
    on POSIX, ``LockFileEx`` on Windows); False when someone else holds it. filelock
    (~25 ms of imports) loads on the first lock or probe, not with this module."""
    import filelock

    return bool(filelock.lock_descriptor(fd, blocking=False))


def _unlock(fd: int) -> None:
    import filelock

    filelock.unlock_descriptor(fd)


def _open(path: Path, create: bool = True) -> int | None:
    """A descriptor on ``path`` (created 0600), or None if it does not exist and
    ``create`` is false: probes never create lock files."""
    try:
        return os.open(path, _FLAGS | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None


def _is_held(path: Path) -> bool:
    """Whether someone (this process included) holds ``path``: take it for an instant."""
    fd = _open(path, create=False)
    if fd is None:
        return False
    try:
        if not _try_lock(fd):
            return True
        _unlock(fd)  # explicitly: on Windows a close may drop the lock only later
        return False
    finally:
        os.close(fd)


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
                _unlock(fd)
            finally:
                os.close(fd)


class FileLocks:
    """The lock files of one store folder (``folder`` must exist).

    >>> import tempfile
    >>> locks = FileLocks(Path(tempfile.mkdtemp()))
    >>> lease = locks.acquire("i", "i", "a runner")
    >>> locks.probe("i")
    'exclusive'
    >>> lease.release(); locks.probe("i") is None
    True
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _slot(self, name: str, k: int) -> Path:
        return self.folder / f"{name}.s{k}"

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        with _STRIPES[hash((str(self.folder), name)) % len(_STRIPES)]:
            fd = _open(self.folder / f"{name}.guard")
            assert fd is not None
            try:
                delay = _POLL_FIRST
                while not _try_lock(fd):  # another process checks this instance right now
                    time.sleep(delay)
                    delay = min(2 * delay, _POLL_MAX)
                try:
                    yield
                finally:
                    _unlock(fd)
            finally:
                os.close(fd)

    def acquire(self, name: str, instance_id: str, holder: str, shared: bool = False) -> FileLease:
        """Take the lock without waiting, or raise InstanceLockedError naming the holder."""
        with self._guard(name):
            fd = self._take_slot(name, instance_id) if shared else self._take_exclusive(name, instance_id, holder)
        return FileLease(fd)

    def _take_exclusive(self, name: str, instance_id: str, holder: str) -> int:
        fd = _open(self.folder / f"{name}.lock")
        assert fd is not None
        locked = False
        try:
            if not _try_lock(fd):
                raise InstanceLockedError(instance_id, self._holder_text(name))
            locked = True
            if self._slot_held(name):
                raise InstanceLockedError(instance_id, "PooledWorker processes are running it")
            self._write_holder(name, holder)
        except BaseException:
            try:
                if locked:
                    _unlock(fd)
            finally:
                os.close(fd)
            raise
        return fd

    def _take_slot(self, name: str, instance_id: str) -> int:
        if _is_held(self.folder / f"{name}.lock"):
            who = self._holder_text(name)
            raise InstanceLockedError(instance_id, f"a runner holds it{': ' + who if who else ''}")
        for k in range(_MAX_SLOTS):
            fd = _open(self._slot(name, k))
            assert fd is not None
            try:
                taken = _try_lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if taken:
                return fd
            os.close(fd)  # another worker's slot: try the next
        raise InstanceLockedError(instance_id, f"{_MAX_SLOTS} PooledWorker processes hold it")

    def _slot_held(self, name: str) -> bool:
        for k in range(_MAX_SLOTS):
            path = self._slot(name, k)
            if not path.exists():
                return False  # slots are created in order: none after a missing one
            if _is_held(path):
                return True
        return False

    def probe(self, name: str) -> Holding | None:
        """Who holds the lock now: ``"exclusive"`` (a runner), ``"shared"`` (workers) or None."""
        if not (self.folder / f"{name}.lock").exists() and not self._slot(name, 0).exists():
            return None  # never locked
        with self._guard(name):
            if _is_held(self.folder / f"{name}.lock"):
                return "exclusive"
            return "shared" if self._slot_held(name) else None

    def _write_holder(self, name: str, holder: str) -> None:
        import socket  # only a lock taker names its host: socket costs every listing ~5 ms

        info = {"pid": os.getpid(), "host": socket.gethostname(), "holder": holder, "since": time.time()}
        fd = os.open(self.folder / f"{name}.holder", _FLAGS | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(info).encode("utf-8"))
        finally:
            os.close(fd)

    def _holder_text(self, name: str) -> str:
        try:
            fd = os.open(self.folder / f"{name}.holder", (_FLAGS & ~os.O_RDWR) | os.O_RDONLY)
            with os.fdopen(fd, "rb") as file:
                who = json.loads(file.read(64 * 1024).decode("utf-8") or "{}")
        except (OSError, ValueError):
            return ""
        if not isinstance(who, dict):
            return ""
        return f"pid {who.get('pid')} on {who.get('host')}: {who.get('holder')}"
