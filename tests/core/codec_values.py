"""Values for codec round-trip tests, and a strict equality to compare them with.

Used by the property tests in ``test_codec_roundtrip.py`` and, in a child process, by
``tests/store/test_value_roundtrip.py``: :func:`pickle_catalogue` and
:func:`json_catalogue` are deterministic, so a reader process rebuilds exactly the
values a writer process checkpointed without receiving them.
"""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no stubs installed

KIB = 1024
INLINE_LIMIT = 256 * KIB  # DiskcacheBackend keeps larger encoded outputs in their own file


def assert_same(expected: Any, actual: Any, path: str = "value", *, identity: bool = True) -> None:
    """Assert ``actual`` equals ``expected`` with the same types all the way down.

    NaN equals NaN and -0.0 differs from 0.0; numpy arrays compare dtype, shape and
    values but not memory layout; DataFrames go through ``pandas.testing``. With
    ``identity`` (pickle), an object reached twice in ``expected`` (shared references,
    cycles) must be one object in ``actual`` too.
    """
    _same(expected, actual, path, identity, {})


# A path is the root's name, or (parent path, step): built for every element compared,
# so it stays a tuple and becomes text only in a failure message.
_Path = Any
_PLAIN = frozenset({str, int, bool, bytes, type(None)})


class _Suffix(str):
    """A step written as it is (".real"), unlike a key or index, written as [repr]."""


_REAL, _IMAG, _KEY, _ATTRS = _Suffix(".real"), _Suffix(".imag"), _Suffix(" (a key)"), _Suffix(".__dict__")


def _where(path: _Path) -> str:
    steps = []
    while isinstance(path, tuple):
        path, step = path
        steps.append(step if type(step) is _Suffix else f"[{step!r}]")
    return str(path) + "".join(reversed(steps))


def _same(expected: Any, actual: Any, path: _Path, identity: bool, seen: dict[int, Any]) -> None:
    kind = type(expected)
    if kind in _PLAIN:  # most elements: no identity, no recursion
        assert type(actual) is kind and actual == expected, (
            f"{_where(path)}: {_short(actual)} instead of {_short(expected)}"
        )
        return
    if identity and _has_identity(expected):
        if id(expected) in seen:
            assert seen[id(expected)] is actual, f"{_where(path)}: a shared reference came back as a copy"
            return
        seen[id(expected)] = actual
    assert type(actual) is kind, f"{_where(path)}: {type(actual).__name__} instead of {kind.__name__}"
    if kind is float:
        _same_float(expected, actual, path)
    elif kind is complex:
        _same_float(expected.real, actual.real, (path, _REAL))
        _same_float(expected.imag, actual.imag, (path, _IMAG))
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{_where(path)}: length {len(actual)} instead of {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _same(e, a, (path, i), identity, seen)
    elif isinstance(expected, dict):
        assert len(actual) == len(expected), f"{_where(path)}: {len(actual)} keys instead of {len(expected)}"
        for (ek, ev), (ak, av) in zip(expected.items(), actual.items(), strict=True):
            _same(ek, ak, (path, _KEY), False, seen)
            _same(ev, av, (path, ek), identity, seen)
    elif isinstance(expected, memoryview):
        assert (actual.format, actual.shape, actual.readonly) == (expected.format, expected.shape, expected.readonly), (
            f"{_where(path)}: memoryview {actual.format} {actual.shape} readonly={actual.readonly}, expected "
            f"{expected.format} {expected.shape} readonly={expected.readonly}"
        )
        assert actual.tobytes() == expected.tobytes(), f"{_where(path)}: memoryview contents differ"
    elif isinstance(expected, np.ndarray):
        _same_array(expected, actual, path, identity, seen)
    elif isinstance(expected, np.generic):
        _same_array(np.asarray(expected), np.asarray(actual), path, identity, seen)
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, obj=_where(path))
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected, check_exact=True, obj=_where(path))
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(actual, expected, exact=True, obj=_where(path))
    elif isinstance(expected, str | bytes | bytearray | int | set | frozenset):
        assert actual == expected, f"{_where(path)}: {_short(actual)} instead of {_short(expected)}"
    elif hasattr(expected, "__dict__") and not isinstance(expected, type):
        _same(vars(expected), vars(actual), (path, _ATTRS), identity, seen)
    else:
        assert actual == expected, f"{_where(path)}: {_short(actual)} instead of {_short(expected)}"


def _has_identity(value: Any) -> bool:
    """Objects whose identity pickle keeps (mutable ones; immutables may be merged)."""
    if isinstance(value, list | dict | set | bytearray | memoryview | np.ndarray):
        return True
    return hasattr(value, "__dict__") and not isinstance(value, type | pd.DataFrame | pd.Series | pd.Index)


def _same_float(expected: float, actual: float, path: _Path) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"{_where(path)}: {actual!r} instead of nan"
        return
    assert actual == expected, f"{_where(path)}: {actual!r} instead of {expected!r}"
    assert math.copysign(1, actual) == math.copysign(1, expected), f"{_where(path)}: {actual!r} instead of {expected!r}"


def _same_array(expected: np.ndarray, actual: np.ndarray, path: _Path, identity: bool, seen: dict[int, Any]) -> None:
    assert actual.dtype == expected.dtype, f"{_where(path)}: dtype {actual.dtype!r} instead of {expected.dtype!r}"
    assert actual.shape == expected.shape, f"{_where(path)}: shape {actual.shape} instead of {expected.shape}"
    dtype = expected.dtype
    if dtype.names is not None:
        for name in dtype.names:
            _same_array(expected[name], actual[name], (path, name), identity, seen)
    elif dtype.hasobject:
        for i, (e, a) in enumerate(zip(expected.flat, actual.flat, strict=True)):
            _same(e, a, ((path, _Suffix(".flat")), i), identity, seen)
    elif dtype.kind in "fc":
        assert np.array_equal(actual, expected, equal_nan=True), f"{_where(path)}: values differ"
    elif dtype.kind in "mM":  # NaT != NaT, so compare the stored integers
        assert np.array_equal(actual.view("i8"), expected.view("i8")), f"{_where(path)}: values differ"
    elif dtype.kind == "V":
        assert actual.tobytes() == expected.tobytes(), f"{_where(path)}: bytes differ"
    else:
        assert np.array_equal(actual, expected), f"{_where(path)}: values differ"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the catalogues ---------------------------------------------------------------------
def payload(size: int, seed: str) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed in any process."""
    return random.Random(seed).randbytes(size)


def bytes_sizes() -> list[int]:
    """Sizes on each side of 0, the pickle frame (64 KiB), the store's inline limit and
    1 MiB, and a few MiB. The inline limit is on the *encoded* size, so the sizes around
    it are shifted by the pickle header of a bytes value."""
    header = len(pickle.dumps(b"x" * 70_000, protocol=5)) - 70_000  # what PickleCodec adds to bytes
    edges = [0, 1, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 1024 * KIB - 1, 1024 * KIB, 1024 * KIB + 1]
    edges += [INLINE_LIMIT - 1, INLINE_LIMIT, INLINE_LIMIT + 1]
    edges += [INLINE_LIMIT - header - 1, INLINE_LIMIT - header, INLINE_LIMIT - header + 1, 3 * 1024 * KIB + 7]
    return sorted(set(edges))


def pickle_catalogue() -> list[tuple[str, Any]]:
    """Every kind of value PickleCodec must give back: (name, value) pairs."""
    values: list[tuple[str, Any]] = []
    for size in bytes_sizes():
        data = payload(size, f"bytes-{size}")
        values.append((f"bytes-{size}", data))
        if size in (0, 64 * KIB, INLINE_LIMIT + 1, 3 * 1024 * KIB + 7):
            values.append((f"bytearray-{size}", bytearray(data)))
            values.append((f"memoryview-{size}", memoryview(data)))
    values.append(("memoryview-2d-doubles", np.arange(12.0).reshape(3, 4).data.toreadonly()))
    values.append(("memoryview-strided", memoryview(bytearray(payload(100, "mv")))[::3]))

    rng = np.random.default_rng(7)
    for dtype in [
        "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G",
        ">i4", ">f8", "<c16", ">g", ">G", "M8[ns]", "M8[D]", ">M8[us]", "m8[s]", ">m8[ms]", "U7", ">U3", "S5", "V6",
    ]:  # fmt: skip
        values.append((f"ndarray-{dtype}", _array(rng, np.dtype(dtype), (4, 5))))
    values.append(("ndarray-nan-nat", np.array([np.nan, -0.0, np.inf, 1.5])))
    values.append(("ndarray-nat", np.array(["NaT", "2026-01-01"], dtype="M8[s]")))
    values.append(("ndarray-0d", np.array(3.25)))
    values.append(("ndarray-empty", np.zeros((0, 3), dtype="i4")))
    values.append(("ndarray-fortran", np.asfortranarray(rng.random((30, 7)))))
    values.append(("ndarray-strided", rng.random((40, 30))[::3, ::-2]))
    values.append(("ndarray-big-endian-strided", rng.random((9, 8)).astype(">f8")[::2, 1::3]))
    values.append(("ndarray-transposed", rng.integers(0, 100, (5, 8, 3)).transpose(2, 0, 1)))
    readonly = rng.random(50)
    readonly.flags.writeable = False
    values.append(("ndarray-readonly", readonly))
    values.append(("ndarray-large", rng.random(1_000_000)))  # 8 MB: out-of-band, spilled to a file
    obj = np.empty(5, dtype=object)
    obj[:] = [1, "two", None, [3.0, float("nan")], {"k": (1, 2)}]
    values.append(("ndarray-object", obj))
    values.append(("ndarray-object-2d-strided", np.array([[1, "a"], [None, 2.5], [b"x", (1,)]], dtype=object)[::2]))
    structured = np.zeros(4, dtype=[("id", "i4"), ("score", "f8"), ("name", "U3"), ("pos", "f4", (2,))])
    structured["id"], structured["score"], structured["name"] = (
        [1, 2, 3, 4],
        [0.5, np.nan, -1, 2],
        ["a", "bb", "", "ccc"],
    )
    values.append(("ndarray-structured", structured))
    values.append(("ndarray-structured-strided", structured[::2]))
    values.append(("ndarray-structured-object", np.array([(1, "x"), (2, None)], dtype=[("n", "i8"), ("o", "O")])))
    values.append(("numpy-scalars", [np.float64(1.5), np.int8(-3), np.datetime64("2026-01-01"), np.complex64(1j)]))

    frame = pd.DataFrame(
        {
            "int": np.arange(6),
            "float": [0.5, np.nan, -0.0, np.inf, 1e300, 2.0],
            "object": ["a", None, "ccc", 3, 4.5, ("t",)],
            "category": pd.Categorical(["x", "y", "x", None, "z", "y"], categories=["z", "y", "x"], ordered=True),
            "bool": [True, False, True, True, False, False],
            "when": pd.date_range("2026-01-01", periods=6, freq="h", tz="UTC"),
            "nullable": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
            "string": pd.array(["s", None, "u", "v", "w", "x"], dtype="string"),
        },
        index=pd.Index(list("abcdef"), name="key"),
    )
    values.append(("dataframe-mixed", frame))
    values.append(("dataframe-multiindex", frame.set_index(["int", "bool"])))
    values.append(("dataframe-empty", frame.iloc[:0]))
    values.append(("dataframe-large", pd.DataFrame(rng.random((40_000, 5)), columns=list("abcde"))))  # 1.6 MB
    values.append(("series-category", pd.Series(pd.Categorical(list("abcab")), name="c")))
    values.append(("series-object", pd.Series([1, "x", None, [2]], name="o")))

    values.append(("builtins-nested", _nested_builtins()))
    values.append(("builtins-shared", _shared_references(rng)))
    values.append(("builtins-cycle", _cycles()))
    values.append(("mixed-dict-of-arrays", {"a": rng.random(70_000), "df": frame, "raw": payload(70_000, "mixed")}))
    return values


def _array(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    n = math.prod(shape)
    kind = dtype.kind
    if kind == "b":
        flat: Any = rng.integers(0, 2, n).astype(bool)
    elif kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype.newbyteorder("="), endpoint=True)
    elif kind == "f":
        flat = rng.standard_normal(n) * 1e3
        flat[:3] = [np.nan, -0.0, np.inf]
    elif kind == "c":
        flat = rng.standard_normal(n) + 1j * rng.standard_normal(n)
        flat[0] = complex(np.nan, 1)
    elif kind in "mM":
        flat = rng.integers(-(10**6), 10**6, n).astype(f"{kind}8[{np.datetime_data(dtype)[0]}]")
    elif kind == "U":
        flat = np.array(["", "a", "λ ☃", "\U0001f600x", "longest"] * n)[:n]
    elif kind == "S":
        flat = np.array([b"", b"a\x00b", b"xyz", b"\xff\xfe"] * n)[:n]
    else:  # void: raw bytes
        flat = np.frombuffer(rng.bytes(n * dtype.itemsize), dtype=dtype)
    return np.asarray(flat).astype(dtype).reshape(shape)


def _nested_builtins() -> Any:
    return {
        "ints": [0, -1, 2**64, -(2**200), True, False],
        "floats": [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308],
        "complex": [1j, complex(float("nan"), -0.0)],
        "str": ["", "unicode λ ☃ \U0001f600", "lone \ud800 surrogate", "\x00nul"],
        "bytes": [b"", b"\x00\xff", bytearray(b"ba")],
        "keys": {1: "int", (1, "t"): "tuple", frozenset({2}): "frozenset", None: "none", 2.5: "float", "": "str"},
        "sets": [set(), {1, "a", (2, 3)}, frozenset({b"x", 0.5})],
        "deep": [[[[[[{"x": ({"y": [None]},)}]]]]]],
        "ranges": [range(3), slice(1, 2), Ellipsis, NotImplemented],
    }


def _shared_references(rng: np.random.Generator) -> Any:
    row: list[Any] = [1, 2]
    table = {"t": "x"}
    array = rng.random(10)
    return {"a": row, "b": row, "c": [table, table, {"again": table}], "arrays": [array, array]}


def _cycles() -> Any:
    loop: list[Any] = [1]
    loop.append(loop)
    graph: dict[str, Any] = {"name": "root", "children": []}
    graph["children"].append({"name": "child", "parent": graph})
    return {"list": loop, "graph": graph}


def json_catalogue() -> list[tuple[str, Any]]:
    """Values JsonCodec must give back equal and of the same types."""
    big_text_size = INLINE_LIMIT - 2  # the quotes make the encoded size the inline limit
    values: list[tuple[str, Any]] = [
        ("json-null", None),
        ("json-scalars", [True, False, 0, -1, 2**70, -(10**300), 0.1, -0.0, 5e-324, 1.7976931348623157e308, 1e16]),
        ("json-text", {"unicode": "λ ☃ \U0001f600", "escapes": '"\\\n\t\x00\x1f', "": ""}),
        ("json-nested", {"rows": [{"id": i, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(5)], "e": {}}),
        ("json-deep", [[[[[[[[[[{"d": [[[]]]}]]]]]]]]]]),
    ]
    for size in (big_text_size - 1, big_text_size, big_text_size + 1, 3 * 1024 * KIB):
        values.append((f"json-str-{size}", "é" * (size // 2) + "a" * (size % 2)))  # "é" is 2 bytes in UTF-8
    rows = [{"id": i, "name": f"row {i}", "score": i / 7, "flag": None} for i in range(20_000)]
    values.append(("json-large-list", rows))  # ~1 MB: stored as a file
    return values
