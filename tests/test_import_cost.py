"""What a process loads is what it pays for at every start: ``import nbflow`` and the
``nbflow`` command load only what they use.

Each check runs in a fresh interpreter and reads its ``sys.modules``: the package's
public names load on first use, ``nbflow list`` reads the store index without the
engine, and every public name still resolves to the object its module defines.
Timing is the bench's job (bench/listing.py); these tests say *what* is imported.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.store.base import InstanceSummary

# Heavy or notebook-only libraries no listing or bare import needs.
HEAVY = ("asyncio", "ipywidgets", "graphviz", "numpy", "IPython")
# The engine: what running a workflow loads.
ENGINE = ("nbflow.run.scheduler", "nbflow.run.runner", "nbflow.run.client", "nbflow.core.builder")
# Modules a listing never needs: ``socket`` names a lock holder's host, ``uuid`` makes
# new ids, diskcache builds a new store's first database. (A listing that probes a
# running instance's lock loads filelock, and with it ``platform``.)
LISTING_NEEDS_NONE_OF = ("socket", "uuid", "diskcache")
# ... and what the store modules leave to the moment they are needed: those, plus
# ``hashlib`` (an id that is not a portable folder name), tempfile (a new store's first
# database or index) and filelock (~25 ms: the first lock or lock probe).
LAZY_IN_STORE = (*LISTING_NEEDS_NONE_OF, "platform", "hashlib", "tempfile", "filelock")
STORE_MODULES = (
    "nbflow.store.file_locks",
    "nbflow.store.names",
    "nbflow.store.os_errors",
    "nbflow.store.sqlite_rows",
    "nbflow.store.store_index",
    "nbflow.store.disk",
    "nbflow.store.disk_layout",
    "nbflow.store.migrate",
)

_MODULES_AFTER = """
import json, runpy, sys
sys.argv = ["nbflow", *json.loads(sys.argv[1])]
code = None
try:
    runpy.run_module("nbflow", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _run_command(*args: str) -> tuple[int | None, str, set[str]]:
    """``python -m nbflow ARGS`` in a fresh interpreter: (exit code, output, modules loaded)."""
    done = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER, json.dumps(list(args))], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    *head, last = done.stdout.rstrip("\n").split("\n")
    result = json.loads(last)
    return result["code"], "\n".join(head).strip("\n"), set(result["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {name for name in names if name in modules}


def test_import_nbflow_loads_no_heavy_library_and_no_engine() -> None:
    modules = _modules_after_import("import nbflow")
    assert _loaded(modules, HEAVY) == set()
    assert _loaded(modules, ENGINE) == set()
    assert "nbflow.core.errors" in modules  # errors are eager: catching one never imports


def test_list_help_loads_no_heavy_library_and_no_backend() -> None:
    code, out, modules = _run_command("list", "--help")
    assert code == 0
    assert "--workflow" in out and "--state" in out
    assert _loaded(modules, HEAVY) == set()
    assert _loaded(modules, (*ENGINE, "nbflow.store.disk", "nbflow.store.postgres")) == set()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with a completed instance, a parked one and one left running by a dead process."""
    wf = nf.Workflow("approval").then("prepare", lambda x: x + 1).wait_for_signal("go").build()
    done = nf.Workflow("doubler").then("double", lambda x: 2 * x).build()
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.run(wf, "appr-1", 1).state == "awaiting_signal"
    assert runner.run(done, "dbl-1", 21).output == 42
    assert runner.run(done, "dbl-2", 1).output == 2
    meta = backend.load_instance("dbl-2")
    assert meta is not None
    meta.state = "running"  # what a SIGKILLed runner leaves behind (no lock held)
    backend.save_instance(meta)
    backend.close()
    return tmp_path / "store"


def test_nbflow_list_reads_the_index_without_the_engine(store: Path) -> None:
    code, out, modules = _run_command("--dir", str(store), "list")
    assert code == 0
    states = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert states == {"appr-1": "awaiting_signal", "dbl-1": "completed", "dbl-2": "interrupted"}
    assert _loaded(modules, HEAVY) == set()
    assert _loaded(modules, ENGINE) == set()
    assert "nbflow.store.store_index" in modules and "nbflow.store.postgres" not in modules
    assert _loaded(modules, LISTING_NEEDS_NONE_OF) == set()


def test_store_modules_leave_their_costly_imports_to_first_use() -> None:
    modules = _modules_after_import("; ".join(f"import {name}" for name in STORE_MODULES))
    assert set(STORE_MODULES) <= modules
    assert _loaded(modules, LAZY_IN_STORE) == set()


_USE_THE_LAZY_IMPORTS = """
import json, sys
from pathlib import Path
from nbflow.store.base import InstanceSummary
from nbflow.store.file_locks import FileLocks
from nbflow.store.names import instance_dirname, legacy_dirname
from nbflow.store.sqlite_rows import Rows
from nbflow.store.store_index import StoreIndex
root = Path(sys.argv[1])
names = [instance_dirname("Run"), legacy_dirname("a b")]
(root / "locks").mkdir()
lease = FileLocks(root / "locks").acquire("i", "i", "me")
holder = json.loads((root / "locks" / "i.holder").read_text())
lease.release()
index = StoreIndex(root, read_only=False)
wrote = index.put({"i": (InstanceSummary("i", "wf", "completed"), "-")})
(root / "i").mkdir()
rows = Rows(root / "i", {})
rows.put("k", b"v")
print(json.dumps({"names": names, "host": holder["host"], "wrote": wrote, "rows": sorted(index.rows() or {}),
                  "value": rows.get("k").decode(), "loaded": sorted(set(sys.argv[2:]) & set(sys.modules))}))
"""


def test_what_the_lazy_imports_serve_still_works(tmp_path: Path) -> None:
    """In a fresh process (nothing lazy loaded yet): an id that needs a digest, a lock
    holder's host, a store's first index and an instance's first database."""
    done = subprocess.run(
        [sys.executable, "-c", _USE_THE_LAZY_IMPORTS, str(tmp_path), *LAZY_IN_STORE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["names"][0] == "run~00d60e31a4e6b8344d42"  # the docstring's example: the digest is unchanged
    assert got["names"][1].startswith("a_b~") and len(got["names"][1]) == len("a_b~") + 12
    assert got["host"] and got["wrote"] is True and got["rows"] == ["i"] and got["value"] == "v"
    assert {"socket", "hashlib", "diskcache", "tempfile"} <= set(got["loaded"])  # loaded when first needed


# -- the lazy package ---------------------------------------------------------------------------
def _type_checking_imports() -> dict[str, str]:
    """name -> module of the imports nbflow/__init__.py shows type checkers."""
    tree = ast.parse(Path(nf.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    found: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module is not None
        found.update({alias.asname or alias.name: node.module for alias in node.names})
    return found


def test_every_public_name_resolves_to_its_modules_object_in_a_fresh_process() -> None:
    code = (
        "import json, nbflow; names = {}\n"
        "for name in nbflow.__all__:\n"
        "    value = getattr(nbflow, name)\n"
        "    names[name] = getattr(value, '__module__', None) or value.__name__\n"
        "print(json.dumps(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    where = json.loads(done.stdout)
    assert sorted(where) == sorted(nf.__all__)
    for name, module in _type_checking_imports().items():
        assert getattr(importlib.import_module(module), name) is getattr(nf, name), name
        assert where[name].startswith("nbflow."), (name, where[name])


def test_type_checkers_see_every_lazy_name_and_only_those() -> None:
    shown = _type_checking_imports()
    eager = {name for name in nf.__all__ if name == "errors" or name in nf.errors.__all__}
    assert set(shown) == set(nf.__all__) - eager


def test_star_import_and_dir_give_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from nbflow import *", namespace)
    assert set(nf.__all__) <= set(namespace)
    assert namespace["CheckpointingRunner"] is nf.CheckpointingRunner
    assert set(nf.__all__) <= set(dir(nf))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = nf.no_such_name  # type: ignore[attr-defined]
    assert not hasattr(nf, "Scheduler")


# -- the index row check --------------------------------------------------------------------------
def _row(**changes: object) -> str:
    data = InstanceSummary("i-1", "wf", "completed", tasks_done=1, tasks_total=2, wake_at=1.5).to_dict()
    data.update(changes)
    return json.dumps(data)


def test_the_index_row_check_covers_every_summary_field() -> None:
    from nbflow.store import store_index

    kinds = store_index._KINDS
    assert set(kinds) == {f for f in InstanceSummary.__dataclass_fields__}


@pytest.mark.parametrize(
    "changes",
    [
        {"tasks_done": True},
        {"tasks_done": 1.0},
        {"updated_at": "now"},
        {"updated_at": False},
        {"state": None},
        {"workflow": 3},
        {"wake_at": "soon"},
        {"signal": 1},
        {"error": ["x"]},
        {"instance_id": None},
    ],
    ids=lambda c: next(iter(c)) + "=" + repr(next(iter(c.values()))),
)
def test_an_index_row_of_the_wrong_shape_is_refused(changes: dict[str, object]) -> None:
    from nbflow.store.store_index import _parse

    assert _parse(_row(**changes)) is None


def test_an_index_row_nbflow_writes_is_read_back_whole() -> None:
    from nbflow.store.store_index import _parse

    summary = InstanceSummary("i-1", "wf", "failed", 1, 2, 1.0, 2.0, "g", "m", None, "go", {"type": "E"})
    assert _parse(json.dumps(summary.to_dict())) == summary
    assert _parse(_row(added_later="x")) == _parse(_row())  # a field from a newer nbflow is left out
    assert _parse(json.dumps({"instance_id": "i-2", "workflow": "w", "state": "completed"})) == InstanceSummary(
        "i-2", "w", "completed"
    )
    assert _parse("[1, 2]") is None and _parse("{") is None and _parse(b"{}") is None
