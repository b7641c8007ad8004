"""Store records are strict JSON: the encoder nbflow keeps (the C encoder made once)
writes the same bytes as the standard library's ``JSONEncoder`` with the same options,
and refuses what it refuses."""

from __future__ import annotations

import collections
import dataclasses
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbflow.store.base import CheckpointRecord
from nbflow.store.records import BLOB_NAME, RECORD_MAGIC, RecordFormatError, decode_record, encode_json, encode_record

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


# -- reading records back ------------------------------------------------------------------
blob_names = st.none() | st.text("0123456789abcdef", min_size=32, max_size=32).map(lambda h: h + ".bin")
readable = records | st.builds(
    CheckpointRecord,
    task_id=text,
    fingerprint=text,
    codec=text,
    attempt=st.integers(-(2**70), 2**70),
    started_at=finite | st.integers(-(2**60), 2**60),
    finished_at=finite,
    size=st.integers(0, 2**40),
    payload=st.binary(max_size=40),
    blob=blob_names,
    worker=st.none() | text,
    preview_bundle=st.dictionaries(text, text, max_size=3),
    extra=st.dictionaries(text, values, max_size=3),
)


def _as_read(record: CheckpointRecord) -> CheckpointRecord:
    """What reading ``record`` back must give: JSON turns tuples into lists, a named
    output file keeps no inline payload, and an inline one is the bytes after the header."""
    data = json.loads(json.dumps(record.to_dict(), default=lambda b: b.hex()))
    data["payload"] = None if record.blob is not None else (record.payload or b"")
    return CheckpointRecord(**data)


@settings(max_examples=400, deadline=None, database=None)
@given(readable)
def test_a_record_reads_back_as_written(record: CheckpointRecord) -> None:
    if record.blob is not None and not BLOB_NAME.match(record.blob):
        with pytest.raises(RecordFormatError, match="not an nbflow blob name"):
            decode_record(encode_record(record))
        return
    back = decode_record(encode_record(record))
    assert back == _as_read(record)
    assert list(vars(back)) and set(vars(back)) == {f.name for f in dataclasses.fields(CheckpointRecord)}


def _header_of(**changes: Any) -> bytes:
    record = CheckpointRecord(task_id="t", fingerprint="f", codec="pickle", payload=b"xyz", extra={"fp_at": "t0"})
    header = record.to_dict()
    del header["payload"]
    header.update(changes)
    head = json.dumps(header).encode()
    return RECORD_MAGIC + struct.pack("<I", len(head)) + head + b"xyz"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task_id": 5}, "'task_id' of a task record is not a string"),
        ({"generation": None}, "'generation' of a task record is not a string"),
        ({"attempt": True}, "'attempt' of a task record is not an integer"),
        ({"size": 1.5}, "'size' of a task record is not an integer"),
        ({"started_at": "noon"}, "'started_at' of a task record is not a number"),
        ({"finished_at": False}, "'finished_at' of a task record is not a number"),
        ({"worker": 7}, "'worker' of a task record is not a string"),
        ({"blob": "../../etc/passwd"}, "not an nbflow blob name"),
        ({"extra": [1]}, "'extra' of a task record is not an object"),
    ],
)
def test_a_header_field_of_the_wrong_type_is_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordFormatError, match=message):
        decode_record(_header_of(**changes))


@pytest.mark.parametrize(
    "changes",
    [{"preview_bundle": {"text/html": 5}}, {"preview_bundle": ["x"]}, {"newer_field": 1}, {"payload": "planted"}],
    ids=["bad-bundle-value", "bundle-not-object", "unknown-field", "payload-in-header"],
)
def test_an_unusual_header_is_read_by_the_general_path(changes: dict[str, Any]) -> None:
    record = decode_record(_header_of(**changes))
    assert record.payload == b"xyz"  # the bytes after the header, never a field of it
    assert record.preview_bundle == {}  # a bundle that is not {str: str} is dropped, never shown
    assert not hasattr(record, "newer_field")
    assert record.extra == {"fp_at": "t0"}


def test_a_header_missing_a_field_reads_with_its_default() -> None:
    data = CheckpointRecord(task_id="t", fingerprint="f", codec="pickle").to_dict()
    for name in ("payload", "worker", "stdout"):
        del data[name]
    head = json.dumps(data).encode()
    record = decode_record(RECORD_MAGIC + struct.pack("<I", len(head)) + head)
    assert (record.worker, record.stdout, record.payload) == (None, "", b"")
