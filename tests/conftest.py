"""Shared fixtures: every runner test runs on both stores (``backend``), with a
``runner`` built on it. Tests count executions with nonlocal counters (DBOS style),
never with wall-clock assertions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nbflow as nf
from tests.store.implementations import IMPLEMENTATIONS as BACKENDS
from tests.store.implementations import make_store as make_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[nf.InMemoryBackend | nf.DiskcacheBackend]:
    store = make_backend(request.param, tmp_path)
    yield store
    close = getattr(store, "close", None)
    if close is not None:
        close()


@pytest.fixture
def runner(backend: nf.InMemoryBackend | nf.DiskcacheBackend) -> nf.CheckpointingRunner:
    return nf.CheckpointingRunner(backend, echo_output=False)


@pytest.fixture
def dsn() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL test server (tests/pg_server.py) for
    one test; skips when there is no server."""
    from tests import pg_server

    try:
        server = pg_server.shared_server()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    address = server.take_store()
    yield address
    server.give_store(address)
