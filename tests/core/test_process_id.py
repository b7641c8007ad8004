"""The cached process id follows a fork, so a forked child never uses its parent's
database connections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbflow.core.process_id import current_pid

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def _in_child(body: object) -> str:
    """Run ``body()`` (returning text) in a forked child; returns what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        try:
            os.write(write, str(body()).encode())  # type: ignore[operator]
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


def test_the_id_is_the_process_s_own() -> None:
    assert current_pid() == os.getpid()


def test_a_forked_child_sees_its_own_id() -> None:
    child = _in_child(lambda: f"{current_pid()} {os.getpid()}")
    cached, real = map(int, child.split())
    assert cached == real and cached != os.getpid()


def test_a_forked_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    from nbflow.store.disk_layout import CACHE_SETTINGS
    from nbflow.store.sqlite_rows import Rows

    rows = Rows(tmp_path, CACHE_SETTINGS)
    rows.put("a", b"parent")
    parent_connection = id(rows._live())

    def child() -> str:
        connection = id(rows._live())
        rows.put("b", b"child")
        return "own" if connection != parent_connection else "parent's"

    assert _in_child(child) == "own"
    assert rows.get("b") == b"child" and rows.get("a") == b"parent"
    rows.close()
