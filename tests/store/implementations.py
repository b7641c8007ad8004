"""The one list of store implementations every contract suite runs over.

A new backend joins by adding a factory to ``FACTORIES``: the checkpoint-store, the
control-channel and the claim suites (``test_contract.py``, ``test_control_contract.py``,
``test_claims.py``) and the runner tests (``tests/conftest.py``) then all run on it.
A factory may ``pytest.skip`` when what it needs (a server) is not available.

``postgres`` runs on a real PostgreSQL server the suite starts itself (``tests/pg_server.py``,
once per test process); each store is a database of its own, emptied and recycled when
the store is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbflow.store.disk import DiskcacheBackend
from nbflow.store.memory import InMemoryBackend
from tests import pg_server


def _memory(tmp_path: Path) -> Any:
    return InMemoryBackend()


def _disk(tmp_path: Path) -> Any:
    return DiskcacheBackend(tmp_path / "store")


def _postgres(tmp_path: Path) -> Any:
    reason = pg_server.unavailable_reason()
    if reason:
        pytest.skip(f"no PostgreSQL test server: {reason}")
    try:
        server = pg_server.shared_server()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return pg_server.ThrowawayBackend(server, server.take_store())


FACTORIES: dict[str, Callable[[Path], Any]] = {"memory": _memory, "disk": _disk, "postgres": _postgres}
IMPLEMENTATIONS = list(FACTORIES)


def make_store(kind: str, tmp_path: Path) -> Any:
    """A fresh, empty store of ``kind`` (a key of ``FACTORIES``)."""
    return FACTORIES[kind](tmp_path)


def close_store(store: Any) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        close()
