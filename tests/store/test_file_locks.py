"""The instance-lock contract of ``store/file_locks.py`` (filelock's native locks).

A runner holds an instance exclusively, PooledWorkers share it; the two exclude each
other whichever came first; a second locker is refused even inside one process; a kill
-9 of a holder frees its lock; and a probe never makes a real acquisition fail, whether
it runs in another thread or another process."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbflow import InstanceLockedError
from nbflow.store.file_locks import FileLease, FileLocks

HOLD = textwrap.dedent(
    """
    import pathlib, sys, time
    from nbflow.store.file_locks import FileLocks
    folder, mode, marker = sys.argv[1:4]
    lease = FileLocks(pathlib.Path(folder)).acquire("i", "i", "the child", shared=mode == "shared")
    pathlib.Path(marker).write_text("held", encoding="utf-8")
    time.sleep(120)
    """
)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the child exited early: {err.decode('utf-8', 'replace')}")
        assert time.monotonic() < deadline, f"the child never wrote {path.name}"
        time.sleep(0.02)


@contextlib.contextmanager
def held_by_child(folder: Path, mode: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process holding the lock of "i" (``mode``: "exclusive" or "shared")."""
    marker = folder.parent / f"held-{mode}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), mode, str(marker)], stderr=subprocess.PIPE)
    try:
        _wait_for(marker, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def locks(tmp_path: Path) -> FileLocks:
    folder = tmp_path / "locks"
    folder.mkdir()
    return FileLocks(folder)


@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_kill_9_of_the_holder_frees_the_lock(locks: FileLocks, mode: str) -> None:
    with held_by_child(locks.folder, mode) as child:
        assert locks.probe("i") == mode
        with pytest.raises(InstanceLockedError) as refused:
            locks.acquire("i", "i", "parent")
        if mode == "exclusive":
            assert f"pid {child.pid}" in str(refused.value) and "the child" in str(refused.value)
        else:
            assert "PooledWorker" in str(refused.value)
        child.kill()  # SIGKILL on POSIX: nothing of nbflow runs in the child
        child.wait(30)
        assert locks.probe("i") is None
        locks.acquire("i", "i", "parent").release()


def test_probe_free_exclusive_and_shared(locks: FileLocks) -> None:
    assert locks.probe("i") is None
    assert list(locks.folder.iterdir()) == []  # a probe of a never-locked name creates nothing
    lease = locks.acquire("i", "i", "runner")
    assert locks.probe("i") == "exclusive" and locks.probe("other") is None
    lease.release()
    assert locks.probe("i") is None
    a = locks.acquire("i", "i", "w1", shared=True)
    b = locks.acquire("i", "i", "w2", shared=True)
    assert locks.probe("i") == "shared"
    a.release()
    assert locks.probe("i") == "shared"
    b.release()
    assert locks.probe("i") is None


def test_shared_holders_coexist_across_processes(locks: FileLocks) -> None:
    with held_by_child(locks.folder, "shared"):
        mine = locks.acquire("i", "i", "parent worker", shared=True)
        assert locks.probe("i") == "shared"
        mine.release()
        assert locks.probe("i") == "shared"  # the child still holds its slot


def test_runner_and_workers_exclude_each_other_in_one_process(locks: FileLocks) -> None:
    worker = locks.acquire("i", "i", "w1", shared=True)
    with pytest.raises(InstanceLockedError, match="PooledWorker"):
        locks.acquire("i", "i", "runner")
    worker.release()
    runner = locks.acquire("i", "i", "the runner")
    with pytest.raises(InstanceLockedError) as refused:
        locks.acquire("i", "i", "w2", shared=True)
    assert "a runner holds it" in str(refused.value) and "the runner" in str(refused.value)
    runner.release()
    locks.acquire("i", "i", "w2", shared=True).release()


@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_runner_and_workers_exclude_each_other_across_processes(locks: FileLocks, mode: str) -> None:
    with held_by_child(locks.folder, mode) as child:
        with pytest.raises(InstanceLockedError) as refused:
            locks.acquire("i", "i", "parent", shared=mode == "exclusive")
        assert ("runner" if mode == "exclusive" else "PooledWorker") in str(refused.value)
        if mode == "exclusive":
            assert f"pid {child.pid}" in str(refused.value)


def test_a_second_locker_in_one_process_is_refused(locks: FileLocks) -> None:
    other = FileLocks(locks.folder)  # another backend object on the same store
    lease = locks.acquire("i", "i", "first")
    for who in (locks, other):
        with pytest.raises(InstanceLockedError, match="first"):
            who.acquire("i", "i", "second")
    refusals: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            other.acquire("i", "i", "thread")
        except InstanceLockedError as exc:
            refusals.append(exc)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join(30)
    assert len(refusals) == 1
    lease.release()
    other.acquire("i", "i", "now free").release()


def test_a_lease_released_from_another_thread_is_released(locks: FileLocks) -> None:
    """A runner may release from its engine thread: holds are not per thread."""
    box: list[FileLease] = []
    thread = threading.Thread(target=lambda: box.append(locks.acquire("i", "i", "engine")))
    thread.start()
    thread.join(30)
    assert locks.probe("i") == "exclusive"
    box[0].release()
    box[0].release()  # idempotent
    assert not box[0].held and locks.probe("i") is None


def test_slots_are_reused_and_lock_files_are_private(locks: FileLocks) -> None:
    for _ in range(5):
        locks.acquire("i", "i", "w", shared=True).release()
    both = [locks.acquire("i", "i", "w", shared=True) for _ in range(2)]
    for lease in both:
        lease.release()
    locks.acquire("i", "i", "runner").release()
    names = sorted(p.name for p in locks.folder.iterdir())
    assert names == ["i.guard", "i.holder", "i.lock", "i.s0", "i.s1"]
    if os.name == "posix":
        for path in locks.folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_dead_workers_slot_does_not_block_a_runner(locks: FileLocks) -> None:
    with held_by_child(locks.folder, "shared") as child:
        second = locks.acquire("i", "i", "w2", shared=True)  # takes slot 1
        child.kill()
        child.wait(30)
        assert locks.probe("i") == "shared"  # slot 1 still held, slot 0 is free now
        second.release()
    locks.acquire("i", "i", "runner").release()


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_probes_in_a_thread_never_refuse_a_locker(locks: FileLocks, shared: bool) -> None:
    stop = threading.Event()
    probes = [0]

    def probe() -> None:
        while not stop.is_set():
            locks.probe("busy")
            probes[0] += 1

    prober = threading.Thread(target=probe)
    prober.start()
    refusals, rounds, deadline = 0, 0, time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            try:
                locks.acquire("busy", "busy", "stress", shared=shared).release()
            except InstanceLockedError:
                refusals += 1
            rounds += 1
    finally:
        stop.set()
        prober.join(30)
    assert refusals == 0 and rounds > 100 and probes[0] > 100


PROBE_LOOP = textwrap.dedent(
    """
    import json, pathlib, sys
    from nbflow import InstanceLockedError
    from nbflow.store.file_locks import FileLocks
    folder, role, stop, out = sys.argv[1:5]
    locks, counts = FileLocks(pathlib.Path(folder)), {"rounds": 0, "refusals": 0, "seen": []}
    pathlib.Path(out + ".ready").write_text("1", encoding="utf-8")
    while not pathlib.Path(stop).exists():
        if role == "probe":
            seen = locks.probe("busy")
            if seen not in counts["seen"]:
                counts["seen"].append(seen)
        else:
            try:
                locks.acquire("busy", "busy", "child").release()
            except InstanceLockedError:
                counts["refusals"] += 1
        counts["rounds"] += 1
    pathlib.Path(out).write_text(json.dumps(counts), encoding="utf-8")
    """
)


@pytest.mark.parametrize("child_role", ["probe", "lock"])
def test_probes_in_another_process_never_refuse_a_locker(locks: FileLocks, tmp_path: Path, child_role: str) -> None:
    stop, out = tmp_path / "stop", tmp_path / "counts.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE_LOOP, str(locks.folder), child_role, str(stop), str(out)], stderr=subprocess.PIPE
    )
    try:
        _wait_for(Path(str(out) + ".ready"), proc)
        refusals, rounds, deadline = 0, 0, time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if child_role == "probe":
                try:
                    locks.acquire("busy", "busy", "parent").release()
                except InstanceLockedError:
                    refusals += 1
            else:
                locks.probe("busy")
            rounds += 1
        stop.write_text("1", encoding="utf-8")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    child = json.loads(out.read_text(encoding="utf-8"))
    assert refusals == 0 and child["refusals"] == 0
    assert rounds > 50 and child["rounds"] > 50
