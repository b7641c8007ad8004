"""Fixtures of the browser tests (helpers: ``_lab.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._lab import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
