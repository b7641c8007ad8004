"""The checkpoint statement through libpq's prepared-statement call.

A task's checkpoint on PostgreSQL is one statement (``PUT_ONE``), run once per task.
Through ``Connection.execute`` psycopg spends ~70 µs of Python per call here on what
stays the same from one call to the next: converting the query's placeholders, looking
up a dumper per parameter, its prepared-statement bookkeeping — about as much as the
server's own work for the statement. So the statement is prepared once per connection
under its own name and run with ``PGconn.exec_prepared``: the parameters go as UTF-8
text (the payload as binary), the two text columns come back as they are. libpq's call
releases the GIL while it waits for the server, as psycopg's does.

What stays psycopg's: connections, transactions, every other statement, and errors — a
failed call raises the psycopg exception of its SQLSTATE (``error_from_result``), and a
connection lost in the call raises ``OperationalError`` with the connection marked
broken, so the pool's retry on a new connection works as for any other statement.

Only for a connection whose client encoding is UTF-8 (what psycopg negotiates unless
the server or the address says otherwise); ``Prepared.usable`` says when not, and the
caller goes through ``execute``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["Prepared"]

_NOT_PREPARED = b"26000"  # invalid_sql_statement_name: a connection that has not prepared it yet
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class Prepared:
    """One named statement, prepared on each connection at its first use there.

    ``sql`` uses psycopg's ``%(name)s`` placeholders; ``names`` their order;
    ``types`` their PostgreSQL type OIDs; ``binary`` the names sent as bytes."""

    def __init__(self, name: str, sql: str, names: Sequence[str], types: Sequence[int], binary: Sequence[str]) -> None:
        numbered = _PLACEHOLDER.sub(lambda m: f"${list(names).index(m.group(1)) + 1}", sql)
        if set(_PLACEHOLDER.findall(sql)) != set(names):
            raise ValueError(f"the placeholders of {name!r} are not {sorted(names)}")
        self.name = name.encode("ascii")
        self.sql = numbered.encode("utf-8")
        self.names = tuple(names)
        self.types = list(types)
        self.formats = [1 if n in binary else 0 for n in names]

    @staticmethod
    def usable(conn: Any) -> bool:
        """Whether ``conn`` talks UTF-8 (the text parameters are encoded so)."""
        return bool(conn.pgconn.parameter_status(b"client_encoding") == b"UTF8")

    def fetchone(self, conn: Any, params: dict[str, Any]) -> tuple[str | None, ...] | None:
        """Run the statement with ``params`` on ``conn``; its first row (text columns as
        ``str``), or None when it returns no row."""
        tuples_ok, command_ok, sqlstate = _STATES or _states()
        values = [_param(params[n]) for n in self.names]
        pgconn = conn.pgconn
        for _ in range(2):
            result = pgconn.exec_prepared(self.name, values, param_formats=self.formats)
            if result.status == tuples_ok:
                if not result.ntuples:
                    return None
                return tuple(_text(result.get_value(0, col)) for col in range(result.nfields))
            if result.error_field(sqlstate) != _NOT_PREPARED:
                break
            prepared = pgconn.prepare(self.name, self.sql, param_types=self.types)
            if prepared.status != command_ok:
                result = prepared
                break
        raise _error(conn, result)


def _param(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return repr(value).encode("ascii")  # the shortest text that reads back as the same float
    return str(value).encode("utf-8")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


# libpq's result states and the SQLSTATE field code as ints, looked up at the first call
# (psycopg is loaded by then: a connection exists) instead of through enums at every call
_STATES: tuple[int, int, int] | None = None


def _states() -> tuple[int, int, int]:
    global _STATES
    import psycopg.pq

    pq = psycopg.pq
    _STATES = (int(pq.ExecStatus.TUPLES_OK), int(pq.ExecStatus.COMMAND_OK), int(pq.DiagnosticField.SQLSTATE))
    return _STATES


def _error(conn: Any, result: Any) -> Exception:
    """The psycopg exception a failed call means: the connection's loss as
    OperationalError (the connection is broken now), else the error of its SQLSTATE."""
    import psycopg

    if conn.pgconn.status == psycopg.pq.ConnStatus.BAD:
        message = (result.error_message or conn.pgconn.error_message or b"the connection was lost").decode(
            "utf-8", "replace"
        )
        lost: Exception = psycopg.OperationalError(message.strip())
        return lost
    error: Exception = psycopg.errors.error_from_result(result, encoding="utf-8")
    return error
