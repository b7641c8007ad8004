"""nbflow's instance locks are the very locks filelock takes, without importing filelock.

On POSIX ``store/file_locks.py`` calls ``fcntl.flock`` itself (filelock's imports cost a
listing ~25 ms). These checks hold it to filelock's own primitive in both directions, in
one process (two descriptors conflict) and across processes, so an nbflow that locks
through filelock again, or any other program using filelock's descriptor locks, and this
one exclude each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

from nbflow import InstanceLockedError
from nbflow.store.file_locks import FileLocks

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the direct flock path is POSIX only")


@pytest.fixture
def locks(tmp_path: Path) -> FileLocks:
    folder = tmp_path / "locks"
    folder.mkdir()
    return FileLocks(folder)


def _descriptor(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def test_filelock_sees_nbflows_lock_and_its_release(locks: FileLocks) -> None:
    lease = locks.acquire("i", "i", "me")
    fd = _descriptor(locks.folder / "i.lock")
    try:
        assert filelock.lock_descriptor(fd, blocking=False) is False
        lease.release()
        assert filelock.lock_descriptor(fd, blocking=False) is True
        filelock.unlock_descriptor(fd)
    finally:
        os.close(fd)


def test_nbflow_sees_filelocks_lock_and_its_release(locks: FileLocks) -> None:
    for name in ("i.lock", "i.guard"):
        (locks.folder / name).touch(mode=0o600)
    fd = _descriptor(locks.folder / "i.lock")
    try:
        assert filelock.lock_descriptor(fd, blocking=False) is True
        assert locks.probe("i") == "exclusive"
        with pytest.raises(InstanceLockedError):
            locks.acquire("i", "i", "me")
        filelock.unlock_descriptor(fd)
    finally:
        os.close(fd)
    assert locks.probe("i") is None
    locks.acquire("i", "i", "me").release()


_FILELOCK_HOLDS = """
import os, sys, time, filelock
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
assert filelock.lock_descriptor(fd, blocking=False)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_process_holding_filelocks_lock_refuses_nbflow(locks: FileLocks) -> None:
    (locks.folder / "i.guard").touch(mode=0o600)
    child = subprocess.Popen(
        [sys.executable, "-c", _FILELOCK_HOLDS, str(locks.folder / "i.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        assert locks.probe("i") == "exclusive"
        with pytest.raises(InstanceLockedError):
            locks.acquire("i", "i", "me")
    finally:
        child.communicate("", timeout=30)  # closing its stdin ends it: the lock goes with it
    locks.acquire("i", "i", "me").release()
