"""A store written by someone else: nothing in it may run code, leak a file or delete one.

DESIGN: "JsonCodec (human-readable, safe to load from an untrusted directory)" and "a
store opened with JsonCodec never unpickles". A pristine store of JsonCodec workflows
(a chain, a map, a fork/join, signals, a large output in a blob, a failed and a paused
instance) is copied, then *planted* — every row of every SQLite database under it in
turn gets a pickle whose unpickling creates a canary file (as a raw value, in
diskcache's pickle mode, in its file modes), or a ``filename`` naming a file outside the
store; every blob becomes that pickle; records claim the pickle codec or name a path
outside their folder. Then the store is listed, inspected and resumed through the CLI,
``WorkflowClient(codec=JsonCodec())`` and ``CheckpointingRunner``.

Expected: ``NbflowError`` (or success); any other exception is a failure. The canary
never appears, nothing printed or returned holds the contents of a file outside the
store, and no file outside the store is deleted or changed.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from tests.store.faults import (
    blob_files,
    cli,
    get_row,
    plant_record,
    row_keys,
    set_row,
    split_record,
)

# -- the pristine store ---------------------------------------------------------------------


def _flow(name: str) -> nf.WorkflowBuilder:
    return nf.WorkflowBuilder(nf.WorkflowContext(name, codec=nf.JsonCodec()))


def double(x: int) -> int:
    return 2 * x


def inc(double: int) -> int:
    return double + 1


def numbers(n: int) -> list[int]:
    return list(range(n))


def square(x: int) -> int:
    return x * x


def total(square: list[int]) -> int:
    return sum(square)


def start(x: int) -> int:
    return x


def after(v: Any) -> dict[str, Any]:
    return {"got": v}


def big(x: int) -> list[int]:
    return list(range(100_000))  # ~0.6 MB of JSON: stored as a blob file


def explode(x: int) -> int:
    raise ValueError(f"no good: {x}")


PAUSE_STORE: list[Path] = []


def pause_myself(x: int) -> int:
    nf.WorkflowClient(nf.DiskcacheBackend(PAUSE_STORE[0])).pause(nf.get_task_context().instance_id, reason="test")
    return x


FLOWS: dict[str, nf.WorkflowBuilder] = {
    "chain": _flow("chain").then(double).then(inc),
    "mapped": _flow("mapped").then(numbers).map(square).then(total),
    "forked": _flow("forked").then(start).fork().branch("left", inc).branch("right", square).join("merge", after),
    "signalled": _flow("signalled").then(start).wait_for_signal("approval").then(after),
    "large": _flow("large").then(big).then("count", len),
    "failing": _flow("failing").then(start).then(explode),
    "pausing": _flow("pausing").then(pause_myself).then("retried", inc, retries=nf.RetryPolicy(3, initial_delay="1h")),
}
WF = {name: builder.build() for name, builder in FLOWS.items()}
INSTANCES = {  # instance -> its workflow, and the state the pristine store holds it in
    "chain-1": ("chain", "completed"),
    "map-1": ("mapped", "completed"),
    "fork-1": ("forked", "completed"),
    "signal-done": ("signalled", "completed"),
    "signal-waiting": ("signalled", "awaiting_signal"),
    "large-1": ("large", "completed"),
    "failed-1": ("failing", "failed"),
    "paused-1": ("pausing", "paused"),
}


def build_pristine(store: Path) -> None:
    PAUSE_STORE[:] = [store]
    backend = nf.DiskcacheBackend(store)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    client = nf.WorkflowClient(backend, codec=nf.JsonCodec())
    for instance, (flow, _) in INSTANCES.items():
        runner.run(WF[flow], instance, 3)
    client.send_signal("signal-done", "approval", {"ok": True})
    runner.resume(WF["signalled"], "signal-done")
    client.send_signal("signal-waiting", "approval", {"ok": False})  # buffered: the s: row stays
    # The retry state the runner keeps between attempts (an ``a:`` row), as it stores it
    # when a run stops during a backoff.
    now = time.time()
    backend.save_task_state(
        "paused-1",
        "retried",
        {
            "attempt": 1,
            "next_retry_at": now,  # due: a resume retries at once
            "last_error": "ValueError: first attempt",
            "fingerprint": WF["pausing"].node("retried").fingerprint,
            "saved_at": now,
        },
    )
    # A deletion of records (as rerun_from does) leaves the deletion stamp (the ``stamp`` row).
    backend.delete_records("paused-1", ["no-such-task"])
    # A PooledWorker's claim on a unit (a ``c:`` row), as the worker stores it.
    assert backend.claim("signal-waiting", "after", "worker-1", 3600.0) is not None
    backend.close()
    got = {s.instance_id: str(s.state) for s in client.list_instances()}
    assert got == {i: state for i, (_, state) in INSTANCES.items()}, got
    assert blob_files(store, "large-1"), "the large output should be a blob file"


# -- what is planted ------------------------------------------------------------------------
@dataclass
class Canary:
    """Unpickling this touches ``path``: the proof that something unpickled."""

    path: str

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path(self.path).touch, ())


@dataclass
class Outside:
    """Files outside the store that planted rows point at."""

    root: Path
    canary: Path
    secret: Path
    sentinel: Path
    pickle: bytes
    token: str
    passwd_line: str | None
    snapshot: dict[Path, bytes] = field(default_factory=dict)

    def take_snapshot(self) -> None:
        self.snapshot = self._files()

    def _files(self) -> dict[Path, bytes]:
        """Every file under ``root`` but those of stores (which may change)."""
        return {
            p: p.read_bytes()
            for p in self.root.rglob("*")
            if p.is_file() and not p.is_symlink() and "store" not in p.relative_to(self.root).parts
        }

    def assert_untouched(self, case: str) -> None:
        """Checks, then puts everything back, so that one failure cannot fail later cases."""
        unpickled = self.canary.exists()
        self.canary.unlink(missing_ok=True)
        now = self._files()
        changed = sorted(str(p) for p, data in self.snapshot.items() if now.get(p) != data)
        for path, data in self.snapshot.items():
            if now.get(path) != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        assert not unpickled, f"{case}: a planted pickle was unpickled (the canary exists)"
        assert not changed, f"{case}: files outside the store were deleted or changed: {changed}"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Outside:
    root = tmp_path_factory.mktemp("untrusted")
    token = f"nbflow-secret-{uuid.uuid4().hex}"
    secret = root / "secret.json"
    secret.write_text(f'{{"secret": "{token}"}}')  # valid JSON: a reader that followed it would decode it
    sentinel = root / "sentinel.json"
    sentinel.write_text('{"sentinel": "must survive"}')
    canary = root / "CANARY"
    passwd = Path("/etc/passwd")
    passwd_line = passwd.read_text().splitlines()[0] if passwd.is_file() else None
    out = Outside(root, canary, secret, sentinel, pickle.dumps(Canary(str(canary))), token, passwd_line)
    out.take_snapshot()
    return out


@pytest.fixture(scope="module")
def pristine(outside: Outside) -> Path:
    store = outside.root / "pristine" / "store"
    build_pristine(store)
    outside.take_snapshot()  # the pristine store is not "outside"; files beside it are
    return store


def test_the_planted_pickle_is_live(tmp_path: Path) -> None:
    """The canary works: unpickling the planted bytes does create the file."""
    canary = tmp_path / "CANARY"
    pickle.loads(pickle.dumps(Canary(str(canary))))
    assert canary.exists()


# -- exercising a planted store -------------------------------------------------------------
@dataclass
class Exercise:
    """Everything a user does with a store they were handed, recording what escapes."""

    store: Path
    escaped: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)

    def attempt(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except nf.NbflowError as exc:
            self.shown.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - anything but an NbflowError is what this test looks for
            self.escaped.append(f"{what}: {type(exc).__name__}: {exc}")
        else:
            self.shown.append(repr(value))

    def run(self, instances: Iterable[str], resume: bool = True, clear: bool = False) -> None:
        store = str(self.store)
        self.attempt("nbflow list", lambda: cli("--dir", store, "list"))
        backend = nf.DiskcacheBackend(self.store)
        client = nf.WorkflowClient(backend, codec=nf.JsonCodec())
        runner = nf.CheckpointingRunner(backend, echo_output=False)
        self.attempt("list_instances", client.list_instances)
        for instance in instances:
            wf = WF[INSTANCES[instance][0]]
            self.attempt(f"nbflow status {instance}", lambda i=instance: cli("--dir", store, "status", i))
            self.attempt(f"status {instance}", lambda i=instance: client.status(i))
            for task in wf.task_ids:
                self.attempt(
                    f"get_task_result {instance} {task}", lambda i=instance, t=task: client.get_task_result(i, t)
                )
            if resume:
                self.attempt(f"resume {instance}", lambda i=instance, w=wf: runner.resume(w, i))
        backend.close()
        if clear:  # last, as it removes them: clearing must not follow a planted path either
            for instance in instances:
                self.attempt(f"nbflow clear {instance}", lambda i=instance: cli("--dir", store, "clear", i))


def exercise(
    store: Path,
    outside: Outside,
    case: str,
    instances: Iterable[str] = tuple(INSTANCES),
    resume: bool = True,
    clear: bool = False,
) -> Exercise:
    """List the store, then inspect, read and resume ``instances`` (default: all), and
    clear them with ``clear`` (removing a folder reads no row: only paths matter there)."""
    ex = Exercise(store)
    ex.run(instances, resume=resume, clear=clear)
    outside.assert_untouched(case)
    text = "\n".join(ex.shown)
    assert outside.token not in text, f"{case}: the contents of a file outside the store were shown"
    if outside.passwd_line:
        assert outside.passwd_line not in text, f"{case}: the contents of /etc/passwd were shown"
    assert not ex.escaped, f"{case}: exceptions other than NbflowError escaped:\n" + "\n".join(ex.escaped)
    return ex


@pytest.fixture
def copy_of(pristine: Path, tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A fresh copy of the pristine store per call (the previous one is removed)."""
    made: list[Path] = []

    def make() -> Path:
        if made:
            shutil.rmtree(made.pop().parent, ignore_errors=True)
        dest = tmp_path / f"copy-{uuid.uuid4().hex[:8]}" / "store"
        shutil.copytree(pristine, dest, symlinks=True)
        made.append(dest)
        return dest

    yield make


def databases(store: Path) -> list[Path]:
    """Every instance database under the store, found by its header (not its name). The
    store index (a database of its own table) is planted in test_store_index.py."""
    found = []
    for path in sorted(store.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.parent != store:
            with open(path, "rb") as f:
                if f.read(16) == b"SQLite format 3\x00":
                    found.append(path)
    return found


def test_the_pristine_store_is_exercised_cleanly(copy_of: Callable[[], Path], outside: Outside) -> None:
    """Without planting, everything works and nothing is refused (so the planted runs
    below fail because of what was planted)."""
    ex = exercise(copy_of(), outside, "pristine")
    assert not [s for s in ex.shown if "damaged" in s], [s for s in ex.shown if "damaged" in s]


# -- every row, every storage mode ----------------------------------------------------------
Plant = Callable[[Path, str, Outside], None]


def _raw_pickle(db: Path, key: str, out: Outside) -> None:
    set_row(db, key, out.pickle, mode=1)


def _mode4_pickle(db: Path, key: str, out: Outside) -> None:
    set_row(db, key, out.pickle, mode=4)  # diskcache's MODE_PICKLE: Cache.get would unpickle it


def _file_modes(mode: int) -> Plant:
    def plant(db: Path, key: str, out: Outside) -> None:
        (db.parent / "planted.val").write_bytes(out.pickle)  # diskcache reads filename inside its folder
        set_row(db, key, None, mode=mode, filename="planted.val")

    return plant


def _absolute_secret(mode: int) -> Plant:
    def plant(db: Path, key: str, out: Outside) -> None:
        set_row(db, key, None, mode=mode, filename=str(out.secret))

    return plant


def _etc_file(mode: int, name: str) -> Plant:
    def plant(db: Path, key: str, out: Outside) -> None:
        set_row(db, key, None, mode=mode, filename=name)

    return plant


def _relative_sentinel(db: Path, key: str, out: Outside) -> None:
    # a write that "replaces" this row must not delete the file it names
    set_row(db, key, None, mode=2, filename=os.path.relpath(out.sentinel, db.parent))


ROW_PLANTS: dict[str, Plant] = {
    "raw-pickle": _raw_pickle,
    "mode4-pickle": _mode4_pickle,
    "mode2-pickle-file": _file_modes(2),
    "mode3-pickle-file": _file_modes(3),
    "mode4-pickle-file": _file_modes(4),
    "mode2-secret-outside": _absolute_secret(2),
    "mode3-etc-passwd": _etc_file(3, "/etc/passwd"),
    "mode2-etc-hostname": _etc_file(2, "/etc/hostname"),
    "mode2-sentinel-outside": _relative_sentinel,
}


def _rounds(store: Path) -> int:
    return max(len(row_keys(db)) for db in databases(store))


@pytest.mark.parametrize("plant", list(ROW_PLANTS))
def test_every_row_planted(plant: str, copy_of: Callable[[], Path], outside: Outside, pristine: Path) -> None:
    """Round r plants row r (in key order) of every database at once: instances are
    independent, so each round tests one row of each of them."""
    rounds = _rounds(pristine)
    assert rounds >= 8, "the pristine store should hold meta, gen, stamp, records, states and signals"
    kinds = set()
    for r in range(rounds):
        store = copy_of()
        planted = []
        for db in databases(store):
            keys = row_keys(db)
            if r < len(keys):
                ROW_PLANTS[plant](db, keys[r], outside)
                planted.append(db.parent.name)
                kinds.add(keys[r].split(":", 1)[0] + (":" if ":" in keys[r] else ""))
        # the instances not planted this round are as pristine (tested on their own)
        exercise(store, outside, f"{plant}, row {r}", planted, clear="sentinel" in plant)
    assert {"meta", "gen", "stamp", "control", "t:", "s:", "a:", "c:"} <= kinds, kinds


# -- blobs and records ----------------------------------------------------------------------
def test_every_blob_replaced_by_a_pickle(copy_of: Callable[[], Path], outside: Outside) -> None:
    store = copy_of()
    blobs = [p for p in store.rglob("*.bin") if p.parent.name == "blobs"]
    assert blobs
    for blob in blobs:
        blob.write_bytes(outside.pickle)
    exercise(store, outside, "blobs replaced by a pickle")


def _record_keys(db: Path) -> list[str]:
    return [k for k in row_keys(db) if k.startswith("t:")]


RECORD_PLANTS: dict[str, Callable[[Path, str, Outside], None]] = {
    # a checksum that matches: only the reader's codec rule stands between it and pickle.load
    "codec-pickle-inline": lambda db, key, out: plant_record(db, key, out.pickle, codec="pickle"),
    "codec-cloudpickle-inline": lambda db, key, out: plant_record(db, key, out.pickle, codec="cloudpickle"),
    "codec-json-pickle-bytes": lambda db, key, out: plant_record(db, key, out.pickle, codec="json"),
    "blob-traversal": lambda db, key, out: plant_record(db, key, b"", blob="../../../../etc/passwd", checksum=""),
    "blob-absolute": lambda db, key, out: plant_record(db, key, b"", blob=str(out.secret), checksum=""),
    "ref-to-itself": lambda db, key, out: plant_record(db, key, b"", codec="ref", extra={"ref": key[2:]}),
    "ref-huge-map": lambda db, key, out: plant_record(db, key, b"", codec="ref", extra={"items": 10**8}),
}


@pytest.mark.parametrize("plant", list(RECORD_PLANTS))
def test_every_record_planted(plant: str, copy_of: Callable[[], Path], outside: Outside, pristine: Path) -> None:
    rounds = max(len(_record_keys(db)) for db in databases(pristine))
    for r in range(rounds):
        store = copy_of()
        planted = []
        for db in databases(store):
            keys = _record_keys(db)
            if r < len(keys):
                RECORD_PLANTS[plant](db, keys[r], outside)
                planted.append(db.parent.name)
        exercise(store, outside, f"{plant}, record {r}", planted)


def test_a_planted_record_really_is_refused_not_ignored(copy_of: Callable[[], Path], outside: Outside) -> None:
    """A pickle record reads as damage, naming the codec it claims, while the same
    bytes with the json codec fail to decode: the planted runs test something."""
    store = copy_of()
    db = store / "instances" / "chain-1" / "cache.db"
    plant_record(db, "t:inc", outside.pickle, codec="pickle")
    client = nf.WorkflowClient(nf.DiskcacheBackend(store), codec=nf.JsonCodec())
    with pytest.raises(nf.CheckpointCorruptError) as err:
        client.get_task_result("chain-1", "inc")
    assert "'pickle'" in str(err.value) and "'chain-1'" in str(err.value)
    header, payload = split_record(get_row(db, "t:inc"))
    assert header["codec"] == "pickle" and payload == outside.pickle
    outside.assert_untouched("a pickle record")


# -- symlinks: the store's own paths pointing outside ---------------------------------------
def test_a_blob_that_is_a_symlink_to_a_file_outside_is_not_read(copy_of: Callable[[], Path], outside: Outside) -> None:
    store = copy_of()
    (blob,) = blob_files(store, "large-1")
    blob.unlink()
    blob.symlink_to(outside.secret)
    db = store / "instances" / "large-1" / "cache.db"
    header, _ = split_record(get_row(db, "t:big"))
    assert header["blob"] == blob.name
    plant_record(db, "t:big", b"", blob=blob.name, checksum="")  # a record "without a checksum"
    exercise(store, outside, "blob symlinked outside", clear=True)


def test_a_blobs_folder_that_is_a_symlink_outside_loses_no_file(copy_of: Callable[[], Path], outside: Outside) -> None:
    """The sweep of orphan blobs at lock time must not delete files in a folder the
    store only links to."""
    store = copy_of()
    victims = outside.root / f"victims-{uuid.uuid4().hex[:6]}"
    victims.mkdir()
    for name in ("0123456789abcdef0123456789abcdef.bin", ".tmp-precious"):
        (victims / name).write_text("precious")
    outside.take_snapshot()
    try:
        for instance in ("chain-1", "large-1"):
            blobs = store / "instances" / instance / "blobs"
            shutil.rmtree(blobs, ignore_errors=True)
            blobs.symlink_to(victims, target_is_directory=True)
        exercise(store, outside, "blobs folder symlinked outside", clear=True)
    finally:
        shutil.rmtree(victims, ignore_errors=True)
        outside.take_snapshot()


@pytest.mark.parametrize("link", ["control.flag", "lock file"])
def test_a_store_file_that_is_a_symlink_outside_is_not_written_through(
    link: str, copy_of: Callable[[], Path], outside: Outside
) -> None:
    """Resuming writes the control flag and the lock file: through a planted symlink
    those writes would truncate a file of the user's outside the store."""
    store = copy_of()
    for instance in INSTANCES:
        path = (
            store / "instances" / instance / "control.flag"
            if link == "control.flag"
            else store / "locks" / f"{instance}.lock"
        )
        path.unlink(missing_ok=True)
        path.symlink_to(outside.sentinel)
    exercise(store, outside, f"{link} symlinked outside", clear=True)


def test_an_instance_folder_that_is_a_symlink_outside_is_not_cleared_through(
    copy_of: Callable[[], Path], outside: Outside
) -> None:
    """``nbflow clear`` and TERMINATE_EXISTING remove an instance's folder: one that is
    a symlink to a folder outside must lose nothing there, and say so as an NbflowError."""
    store = copy_of()
    elsewhere = outside.root / f"elsewhere-{uuid.uuid4().hex[:6]}"
    shutil.move(store / "instances" / "chain-1", elsewhere)
    (store / "instances" / "chain-1").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "precious.txt").write_text("precious")
    outside.take_snapshot()
    try:
        ex = Exercise(store)
        ex.attempt("nbflow clear chain-1", lambda: cli("--dir", str(store), "clear", "chain-1"))
        runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
        terminate = runner.with_conflict_policy(nf.ConflictPolicy.TERMINATE_EXISTING)
        ex.attempt("run TERMINATE_EXISTING", lambda: terminate.run(WF["chain"], "chain-1", 3))
        assert (elsewhere / "precious.txt").read_text() == "precious"
        assert not ex.escaped, "exceptions other than NbflowError escaped:\n" + "\n".join(ex.escaped)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
        outside.take_snapshot()
