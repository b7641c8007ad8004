"""Fixtures of the PostgreSQL store tests: the suite's shared throw-away server and a
``PostgresBackend`` on a fresh database of it (``dsn``, from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import pg_server


@pytest.fixture(scope="module")
def server() -> pg_server.PgServer:
    try:
        return pg_server.shared_server()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def store(dsn: str) -> Iterator[Any]:
    """A PostgresBackend on ``dsn`` (files that test another store define their own)."""
    from nbflow.store.postgres import PostgresBackend

    backend = PostgresBackend(dsn)
    yield backend
    backend.close()
