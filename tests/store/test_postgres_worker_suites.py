"""The PooledWorker suites (tests/run/test_worker.py, tests/run/test_runner_vs_worker.py)
on a PostgresBackend: those modules take their ``store`` from a fixture of their own
(memory and disk), so their tests that use it run here again with a store on the suite's
PostgreSQL server. Redundant (and to be deleted) once they take their store from
tests/store/implementations.py like the rest."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pg_server
from tests.run import test_runner_vs_worker, test_worker
from tests.store.implementations import close_store, make_store

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    backend = make_store("postgres", tmp_path)
    yield backend
    close_store(backend)


def _store_tests(module: Any) -> dict[str, Any]:
    return {
        name: fn
        for name, fn in vars(module).items()
        if name.startswith("test_") and callable(fn) and "store" in inspect.signature(fn).parameters
    }


# Collected here as this module's own tests, so they get this module's ``store``.
globals().update({f"{name}_on_postgres": fn for name, fn in _store_tests(test_worker).items()})
globals().update({f"{name}_on_postgres": fn for name, fn in _store_tests(test_runner_vs_worker).items()})
