"""Previews that read well (``nbflow.core.previews``): per type, bounded, never raising,
and stored with the record so a store opened with ``JsonCodec`` previews a pickle-only
output after a restart without decoding it."""

from __future__ import annotations

import base64
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbflow as nf
from nbflow.core.errors import CheckpointCorruptError
from nbflow.core.previews import HTML_LIMIT, PLAIN_LIMIT, PNG_LIMIT, TEXT_LIMIT, clip_text, make_preview
from nbflow.run.checkpoint import CheckpointIO
from nbflow.run.report import task_rows

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")


def bounded(line: str, bundle: dict[str, str]) -> None:
    assert len(line) <= TEXT_LIMIT and "\n" not in line
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in bundle.items())
    assert len(bundle.get("text/plain", "")) <= PLAIN_LIMIT + 40
    assert len(bundle.get("text/html", "")) <= HTML_LIMIT
    assert len(bundle.get("image/png", "")) <= PNG_LIMIT


def test_a_dataframe_shows_shape_dtypes_and_a_head_table() -> None:
    df = pd.DataFrame(
        {
            "date": pd.date_range("2026-01-01", periods=4830),
            "region": ["north", "south", "east"] * 1610,
            "product": ["a very long product name that goes on and on"] * 4830,
            "amount": np.arange(4830) * 1.5,
        }
    )
    line, bundle = make_preview(df)
    assert line.startswith("DataFrame 4830x4: date datetime64")
    assert "amount float64" in line
    html = bundle["text/html"]
    assert "4830 rows x 4 columns" in html
    assert html.count("<tr") == 1 + 5  # the header row and head(5)
    assert "north" in html and "south" in html and "<td>6.0</td>" in html
    assert "<td>7.5</td>" not in html  # row 5 is not shown
    assert "a very long product name that goes on and on" not in html  # cells are cut
    assert "a very long product name that…" in html
    plain = bundle["text/plain"]
    assert plain.startswith("4830 rows x 4 columns\n  date: datetime64")
    assert "amount: float64" in plain
    bounded(line, bundle)


def test_a_wide_dataframe_stays_within_the_html_budget() -> None:
    wide = pd.DataFrame({f"column_{i}": ["x" * 25] * 50 for i in range(200)})
    line, bundle = make_preview(wide)
    assert line.endswith("… 194 more")
    assert "… 188 more" in bundle["text/html"]  # dtypes listed up to 12
    bounded(line, bundle)


def test_a_series_says_name_length_and_dtype() -> None:
    line, bundle = make_preview(pd.Series([1.5, 2.5, 3.5], name="price"))
    assert line == "Series 'price' of 3 float64"
    assert "<table" in bundle["text/html"] and "2.5" in bundle["text/html"]


def test_a_numpy_array_says_shape_dtype_min_max_and_a_few_values() -> None:
    a = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    line, bundle = make_preview(a)
    assert line == "array 1000x1000 float32, min 0.0, max 999999.0"
    plain = bundle["text/plain"]
    assert plain.startswith("shape (1000, 1000)\ndtype float32\nmin 0.0, max 999999.0\n\n")
    assert "..." in plain and len(plain) < 1000  # a few values, not a million
    nan_line, _ = make_preview(np.array([np.nan, 1.0, 3.0]))
    assert nan_line == "array 3 float64, min 1.0, max 3.0"
    words, _ = make_preview(np.array(["a", "b"]))
    assert words.startswith("array 2 <U1") and "min" not in words


@pytest.mark.parametrize("dtype", ["int64", "float64"])
def test_a_masked_array_shows_its_mask_and_warns_nothing(dtype: str) -> None:
    """numpy's array2string ignores a mask: an int array warned (FutureWarning on the
    user's screen) and a float one showed its fill values as data."""
    a = np.ma.masked_array(np.arange(1, 31).astype(dtype), mask=[i % 3 == 1 for i in range(30)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line, bundle = make_preview(a)
    assert line.startswith(f"array 30 {dtype}, min 1")
    values = bundle["text/plain"].split("\n\n", 1)[1]
    assert "--" in values and "1e+20" not in values and "inf" not in values and "999999" not in values


def test_a_figure_is_an_image() -> None:
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)
    ax = fig.add_subplot()
    ax.plot([1, 2, 4])
    ax.set_title("growth")
    line, bundle = make_preview(fig)
    assert line == "Figure 500x300 px, 1 axes: growth"
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    bounded(line, bundle)


def test_long_strings_and_containers_are_clipped_at_a_boundary() -> None:
    text = " ".join(f"word{i}" for i in range(5000))
    line, bundle = make_preview(text)
    assert line.startswith("'word0 word1 ") and line.endswith(" more characters")
    assert "' … " in line  # the quote closes at a word boundary
    plain = bundle["text/plain"]
    assert plain.endswith(" more characters") and len(plain) <= PLAIN_LIMIT + 40
    assert clip_text("one two three four", 9) == "one two … 11 more characters"
    line, bundle = make_preview(list(range(10_000)))
    assert line == "[0, 1, 2, 3, 4, 5, 6, 7, … 9992 more]"
    assert bundle["text/plain"].endswith("59, … 9940 more]")


def test_a_nested_dict_shows_its_structure_within_bounds() -> None:
    value = {"model": {"layers": [{"units": 64, "act": "relu"}] * 30, "meta": {"a": {"b": {"c": {"d": 1}}}}}}
    line, bundle = make_preview(value)
    assert line.startswith("{'model': {'layers': [{… 2 items}, {… 2 items}")  # three levels in a line
    assert "… 24 more]" in line
    plain = bundle["text/plain"]
    assert plain.startswith("{'model': {'layers': [{'units': 64, 'act': 'relu'}, {'units': 64")
    assert "'meta': {'a': {'b': {'c': {… 1 item}}}}" in plain  # six levels down: counted, not shown
    bounded(line, bundle)
    assert make_preview({"a": 1, "b": [1, 2]}) == ("{'a': 1, 'b': [1, 2]}", {})


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_broken_values_give_a_line_not_an_error() -> None:
    assert make_preview(Broken()) == ("<Broken: repr failed: RuntimeError>", {})
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    assert make_preview(cyclic)[0] == "[1, …(cycle)]"
    assert make_preview(10**10_000)[0] == "<int of 33220 bits>"


def test_values_of_unknown_libraries_import_nothing() -> None:
    before = set(sys.modules)
    make_preview({"x": [1, 2.5, "three", None, b"four"]})
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("pandas", "numpy", "matplotlib")}


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=3000)
    | st.binary(max_size=2000),
    lambda inner: (
        st.lists(inner, max_size=40)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=50) | st.integers(), inner, max_size=30)
        | st.frozensets(st.integers(), max_size=30)
    ),
    max_leaves=300,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_nested_value_previews_within_bounds(value: Any) -> None:
    line, bundle = make_preview(value)
    bounded(line, bundle)


# -- stored with the record -----------------------------------------------------------
class Opaque:
    """A value only pickle can store (JsonCodec cannot encode or decode it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Opaque(n={self.n})"


def test_a_json_codec_store_previews_pickled_outputs_without_decoding(tmp_path: Path) -> None:
    def frame() -> Any:
        return pd.DataFrame({"region": ["n", "s"], "amount": [1.5, 2.5]})

    def opaque(frame: Any) -> Opaque:
        return Opaque(len(frame))

    wf = nf.Workflow("mixed").then(frame).then(opaque).build()
    nf.CheckpointingRunner(nf.DiskcacheBackend(tmp_path / "s"), echo_output=False).run(wf, "i-1")

    # after a restart, opened read-safe: JsonCodec never unpickles
    backend = nf.DiskcacheBackend(tmp_path / "s")
    records = backend.get_records("i-1")
    io = CheckpointIO(backend, "i-1", nf.JsonCodec())
    for tid in ("frame", "opaque"):
        with pytest.raises(CheckpointCorruptError):
            io.read(records[tid])  # the output itself stays unread ...
    assert records["opaque"].preview == "Opaque(n=2)"  # ... its preview does not need it
    assert records["frame"].preview.startswith("DataFrame 2x2: region ")  # its dtype's name varies by pandas
    assert "<table" in records["frame"].preview_bundle["text/html"]
    meta = backend.load_instance("i-1")
    assert meta is not None
    rows = {row.task: row for row in task_rows(backend, meta)}
    assert rows["opaque"].preview == "Opaque(n=2)"
