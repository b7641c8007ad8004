"""File names for instance ids: valid on Linux, macOS and Windows, one folder per id.

An instance id is any text (see ``validate_instance_id``); the disk store keeps each
instance in ``instances/<name>/`` and locks it with ``locks/<name>.*`` files. A name must
be valid on every system a store may be opened from, and two ids must never share one,
including on the case-insensitive filesystems of Windows and macOS.

The rule (``instance_dirname``):

- an id of lower-case ASCII letters, digits, ``.``, ``_`` and ``-`` (starting with a
  letter or digit, at most 100 characters) is its own name, unless it ends with ``.``
  (Windows drops trailing dots) or its part before the first dot is a Windows device
  name (``con``, ``prn``, ``aux``, ``nul``, ``com0``-``com9``, ``lpt0``-``lpt9``);
- any other id is ``<prefix>~<digest>``: the prefix is at most 40 characters of the
  lower-cased id with every other character (dots too) replaced by ``_``, the digest the
  first 20 hex digits (80 bits) of the SHA-256 of the id's UTF-8 bytes.

Why that is enough: every name is lower-case ASCII, so case-folding filesystems and
macOS's Unicode normalisation have nothing to change, and no name is one of
``< > : " / \\ | ? *``, a control character, a trailing dot or space or a device name. A
name of the first kind has no ``~``, so it never equals one of the second, and two of
the second differ in their digests. A digest name also cannot be a Windows 8.3 alias
(``LONGNA~1``): 20 characters follow its ``~``.

Older stores (nbflow 0.1) named a folder after any ``[A-Za-z0-9._-]`` id (so ``Run`` was
``Run``, next to ``run``), and ``<prefix>~<12 hex digits>`` otherwise (``legacy_dirname``).
``resolve_dirname`` keeps using such a folder when one exists under exactly that name,
so an upgraded store loses no instance.

>>> instance_dirname("etl-2026-11-25")
'etl-2026-11-25'
>>> instance_dirname("Run")
'run~00d60e31a4e6b8344d42'
>>> instance_dirname("CON.txt")
'con_txt~09c8cc7edcae01ac7fc6'
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["instance_dirname", "legacy_dirname", "resolve_dirname"]

_PORTABLE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_LEGACY_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Device names Windows reserves in every folder, with or without an extension.
_DEVICES = frozenset({"con", "prn", "aux", "nul"} | {f"{d}{n}" for d in ("com", "lpt") for n in range(10)})
_ALIASED_BY_CASE_ONLY = re.compile(r"[A-Za-z0-9._~-]*[A-Za-z][A-Za-z0-9._~-]*")
_PREFIX_LEN, _DIGEST_LEN = 40, 20


def _stem(name: str) -> str:
    return name.split(".", 1)[0].lower()


def _is_portable(name: str) -> bool:
    return _PORTABLE.fullmatch(name) is not None and not name.endswith(".") and _stem(name) not in _DEVICES


def _digest(instance_id: str) -> str:
    """sha256 of the id, hex. ``hashlib`` (with OpenSSL: ~5 ms) loads only when an id
    is not already a portable name: a listing of ordinary ids never pays it."""
    import hashlib

    return hashlib.sha256(instance_id.encode("utf-8", "surrogatepass")).hexdigest()


def instance_dirname(instance_id: str) -> str:
    """The portable file name of ``instance_id``: the id itself when it is already one,
    else a lower-case prefix plus a digest (see the module docstring)."""
    if _is_portable(instance_id):
        return instance_id
    digest = _digest(instance_id)[:_DIGEST_LEN]
    prefix = re.sub(r"[^a-z0-9-]+", "_", instance_id.lower())[:_PREFIX_LEN].lstrip("_-") or "id"
    return f"{prefix}~{digest}"


def legacy_dirname(instance_id: str) -> str:
    """The folder name nbflow 0.1 gave ``instance_id`` (valid on Linux only)."""
    if _LEGACY_SAFE.fullmatch(instance_id):
        return instance_id
    digest = _digest(instance_id)[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", instance_id)[:80].lstrip("._-") or "id"
    return f"{safe}~{digest}"


def resolve_dirname(parent: Path, instance_id: str) -> str:
    """The folder name of ``instance_id`` under ``parent``: its legacy name when a folder
    of exactly that name exists (a store written by nbflow 0.1), else ``instance_dirname``.

    "Exactly" matters where the filesystem folds case or drops trailing dots: there the
    legacy ``Run`` would find the folder of ``run``, so the spelling is confirmed in a
    listing of ``parent``. That listing is only made when the first look is ambiguous.
    """
    name = instance_dirname(instance_id)
    old = legacy_dirname(instance_id)
    if old != name and _has_exact_folder(parent, old):
        return old
    return name


def _has_exact_folder(parent: Path, name: str) -> bool:
    try:
        found = os.stat(parent / name)
    except (OSError, ValueError):
        return False
    if not stat.S_ISDIR(found.st_mode):
        return False
    if _ALIASED_BY_CASE_ONLY.fullmatch(name) and not name.endswith(".") and _stem(name) not in _DEVICES:
        # Only case can alias this name to another: look at its case twin. A filesystem
        # that tells them apart has just answered exactly.
        try:
            twin = os.stat(parent / name.swapcase())
        except (OSError, ValueError):
            return True
        if not os.path.samestat(found, twin):
            return True
    try:
        return name in os.listdir(parent)
    except OSError:
        return False
