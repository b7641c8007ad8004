"""DiskcacheBackend specifics: blob files for large outputs, locks of dead processes,
reopening from another process, damaged instances."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nbflow import CheckpointCorruptError, ConfigurationError, DiskcacheBackend, InstanceLockedError
from nbflow.store.base import CheckpointRecord, InstanceMeta
from nbflow.store.disk import INLINE_LIMIT


def _put(store: DiskcacheBackend, instance_id: str, task_id: str, data: bytes) -> CheckpointRecord:
    sink = store.new_sink(instance_id)
    sink.write(data)
    return store.put_record(instance_id, CheckpointRecord(task_id, "fp", "pickle"), sink)


def _blobs(store: DiskcacheBackend, instance_id: str) -> list[Path]:
    folder = store._instance_dir(instance_id) / "blobs"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_small_payload_is_inline_large_goes_to_a_blob_file(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    small = _put(store, "i", "small", b"s" * INLINE_LIMIT)
    assert small.blob is None and small.payload == b"s" * INLINE_LIMIT
    big = _put(store, "i", "big", b"b" * (INLINE_LIMIT + 1))
    assert big.payload is None and big.blob is not None
    files = _blobs(store, "i")
    assert [f.name for f in files] == [big.blob]
    assert files[0].stat().st_size == INLINE_LIMIT + 1
    assert not any(f.name.startswith(".tmp-") for f in files)


def test_delete_records_removes_blob_files(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    _put(store, "i", "big", b"b" * (INLINE_LIMIT + 10))
    assert len(_blobs(store, "i")) == 1
    store.delete_records("i", ["big"])
    assert _blobs(store, "i") == []


def test_missing_blob_file_is_a_clear_error(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    rec = _put(store, "i", "big", b"b" * (INLINE_LIMIT + 10))
    _blobs(store, "i")[0].unlink()
    with pytest.raises(CheckpointCorruptError) as err:
        store.open_payload("i", rec)
    assert "'i'" in str(err.value) and "missing" in str(err.value) and "clear" in str(err.value)


def test_second_backend_on_same_directory_sees_the_data(tmp_path: Path) -> None:
    first = DiskcacheBackend(tmp_path)
    first.save_instance(InstanceMeta("i", "wf", "h"))
    _put(first, "i", "t", b"data")
    second = DiskcacheBackend(tmp_path)
    assert second.load_instance("i").workflow == "wf"
    with second.open_payload("i", second.get_record("i", "t")) as f:
        assert f.read() == b"data"
    # Locks are per process *and* per open file: a second backend object is refused too.
    lease = first.lock("i", "first")
    with pytest.raises(InstanceLockedError):
        second.lock("i", "second")
    lease.release()


def test_backend_pickles_as_its_directory(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    store.save_instance(InstanceMeta("i", "wf", "h"))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.directory == store.directory
    assert clone.load_instance("i").workflow == "wf"


def test_lock_held_by_a_killed_process_is_freed(tmp_path: Path) -> None:
    marker = tmp_path / "locked"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        from nbflow import DiskcacheBackend
        lease = DiskcacheBackend({str(tmp_path / "store")!r}).lock("i", "child")
        pathlib.Path({str(marker)!r}).write_text("1")
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            import time

            time.sleep(0.05)
        assert marker.exists(), "child never took the lock"
        store = DiskcacheBackend(tmp_path / "store")
        assert store.is_locked("i")
        with pytest.raises(InstanceLockedError) as err:
            store.lock("i", "parent")
        assert f"pid {proc.pid}" in str(err.value)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert not store.is_locked("i")
        store.lock("i", "parent").release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    with pytest.raises(ConfigurationError) as err:
        DiskcacheBackend(path)
    assert "directory" in str(err.value) and "folder" in str(err.value)


def test_damaged_instance_is_a_clear_error_and_others_are_unaffected(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    store.save_instance(InstanceMeta("good", "wf", "h"))
    store.save_instance(InstanceMeta("bad", "wf", "h"))
    store.close()
    db = tmp_path / "instances" / "bad" / "cache.db"
    db.write_bytes(b"this is not sqlite" * 100)
    for name in ("cache.db-wal", "cache.db-shm"):
        (db.parent / name).unlink(missing_ok=True)
    fresh = DiskcacheBackend(tmp_path)
    with pytest.raises(CheckpointCorruptError) as err:
        fresh.load_instance("bad")
    assert "'bad'" in str(err.value) and "clear" in str(err.value)
    assert fresh.load_instance("good").workflow == "wf"
    states = {m.instance_id: m.state for m in fresh.list_instances()}
    assert states["good"] == "running" and states.get("bad") == "damaged"


def test_rerun_leaves_only_referenced_blob_files(tmp_path: Path) -> None:
    """Overwritten outputs do not leak their files: after five re-runs of a task with a
    large output, exactly the files the records name remain."""
    import nbflow as nf

    store = DiskcacheBackend(tmp_path / "s")
    runner = nf.CheckpointingRunner(store, echo_output=False)
    wf = nf.Workflow("big").then("make", lambda n: os.urandom(n)).then("size", len).build()
    assert runner.run(wf, "i", 3 * INLINE_LIMIT).output == 3 * INLINE_LIMIT
    for _ in range(5):
        assert runner.rerun_from(wf, "i", "make").state == "completed"
    referenced = {r.blob for r in store.get_records("i").values() if r.blob}
    assert len(referenced) == 1  # make's output (the input is a small int)
    assert {p.name for p in _blobs(store, "i")} == referenced


def test_orphan_blob_files_are_swept_when_a_runner_locks_the_instance(tmp_path: Path) -> None:
    store = DiskcacheBackend(tmp_path)
    kept = _put(store, "i", "big", b"b" * (INLINE_LIMIT + 1))
    blobs = store._instance_dir("i") / "blobs"
    (blobs / ("0" * 32 + ".bin")).write_bytes(b"orphan: a kill between file and record")
    (blobs / ".tmp-deadbeef").write_bytes(b"half-written")
    store.lock("i", "runner").release()
    assert [p.name for p in _blobs(store, "i")] == [kept.blob]


def test_store_folders_and_files_are_private(tmp_path: Path) -> None:
    import stat

    store = DiskcacheBackend(tmp_path / "s")
    _put(store, "i", "big", b"b" * (INLINE_LIMIT + 1))
    store.lock("i", "runner").release()
    for folder in (
        store.directory,
        store.directory / "instances",
        store.directory / "locks",
        _blobs(store, "i")[0].parent,
    ):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for blob in _blobs(store, "i"):
        assert stat.S_IMODE(blob.stat().st_mode) == 0o600, blob
    for lock in (store.directory / "locks").iterdir():
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600, lock


def test_a_new_instance_database_syncs_from_its_second_write_on(tmp_path: Path) -> None:
    """The creating write of a new database runs without syncs (two syncs per new
    instance saved); every later write syncs as usual; an existing database never
    starts relaxed."""
    from nbflow.store.disk_layout import CACHE_SETTINGS
    from nbflow.store.sqlite_rows import Rows

    def synchronous(rows: Rows) -> int:
        return int(rows._rows("PRAGMA synchronous")[0][0])

    folder = tmp_path / "inst"
    folder.mkdir()
    rows = Rows(folder, CACHE_SETTINGS)
    assert synchronous(rows) == 0  # OFF: the database was made just now
    rows.put_many([("meta", b"{}"), ("gen", "g")])
    assert synchronous(rows) == 1  # NORMAL from the second write on
    with rows.transact():
        rows.put("x", b"1")
    assert synchronous(rows) == 1
    rows.close()
    again = Rows(folder, CACHE_SETTINGS)
    assert synchronous(again) == 1 and again.get("meta") == b"{}"
    again.close()


def test_a_checkpoint_writes_its_record_row_and_nothing_else(tmp_path: Path) -> None:
    """A new instance's database has no diskcache statistics triggers and no expiry
    index, so a checkpoint touches one row (and its key index); a ``diskcache.Cache``
    opened on the folder still reads what nbflow wrote."""
    import sqlite3

    import diskcache

    import nbflow as nf

    store = DiskcacheBackend(tmp_path / "s")
    wf = nf.WorkflowBuilder("lean").then("a", _inc).then("b", _inc).then("c", _inc).build()
    assert nf.CheckpointingRunner(store, echo_output=False).run(wf, "i", 1).output == 4
    store.close()
    (db,) = (tmp_path / "s" / "instances").glob("*/cache.db")
    con = sqlite3.connect(db)
    schema = set(con.execute("SELECT type, name FROM sqlite_master"))
    counted = dict(con.execute("SELECT key, value FROM Settings WHERE key IN ('count', 'size')"))
    rows = con.execute("SELECT count(*) FROM Cache").fetchone()[0]
    con.close()
    assert not {name for kind, name in schema if kind == "trigger"}
    assert ("index", "Cache_expire_time") not in schema and ("index", "Cache_key_raw") in schema
    assert rows >= 5 and counted == {"count": 0, "size": 0}  # no statistics kept per write
    cache = diskcache.Cache(str(db.parent))
    try:
        assert set(cache.iterkeys()) >= {"t:a", "t:b", "t:c", "meta"}
    finally:
        cache.close()


def _inc(x: int) -> int:
    return x + 1


def test_a_reader_never_calls_an_instance_being_created_damaged(tmp_path: Path) -> None:
    """Another handle looks at instances while they are created: the record and the
    generation are read in one snapshot, so the creating commit cannot fall between
    them (read one after the other, ~1 in 5 new instances was reported damaged, with
    advice to discard it)."""
    import threading

    from nbflow.core.status import RunState

    writer, reader = DiskcacheBackend(tmp_path / "s"), DiskcacheBackend(tmp_path / "s")
    damaged: list[str] = []
    count = 150

    def create() -> None:
        for i in range(count):
            writer.save_instance(InstanceMeta(f"i{i}", "wf", "h", state="pending"))

    def look() -> None:
        for i in range(count):
            while True:
                try:
                    if reader.load_instance(f"i{i}") is not None:
                        break
                except CheckpointCorruptError as exc:
                    damaged.append(str(exc))
                    break
                damaged.extend(m.instance_id for m in reader.list_instances() if m.state == RunState.DAMAGED.value)

    threads = [threading.Thread(target=look), threading.Thread(target=create)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert damaged == []
    assert len(reader.list_instances()) == count
    writer.close()
    reader.close()
