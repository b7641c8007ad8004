"""The checkpoint statement through libpq's prepared-statement call, on a real server:
prepared on a connection at its first use there, the psycopg error of its SQLSTATE on
failure, OperationalError (and a broken connection) when the session is cut, and the
plain psycopg path on a connection that does not talk UTF-8."""

from __future__ import annotations

from typing import Any

import pytest

import nbflow as nf
from nbflow.store.postgres import PostgresBackend
from nbflow.store.postgres_prepared import Prepared
from tests import pg_server

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")

psycopg = pytest.importorskip("psycopg")

DIVIDE = Prepared(
    "nbflow_test_divide", "SELECT %(a)s::int / %(b)s::int, %(label)s", ("a", "b", "label"), (23, 23, 25), ()
)


def test_a_statement_is_prepared_on_each_connection_at_its_first_use(dsn: str) -> None:
    for _ in range(2):  # two sessions: each prepares it once
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert DIVIDE.usable(conn)
            assert DIVIDE.fetchone(conn, {"a": 7, "b": 2, "label": "é ünïcode"}) == ("3", "é ünïcode")
            assert DIVIDE.fetchone(conn, {"a": 9, "b": 3, "label": None}) == ("3", None)
            names = [row[0] for row in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()]
            assert names.count("nbflow_test_divide") == 1


def test_a_failed_call_raises_the_error_of_its_sqlstate_and_the_session_goes_on(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            DIVIDE.fetchone(conn, {"a": 1, "b": 0, "label": "x"})
        assert not conn.broken and DIVIDE.fetchone(conn, {"a": 4, "b": 2, "label": "y"}) == ("2", "y")


def test_a_cut_session_is_an_operational_error_on_a_broken_connection(server: pg_server.PgServer, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        DIVIDE.fetchone(conn, {"a": 1, "b": 1, "label": "x"})
        pid = conn.pgconn.backend_pid
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            DIVIDE.fetchone(conn, {"a": 1, "b": 1, "label": "x"})
        assert conn.broken  # what the pool looks at to retry on a new connection


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = Prepared.fetchone

    def counted(self: Prepared, conn: Any, params: dict[str, Any]) -> Any:
        calls.append(params["tid"])
        return real(self, conn, params)

    monkeypatch.setattr(Prepared, "fetchone", counted)
    return calls


def _chain() -> nf.WorkflowDefinition:
    return nf.Workflow("prep").then("é1", _inc).then("é2", _inc).then("é3", _inc).build()


def _inc(x: int) -> int:
    return x + 1


def test_a_runs_checkpoints_go_through_the_prepared_statement(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    store = PostgresBackend(dsn)
    try:
        assert nf.CheckpointingRunner(store, echo_output=False).run(_chain(), "i", 1).output == 4
        assert calls == ["é1", "é2", "é3"]
        assert {"é1", "é2", "é3"} <= set(store.get_records("i"))
    finally:
        store.close()


def test_a_connection_that_does_not_talk_utf8_takes_psycopgs_path(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    latin = dsn + ("&" if "?" in dsn else "?") + "options=-c%20client_encoding%3DLATIN1"
    store = PostgresBackend(latin)
    try:
        assert nf.CheckpointingRunner(store, echo_output=False).run(_chain(), "i", 1).output == 4
        assert calls == []
        assert {"é1", "é2", "é3"} <= set(store.get_records("i"))
    finally:
        store.close()
