"""Ways to break a disk store, and checks of what nbflow then tells its user.

Shared by ``test_faults.py`` (disks fill up, files rot, processes die, permissions bite)
and ``test_untrusted_store.py`` (a store planted by someone else). Everything here works
on the files as an outsider would: SQLite through the stdlib, blobs as plain files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.cli import main as cli_main
from nbflow.store.records import checksum_bytes

REPO = Path(__file__).resolve().parents[2]

# -- what messages may say ----------------------------------------------------------------
_DISCARD = re.compile(
    r"\b(clear\w*|discard\w*|delet\w*|remov\w*|wip\w*|eras\w*|purg\w*|rmtree|start over|terminate_existing)\b"
    r"|\brm -|--fresh",
    re.IGNORECASE,
)


def assert_no_discard_advice(message: str) -> None:
    """Nothing is damaged, so nothing may advise deleting, clearing or discarding."""
    found = _DISCARD.search(message)
    assert found is None, f"advises discarding ({found.group(0)!r}) though nothing is damaged: {message}"


def assert_names(message: str, instance: str, task: str | None = None) -> None:
    """The message names the instance (and the task), quoted as nbflow quotes ids."""
    assert f"'{instance}'" in message, f"the message does not name instance {instance!r}: {message}"
    if task is not None:
        assert f"'{task}'" in message, f"the message does not name task {task!r}: {message}"


def assert_damage_message(message: str, instance: str, task: str | None = None) -> None:
    """A CheckpointCorruptError's message: names what is damaged and what discarding loses."""
    assert_names(message, instance, task)
    assert "damaged" in message, message
    cleared = set(re.findall(r"nbflow clear (\S+?)[`'\s]", message))
    assert cleared <= {instance}, f"advises clearing another instance than the damaged {instance!r}: {message}"
    if cleared:
        assert "loses" in message, f"does not say what discarding loses: {message}"


# -- rows of an instance database ---------------------------------------------------------
def cache_db(store: Path, instance: str) -> Path:
    return store / "instances" / instance / "cache.db"


def blob_files(store: Path, instance: str) -> list[Path]:
    folder = store / "instances" / instance / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@contextlib.contextmanager
def sqlite(db: Path) -> Iterator[sqlite3.Connection]:
    """A committing connection to an instance database (as any outsider opens it)."""
    con = sqlite3.connect(db)
    try:
        with con:
            yield con
    finally:
        con.close()


def row_keys(db: Path) -> list[str]:
    with sqlite(db) as con:
        return sorted(k for (k,) in con.execute("SELECT key FROM Cache WHERE raw = 1"))


def get_row(db: Path, key: str) -> bytes:
    with sqlite(db) as con:
        (value,) = con.execute("SELECT value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
    assert isinstance(value, bytes | str), (key, value)
    return value.encode() if isinstance(value, str) else value


def set_row(db: Path, key: str, value: Any, mode: int = 1, filename: str | None = None) -> None:
    """Replace one row's columns as diskcache would store them (mode 1 raw, 2 binary
    file, 3 text file, 4 pickle)."""
    with sqlite(db) as con:
        cur = con.execute(
            "UPDATE Cache SET value = ?, mode = ?, filename = ? WHERE key = ? AND raw = 1", (value, mode, filename, key)
        )
        assert cur.rowcount == 1, f"no row {key!r} in {db}"


def delete_row(db: Path, key: str) -> None:
    with sqlite(db) as con:
        assert con.execute("DELETE FROM Cache WHERE key = ? AND raw = 1", (key,)).rowcount == 1


_HEAD = struct.Struct("<4sI")


def split_record(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A ``t:`` row as (JSON header, inline payload)."""
    magic, length = _HEAD.unpack_from(data)
    assert magic == b"NBR2", magic
    return json.loads(data[_HEAD.size : _HEAD.size + length]), data[_HEAD.size + length :]


def join_record(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return _HEAD.pack(b"NBR2", len(head)) + head + payload


def plant_record(db: Path, key: str, payload: bytes, **header: Any) -> None:
    """Rewrite a ``t:`` row with ``payload`` inline and header fields changed; the
    checksum is made to match, so only the reader's own rules can refuse it."""
    old, _ = split_record(get_row(db, key))
    new = {**old, "blob": None, "size": len(payload), "checksum": checksum_bytes(payload), **header}
    set_row(db, key, join_record(new, payload))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- looking at a store -------------------------------------------------------------------
def cli(*argv: str) -> tuple[int, str]:
    """Run ``nbflow ARGV``; returns its exit code and everything it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(list(argv))
    return code, out.getvalue()


def states(store: Path) -> dict[str, str]:
    """Instance id -> state, as WorkflowClient.list_instances reports them."""
    return {s.instance_id: str(s.state) for s in nf.WorkflowClient(nf.DiskcacheBackend(store)).list_instances()}


def assert_lists(store: Path, expected: dict[str, str]) -> None:
    """Both the client and ``nbflow list`` list these instances in these states."""
    listed = states(store)
    for instance, state in expected.items():
        assert listed.get(instance) == state, (
            f"{instance!r} listed as {listed.get(instance)!r}, not {state!r}: {listed}"
        )
    code, text = cli("--dir", str(store), "list")
    assert code == 0, text
    lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip()}
    for instance, state in expected.items():
        assert instance in lines and state in lines[instance].split(), (
            f"`nbflow list` shows no {instance} {state}: {text}"
        )


def assert_others_fine(store: Path, wf: Any, results: dict[str, tuple[str, Any]]) -> None:
    """Each of these completed instances still lists, reads and resumes: ``results``
    maps instance -> (task, the value it must read back)."""
    assert_lists(store, dict.fromkeys(results, "completed"))
    backend = nf.DiskcacheBackend(store)
    try:
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        for instance, (task, value) in results.items():
            assert runner.resume(wf, instance).state == "completed"
            got = runner.get_task_result(instance, task)
            assert type(got) is type(value) and _equal(got, value), (instance, task)
    finally:
        backend.close()


def _equal(a: Any, b: Any) -> bool:
    if type(a).__module__ == "numpy":
        import numpy as np

        return bool(np.array_equal(a, b))
    return bool(a == b)


# -- mounts and processes -----------------------------------------------------------------
def require_root() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root (to mount a tmpfs or to drop to another user)")


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at ``mountpoint`` (skips when it cannot be mounted)."""
    require_root()
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {mountpoint}: {done.stderr.strip() or done.returncode}")
    try:
        yield mountpoint
    finally:
        # A lazy unmount when some file is still open (nbflow's own leaks are tested apart).
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def remount(mountpoint: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-o", f"remount,{options}", str(mountpoint)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"remount,{options} failed: {done.stderr}"


def fill(folder: Path) -> Path:
    """Write a filler file until the filesystem holding ``folder`` is full."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    for small in (4096, 512, 1):  # the last partial pages too
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * small)
            except OSError:
                pass
    return filler


def python(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this repo importable); never raises on failure."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The last stdout line of a child as JSON (children print their results so)."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1])


# -- workflows used by both suites and by child processes ---------------------------------
def first(x: int) -> int:
    return x + 1


def second(first: int) -> int:
    return first * 10


def chain() -> Any:
    """A two-task workflow (importable by child processes as tests.store.faults.chain)."""
    return nf.Workflow("chain").then(first).then(second).build()
