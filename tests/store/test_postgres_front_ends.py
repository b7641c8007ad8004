"""A PostgreSQL address wherever a store folder is taken: ``nbflow --dsn …`` (and
``--dir …``), ``%%workflow … --store …``, ``open_store``; on the suite's own server."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.cli import main
from nbflow.jupyter.session import Session
from nbflow.store.open_store import is_store_address, open_store
from nbflow.store.postgres import PostgresBackend
from tests import pg_server

reason = pg_server.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")


def _doubler() -> nf.WorkflowDefinition:
    return nf.Workflow("doubler").then("double", lambda x: x * 2).then("plus", lambda x: x + 1).build()


def test_open_store_tells_an_address_from_a_folder(dsn: str, tmp_path: Path) -> None:
    assert isinstance(open_store(dsn), PostgresBackend)
    assert isinstance(open_store(dsn.replace("postgresql://", "postgres://", 1)), PostgresBackend)
    assert isinstance(open_store(tmp_path / "s"), nf.DiskcacheBackend)
    assert isinstance(open_store(str(tmp_path / "postgresql")), nf.DiskcacheBackend)
    assert not is_store_address(None) and is_store_address(" POSTGRESQL://h/db")


def test_cli_lists_and_shows_a_postgres_store(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", dsn, "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no instances in postgresql://nbflow@127.0.0.1:")
    assert pg_server.PASSWORD not in out
    nf.CheckpointingRunner(PostgresBackend(dsn), echo_output=False).run(_doubler(), "dbl-1", 20)
    assert main(["--dsn", dsn, "list"]) == 0
    out = capsys.readouterr().out
    assert "dbl-1" in out and "completed" in out and "2/2" in out
    assert main(["status", "dbl-1", "--dir", dsn]) == 0  # --dir takes an address too
    out = capsys.readouterr().out
    assert "state     completed" in out and "output    41" in out
    assert main(["--store", dsn, "result", "dbl-1", "double"]) == 0
    assert capsys.readouterr().out.strip() == "40"
    assert main(["--dsn", dsn, "clear", "dbl-1"]) == 0
    assert PostgresBackend(dsn).list_instances() == []


def test_cli_errors_name_the_store_without_its_password(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = dsn.replace(pg_server.PASSWORD, "not-the-password")
    assert main(["--dsn", bad, "list"]) == 2
    err = capsys.readouterr().err
    assert "password" in err and "not-the-password" not in err
    assert main(["--dsn", dsn, "status", "nope"]) == 2
    err = capsys.readouterr().err
    assert pg_server.PASSWORD not in err
    assert main(["--dsn", dsn, "migrate"]) == 2
    assert "only folders hold nbflow 0.1 instances" in capsys.readouterr().err


def test_cli_help_lists_a_commands_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "worker"]) == 0
    out = capsys.readouterr().out
    assert "--claim-ttl" in out and "--dsn" in out
    assert main(["help", "nope"]) == 2


CELL = textwrap.dedent(
    """
    def load():
        calls.append("load")
        return [1, 2, 3]

    def total(load):
        calls.append("total")
        return sum(load)
    """
)


def test_the_cell_magic_runs_on_a_postgres_store_and_a_fresh_kernel_reads_it(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", None)
    first = Session({"__name__": "__main__", "calls": [], "store": dsn}, display=lambda obj: None)
    assert first.cell("sums --store $store --no-widget", CELL) == 6
    assert first.namespace["calls"] == ["load", "total"]
    again = Session({"__name__": "__main__", "calls": []}, display=lambda obj: None)
    assert again.cell(f"sums --dir {dsn} --no-widget", CELL) == 6  # restored from the server
    assert again.namespace["calls"] == []
    assert again.line(f"result sums load --dir {dsn}") == [1, 2, 3]
    (row,) = PostgresBackend(dsn).list_summaries()
    assert (row.workflow, row.state) == ("sums", "completed")
