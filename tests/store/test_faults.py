"""Fault injection on the disk store: a kill -9 in the middle of a blob write, flipped
and truncated bytes, lost files and rows, a full filesystem, a read-only mount, a
folder of another user.

Every case checks four things: the error's class; that its message names the instance
(and the task, where one is involved); that nothing but a *damaged* instance's own
message advises discarding anything; and that the other instances of the same store
still list (``WorkflowClient.list_instances`` and ``nbflow list``), resume and read.

Mounting needs root: those tests make their own tmpfs and skip where they cannot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.store.base import CheckpointRecord, InstanceMeta
from tests.store.faults import (
    assert_damage_message,
    assert_lists,
    assert_names,
    assert_no_discard_advice,
    assert_others_fine,
    blob_files,
    cache_db,
    chain,
    child_env,
    cli,
    delete_row,
    fill,
    flip_byte,
    get_row,
    last_json,
    python,
    remount,
    require_root,
    set_row,
    split_record,
    states,
    tmpfs,
)

np = pytest.importorskip("numpy")

# -- a workflow with an inline output and a blob ------------------------------------------
ITEMS = 1 << 17  # float64: a 1 MiB array, so its checkpoint is a blob file
CALLS: Counter[str] = Counter()


def head(x: int) -> int:
    CALLS["head"] += 1
    return x + 1


def array(head: int) -> Any:
    CALLS["array"] += 1
    return np.arange(ITEMS, dtype=np.float64) + head


def summary(array: Any) -> dict[str, float]:
    CALLS["summary"] += 1
    return {"n": float(array.size), "first": float(array[0])}


WF = nf.Workflow("faults").then(head).then(array).then(summary).build()
RIGHT = {"head": 2, "array": np.arange(ITEMS, dtype=np.float64) + 2, "summary": {"n": float(ITEMS), "first": 2.0}}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding two completed instances of WF: "good" and "bad" (to be broken)."""
    path = tmp_path / "store"
    backend = nf.DiskcacheBackend(path)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    for instance in ("good", "bad"):
        assert runner.run(WF, instance, 1).state == "completed"
    backend.close()
    assert len(blob_files(path, "bad")) == 1 and split_record(get_row(cache_db(path, "bad"), "t:summary"))[1]
    CALLS.clear()
    return path


def good_is_fine(store: Path) -> None:
    assert_others_fine(store, WF, {"good": ("summary", RIGHT["summary"])})
    assert nf.WorkflowClient(nf.DiskcacheBackend(store)).get_task_result("good", "array").sum() == RIGHT["array"].sum()


def open_runner(store: Path) -> nf.CheckpointingRunner:
    return nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)


# -- kill -9 while a blob is being written --------------------------------------------------
KILLED_CHILD = r"""
import json, os, sys, time
import numpy as np
import nbflow as nf

store, log, moment, verb = sys.argv[1:5]

def note(name):
    with open(os.path.join(log, name), "a") as f:
        f.write(".")

if moment == "hold-in-fsync":
    # Park the engine inside the fsync of the temporary blob file: the kill lands there.
    real_fsync = os.fsync
    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if f"{os.sep}blobs{os.sep}.tmp-" in path:
            note("in-fsync")
            time.sleep(600)
        real_fsync(fd)
    os.fsync = fsync

N = (50 << 20) // 8  # a 50 MB int64 array

def first(x):
    note("first")
    return x + 1

def big(first):
    note("big")
    return np.arange(N, dtype=np.int64) + first

wf = nf.Workflow("blobkill").then(first).then(big).build()
runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
status = runner.run(wf, "k", 1) if verb == "run" else runner.resume(wf, "k")
v = runner.get_task_result("k", "big")
right = v.shape == (N,) and v.dtype == np.int64 and bool((v[:: 1 << 12] == np.arange(0, N, 1 << 12) + 2).all())
print(json.dumps({"state": str(status.state), "right": bool(right and v[-1] == N + 1)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["hold-in-fsync", "kill-on-sight"])
def test_kill_9_while_a_blob_is_written_then_resume_in_a_new_process(tmp_path: Path, moment: str) -> None:
    """``hold-in-fsync`` parks the child inside the temporary file's fsync (a kill there
    is certain); ``kill-on-sight`` kills as soon as a ``.tmp-*`` file shows up."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to find the blob's file descriptor")
    store, log = tmp_path / "store", tmp_path / "log"
    log.mkdir()
    blobs = store / "instances" / "k" / "blobs"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(store), str(log), moment, "run"],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "hold-in-fsync":
                if (log / "in-fsync").exists():
                    break
            elif blobs.is_dir() and any(p.name.startswith(".tmp-") for p in blobs.iterdir()):
                break
            time.sleep(0.001)
        assert proc.poll() is None, f"the child ended before it was killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    if moment == "hold-in-fsync":
        assert [p for p in blob_files(store, "k") if p.name.startswith(".tmp-")], "the kill left no temporary file"

    resumed = python(KILLED_CHILD, str(store), str(log), "plain", "resume")
    assert last_json(resumed) == {"state": "completed", "right": True}, resumed.stderr
    assert (log / "first").read_text() == ".", "a finished task ran again"
    # the killed task runs again; killed on sight, its record may have been committed already
    assert (log / "big").read_text() in (("..",) if moment == "hold-in-fsync" else (".", ".."))
    names = [p.name for p in blob_files(store, "k")]
    assert not [n for n in names if n.startswith(".tmp-")], f"orphan temporary files remain: {names}"
    record = nf.DiskcacheBackend(store).get_record("k", "big")
    assert record is not None and names == [record.blob], f"unreferenced blob files remain: {names}"


# -- flipped bytes --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["inline-payload", "blob-file"])
def test_a_flipped_byte_is_damage_and_rerun_from_repairs_it(store: Path, where: str) -> None:
    if where == "inline-payload":
        task, db = "summary", cache_db(store, "bad")
        data = bytearray(get_row(db, "t:summary"))
        _, payload = split_record(bytes(data))
        data[len(data) - len(payload) // 2] ^= 0x01  # inside the payload, after the header
        set_row(db, "t:summary", bytes(data))
    else:
        task = "array"
        (blob,) = blob_files(store, "bad")
        flip_byte(blob, blob.stat().st_size // 2)  # in the middle of the array's buffer

    runner = open_runner(store)
    with pytest.raises(nf.CheckpointCorruptError) as err:
        runner.get_task_result("bad", task)
    assert_damage_message(str(err.value), "bad", task)
    good_is_fine(store)

    CALLS.clear()
    assert runner.rerun_from(WF, "bad", task).state == "completed"
    got = runner.get_task_result("bad", task)
    assert np.array_equal(got, RIGHT[task]) if task == "array" else got == RIGHT[task]
    assert CALLS["head"] == 0, "rerun_from re-ran a task upstream of the damaged one"
    assert CALLS[task] == 1
    assert runner.resume(WF, "bad").state == "completed"


# -- damaged files and rows -----------------------------------------------------------------
def _truncate_blob(store: Path) -> str | None:
    (blob,) = blob_files(store, "bad")
    os.truncate(blob, 1000)
    return "array"


def _drop_db_files(store: Path, keep_main: bool) -> None:
    db = cache_db(store, "bad")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if keep_main:
        os.truncate(db, 0)
    else:
        db.unlink()


def _empty_db(store: Path) -> str | None:
    _drop_db_files(store, keep_main=True)
    return None


def _delete_db(store: Path) -> str | None:
    _drop_db_files(store, keep_main=False)
    assert blob_files(store, "bad"), "the case is: the database is gone, its folder and blobs remain"
    return None


def _garbage_row(store: Path) -> str | None:
    set_row(cache_db(store, "bad"), "t:head", b"\x00\xffgarbage" * 8)
    return "head"


def _delete_meta(store: Path) -> str | None:
    delete_row(cache_db(store, "bad"), "meta")
    return None


DAMAGE: dict[str, Callable[[Path], str | None]] = {
    "truncated-blob": _truncate_blob,
    "emptied-cache.db": _empty_db,
    "deleted-cache.db": _delete_db,
    "garbage-record-row": _garbage_row,
    "deleted-meta-row": _delete_meta,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_instance_is_listed_damaged_and_the_others_are_unaffected(store: Path, damage: str) -> None:
    task = DAMAGE[damage](store)
    runner = open_runner(store)

    with pytest.raises(nf.CheckpointCorruptError) as err:
        runner.get_task_result("bad", task or "summary")
    assert_damage_message(str(err.value), "bad", task)

    # Listing never fails for the others and shows this one as damaged.
    good_is_fine(store)
    assert_lists(store, {"bad": "damaged", "good": "completed"})

    # Resuming it either finds nothing it needs damaged, or says it is damaged.
    try:
        status = runner.resume(WF, "bad")
    except nf.CheckpointCorruptError as exc:
        assert_damage_message(str(exc), "bad")
    else:
        assert status.state == "completed"
    code, text = cli("--dir", str(store), "status", "good")
    assert code == 0 and "completed" in text, text


def test_the_repair_a_damaged_record_suggests_works(store: Path) -> None:
    """The message of an undecodable record says ``runner.rerun_from(wf, id, task)``
    keeps every other checkpoint: doing just that repairs the instance."""
    _garbage_row(store)
    runner = open_runner(store)
    with pytest.raises(nf.CheckpointCorruptError) as err:
        runner.get_task_result("bad", "head")
    assert "rerun_from(wf, 'bad', 'head')" in str(err.value)
    assert runner.rerun_from(WF, "bad", "head").state == "completed"
    assert runner.get_task_result("bad", "summary") == RIGHT["summary"]
    assert CALLS["head"] == 1


# -- a full filesystem ----------------------------------------------------------------------
def full_disk_message(call: Callable[[], nf.WorkflowStatus]) -> str:
    """The run raises StoreFullError, or ends failed with an error saying the disk is
    full: either way, the message. (Any other exception fails the test as itself.)"""
    try:
        status = call()
    except nf.NbflowError as exc:
        assert isinstance(exc, nf.StoreFullError), f"{type(exc).__name__}, not StoreFullError: {exc}"
        return str(exc)
    assert status.state == "failed" and status.error is not None, status
    return str(status.error)


@pytest.mark.slow
def test_a_full_disk_while_a_large_output_is_written(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()

    def load(x: int) -> dict[str, int]:
        calls["load"] += 1
        return {"rows": x}

    def bulk(load: dict[str, int]) -> bytes:
        calls["bulk"] += 1
        return b"x" * (20 << 20)  # 20 MB on an 8 MiB filesystem

    wf = nf.Workflow("full").then(load).then(bulk).build()
    with tmpfs(tmp_path / "fs", "8m") as fs:
        store = fs / "store"
        runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
        assert runner.run(chain(), "other", 1).state == "completed"

        message = full_disk_message(lambda: runner.run(wf, "f", 7))
        assert "full" in message, message
        assert_names(message, "f", "bulk")
        assert_no_discard_advice(message)
        assert "picklable" not in message, message

        # Nothing is damaged: what was stored before is intact and the space is given back.
        assert states(store)["f"] not in ("damaged", "unreadable")
        assert runner.get_task_result("f", "load") == {"rows": 7}
        assert not [p for p in blob_files(store, "f") if p.name.startswith(".tmp-")], "the partial file stayed"
        vfs = os.statvfs(fs)
        assert vfs.f_bavail * vfs.f_frsize > 6 << 20, "the partial output was not removed"
        assert_others_fine(store, chain(), {"other": ("second", 20)})
        code, text = cli("--dir", str(store), "status", "f")
        assert code == 0, text
        assert_no_discard_advice(text)

        remount(fs, "size=64m")
        status = runner.resume(wf, "f")
        assert status.state == "completed", status
        assert calls == {"load": 1, "bulk": 2}, "only the unfinished task runs again"
        out = runner.get_task_result("f", "bulk")
        assert len(out) == 20 << 20 and out.count(b"x") == len(out)


@pytest.mark.slow
def test_a_full_disk_while_small_records_are_written(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        store = fs / "store"
        runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
        assert runner.run(chain(), "other", 1).state == "completed"
        filler = fill(fs)

        message = full_disk_message(lambda: runner.run(chain(), "new", 5))
        assert "full" in message, message
        assert_names(message, "new")
        assert_no_discard_advice(message)
        assert "picklable" not in message and "Return a picklable value" not in message, message

        # On the full disk the others still list and read.
        assert_lists(store, {"other": "completed"})
        assert runner.get_task_result("other", "second") == 20

        filler.unlink()
        # Same process, same runner: the failed attempt left no lock or state behind.
        again = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
        status = again.run(chain(), "new", 5)
        assert status.state == "completed" and status.output == 60, status
        assert_others_fine(store, chain(), {"other": ("second", 20), "new": ("second", 60)})


# -- a read-only store ----------------------------------------------------------------------
BUILD_CHAIN = """
import sys
import nbflow as nf
from tests.store.faults import chain
runner = nf.CheckpointingRunner(nf.DiskcacheBackend(sys.argv[1]), echo_output=False)
for instance, x in (("a", 1), ("b", 2)):
    assert runner.run(chain(), instance, x).state == "completed"
print("{}")
"""


@pytest.mark.slow
def test_a_read_only_store_can_be_inspected_and_refuses_writes_truthfully(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "16m") as fs:
        store = fs / "store"
        last_json(python(BUILD_CHAIN, str(store)))  # built by a process that is gone: no file open
        remount(fs, "ro")

        backend = nf.DiskcacheBackend(store)
        assert backend.read_only is True
        assert_lists(store, {"a": "completed", "b": "completed"})
        client = nf.WorkflowClient(backend)
        assert client.status("a").output == 20
        assert client.get_task_result("b", "second") == 30
        code, text = cli("--dir", str(store), "status", "a")
        assert code == 0 and "completed" in text, text

        runner = nf.CheckpointingRunner(backend, echo_output=False)
        writes: dict[str, Callable[[], object]] = {
            "run": lambda: runner.run(chain(), "c", 3),
            "resume": lambda: runner.resume(chain(), "a"),
            "rerun_from": lambda: runner.rerun_from(chain(), "a", "second"),
            "cancel": lambda: client.cancel("b"),
            "pause": lambda: client.pause("b"),
        }
        for verb, write in writes.items():
            with pytest.raises(nf.NbflowError) as err:
                write()
            assert isinstance(err.value, nf.StoreUnreadableError), f"{verb}: {type(err.value).__name__}: {err.value}"
            instance = "c" if verb == "run" else "b" if verb in ("cancel", "pause") else "a"
            assert_names(str(err.value), instance)
            assert_no_discard_advice(str(err.value))
        assert client.get_task_result("a", "second") == 20


# -- permissions: another user --------------------------------------------------------------
AS_NOBODY = r"""
import contextlib, io, json, os, sys, tempfile
import fcntl, sqlite3  # loaded while still root: the interpreter lives in root's home
import nbflow as nf
from nbflow.cli import main
from tests.store.faults import chain

# One run as root first, so every module nbflow imports lazily is loaded before the drop.
nf.CheckpointingRunner(nf.DiskcacheBackend(tempfile.mkdtemp()), echo_output=False).run(chain(), "warm", 1)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)

store = sys.argv[1]
results = {}

def attempt(name, fn):
    try:
        results[name] = {"ok": fn()}
    except Exception as exc:
        results[name] = {
            "error": type(exc).__name__,
            "unreadable": isinstance(exc, nf.StoreUnreadableError),
            "message": str(exc),
        }

def cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["--dir", store, *argv])
    return [code, out.getvalue()]

attempt("open", lambda: nf.DiskcacheBackend(store).read_only)
attempt("list", lambda: {s.instance_id: str(s.state) for s in nf.WorkflowClient(nf.DiskcacheBackend(store)).list_instances()})
attempt("nbflow list", lambda: cli("list"))
for i in sys.argv[2:]:
    attempt(f"status {i}", lambda: str(nf.WorkflowClient(nf.DiskcacheBackend(store)).status(i).state))
    attempt(f"read {i}", lambda: nf.WorkflowClient(nf.DiskcacheBackend(store)).get_task_result(i, "second"))
    attempt(f"resume {i}", lambda: str(nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).resume(chain(), i).state))
    attempt(f"nbflow status {i}", lambda: cli("status", i))
print(json.dumps(results))
"""


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is root's own, 0700)."""
    require_root()
    path = Path(tempfile.mkdtemp(prefix="nbflow-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(store: Path, *instances: str) -> dict[str, Any]:
    result = last_json(python(AS_NOBODY, str(store), *instances))
    assert isinstance(result, dict)
    return result


def _refused_truthfully(result: dict[str, Any], what: str, instance: str | None = None) -> None:
    assert "error" in result, f"{what} worked for a user without permission: {result}"
    assert result["unreadable"], f"{what}: {result['error']}, not StoreUnreadableError: {result['message']}"
    if instance is not None:
        assert_names(result["message"], instance)
    assert_no_discard_advice(result["message"])


@pytest.mark.slow
def test_a_store_of_another_user_is_unreadable_not_damaged(public_dir: Path) -> None:
    store = public_dir / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    assert runner.run(chain(), "a", 1).state == "completed"
    store.chmod(0o700)  # root's, 0700: user 65534 may not even look inside

    got = _as_nobody(store, "a")
    for what in ("open", "list", "status a", "read a", "resume a"):
        _refused_truthfully(got[what], what)
        assert str(store) in got[what]["message"]
    for what in ("nbflow list", "nbflow status a"):
        assert "error" not in got[what], f"`{what}` crashed: {got[what]}"
        code, text = got[what]["ok"]
        assert code == 2 and "cannot be accessed" in text, text
        assert_no_discard_advice(text)


@pytest.mark.slow
def test_one_instance_of_another_user_is_listed_unreadable_and_the_others_work(public_dir: Path) -> None:
    store = public_dir / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    for instance, x in (("good", 1), ("secret", 2)):
        assert runner.run(chain(), instance, x).state == "completed"
    for path in [store, *store.rglob("*")]:
        os.chown(path, 65534, 65534)
    secret = store / "instances" / "secret"
    for path in [secret, *secret.rglob("*")]:
        os.chown(path, 0, 0)
    secret.chmod(0o700)

    got = _as_nobody(store, "good", "secret")
    assert got["open"] == {"ok": False}, got["open"]
    assert got["list"] == {"ok": {"good": "completed", "secret": "unreadable"}}, got["list"]
    assert "error" not in got["nbflow list"], got["nbflow list"]
    code, text = got["nbflow list"]["ok"]
    assert code == 0 and "unreadable" in text and "good" in text, text
    assert got["status good"] == {"ok": "completed"}
    assert got["read good"] == {"ok": 20}
    assert got["resume good"] == {"ok": "completed"}
    for what in ("status secret", "read secret", "resume secret"):
        _refused_truthfully(got[what], what, "secret")
    assert "error" not in got["nbflow status secret"], got["nbflow status secret"]
    code, text = got["nbflow status secret"]["ok"]
    assert code == 2 and "'secret'" in text, text
    assert_no_discard_advice(text)


# -- files left open ------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_close_releases_every_file_of_the_store(tmp_path: Path) -> None:
    """A store that was run from can be unmounted or remounted read-only after
    ``backend.close()``: no database opened by the engine's threads stays open."""
    store = tmp_path / "store"
    backend = nf.DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    for i in range(3):
        assert runner.run(chain(), f"i{i}", i).state == "completed"
    backend.close()
    still_open = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(store)):
            still_open.append(target)
    assert still_open == [], f"after close() these files of the store are still open: {sorted(still_open)}"


def test_an_instance_being_created_is_not_called_damaged(tmp_path: Path) -> None:
    """A new instance's input record is stored just before its instance record: a reader
    in between (another process polling status) sees an instance not there yet, never a
    damaged one."""
    store = tmp_path / "store"
    writer = nf.DiskcacheBackend(store)
    sink = writer.new_sink("new-1")
    sink.write(b"input")
    writer.put_records("new-1", [(CheckpointRecord("__input__", "", "pickle"), sink)])
    reader = nf.DiskcacheBackend(store)
    assert reader.load_instance("new-1") is None
    assert reader.list_summaries() == []
    assert nf.WorkflowClient(reader).list_instances() == []
    writer.save_instance(InstanceMeta("new-1", "wf", "h"))
    assert [r.instance_id for r in reader.list_summaries()] == ["new-1"]
