"""Codecs give back every value they accept, or refuse it when it is dumped.

Property-based (hypothesis): PickleCodec over nested builtins, bytes of sizes around
each boundary, numpy arrays of every dtype and layout, DataFrames, and streams that
return short reads; JsonCodec over JSON values (same types back), over arbitrary
builtins (refused exactly when an independent check says JSON would change them), and
over damaged bytes (refused with a ValueError the caller turns into a corrupt-checkpoint
error). The default run is a few hundred examples; ``NBFLOW_HYPOTHESIS_SCALE=20`` runs
twenty times as many.
"""

from __future__ import annotations

import collections
import decimal
import enum
import errno
import io
import json
import math
import os
import pickle
import re
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import hypothesis.extra.numpy as nps
import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no stubs installed
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbflow as nf
from nbflow.run.checkpoint import CheckpointIO
from tests.core.codec_values import KIB, assert_same, payload, pickle_catalogue

SCALE = int(os.environ.get("NBFLOW_HYPOTHESIS_SCALE", "1"))
PICKLE, JSON = nf.PickleCodec(), nf.JsonCodec()


def examples(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        database=None,  # several people share this tree: no .hypothesis/ directory
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# -- strategies -------------------------------------------------------------------------
any_text = st.text(st.characters(exclude_categories=()), max_size=8)  # lone surrogates included
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text | st.binary(max_size=6),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
pickle_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats()
    | st.complex_numbers()
    | any_text
    | st.binary(max_size=40)
    | st.binary(max_size=20).map(bytearray)
)
pickle_values = st.recursive(
    pickle_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=3)
    ),
    max_leaves=20,
)

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**200), max_value=10**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)

# Sizes within 16 bytes of 0, the pickle frame size, the store's inline limit and 1 MiB.
sizes = st.sampled_from([0, 64 * KIB, 256 * KIB, 1024 * KIB]).flatmap(
    lambda edge: st.integers(max(0, edge - 16), edge + 16)
)

array_dtypes = (
    nps.scalar_dtypes()  # bool, ints, floats, complex, datetime64, timedelta64; both byte orders
    | nps.floating_dtypes(sizes=(16, 32, 64, 128))
    | nps.complex_number_dtypes(sizes=(64, 128, 256))
    | nps.unicode_string_dtypes(max_len=4)
    | nps.byte_string_dtypes(max_len=4)
    | nps.array_dtypes(allow_subarrays=True)  # structured
)
shapes = nps.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


@st.composite
def ndarrays(draw: st.DrawFn) -> Any:
    """Arrays of any dtype (object included), C or Fortran order, or a strided view."""
    if draw(st.integers(0, 5)) == 0:
        items = draw(st.lists(pickle_values, min_size=0, max_size=6))
        base: Any = np.empty(len(items), dtype=object)
        for i, item in enumerate(items):
            base[i] = item
        if len(items) % 2 == 0 and items:
            base = base.reshape(2, -1)
    else:
        base = draw(nps.arrays(draw(array_dtypes), draw(shapes)))
    layout = draw(st.sampled_from(["c", "fortran", "view", "transposed"]))
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "transposed":
        return base.T
    if layout == "view" and base.ndim:
        return base[draw(nps.basic_indices(base.shape, allow_ellipsis=True))]  # may be a 0-d view or a scalar
    return base


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 8))
    kinds = draw(st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=1, max_size=5))
    frame = pd.DataFrame({f"{kind}{i}": _COLUMNS[kind](draw, n) for i, kind in enumerate(kinds)})
    if draw(st.booleans()) and n:
        frame = frame.iloc[:: draw(st.integers(1, 3))]  # a non-contiguous row selection
    return frame


def _floats_column(draw: st.DrawFn, n: int) -> Any:
    return np.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype="f8")


_COLUMNS: dict[str, Callable[[st.DrawFn, int], Any]] = {
    "int": lambda draw, n: np.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), "i8"),
    "float": _floats_column,
    "object": lambda draw, n: pd.Series(draw(st.lists(pickle_leaves, min_size=n, max_size=n)), dtype=object),
    "category": lambda draw, n: pd.Categorical(
        draw(st.lists(st.sampled_from(["a", "b", None]), min_size=n, max_size=n))
    ),
    "bool": lambda draw, n: np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool),
    "datetime": lambda draw, n: pd.to_datetime(
        draw(st.lists(st.integers(0, 2**50), min_size=n, max_size=n)), unit="us", utc=draw(st.booleans())
    ),
    "nullable": lambda draw, n: pd.array(
        draw(st.lists(st.none() | st.integers(-99, 99), min_size=n, max_size=n)), "Int64"
    ),
}


# -- PickleCodec ------------------------------------------------------------------------
def test_the_64_kib_bytes_that_used_to_fail_load() -> None:
    """The C unpickler reads large bytes with one readinto and takes a short answer for
    truncated data; readinto used to return only what was left of the 8 bytes put back
    after peeking at the magic (here 1 byte)."""
    assert PICKLE.loads(PICKLE.dumps(b"x" * 65536)) == b"x" * 65536


@examples(100)
@given(pickle_values)
def test_pickle_round_trips_nested_builtins(value: Any) -> None:
    assert_same(value, PICKLE.loads(PICKLE.dumps(value)))


@examples(40)
@given(sizes, st.sampled_from([bytes, bytearray, memoryview]), st.integers(0, 2**32))
def test_pickle_round_trips_bytes_of_any_size(size: int, kind: type, seed: int) -> None:
    value = kind(payload(size, str(seed)))
    back = PICKLE.loads(PICKLE.dumps(value))
    assert_same(value, back)
    assert len(back) == size


@examples(120)
@given(ndarrays())
def test_pickle_round_trips_numpy_arrays(array: Any) -> None:
    assert_same(array, PICKLE.loads(PICKLE.dumps(array)))


@examples(30)
@given(frames())
def test_pickle_round_trips_dataframes_and_series(frame: pd.DataFrame) -> None:
    assert_same(frame, PICKLE.loads(PICKLE.dumps(frame)))
    for name in frame.columns:
        assert_same(frame[name], PICKLE.loads(PICKLE.dumps(frame[name])))


class _Stream(io.BytesIO):
    """The same bytes as a stream that is not a BytesIO (as a blob file is read)."""


def _outcome(load: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", load()
    except (EOFError, pickle.UnpicklingError, ValueError) as exc:
        return "refused", type(exc)


@examples(60)
@given(pickle_values | ndarrays(), st.data())
def test_an_inline_payload_decodes_as_a_streamed_one(value: Any, data: st.DataObject) -> None:
    """A payload in memory is unpickled in one call, a stream through the exact reader:
    both give the same value for whole bytes and the same refusal for cut ones."""
    encoded = PICKLE.dumps(value)
    cut = data.draw(st.integers(0, len(encoded)))
    fast = _outcome(lambda: PICKLE.load(io.BytesIO(encoded[:cut])))
    streamed = _outcome(lambda: PICKLE.load(cast(IO[bytes], _Stream(encoded[:cut]))))
    assert fast[0] == streamed[0]
    if fast[0] == "value":
        assert_same(streamed[1], fast[1])
        if cut == len(encoded):
            assert_same(value, fast[1])
    else:
        assert cut < len(encoded)


@examples(30)
@given(st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=5), st.data())
def test_pickle_keeps_shared_references(items: list[list[int]], data: st.DataObject) -> None:
    """A list that holds the same objects several times gets one object back per original."""
    picks = data.draw(st.lists(st.integers(0, len(items) - 1), min_size=1, max_size=8))
    value = [items[i] for i in picks]
    back = PICKLE.loads(PICKLE.dumps(value))
    assert_same(value, back)
    for j, i in enumerate(picks):
        assert back[j] is back[picks.index(i)]
    assert len({id(item) for item in back}) == len(set(picks))


def test_pickle_keeps_cycles_and_objects_defined_in_main() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(  # a class the way a notebook defines it: in __main__, not importable
        "class Node:\n    def __init__(self, name):\n        self.name, self.links = name, []\n"
        "    def degree(self):\n        return len(self.links)\n",
        namespace,
    )
    node = namespace["Node"]
    a, b = node("a"), node("b")
    a.links.append(b)
    b.links.append(a)
    a.links.append(a)
    loop: list[Any] = []
    loop.append(loop)
    value = {"graph": [a, b], "loop": loop, "array": np.array([a, b], dtype=object)}
    back = PICKLE.loads(PICKLE.dumps(value))
    assert_same(value, back)
    first = back["graph"][0]
    assert first.links[1] is first and first.links[0].links[0] is first and first.degree() == 2
    assert back["loop"][0] is back["loop"] and back["array"][0] is first


@pytest.mark.parametrize("value", [pytest.param(value, id=name) for name, value in pickle_catalogue()])
def test_pickle_round_trips_the_catalogue(value: Any) -> None:
    """The fixed list the cross-process test uses, here in one process."""
    assert_same(value, PICKLE.loads(PICKLE.dumps(value)))


class ShortReads(io.RawIOBase):
    """A raw stream returning at most ``limit`` bytes per call, as a pipe may."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__()
        self._data, self._pos, self._limit = memoryview(data), 0, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._limit, len(self._data) - self._pos)
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class ReadOnlyShortReads:
    """Only ``read(n)``, at most ``limit`` bytes a call: no readinto, seek or tell."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data, self._pos, self._limit = data, 0, limit

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + min(size, self._limit)
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk


@examples(60)
@given(
    st.one_of(pickle_values, ndarrays(), frames(), sizes.map(lambda n: payload(n, "short"))),
    st.sampled_from([ShortReads, ReadOnlyShortReads]),
    st.data(),
)
def test_pickle_loads_from_streams_that_return_short_reads(value: Any, reader: Any, data: st.DataObject) -> None:
    encoded = PICKLE.dumps(value)
    # Tiny reads only on small payloads: byte-by-byte over a MiB would take seconds.
    limit = data.draw(st.integers(1, 64) if len(encoded) < 8 * KIB else st.integers(1000, 70 * KIB), label="limit")
    assert_same(value, PICKLE.load(cast(IO[bytes], reader(encoded, limit))))


def test_pickle_loads_from_a_real_pipe() -> None:
    """A raw pipe returns what the writer has pushed so far (64 KiB on Linux)."""
    rng = np.random.default_rng(3)
    values = [payload(3 * 1024 * KIB + 7, "pipe"), rng.random((600, 700)), pd.DataFrame({"x": rng.random(70_000)})]
    for value in values:
        encoded = PICKLE.dumps(value)
        read_fd, write_fd = os.pipe()

        def feed(fd: int = write_fd, data: bytes = encoded) -> None:
            with open(fd, "wb", buffering=0) as pipe:
                pipe.write(data)

        writer = threading.Thread(target=feed)
        writer.start()
        with open(read_fd, "rb", buffering=0) as pipe:
            back = PICKLE.load(pipe)
        writer.join()
        assert_same(value, back)


def test_pickle_writes_large_buffers_out_of_band_without_a_second_copy(tmp_path: Path) -> None:
    array = np.random.default_rng(1).random(2_000_000)  # 16 MB
    path = tmp_path / "payload"
    tracemalloc.start()
    try:
        with open(path, "wb") as f:
            PICKLE.dump({"array": array}, f)  # a builtin dict holding an array: still out of band
        _, dump_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(path, "rb") as f:
            back = PICKLE.load(f)
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.read_bytes()[:8] == b"NBFLOOB1"
    assert path.stat().st_size < array.nbytes + 4 * KIB
    assert dump_peak < 0.1 * array.nbytes, dump_peak  # written from the array's own memory
    assert load_peak < 1.1 * array.nbytes, load_peak  # read straight into the new array
    assert_same({"array": array}, back)


def test_pickle_keeps_the_plain_pickle_fast_path_for_builtins() -> None:
    value = {"rows": [1, 2.5, "x", None, (1, 2)], "ok": True}
    assert PICKLE.dumps(value) == pickle.dumps(value, protocol=5)


def test_pickle_refuses_at_dump_what_it_cannot_give_back() -> None:
    with pytest.raises(nf.CodecError, match=r"memoryview of format '>d'"):
        PICKLE.dumps(np.zeros(3, ">f8").data)  # only native formats can be rebuilt
    with pytest.raises(nf.CodecError, match=r"_thread\.lock.*at value\['a'\]\[1\]\['conn'\]"):
        PICKLE.dumps({"a": [1, {"conn": threading.Lock()}]})


@pytest.mark.parametrize("size", [0, 5, 9, 20, 100])
def test_pickle_reports_truncated_data(size: int) -> None:
    encoded = PICKLE.dumps({"array": np.arange(1000)})
    with pytest.raises((EOFError, pickle.UnpicklingError)):
        PICKLE.loads(encoded[:size] if size < 100 else encoded[: len(encoded) - 1])


# -- JsonCodec --------------------------------------------------------------------------
def json_exact(value: Any) -> bool:
    """Independent of the codec: does JSON give ``value`` back equal, same types?"""
    kind = type(value)
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if kind is float:
        return math.isfinite(value)
    if kind in (int, bool, type(None)):
        return True
    if kind is list:
        return all(json_exact(v) for v in value)
    if kind is dict:
        return all(type(k) is str and json_exact(k) and json_exact(v) for k, v in value.items())
    return False


@examples(100)
@given(json_values)
def test_json_round_trips_json_values_with_the_same_types(value: Any) -> None:
    assert_same(value, JSON.loads(JSON.dumps(value)), identity=False)


@examples(100)
@given(pickle_values)
def test_json_accepts_exactly_what_comes_back_equal(value: Any) -> None:
    if json_exact(value):
        assert_same(value, JSON.loads(JSON.dumps(value)), identity=False)
    else:
        with pytest.raises(nf.CodecError):
            JSON.dumps(value)


class Color(enum.IntEnum):
    RED = 1


class Pair(NamedTuple):
    a: int
    b: int


POISONS: list[tuple[Callable[[], Any], str]] = [
    (lambda: (1, 2), "tuple"),
    (lambda: Pair(1, 2), "Pair (a subclass of tuple)"),
    (lambda: {1, 2}, "set"),
    (lambda: frozenset({1}), "frozenset"),
    (lambda: b"x", "bytes"),
    (lambda: bytearray(b"x"), "bytearray"),
    (lambda: memoryview(b"x"), "memoryview"),
    (lambda: float("nan"), "float nan"),
    (lambda: float("inf"), "float inf"),
    (lambda: -float("inf"), "float -inf"),
    (lambda: {1: "a"}, "int dict key 1"),
    (lambda: {True: "a"}, "bool dict key True"),
    (lambda: {None: "a"}, "NoneType dict key None"),
    (lambda: {(1,): "a"}, "tuple dict key"),
    (lambda: {math.inf: "a"}, "float dict key inf"),
    (lambda: object(), "object"),
    (lambda: Color.RED, "Color (a subclass of int)"),
    (lambda: np.float64(0.5), "numpy.float64 (a subclass of float)"),
    (lambda: collections.OrderedDict(a=1), "OrderedDict (a subclass of dict)"),
    (lambda: decimal.Decimal("1.5"), "decimal.Decimal"),
    (lambda: 1j, "complex"),
    (lambda: "a\udc00", "lone surrogate"),
    (lambda: {"k\ud800": 1}, "lone surrogate"),
]


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[Any, str, str]:
    """A valid JSON value with one non-JSON part somewhere inside; its path and name."""
    make, name = draw(st.sampled_from(POISONS))
    value, steps = make(), []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            before = draw(st.lists(json_leaves, max_size=3))
            value = [*before, value, *draw(st.lists(json_leaves, max_size=3))]
            steps.append(f"[{len(before)}]")
        else:
            key = draw(st.text(max_size=5))
            others = draw(st.dictionaries(st.text(max_size=5), json_leaves, max_size=3))
            others.pop(key, None)
            value = {**others, key: value} if draw(st.booleans()) else {key: value, **others}
            steps.append(f"[{json.dumps(key)}]")
    return value, "value" + "".join(reversed(steps)), name


@examples(80)
@given(poisoned())
def test_json_refuses_at_dump_naming_the_type_and_where_it_is(case: tuple[Any, str, str]) -> None:
    value, path, name = case
    sink = io.BytesIO()
    with pytest.raises(nf.CodecError) as err:
        JSON.dump(value, sink)
    detail = err.value.detail
    assert name in detail, detail
    assert re.search(rf"at {re.escape(path)}(?![\[\w])", detail), (path, detail)
    assert sink.getvalue() == b"", "nothing is written for a refused value"


def test_json_refuses_cycles_and_accepts_deep_nesting() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(nf.CodecError, match=r"circular reference at value\[\"a\"\]\[1\]"):
        JSON.dumps({"a": loop})
    deep: Any = "bottom"
    for _ in range(500):
        deep = [deep]
    assert JSON.loads(JSON.dumps(deep)) == deep


_VALID_TOKENS = ["[", "]", "{", "}", ",", ":", '"a"', '"\\u00e9"', "1", "-0.0", "2.5e-3", "true", "null"]
_NOT_JSON_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1E+309", "9" * 320 + ".5", "1" * 320]
json_tokens = st.sampled_from([*_VALID_TOKENS, *_NOT_JSON_TOKENS])


def json_typed(value: Any) -> bool:
    """Only JSON types and finite floats (what ``load`` may return)."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(json_typed(v) for v in value)
    if kind is dict:
        return all(type(k) is str and json_typed(v) for k, v in value.items())
    return kind in (str, int, bool, type(None))


@examples(60)
@given(st.lists(json_tokens, max_size=12).map("".join).map(str.encode) | st.binary(max_size=30))
def test_json_load_gives_json_values_or_a_value_error(data: bytes) -> None:
    """Whatever is on disk, load returns only JSON types (no NaN, no infinity) or raises
    a ValueError, which CheckpointIO reports as a damaged checkpoint."""
    try:
        value = JSON.loads(data)
    except nf.NbflowError:
        pytest.fail("a decoding failure must not be an NbflowError: CheckpointIO would not wrap it")
    except ValueError as exc:
        assert str(exc).startswith("not a JSON checkpoint"), exc
    else:
        assert json_typed(value), value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff{}", "byte 0 is not UTF-8"),
        (b'{"a": "\xc3"}', "byte 7 is not UTF-8"),
        (b"[1, NaN]", "NaN is not JSON"),
        (b"-Infinity", "-Infinity is not JSON"),
        (b"[1e400]", "1e400 overflows to infinity"),
        (b"9" * 400 + b".0", "overflows to infinity"),
        (b'{"rows": [1, 2', "Expecting"),
        (b"", "Expecting value"),
    ],
)
def test_json_load_refuses_damaged_bytes_clearly(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        JSON.loads(data)


def test_json_loads_from_short_reads() -> None:
    value = {"text": "é" * 70_000, "rows": list(range(1000))}
    encoded = JSON.dumps(value)
    assert JSON.load(cast(IO[bytes], ReadOnlyShortReads(encoded, 999))) == value
    assert JSON.load(cast(IO[bytes], ShortReads(encoded, 1))) == value


# -- through the runner: what a user sees -----------------------------------------------
def test_a_refused_output_fails_its_task_naming_the_task_the_type_and_the_path() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    wf = nf.Workflow("w", codec=nf.JsonCodec()).then("make", lambda x: {"rows": [1, 2, 3, (4, 5)]}).build()
    error = runner.run(wf, "i", None).error
    assert error is not None and error.type == "CodecError" and error.task_id == "make"
    message = error.message
    assert "task 'make'" in message and 'tuple at value["rows"][3]' in message, message
    assert "'?'" not in message and message.count("cannot handle") == 1, message

    wf = nf.Workflow("p").then("connect", lambda x: {"conn": threading.Lock()}).build()
    error = runner.run(wf, "j", None).error
    assert error is not None
    message = error.message
    assert "task 'connect'" in message and "_thread.lock" in message and "value['conn']" in message, message


class _Sink:
    """A payload sink on a full disk."""

    discarded = False

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def discard(self) -> None:
        self.discarded = True


class _FullDisk:
    def __init__(self) -> None:
        self.sink = _Sink()

    def new_sink(self, instance_id: str) -> _Sink:
        return self.sink


@pytest.mark.parametrize("codec", [nf.PickleCodec(), nf.JsonCodec()], ids=["pickle", "json"])
@pytest.mark.parametrize("value", [{"small": 1}, {"large": "x" * 300_000}], ids=["small", "large"])
def test_a_full_disk_is_an_os_error_not_a_codec_error(codec: Any, value: Any) -> None:
    backend = _FullDisk()
    io_ = CheckpointIO(backend, "i", codec)  # type: ignore[arg-type]
    with pytest.raises(OSError) as err:
        io_.encode("t", "f", value)
    assert err.value.errno == errno.ENOSPC and not isinstance(err.value, nf.NbflowError)
    assert backend.sink.discarded
