"""What ``store_error`` makes of the errors the operating system and SQLite raise: only
bytes that are not valid are damage; a full disk and a refused access are said as such.
(The real full disk and read-only mounts are in test_faults.py and test_store_index.py.)"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.store import os_errors
from nbflow.store.os_errors import store_error
from tests.store.faults import assert_no_discard_advice, fill, tmpfs


def _io_error() -> sqlite3.OperationalError:
    """A real SQLite I/O error (with its result code), as a failed write raises it."""
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = 4874  # SQLITE_IOERR_SHMSIZE (10 | 19 << 8)
    exc.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"
    return exc


def test_an_io_error_on_a_disk_with_room_is_not_called_full(tmp_path: Path) -> None:
    err = store_error(_io_error(), str(tmp_path), "i")
    assert not isinstance(err, nf.StoreFullError)


def test_an_io_error_on_a_disk_without_room_is_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os_errors, "_out_of_space", lambda path: True)
    err = store_error(_io_error(), str(tmp_path / "not" / "made" / "yet"), "i", "t")
    assert isinstance(err, nf.StoreFullError)
    assert "SQLITE_IOERR_SHMSIZE" in str(err) and "'i'" in str(err) and "'t'" in str(err)
    assert_no_discard_advice(str(err))


def test_damage_is_still_damage_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os_errors, "_out_of_space", lambda path: True)
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    assert isinstance(store_error(corrupt, str(tmp_path), "i"), nf.CheckpointCorruptError)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOSPC, nf.StoreFullError),
        (errno.EACCES, nf.StoreUnreadableError),
        (errno.EROFS, nf.StoreUnreadableError),
    ],
)
def test_os_errors_by_errno(tmp_path: Path, code: int, kind: type[nf.NbflowError]) -> None:
    err = store_error(OSError(code, os.strerror(code)), str(tmp_path), "i")
    assert isinstance(err, kind)
    assert_no_discard_advice(str(err))


@pytest.mark.slow
def test_out_of_space_reads_the_filesystem_of_the_nearest_existing_folder(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "4m") as fs:
        assert not os_errors._out_of_space(str(fs / "store" / "instances" / "x"))
        filler = fill(fs)
        assert os_errors._out_of_space(str(fs / "store" / "instances" / "x"))
        filler.unlink()
        assert not os_errors._out_of_space(str(fs))


def test_an_io_error_on_a_disk_with_room_is_not_damage_and_says_to_check_the_device(tmp_path: Path) -> None:
    err = store_error(_io_error(), str(tmp_path), "i")
    assert isinstance(err, nf.StoreUnreadableError) and not isinstance(err, nf.CheckpointCorruptError)
    assert "SQLITE_IOERR_SHMSIZE" in str(err) and "dmesg" in str(err) and "chmod" not in str(err)
    assert_no_discard_advice(str(err))
    eio = store_error(OSError(errno.EIO, os.strerror(errno.EIO)), str(tmp_path), "i")
    assert isinstance(eio, nf.StoreUnreadableError) and "dmesg" in str(eio)
    assert_no_discard_advice(str(eio))


def test_an_instance_the_disk_fails_to_read_is_listed_unreadable_not_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(store, echo_output=False)
    wf = nf.Workflow("w").then("a", lambda x: x + 1).build()
    assert runner.run(wf, "ok", 1).output == 2
    assert runner.run(wf, "sick", 1).output == 2
    store.close()
    reader = nf.DiskcacheBackend(tmp_path / "store")
    real = nf.DiskcacheBackend._rows_at

    def failing(self: Any, path: Path, instance_id: str, create: bool = True) -> Any:
        if path.name == "sick":
            raise _io_error()
        return real(self, path, instance_id, create)

    monkeypatch.setattr(nf.DiskcacheBackend, "_rows_at", failing)
    (tmp_path / "store" / "index.db").unlink()  # no index row: the listing must open each instance
    states = {s.instance_id: s for s in reader.list_summaries()}
    assert states["ok"].state == "completed"
    assert states["sick"].state == "unreadable", states["sick"]
    assert_no_discard_advice(states["sick"].message or "")
    reader.close()
