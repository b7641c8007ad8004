"""Contract of the control channel (signals and control requests), over every store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbflow.store.base import CheckpointRecord, ControlChannel, InstanceMeta
from tests.store.implementations import IMPLEMENTATIONS, close_store, make_store


@pytest.fixture(params=IMPLEMENTATIONS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    backend = make_store(request.param, tmp_path)
    backend.save_instance(InstanceMeta("i", "wf", "h"))
    yield backend
    close_store(backend)


def test_is_a_control_channel(store: Any) -> None:
    assert isinstance(store, ControlChannel)


def test_signals_are_fifo_per_name(store: Any) -> None:
    assert store.pop_signal("i", "go") is None
    store.push_signal("i", "go", b"1")
    store.push_signal("i", "go", b"2")
    store.push_signal("i", "other", b"x")
    assert store.pop_signal("i", "go") == b"1"
    assert store.pop_signal("i", "go") == b"2"
    assert store.pop_signal("i", "go") is None
    assert store.pop_signal("i", "other") == b"x"


def test_signal_payloads_keep_every_byte(store: Any) -> None:
    payloads = [b"", b"\x00" * 5, bytes(range(256)), b"z" * 300_000]
    for payload in payloads:
        store.push_signal("i", "data", payload)
    assert [store.pop_signal("i", "data") for _ in payloads] == payloads


def test_consume_signal_pops_and_stores_the_wait_record_together(store: Any) -> None:
    assert store.consume_signal("i", "go", CheckpointRecord("wait", "fp", "pickle")) is None
    assert store.get_record("i", "wait") is None
    store.push_signal("i", "go", b"first")
    store.push_signal("i", "go", b"second")
    assert store.consume_signal("i", "go", CheckpointRecord("wait", "fp", "pickle")) is not None
    record = store.get_record("i", "wait")
    with store.open_payload("i", record) as stream:
        assert stream.read() == b"first"  # the wait step's output is the signal's payload
    assert store.pop_signal("i", "go") == b"second"


def test_control_set_get_clear(store: Any) -> None:
    assert store.get_control("i") is None
    store.set_control("i", "cancelled", "because")
    assert store.get_control("i") == ("cancelled", "because")
    store.set_control("i", "paused")
    assert store.get_control("i") == ("paused", "")
    store.set_control("i", None)
    assert store.get_control("i") is None


def test_control_requests_are_per_instance(store: Any) -> None:
    store.save_instance(InstanceMeta("j", "wf", "h"))
    store.set_control("i", "paused", "lunch")
    assert store.get_control("j") is None
    store.push_signal("j", "go", b"j")
    assert store.pop_signal("i", "go") is None
