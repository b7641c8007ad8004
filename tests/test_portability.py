"""nbflow imports and runs without POSIX-only modules, and without a UTF-8 locale.

Windows has no ``fcntl``, ``resource``, ``pwd``, ``grp``, ``termios``, ``tty`` or
``pty``; these tests take them away on Linux (``sys.modules[name] = None`` makes any
import of them fail) before nbflow is imported.

``fcntl`` needs care: nbflow locks through filelock, and filelock's POSIX backend
imports ``fcntl`` itself (that is how it locks here). So the crash-and-resume runs
block ``fcntl`` while every nbflow module is imported, then give it back and record
who imports it from then on: only filelock may. (Blocking it for the whole run would
test a platform with neither ``fcntl`` nor ``msvcrt``, where filelock has no OS lock.)
The remaining modules stay blocked for the whole run, the SIGKILL and the resume.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nbflow
import nbflow as nf

PACKAGE = Path(nbflow.__file__).parent
ROOT = PACKAGE.parent
POSIX_ONLY = ("fcntl", "resource", "pwd", "grp", "termios", "tty", "pty", "posix", "crypt", "spwd", "syslog", "curses")
WINDOWS_ONLY = ("msvcrt", "winreg", "_winapi", "winsound")

IMPORT_EVERYTHING = textwrap.dedent(
    """
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # any import of it now raises ImportError
    import importlib, pkgutil, nbflow
    names = sorted(m.name for m in pkgutil.walk_packages(nbflow.__path__, "nbflow.") if m.name != "nbflow.__main__")
    for name in names:
        importlib.import_module(name)
    assert len(names) > 30, names
    """
)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_module_of_nbflow_imports_a_platform_only_module() -> None:
    """Not at import time, and not lazily either: locks go through filelock."""
    problems = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in POSIX_ONLY + WINDOWS_ONLY
    ]
    assert problems == []


def test_every_module_imports_without_posix_only_modules() -> None:
    code = IMPORT_EVERYTHING.format(blocked=POSIX_ONLY[:7])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr


CHILD = textwrap.dedent(
    """
    import sys
    BLOCKED = ("fcntl", "resource", "pwd", "grp", "termios", "tty", "pty")
    for name in BLOCKED:
        sys.modules[name] = None
    import importlib, json, os, pkgutil, time
    import nbflow
    for info in pkgutil.walk_packages(nbflow.__path__, "nbflow."):
        if info.name != "nbflow.__main__" and not info.name.startswith("nbflow.jupyter"):
            importlib.import_module(info.name)
    del sys.modules["fcntl"]  # filelock's own import of it (see the test's docstring)

    importers = []

    class WhoImportsFcntl:
        def find_spec(self, name, path=None, target=None):
            if name == "fcntl":
                frame = sys._getframe(1)
                while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                    frame = frame.f_back
                importers.append(frame.f_globals.get("__name__", "?"))
            return None

    sys.meta_path.insert(0, WhoImportsFcntl())

    import nbflow as nf

    store, calls, mode = sys.argv[1:4]

    def note(name):
        with open(calls, "a", encoding="utf-8") as f:
            f.write(name + "\\n")

    def first(x):
        note("first")
        return x + 1

    def middle(first):
        note("middle")
        if mode == "crash":
            time.sleep(120)  # the test SIGKILLs the process here
        return first * 10

    def last(middle):
        note("last")
        return {"value": middle + 5, "text": "données ✓"}

    wf = nf.Workflow("portable").then("first", first).then("middle", middle).then("last", last).build()
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    status = runner.run(wf, "Portable Run/1", 1) if mode == "crash" else runner.resume(wf, "Portable Run/1")
    blocked = [name for name in BLOCKED[1:] if sys.modules.get(name) is not None]
    print(json.dumps({"state": status.state, "output": status.output, "fcntl_importers": importers, "loaded": blocked}))
    """
)


def _child(store: Path, calls: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), str(calls), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


@pytest.mark.slow
def test_sigkilled_run_resumes_without_posix_only_modules(tmp_path: Path) -> None:
    store, calls = tmp_path / "store with space", tmp_path / "calls.txt"
    crashing = _child(store, calls, "crash")
    try:
        deadline, reader = time.monotonic() + 60, None
        while reader is None or reader.get_record("Portable Run/1", "first") is None:  # the first checkpoint
            assert crashing.poll() is None, crashing.communicate()[1]
            assert time.monotonic() < deadline, "the child never checkpointed its first task"
            time.sleep(0.05)
            if reader is None and (store / "instances").is_dir():
                reader = nf.DiskcacheBackend(store)
        while "middle" not in calls.read_text(encoding="utf-8"):  # and sleeps in the middle one
            assert time.monotonic() < deadline, "the child never started the middle task"
            time.sleep(0.05)
        crashing.kill()  # SIGKILL: no cleanup of any kind runs in the child
        crashing.communicate(timeout=30)
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.communicate()
    assert not nf.DiskcacheBackend(store).is_locked("Portable Run/1")  # the OS freed the dead runner's lock

    resumed = _child(store, calls, "resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["state"] == "completed"
    assert result["output"] == {"value": 25, "text": "données ✓"}
    # first was checkpointed before the kill; middle was running, so it runs again
    assert calls.read_text(encoding="utf-8").split() == ["first", "middle", "middle", "last"]
    assert result["fcntl_importers"] and all(name.startswith("filelock") for name in result["fcntl_importers"])
    assert result["loaded"] == []  # nothing imported the blocked modules behind the block


@pytest.mark.slow
def test_the_cli_shows_non_ascii_ids_in_an_ascii_locale(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wf = nf.Workflow("w").then("a", lambda x: x).build()
    nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).run(wf, "données", 1)
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C"}
    env.pop("PYTHONIOENCODING", None)
    for args in (["list"], ["status", "données"]):
        done = subprocess.run(
            [sys.executable, "-m", "nbflow", "--dir", str(store), *args], capture_output=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
        assert b"donn\\xe9es" in done.stdout or "données".encode() in done.stdout


@pytest.mark.slow
def test_store_and_runner_suites_pass_without_a_utf8_locale() -> None:
    """Nothing depends on the platform's default encoding: the store and runner tests
    pass with UTF-8 mode off and the C locale (ASCII), as on a bare container or with
    a Windows code page."""
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/store",
            "tests/run/test_runner.py",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout.decode("utf-8", "replace")[-4000:]
