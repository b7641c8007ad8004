"""Instance ids become file names valid on Linux, macOS and Windows (``store/names.py``).

Validity is checked against ``windows_problem``, written here from Microsoft's naming
rules rather than from nbflow's code; distinctness is checked case-insensitively, as
Windows and macOS compare names. Stores written by nbflow 0.1 keep their folders."""

from __future__ import annotations

import os
import string
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbflow as nf
from nbflow.cli import main
from nbflow.store import names
from nbflow.store.base import validate_instance_id
from nbflow.store.names import instance_dirname, legacy_dirname, resolve_dirname

_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in [*"0123456789", "\u00b9", "\u00b2", "\u00b3"]
}


def windows_problem(name: str) -> str | None:
    """Why ``name`` is not a valid file name on Windows (None if it is)."""
    if name in ("", ".", ".."):
        return "empty or a dot name"
    if len(name.encode("utf-16-le")) // 2 > 255:
        return "longer than 255 UTF-16 units"
    bad = [c for c in name if c in '<>:"/\\|?*' or ord(c) < 32]
    if bad:
        return f"contains {bad!r}"
    if name[-1] in ". ":
        return "ends with a dot or a space"
    if name.split(".", 1)[0].rstrip(" ").upper() in _DEVICES:
        return "is a reserved device name"
    return None


def portable_problem(name: str) -> str | None:
    """Windows' rules plus what nbflow promises on top: short, plain ASCII, no case."""
    problem = windows_problem(name)
    if problem:
        return problem
    if len(name) > 100:
        return "longer than 100 characters"
    if not name.isascii() or any(c not in string.printable or c in string.whitespace for c in name):
        return "not plain printable ASCII"
    if name != name.lower():
        return "has upper-case letters"
    return None


_DEVICE_IDS = ["CON", "con", "Con", "PRN", "AUX", "NUL", "nul", "COM1", "com9", "COM0", "LPT1", "lpt9"]
_DEVICE_IDS += ["CON.txt", "con.tar.gz", "lpt1.log", "COM\u00b9", "CONIN$", "conout$", "nul.", "aux "]
_DOT_IDS = ["run.", "...", "-x", "_x", ".hidden", "~", "a~b", "run ", "run. . ", ". x"]
_CASE_IDS = ["Run", "run", "RUN", "rUN", "données", "DONNÉES", "日本語", "\u00e9", "e\u0301"]  # é as NFC and NFD
NASTY = [
    *[f"a{c}b" for c in '<>:"/\\|?*'],
    *[f"run{c}" for c in '<>:"/\\|?*'],
    "a\x7fb",  # DEL and C1 controls are allowed in ids, never in names
    "a\x85b",
    *_DEVICE_IDS,
    *_DOT_IDS,
    *_CASE_IDS,
    *["with space", " leading", "\u3000ideographic space", "x" * 200, "X" * 200, "x" * 100, "x" * 101],
]


def test_nasty_ids_are_valid_ids() -> None:
    for instance_id in NASTY:
        validate_instance_id(instance_id)


@pytest.mark.parametrize("instance_id", NASTY)
def test_every_nasty_id_maps_to_a_portable_name(instance_id: str) -> None:
    name = instance_dirname(instance_id)
    assert portable_problem(name) is None, (instance_id, name, portable_problem(name))
    assert windows_problem(name + ".lock") is None and windows_problem(name + ".s12") is None
    assert instance_dirname(instance_id) == name  # deterministic


def test_nasty_ids_get_distinct_names_case_insensitively() -> None:
    folded = {instance_dirname(i).casefold() for i in NASTY}
    assert len(folded) == len(set(NASTY))


def test_plain_lower_case_ids_keep_their_name() -> None:
    """Every id nbflow 0.1 stored under its own name keeps it, if Windows accepts it."""
    for instance_id in ("etl-2026-11-25", "i", "a.b_c-d", "run-1", "x" * 100, "con2", "console", "nul_x"):
        assert instance_dirname(instance_id) == instance_id == legacy_dirname(instance_id)


_IDS = st.text(min_size=1, max_size=200).filter(lambda s: bool(s.strip()) and not any(ord(c) < 32 for c in s))
_CASEY = st.text(alphabet="aAbBcC.-_ ~:", min_size=1, max_size=12).filter(lambda s: bool(s.strip()))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_IDS, _CASEY), min_size=1, max_size=40, unique=True))
def test_arbitrary_ids_map_to_portable_distinct_names(ids: list[str]) -> None:
    mapped = [instance_dirname(validate_instance_id(i)) for i in ids]
    for instance_id, name in zip(ids, mapped, strict=True):
        assert portable_problem(name) is None, (instance_id, name)
    assert len({name.casefold() for name in mapped}) == len(ids)


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,99}", fullmatch=True))
def test_a_portable_id_is_its_own_name_and_nothing_else_is(instance_id: str) -> None:
    name = instance_dirname(instance_id)
    if portable_problem(instance_id) is None and "~" not in instance_id:
        assert name == instance_id
    else:
        assert name != instance_id and "~" in name


# -- stores written by nbflow 0.1 ---------------------------------------------------------


def _three_task_flow(calls: list[str]) -> nf.WorkflowDefinition:
    def first(x: int) -> int:
        calls.append("first")
        return x + 1

    def second(first: int) -> int:
        calls.append("second")
        return first * 10

    return nf.Workflow("legacy").then("first", first).then("second", second).build()


def _as_legacy(store: Path, instance_id: str) -> Path:
    """Move an instance's folder to the name nbflow 0.1 gave it: the folder's content
    does not depend on its name, so this is exactly a 0.1 store."""
    instances = store / "instances"
    old = instances / legacy_dirname(instance_id)
    (instances / instance_dirname(instance_id)).rename(old)
    return old


@pytest.mark.parametrize("instance_id", ["Run-2026", "My Run", "CON", "run."])
def test_an_instance_in_a_legacy_folder_is_found_and_resumed(tmp_path: Path, instance_id: str) -> None:
    calls: list[str] = []
    wf = _three_task_flow(calls)
    store = tmp_path / "store"
    nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).run(wf, instance_id, 1)
    old = _as_legacy(store, instance_id)
    backend = nf.DiskcacheBackend(store)
    assert [m.instance_id for m in backend.list_instances()] == [instance_id]
    assert backend._instance_dir(instance_id) == old
    calls.clear()
    status = nf.CheckpointingRunner(backend, echo_output=False).rerun_from(wf, instance_id, "second")
    assert status.state == "completed" and status.output == 20
    assert calls == ["second"]  # first restored from the legacy folder
    assert sorted(p.name for p in (store / "instances").iterdir()) == [old.name]  # no second folder
    assert nf.WorkflowClient(backend).clear(instance_id)
    calls.clear()
    nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).run(wf, instance_id, 2)
    assert calls == ["first", "second"]
    assert [p.name for p in (store / "instances").iterdir()] == [instance_dirname(instance_id)]


def _case_folding_os(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make names.py see a filesystem that folds case and drops trailing dots and
    spaces (as Windows and macOS do), over the real, case-sensitive one."""

    def fold(path: str | os.PathLike[str]) -> str:
        path = Path(path)
        want = path.name.rstrip(". ").casefold()
        if path.parent.is_dir():
            for entry in os.listdir(path.parent):
                if entry.rstrip(". ").casefold() == want:
                    return str(path.parent / entry)
        return str(path)

    fake = types.SimpleNamespace(stat=lambda p: os.stat(fold(p)), listdir=os.listdir, path=os.path)
    monkeypatch.setattr(names, "os", fake)


@pytest.mark.parametrize(
    ("existing", "instance_id", "expected"),
    [
        ("run", "Run", "new"),  # 'Run' must not move into the folder of 'run'
        ("RUN", "Run", "new"),  # nor into the legacy folder of 'RUN'
        ("Run", "Run", "legacy"),  # its own legacy folder, spelt exactly
        ("run", "run.", "new"),  # Windows would open 'run' for 'run.'
        ("My_Run~2635e18166cd", "My Run", "legacy"),
        ("my_run~2635e18166cd", "My Run", "new"),
    ],
)
def test_legacy_folders_are_matched_exactly_on_a_case_folding_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str, instance_id: str, expected: str
) -> None:
    (tmp_path / existing).mkdir()
    _case_folding_os(monkeypatch)
    want = legacy_dirname(instance_id) if expected == "legacy" else instance_dirname(instance_id)
    assert resolve_dirname(tmp_path, instance_id) == want


def test_case_variants_get_their_own_folders_and_list_with_their_ids(tmp_path: Path) -> None:
    """Round trip: runner.run, WorkflowClient.list_instances and the CLI show the ids
    exactly as given, and no two share a folder."""
    ids = ["Run", "run", "RUN", "CON", "con.txt", "a/b", "a\\b", "données", "x" * 200, "trailing. ", "my run"]
    calls: list[str] = []
    wf = _three_task_flow(calls)
    store = tmp_path / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    for k, instance_id in enumerate(ids):
        assert runner.run(wf, instance_id, k).output == (k + 1) * 10
    folders = [p.name for p in (store / "instances").iterdir()]
    assert len({f.casefold() for f in folders}) == len(ids)
    client = nf.WorkflowClient(nf.DiskcacheBackend(store))
    assert sorted(s.instance_id for s in client.list_instances()) == sorted(ids)
    for k, instance_id in enumerate(ids):
        assert client.status(instance_id).output == (k + 1) * 10


def test_the_cli_shows_the_original_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    for instance_id in ("Run", "run", "a:b"):
        runner.run(_three_task_flow([]), instance_id, 1)
    assert main(["--dir", str(store), "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(listed) == ["Run", "a:b", "run"]
    assert main(["--dir", str(store), "status", "Run"]) == 0
    assert "Run" in capsys.readouterr().out


_ODD_FOLDERS = ["with spaces", "ünïcødé ☃ 日本", "trailing space ", "dots.in.name"]


@pytest.mark.parametrize("folder", _ODD_FOLDERS)
def test_a_store_works_under_paths_with_spaces_and_non_ascii(tmp_path: Path, folder: str) -> None:
    try:
        os.fsencode(folder)
    except UnicodeEncodeError:
        pytest.skip(f"this interpreter's filesystem encoding ({sys.getfilesystemencoding()}) cannot name it")
    calls: list[str] = []
    wf = _three_task_flow(calls)
    store = tmp_path / folder / "deeper store"
    backend = nf.DiskcacheBackend(store)
    lease = backend.lock("Ünï id", "test")
    assert backend.is_locked("Ünï id")
    lease.release()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "Ünï id", 1).output == 20
    big = nf.Workflow("big").then("make", lambda n: b"x" * n).build()  # an output spilled to a file
    assert len(runner.run(big, "big", 2**20).output) == 2**20
    assert sorted(m.instance_id for m in nf.DiskcacheBackend(store).list_instances()) == ["big", "Ünï id"]
