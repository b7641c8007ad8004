"""Store records are strict JSON: the encoder nbflow keeps (the C encoder made once)
writes the same bytes as the standard library's ``JSONEncoder`` with the same options,
and refuses what it refuses."""

from __future__ import annotations

import collections
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbflow.store.base import CheckpointRecord
from nbflow.store.records import RECORD_MAGIC, encode_json, encode_record

REFERENCE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)
text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
plain = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
values = st.recursive(
    plain,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(text | st.integers() | st.booleans() | st.none(), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, database=None)
@given(values)
def test_records_are_the_bytes_the_standard_encoder_writes(value: Any) -> None:
    encoded = encode_json(value)
    assert encoded == REFERENCE.encode(value).encode("ascii")
    assert encoded.isascii()


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"a": [float("inf")]}, b"bytes", {"a": {1, 2}}, {1j: 2}, object()],
    ids=["nan", "inf", "bytes", "set", "complex-key", "object"],
)
def test_what_json_cannot_hold_is_refused(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as ours:
        encode_json(value)
    with pytest.raises(type(ours.value)):
        REFERENCE.encode(value)


def _general(record: CheckpointRecord) -> bytes:
    """A record's bytes the general way: every field through the JSON encoder."""
    header = record.to_dict()
    del header["payload"]
    head = encode_json(header)
    return RECORD_MAGIC + struct.pack("<I", len(head)) + head + (record.payload or b"")


finite = st.floats(allow_nan=False, allow_infinity=False)
records = st.builds(
    CheckpointRecord,
    task_id=text,
    fingerprint=text,
    codec=text,
    attempt=st.integers(-(2**70), 2**70),
    started_at=finite,
    finished_at=finite,
    size=st.integers(0, 2**40),
    payload=st.none() | st.binary(max_size=40),
    blob=st.none() | text,
    preview=text,
    stdout=text,
    stderr=text,
    worker=st.none() | text,
    preview_bundle=st.dictionaries(text, text, max_size=3),
    extra=st.dictionaries(text, values, max_size=3),
    checksum=text,
    generation=text,
)


@settings(max_examples=400, deadline=None, database=None)
@given(records)
def test_a_record_is_written_field_by_field_as_the_general_encoder_writes_it(record: CheckpointRecord) -> None:
    assert encode_record(record) == _general(record)


@pytest.mark.parametrize(
    "fields",
    [{"started_at": 5}, {"attempt": True}, {"worker": 3}, {"extra": collections.OrderedDict(a=1)}, {"size": 2.0}],
    ids=["int-time", "bool-attempt", "int-worker", "ordered-extra", "float-size"],
)
def test_a_field_of_an_unusual_type_takes_the_general_path(fields: dict[str, Any]) -> None:
    record = CheckpointRecord(task_id="t", fingerprint="f", codec="pickle", payload=b"x", **fields)
    assert encode_record(record) == _general(record)


def test_a_non_finite_time_is_refused_as_the_general_encoder_refuses_it() -> None:
    with pytest.raises(ValueError):
        encode_record(CheckpointRecord(task_id="t", fingerprint="f", codec="pickle", finished_at=float("nan")))
