"""Store records are strict JSON: the encoder nbflow keeps (the C encoder made once)
writes the same bytes as the standard library's ``JSONEncoder`` with the same options,
and refuses what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbflow.store.records import encode_json

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
