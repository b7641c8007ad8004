"""A throw-away PostgreSQL server for tests, benchmarks and the shared-store notebook.

It is a real server from Debian's packages (``/usr/lib/postgresql/<n>/bin``), not a
mock: a fresh cluster in a temporary folder, on a free loopback port, with its unix
socket inside that folder, so nothing outside the folder is touched. ``initdb`` refuses
to run as root, so as root the cluster belongs to (and runs as) the ``postgres`` user
Debian's package creates.

A store for a test is a database of its own, copied from a template that already holds
nbflow's schema (``CREATE DATABASE … TEMPLATE``), and recycled after: emptied, every
session on it ended (``take_store`` / ``give_store``).

    server = PgServer.start()          # or PgServer.start(durable=True) for benchmarks
    dsn = server.take_store()          # postgresql://nbflow:…@127.0.0.1:<port>/<name>
    ...
    server.give_store(dsn)
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PASSWORD", "USER", "PgServer", "find_bin_dir", "unavailable_reason"]

USER = "nbflow"
PASSWORD = "nbflow-test-password"
_TEMPLATE = "nbflow_template"


def find_bin_dir() -> Path | None:
    """The folder of Debian's newest installed PostgreSQL binaries (or $NBFLOW_PG_BIN)."""
    env = os.environ.get("NBFLOW_PG_BIN")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in candidates:
        if folder and all(os.access(os.path.join(folder, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def unavailable_reason() -> str | None:
    """Why no test server can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg is not installed (pip install "nbflow[postgres]")'
    if find_bin_dir() is None:
        return "PostgreSQL server binaries are not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _folder_for_server() -> str:
    """Where the cluster's folder goes: the temp folder, unless the ``postgres`` user
    could not reach into it (a private TMPDIR of root's), then ``/tmp``."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0:
        return str(base)
    reachable = all(os.stat(p).st_mode & 0o001 for p in (base, *base.parents))
    return str(base) if reachable else "/tmp"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One running cluster; ``stop()`` removes it and its folder."""

    def __init__(self, folder: Path, bin_dir: Path, port: int, listen: Sequence[str]) -> None:
        self.folder, self.bin_dir, self.port = folder, bin_dir, port
        self.listen = tuple(listen)
        self.data = folder / "data"
        self.log = folder / "server.log"
        self._as_postgres = os.geteuid() == 0

    # -- life cycle ---------------------------------------------------------------------
    @classmethod
    def start(cls, *, durable: bool = False, listen: Sequence[str] = ("127.0.0.1",)) -> PgServer:
        """Create and start a cluster. ``durable=False`` (tests) turns fsync off: a crash
        of the machine would lose the throw-away data, which is fine and much faster;
        benchmarks pass ``durable=True`` to measure real commits."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        folder = Path(tempfile.mkdtemp(prefix="nbflow-pg-", dir=_folder_for_server()))
        server = cls(folder, bin_dir, _free_port(), listen)
        try:
            server._init(durable)
            server._ctl("start", "-w", "-t", "60", "-l", str(server.log))
            server._admin("CREATE DATABASE " + _TEMPLATE)
            server._prepare_template()
        except BaseException:
            server.stop()
            raise
        atexit.register(server.stop)  # a test or lesson that fails half-way leaves no server running
        return server

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)

    def _init(self, durable: bool) -> None:
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(self.folder, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "'" + ",".join(self.listen) + "'",
            "unix_socket_directories": f"'{self.folder}'",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        if len(self.listen) > 1 or self.listen[0] not in ("127.0.0.1", "localhost"):
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")

    def _ctl(self, *args: str) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args])

    def restart(self) -> None:
        """``pg_ctl restart`` (fast mode): every client connection is cut."""
        self._ctl("restart", "-w", "-t", "60", "-m", "fast", "-l", str(self.log))

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ctl("stop", "-w", "-t", "60", "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------
    def dsn(self, database: str = "postgres", *, host: str = "127.0.0.1", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-made identifiers only

    def _prepare_template(self) -> None:
        """Put nbflow's schema into the template, so each copy starts ready to use."""
        from nbflow.store.postgres import PostgresBackend

        backend = PostgresBackend(self.dsn(_TEMPLATE))
        backend.list_summaries()  # creates the schema
        backend.close()

    def create_database(self, name: str | None = None) -> str:
        """A new database holding an empty nbflow store; returns its DSN."""
        name = name or "t_" + uuid.uuid4().hex[:16]
        self._admin(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    # -- recycled stores ----------------------------------------------------------------
    # CREATE DATABASE costs ~250 ms here; emptying a used store ~3 ms. Runner tests take
    # a store each, so they get a recycled database: every session on it is ended (so no
    # lock or worker of the last test survives) and every row deleted.
    def take_store(self) -> str:
        """The DSN of an empty nbflow store of its own; give it back with ``give_store``."""
        free: list[str] = self.__dict__.setdefault("_free", [])
        return free.pop() if free else self.create_database()

    def give_store(self, dsn: str) -> None:
        import psycopg

        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename LIKE 'nbflow%%' AND tablename <> 'nbflow_schema'"
                )
            ]
            with conn.transaction():
                for table in tables:
                    conn.execute(f"DELETE FROM {table}")  # type: ignore[arg-type]  # names read from the catalog
        self.__dict__.setdefault("_free", []).append(dsn)


_shared: PgServer | None = None
_shared_error: str | None = None


def sql(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on its own autocommit connection; its rows ([] for none).
    Without ``params`` the statement is sent as written (a ``%`` in it is literal)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def shared_server() -> PgServer:
    """The one server of this process, started on first use and stopped at exit (the
    test session, a benchmark run). Raises RuntimeError with the reason when no server
    can be started here."""
    global _shared, _shared_error
    if _shared is None:
        if _shared_error is not None:
            raise RuntimeError(_shared_error)
        try:
            _shared = PgServer.start()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            _shared_error = f"cannot start a PostgreSQL test server: {exc} {detail}".strip()
            raise RuntimeError(_shared_error) from None
        atexit.register(stop_shared_server)
    return _shared


def stop_shared_server() -> None:
    global _shared
    server, _shared = _shared, None
    if server is not None:
        server.stop()


def _throwaway_class() -> type:
    from nbflow.store.postgres import PostgresBackend

    class ThrowawayBackend(PostgresBackend):
        """A PostgresBackend on a database of its own that ``close()`` drops. It pickles
        as a plain PostgresBackend, so a worker process never drops the database."""

        def __init__(self, server: PgServer, dsn: str) -> None:
            super().__init__(dsn, reconnect_timeout=20.0)
            self.server, self._given_back = server, False

        def __reduce__(self) -> Any:
            return (PostgresBackend, (self.dsn,), {"dsn": self.dsn, "reconnect_timeout": self.reconnect_timeout})

        def close(self) -> None:
            super().close()
            self.release_leases()  # none may be taken again in the recycled database
            if not self._given_back:
                self._given_back = True
                self.server.give_store(self.dsn)

    return ThrowawayBackend


def __getattr__(name: str) -> Any:
    if name == "ThrowawayBackend":  # built on first use: importing this module needs no psycopg
        cls = _throwaway_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
