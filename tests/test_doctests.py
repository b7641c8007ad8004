"""Docstring examples are tests (diskcache's pattern): they cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["nbflow.core", "nbflow.store", "nbflow.run", "nbflow.jupyter"]


def _modules() -> list[str]:
    names = ["nbflow"]
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names.extend(info.name for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."))
    return names


@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_there_are_doctests() -> None:
    total = sum(doctest.testmod(importlib.import_module(n)).attempted for n in _modules())
    assert total >= 20
