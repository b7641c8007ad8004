"""A store named by one string: a folder path, or a PostgreSQL address.

Everywhere a store folder is taken (``nbflow --dir``, ``%workflow … --dir``) a
``postgresql://`` (or ``postgres://``) address may stand instead; a folder stays the
default.

>>> is_store_address("postgresql://db.example/nbflow"), is_store_address("./.nbflow")
(True, False)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# The backend is imported once the kind of store is known: a shell command asking
# for a folder's listing loads no database driver glue, and ``--help`` loads neither.
if TYPE_CHECKING:
    from nbflow.store.disk import DiskcacheBackend
    from nbflow.store.postgres import PostgresBackend

__all__ = ["SCHEMES", "is_store_address", "open_store"]

SCHEMES = ("postgresql://", "postgres://")


def is_store_address(where: object) -> bool:
    """Whether ``where`` names a database store rather than a folder."""
    return isinstance(where, str) and where.strip().lower().startswith(SCHEMES)


def open_store(where: str | os.PathLike[str]) -> DiskcacheBackend | PostgresBackend:
    """The store ``where`` names: ``PostgresBackend`` for an address, else the
    ``DiskcacheBackend`` of that folder (created if missing)."""
    if is_store_address(where):
        from nbflow.store.postgres import PostgresBackend

        return PostgresBackend(str(where).strip())
    from nbflow.store.disk import DiskcacheBackend

    return DiskcacheBackend(where)
