"""The disk store's index (store_index.py): listing from it must always agree with what
reading every instance would say — after runs, clears, start-overs, kill -9 in the
middle of a checkpoint, two processes writing at once, foreign writers, a damaged or
planted index file — and must not open instances that did not change."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.store.base import CheckpointRecord, InstanceMeta, summarize
from nbflow.store.disk import DiskcacheBackend
from nbflow.store.store_index import INDEX_FILE
from tests.store.faults import (
    assert_no_discard_advice,
    child_env,
    fill,
    last_json,
    python,
    remount,
    require_root,
    sqlite,
    tmpfs,
)

ROOT = Path(__file__).resolve().parents[2]


def _truth(store: Path) -> dict[str, tuple[str, int, int]]:
    """What a full read of every instance says: id -> (state, done, total)."""
    backend = DiskcacheBackend(store)
    try:
        out = {}
        for meta in backend.list_instances():
            row = summarize(meta, backend.get_records(meta.instance_id))
            out[meta.instance_id] = (row.state, row.tasks_done, row.tasks_total)
        return out
    finally:
        backend.close()


def _listed(store: Path) -> dict[str, tuple[str, int, int]]:
    backend = DiskcacheBackend(store)
    try:
        return {r.instance_id: (r.state, r.tasks_done, r.tasks_total) for r in backend.list_summaries()}
    finally:
        backend.close()


def _chain(n: int, name: str = "chain") -> Any:
    wf = nf.Workflow(name)
    for i in range(n):
        wf = wf.then(f"t{i}", lambda x: x + 1)
    return wf.build()


def _put(backend: DiskcacheBackend, iid: str, task: str) -> None:
    sink = backend.new_sink(iid)
    sink.write(b"1")
    backend.put_records(iid, [(CheckpointRecord(task, "f", "pickle"), sink)])


def test_listing_agrees_with_the_instances_after_runs_clears_and_start_overs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    client = nf.WorkflowClient(backend)
    for i in range(5):
        runner.run(_chain(3), f"run-{i}", 0)
    assert _listed(store) == _truth(store)
    client.clear("run-1")
    assert "run-1" not in _listed(store)
    client.clear("run-2")
    runner.run(_chain(4), "run-2", 0)  # the same id started over with another workflow shape
    assert _listed(store)["run-2"] == ("completed", 4, 4)
    assert _listed(store) == _truth(store)
    backend.close()
    statuses = {s.instance_id: (s.state.value, s.tasks_done, s.tasks_total) for s in client.list_instances()}
    assert statuses == _truth(store)


def test_an_unchanged_store_is_listed_without_opening_an_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    for i in range(6):
        runner.run(_chain(2), f"i{i}", 0)
    backend.close()
    fresh = DiskcacheBackend(store)
    opened: list[Path] = []
    real = DiskcacheBackend._summary_of

    def spy(self: DiskcacheBackend, path: Path) -> Any:
        opened.append(path)
        return real(self, path)

    monkeypatch.setattr(DiskcacheBackend, "_summary_of", spy)
    rows = fresh.list_summaries()
    assert len(rows) == 6
    assert opened == []  # the closing handle carried its rows over to the closed files
    # A write to one instance (from anywhere) makes exactly that one be read again.
    other = DiskcacheBackend(store)
    _put(other, "i3", "extra")
    other.close()
    fresh.list_summaries()
    assert [p.name for p in opened] == [DiskcacheBackend(store)._instance_dir("i3").name]


def test_a_foreign_writer_that_keeps_no_index_is_noticed(tmp_path: Path) -> None:
    """A writer that changes an instance without touching the index (an older nbflow,
    a hand edit) changes its files, so the listing reads it again."""
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    backend.save_instance(InstanceMeta("x", "wf", "h", shape=("a|task", "b|task"), tasks_total=2))
    backend.close()
    assert _listed(store)["x"] == ("running", 0, 2)
    con = sqlite3.connect(store / INDEX_FILE)
    old_rows = con.execute("SELECT folder, summary, files FROM instances").fetchall()
    con.close()
    writer = DiskcacheBackend(store)
    _put(writer, "x", "a")
    writer.close()
    con = sqlite3.connect(store / INDEX_FILE)  # as if the writer kept no index: the old rows stay
    con.execute("DELETE FROM instances")
    con.executemany("INSERT INTO instances VALUES (?, ?, ?)", old_rows)
    con.commit()
    con.close()
    assert _listed(store)["x"] == ("running", 1, 2)


def test_two_processes_writing_different_instances(tmp_path: Path) -> None:
    store = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import nbflow as nf
        backend = nf.DiskcacheBackend(sys.argv[1])
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        wf = nf.Workflow("w")
        for i in range(5):
            wf = wf.then(f"t{{i}}", lambda x: x + 1)
        wf = wf.build()
        for k in range(15):
            runner.run(wf, f"{{sys.argv[2]}}-{{k}}", 0)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store), tag]) for tag in ("p", "q")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    listed = _listed(store)
    assert len(listed) == 30
    assert listed == _truth(store)
    assert all(value == ("completed", 5, 5) for value in listed.values())


def test_kill_during_checkpoints_then_resume(tmp_path: Path) -> None:
    """kill -9 while a run checkpoints: the listing agrees with the records (the run
    reads interrupted, its done count is what was stored); after a resume too."""
    store = tmp_path / "store"
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(ROOT)!r})
        import nbflow as nf
        backend = nf.DiskcacheBackend(sys.argv[1])
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        def step(x):
            if x == 40:
                pathlib.Path(sys.argv[2]).touch()
            if x >= 40:
                time.sleep(0.002)
            return x + 1
        wf = nf.Workflow("slow")
        for i in range(3000):
            wf = wf.then(f"t{{i}}", step)
        runner.run(wf.build(), "victim", 0)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(store), str(marker)])
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, "the child ended before its kill point"
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # well inside the checkpoints
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    truth = _truth(store)
    listed = _listed(store)
    assert listed == truth
    state, done, total = listed["victim"]
    assert state == "running" and 40 < done < total  # stored as running; clients show interrupted
    backend = DiskcacheBackend(store)
    client = nf.WorkflowClient(backend)
    (status,) = client.list_instances()
    assert (status.state, status.tasks_done) == (nf.RunState.INTERRUPTED, done)
    backend.close()

    def step(x: int) -> int:
        return x + 1

    wf = nf.Workflow("slow")
    for i in range(3000):
        wf = wf.then(f"t{i}", step)
    backend = DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.resume(wf.build(), "victim").output == 3000
    backend.close()
    assert _listed(store) == _truth(store) == {"victim": ("completed", 3000, 3000)}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-version"])
def test_a_damaged_index_is_set_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    for i in range(3):
        backend.save_instance(InstanceMeta(f"i{i}", "wf", "h"))
    backend.close()
    index = store / INDEX_FILE
    if damage == "garbage":
        index.write_bytes(os.urandom(8192))
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:100])
    else:
        con = sqlite3.connect(index)
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
    assert sorted(_listed(store)) == ["i0", "i1", "i2"]
    kept = [p for p in store.iterdir() if p.name.startswith(INDEX_FILE + ".damaged-")]
    assert kept, "the damaged index is kept beside, not deleted"
    assert sorted(_listed(store)) == ["i0", "i1", "i2"]  # and the new one works


@pytest.mark.parametrize(
    "planted",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"instance_id": 5, "workflow": "w", "state": "completed"}),
        json.dumps({"instance_id": "i0", "workflow": "w", "state": "completed", "tasks_done": "all"}),
        json.dumps({"instance_id": "i0", "workflow": "w", "state": "completed", "error": "boom"}),
    ],
)
def test_planted_index_rows_are_ignored(tmp_path: Path, planted: str) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    backend.save_instance(InstanceMeta("i0", "wf", "h"))
    folder = backend._instance_dir("i0").name
    backend.close()
    con = sqlite3.connect(store / INDEX_FILE)
    con.execute("UPDATE instances SET summary = ? WHERE folder = ?", (planted, folder))
    con.commit()
    con.close()
    assert _listed(store) == {"i0": ("running", 0, 0)}


def test_index_rows_of_vanished_folders_are_dropped(tmp_path: Path) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    backend.save_instance(InstanceMeta("gone", "wf", "h"))
    backend.save_instance(InstanceMeta("kept", "wf", "h"))
    folder = backend._instance_dir("gone")
    backend.close()
    import shutil

    shutil.rmtree(folder)  # by hand, past nbflow
    assert sorted(_listed(store)) == ["kept"]
    con = sqlite3.connect(store / INDEX_FILE)
    assert [row[0] for row in con.execute("SELECT folder FROM instances")] == [
        DiskcacheBackend(store)._instance_dir("kept").name
    ]
    con.close()


@pytest.mark.slow
@pytest.mark.parametrize("with_index", [True, False], ids=["indexed", "no-index"])
def test_a_read_only_mount_lists_from_its_index_or_its_instances(tmp_path: Path, with_index: bool) -> None:
    require_root()
    with tmpfs(tmp_path / "fs", "16m") as fs:
        store = fs / "store"
        backend = DiskcacheBackend(store)
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        runner.run(_chain(2), "a", 0)
        backend.save_instance(InstanceMeta("b", "wf", "h", shape=("x|task",), tasks_total=1))
        backend.close()
        if not with_index:
            (store / INDEX_FILE).unlink()
        truth = _truth(store)
        remount(fs, "ro")
        reader = DiskcacheBackend(store)
        assert reader.read_only
        assert {r.instance_id: (r.state, r.tasks_done, r.tasks_total) for r in reader.list_summaries()} == truth
        assert sorted(s.instance_id for s in nf.WorkflowClient(reader).list_instances()) == ["a", "b"]
        reader.close()
        remount(fs, "rw")


def test_filters_read_the_index(tmp_path: Path) -> None:
    store = tmp_path / "store"
    backend = DiskcacheBackend(store)
    backend.save_instance(InstanceMeta("a", "wf", "h", state="completed"))
    backend.save_instance(InstanceMeta("b", "wf", "h", state="failed"))
    backend.save_instance(InstanceMeta("c", "other", "h", state="failed"))
    assert sorted(r.instance_id for r in backend.list_summaries(state="failed")) == ["b", "c"]
    assert [r.instance_id for r in backend.list_summaries(workflow="other")] == ["c"]
    assert backend.list_summaries(workflow="nobody") == []


# -- a full disk -----------------------------------------------------------------------------
# A store written by a process that closed it (no shared-memory files left): opening any
# of its databases on a full disk then needs space SQLite cannot get.
_BUILD_AND_CLOSE = """
import sys
import nbflow as nf
from tests.store.faults import chain
backend = nf.DiskcacheBackend(sys.argv[1])
runner = nf.CheckpointingRunner(backend, echo_output=False)
for instance, x in (("a", 1), ("b", 2)):
    assert runner.run(chain(), instance, x).state == "completed"
backend.close()
print("{}")
"""


def _index_rows(store: Path) -> dict[str, tuple[str, int, int]]:
    """What index.db itself holds, read as an outsider reads it."""
    con = sqlite3.connect(f"{(store / INDEX_FILE).as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT folder, summary FROM instances").fetchall()
    finally:
        con.close()
    return {
        folder: (s["state"], s["tasks_done"], s["tasks_total"]) for folder, s in ((f, json.loads(t)) for f, t in rows)
    }


def _cli_list(store: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "nbflow", "--dir", str(store), "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    return done.returncode, done.stdout, done.stderr


def _cli_states(out: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}


def _spy_on_instance_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The instance folders listings open from now on (in this process)."""
    opened: list[str] = []
    real = DiskcacheBackend._summary_of

    def spy(self: DiskcacheBackend, path: Path) -> Any:
        opened.append(path.name)
        return real(self, path)

    monkeypatch.setattr(DiskcacheBackend, "_summary_of", spy)
    return opened


def _set_aside(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if ".damaged-" in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("index", ["whole", "missing", "one-row-missing"])
def test_a_full_disk_lists_truthfully_and_the_index_catches_up_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    """The index is derived data: on a full disk, where index.db cannot be written (nor
    an instance database opened the usual way), listing still tells the truth, in a
    process and in-process, with no traceback and no advice to discard anything; the
    index is not taken for damaged; once there is room it holds the truth again."""
    with tmpfs(tmp_path / "fs", "8m") as fs:
        store = fs / "store"
        last_json(python(_BUILD_AND_CLOSE, str(store)))
        truth = _truth(store)
        assert truth == {"a": ("completed", 2, 2), "b": ("completed", 2, 2)}
        if index == "missing":
            (store / INDEX_FILE).unlink()
        elif index == "one-row-missing":  # b must be read from its own database
            with sqlite(store / INDEX_FILE) as con:
                con.execute("DELETE FROM instances WHERE folder = 'b'")
        assert not list(store.glob("*-shm")) and not list((store / "instances").glob("*/*-shm"))
        filler = fill(fs)

        code, out, err = _cli_list(store)
        assert (code, err) == (0, ""), err
        assert _cli_states(out) == {"a": "completed", "b": "completed"}
        assert_no_discard_advice(out)
        opened = _spy_on_instance_reads(monkeypatch)
        backend = DiskcacheBackend(store)
        summaries = backend.list_summaries()
        assert {r.instance_id: (r.state, r.tasks_done, r.tasks_total) for r in summaries} == truth
        for row in summaries:
            assert_no_discard_advice(row.message)
        backend.close()
        # What the index still says truly is used: only instances it lacks are opened.
        assert opened == {"whole": [], "missing": ["a", "b"], "one-row-missing": ["b"]}[index]
        monkeypatch.undo()
        assert _set_aside(store) == [], "a full disk is not a damaged index"

        filler.unlink()
        assert _listed(store) == truth
        assert _index_rows(store) == truth  # rebuilt or completed now that there is room
        assert _set_aside(store) == []


def _filling_workflow(fs: Path, trigger: Path, calls: list[str]) -> Any:
    """load -> stuff -> last; ``stuff`` fills the disk while ``trigger`` exists, so its
    own checkpoint is the first write that meets the full disk."""

    def load(x: int) -> int:
        calls.append("load")
        return x + 1

    def stuff(load: int) -> int:
        if trigger.exists():
            fill(fs)
        return load * 10

    def last(stuff: int) -> int:
        return stuff + 1

    return nf.Workflow("fills").then(load).then(stuff).then(last).build()


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_is_refused_and_the_index_stays_true(tmp_path: Path) -> None:
    """A task whose checkpoint meets a full disk: StoreFullError (or a failed run saying
    so), never damage; listing on the full disk and after it agrees with the instances;
    once space is freed the resumed run finishes and the index holds the truth."""
    with tmpfs(tmp_path / "fs", "8m") as fs:
        store = fs / "store"
        last_json(python(_BUILD_AND_CLOSE, str(store)))
        trigger = tmp_path / "fill-now"
        trigger.touch()
        calls: list[str] = []
        wf = _filling_workflow(fs, trigger, calls)
        runner = nf.CheckpointingRunner(DiskcacheBackend(store), echo_output=False)
        try:
            status = runner.run(wf, "c", 1)
        except nf.NbflowError as exc:
            assert isinstance(exc, nf.StoreFullError), f"{type(exc).__name__}, not StoreFullError: {exc}"
            message = str(exc)
        else:
            assert status.state == "failed" and status.error is not None, status
            message = str(status.error)
        assert "full" in message, message
        assert_no_discard_advice(message)

        # On the full disk: the others are as they were, and c is not called damaged.
        code, out, err = _cli_list(store)
        assert (code, err) == (0, ""), err
        states = _cli_states(out)
        assert states["a"] == states["b"] == "completed"
        assert states["c"] not in ("damaged", "unreadable", "completed"), out
        assert_no_discard_advice(out)
        assert _set_aside(store) == []

        (fs / "filler").unlink()
        trigger.unlink()
        truth = _truth(store)
        assert truth["a"] == truth["b"] == ("completed", 2, 2)
        assert truth["c"][0] not in ("completed", "damaged") and truth["c"][1] == 1  # load was kept
        assert _listed(store) == truth
        assert _index_rows(store) == truth

        again = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
        status = again.run(wf, "c", 1)
        assert status.state == "completed" and status.output == 21, status
        assert calls == ["load"], "the checkpoint stored before the disk filled was restored, not re-run"
        truth = _truth(store)
        assert truth == {"a": ("completed", 2, 2), "b": ("completed", 2, 2), "c": ("completed", 3, 3)}
        assert _listed(store) == truth
        assert _index_rows(store) == truth
        code, out, err = _cli_list(store)
        assert (code, err) == (0, "") and _cli_states(out) == {k: "completed" for k in "abc"}
        assert _set_aside(store) == []


# -- a folder this user may read but not write ---------------------------------------------
_LIST_AS_NOBODY = """
import contextlib, io, json, os, sys, tempfile
import fcntl, sqlite3
import nbflow as nf
from nbflow.cli import main
from nbflow.store.disk import DiskcacheBackend
from tests.store.faults import chain

# One run as root first, so every module nbflow imports lazily is loaded before the drop.
nf.CheckpointingRunner(DiskcacheBackend(tempfile.mkdtemp()), echo_output=False).run(chain(), "warm", 1)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
opened = []
real = DiskcacheBackend._summary_of
def spy(self, path):
    opened.append(path.name)
    return real(self, path)
DiskcacheBackend._summary_of = spy
backend = DiskcacheBackend(sys.argv[1])
rows = {r.instance_id: [r.state, r.tasks_done, r.tasks_total] for r in backend.list_summaries()}
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    code = main(["--dir", sys.argv[1], "list"])
print(json.dumps({"read_only": backend.read_only, "rows": rows, "opened": opened, "cli": [code, out.getvalue()]}))
"""


@pytest.mark.slow
def test_a_store_folder_this_user_cannot_write_is_listed_from_its_index(tmp_path: Path) -> None:
    """Another user's store, readable but not writable (0755/0644): SQLite cannot make the
    index's shared-memory file there, yet the index is read — as it is — and trusted
    where it matches the instances; nothing is set aside, no instance is opened."""
    require_root()
    public = Path(tempfile.mkdtemp(prefix="nbflow-ro-"))
    try:
        public.chmod(0o755)
        store = public / "store"
        last_json(python(_BUILD_AND_CLOSE, str(store)))
        truth = _truth(store)
        for path in [store, *store.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert not list(store.glob("*-shm"))
        got = last_json(python(_LIST_AS_NOBODY, str(store)))
        assert got["read_only"] is True
        assert {k: tuple(v) for k, v in got["rows"].items()} == truth
        assert got["opened"] == [], "the readable index was not used"
        code, text = got["cli"]
        assert code == 0 and _cli_states(text) == {"a": "completed", "b": "completed"}, text
        assert_no_discard_advice(text)
        assert _set_aside(store) == []
    finally:
        shutil.rmtree(public, ignore_errors=True)


# -- any sequence of store operations ----------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_IDS = st.sampled_from(["a", "b", "Run", "run", "x y"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("save"), _IDS, st.sampled_from(["running", "completed", "failed", "paused"])),
        st.tuples(st.just("put"), _IDS, st.sampled_from(["t0", "t1", "t2"])),
        st.tuples(st.just("delete_records"), _IDS, st.sampled_from(["t0", "t1"])),
        st.tuples(st.just("clear"), _IDS, st.just("")),
        st.tuples(st.just("start_over"), _IDS, st.just("")),
        st.tuples(st.just("reopen"), st.just(""), st.just("")),
        st.tuples(st.just("list"), st.just(""), st.just("")),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_sequence_of_operations_keeps_the_index_true(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Any]
) -> None:
    store = tmp_path_factory.mktemp("ops") / "store"
    backend = DiskcacheBackend(store)
    shape = ("t0|task", "t1|task", "t2|task")
    try:
        for op, iid, arg in ops:
            meta = backend.load_instance(iid) if iid else None
            if op == "save":
                meta = meta or InstanceMeta(iid, "wf", "h", shape=shape, tasks_total=3)
                meta.state = arg
                backend.save_instance(meta)
            elif op == "put" and meta is not None:
                _put(backend, iid, arg)
            elif op == "delete_records" and meta is not None:
                backend.delete_records(iid, [arg])
            elif op == "clear":
                backend.delete_instance(iid)
            elif op == "start_over" and meta is not None:
                backend.save_instance(InstanceMeta(iid, "wf", "h", shape=shape, tasks_total=3))
            elif op == "reopen":
                backend.close()
                backend = DiskcacheBackend(store)
            elif op == "list":
                backend.list_summaries()
        listed = {r.instance_id: (r.state, r.tasks_done, r.tasks_total) for r in backend.list_summaries()}
        backend.close()
        assert listed == _truth(store)
        assert _listed(store) == _truth(store)  # and from a fresh handle
    finally:
        backend.close()
