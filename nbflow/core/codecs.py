"""Codecs turn task outputs into bytes and back; the codec's name is stored with
every checkpoint, and decoding looks the codec up by that name — it never guesses.

A codec either gives back a value equal to the one it was given, or refuses the value
when it is dumped (``CodecError`` naming the type and where it sits), so a lossy
checkpoint is never discovered hours later, on resume.

Codecs stream: ``dump(obj, file)`` writes into a file-like object and ``load(file)``
reads from one, so a 100 MB array goes to disk without a second in-memory copy.
``load`` copes with streams that return fewer bytes than asked (raw files, pipes).
"""

from __future__ import annotations

import functools
import io
import json
import math
import mmap
import pickle
import reprlib
import struct
import sys
from collections import ChainMap
from collections.abc import Callable, Iterator
from typing import IO, Any, ClassVar, Protocol, runtime_checkable

from nbflow.core.errors import CodecError, ConfigurationError

__all__ = ["Codec", "JsonCodec", "PickleCodec", "codec_by_name"]


@runtime_checkable
class Codec(Protocol):
    """What a codec offers. ``name`` is stored with each record."""

    name: str

    def dump(self, obj: Any, file: IO[bytes]) -> None: ...

    def load(self, file: IO[bytes]) -> Any: ...


class _BytesMixin:
    """``dumps``/``loads`` for a codec that streams with ``dump``/``load``."""

    def dump(self, obj: Any, file: IO[bytes]) -> None:
        raise NotImplementedError

    def load(self, file: IO[bytes]) -> Any:
        raise NotImplementedError

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` to bytes."""
        buf = io.BytesIO()
        self.dump(obj, buf)
        return buf.getvalue()

    def loads(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`dumps`."""
        return self.load(io.BytesIO(data))


# -- pickle -----------------------------------------------------------------------------
class PickleCodec(_BytesMixin):
    """The default codec: pickle protocol 5 through cloudpickle.

    cloudpickle stores functions and classes defined in a notebook (``__main__``) by
    value, so an output whose class was defined in a cell still loads after a kernel
    restart, before the cell is run again. Large buffers (numpy arrays, DataFrame
    columns) are written straight from the object's memory and read back into their
    final place, so neither side holds a second copy.

    Never load pickles from a directory you do not trust; use ``JsonCodec`` there.

    >>> PickleCodec().loads(PickleCodec().dumps({"a": [1, 2]}))
    {'a': [1, 2]}
    """

    name = "pickle"

    def dump(self, obj: Any, file: IO[bytes]) -> None:
        buffers: list[pickle.PickleBuffer] = []
        head = _plain_pickle(obj, buffers)
        if head is None:
            buffers.clear()
            try:
                head = _cloudpickle(obj, buffers.append)
            except MemoryError:
                raise
            except Exception as exc:
                raise CodecError(self.name, "?", _pickle_failure(obj, exc)) from exc
        if not buffers:
            _write_all(file, head)
            return
        # Layout: magic, (head length, buffer count), buffer sizes, head, raw buffers.
        views = [b.raw() for b in buffers]
        _write_all(file, _OOB_MAGIC + struct.pack("<QI", len(head), len(views)))
        _write_all(file, struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views)))
        _write_all(file, head)
        for view in views:
            _write_all(file, view)

    def load(self, file: IO[bytes]) -> Any:
        if type(file) is io.BytesIO:  # a payload already in memory (stored inline): one call
            data = file.getbuffer()
            if data[: len(_OOB_MAGIC)] != _OOB_MAGIC:
                try:
                    return pickle.loads(data)
                finally:
                    data.release()  # the BytesIO stays usable (and resizable) afterwards
            data.release()
        reader = _ExactReader(file)
        start = reader.read(len(_OOB_MAGIC))
        if start != _OOB_MAGIC:
            reader.unread(start)
            return pickle.load(reader)
        head_len, count = struct.unpack("<QI", reader.read_exact(12, "its header"))
        left = _remaining(file)
        if left is not None and 8 * count > left:
            raise EOFError(f"damaged pickle header: {count} buffers announced, {left} bytes left")
        sizes = struct.unpack(f"<{count}Q", reader.read_exact(8 * count, "its buffer table"))
        left = _remaining(file)
        if left is not None and head_len + sum(sizes) > left:
            raise EOFError(f"pickle data truncated: {head_len + sum(sizes)} bytes announced, {left} left")
        head = reader.read_exact(head_len, "its head")
        buffers = []
        for size in sizes:
            buf = _fill_buffer(size)
            got = reader.readinto(buf)
            if got < size:
                raise EOFError(f"out-of-band buffer truncated ({got} of {size} bytes)")
            buffers.append(buf)
        return pickle.loads(head, buffers=buffers)

    def __repr__(self) -> str:
        return "PickleCodec()"


_OOB_MAGIC = b"NBFLOOB1"  # never the start of a pickle (those start with b"\x80")


def _fill_buffer(size: int) -> Any:
    """A writable buffer of ``size`` bytes that ``readinto`` is about to fill.

    ``bytearray(size)`` zero-fills — touches — every page once before the read touches
    them again: for a 100 MB array that was most of the restore time. Out-of-band
    buffers come from numpy arrays (or libraries built on them), so numpy is at hand:
    ``numpy.empty`` allocates without filling and with the huge pages numpy asks the
    kernel for, which is what ``np.load`` reads into. Without numpy, an anonymous memory
    map (zeroed by the kernel on first write). Only the object being rebuilt ever holds
    the buffer, as the memory behind its data."""
    if size < _MAP_MIN:
        return bytearray(size)
    try:
        import numpy
    except ImportError:
        return mmap.mmap(-1, size)
    return numpy.empty(size, dtype=numpy.uint8)


_MAP_MIN = 1 << 20


def _plain_pickle(obj: Any, buffers: list[pickle.PickleBuffer]) -> bytes | None:
    """Plain pickle for builtin values and numpy arrays that reference nothing from
    ``__main__``.

    It is about 10x cheaper than cloudpickle on small values, and a process that only
    ever stores arrays and builtins never imports cloudpickle (~15 ms). ``None`` means
    "use cloudpickle": lambdas, local classes, notebook classes, memoryviews, arrays
    whose byte order plain pickle would lose."""
    kind = type(obj)
    if kind.__module__ != "builtins" and kind is not _ndarray_type():
        return None
    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - whatever plain pickle refuses, cloudpickle gets a go
        return None
    if b"__main__" in head or _FOREIGN_BYTE_ORDER in head:
        return None
    return head


def _ndarray_type() -> type | None:
    """``numpy.ndarray`` if numpy is imported (an array exists only then), else None."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None) if numpy is not None else None


# A pickled numpy dtype of the other byte order holds this one-character str; such an
# array may need _reduce_ndarray (a false alarm only costs the cloudpickle path).
_FOREIGN_BYTE_ORDER = b"\x8c\x01" + (b"<" if sys.byteorder == "big" else b">")


def _cloudpickle(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any]) -> bytes:
    out = io.BytesIO()
    _pickler_class("numpy" in sys.modules)(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


@functools.cache
def _pickler_class(with_numpy: bool) -> type[pickle.Pickler]:
    """cloudpickle's pickler, fixed where it would not give a value back: a memoryview
    comes back as a memoryview (cloudpickle makes it bytes), a numpy array keeps its
    byte order (see _reduce_ndarray). Built on first use, so builtin values never
    import cloudpickle; rebuilt once numpy is imported."""
    import cloudpickle

    fixes: dict[type, Callable[[Any], Any]] = {memoryview: _reduce_memoryview}
    if with_numpy:
        import numpy

        fixes[numpy.ndarray] = _reduce_ndarray

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
        # The C pickler reads dispatch_table from the class when it is created.
        dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(fixes, cloudpickle.Pickler.dispatch_table)

    return Pickler


def _reduce_ndarray(array: Any) -> Any:
    """numpy's own reduction, except where it loses the byte order.

    numpy rebuilds an array pickled in-band (non-contiguous, datetime64, timedelta64,
    long double) with the native byte order: the values survive, the dtype does not.
    Those arrays are pickled in native order and converted back on load."""
    dtype = array.dtype
    in_band = not (array.flags.c_contiguous or array.flags.f_contiguous) or dtype.kind in "mM" or dtype.char in "gG"
    if dtype.isnative or dtype.fields is not None or not in_band:
        return array.__reduce_ex__(5)
    return _restore_byte_order, (array.astype(dtype.newbyteorder("=")), dtype)


def _restore_byte_order(native: Any, dtype: Any) -> Any:
    return native.astype(dtype)


def _reduce_memoryview(view: memoryview) -> tuple[Callable[..., memoryview], tuple[Any, ...]]:
    """Pickle a memoryview as its bytes plus format, shape and read-only flag.

    Only views that can be rebuilt without the object they view are accepted: a
    native struct format, and no zero in a multi-dimensional shape."""
    fmt, shape = view.format, view.shape or ()
    probe: Any = memoryview(bytearray(view.itemsize))  # typeshed only knows literal formats
    try:
        probe.cast(fmt)
    except (TypeError, ValueError):
        raise pickle.PicklingError(
            f"cannot pickle a memoryview of format {fmt!r}: only native struct formats ('B', 'q', 'd', ...) "
            "can be rebuilt; pickle bytes(view) or the object it views (view.obj)"
        ) from None
    if len(shape) > 1 and 0 in shape:
        raise pickle.PicklingError(
            f"cannot pickle an empty memoryview of shape {shape}: Python cannot rebuild it; pickle the object it views"
        )
    data: Any = pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return _rebuild_memoryview, (data, fmt, shape, view.readonly)


def _rebuild_memoryview(data: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    flat = memoryview(data)
    if flat.readonly and not readonly:
        flat = memoryview(bytearray(flat))
    raw: Any = flat.cast("B")
    # cast() refuses an explicit shape with a zero in it, so a 1-d view infers its length.
    view: memoryview = raw.cast(fmt) if len(shape) == 1 else raw.cast(fmt, list(shape))
    return view.toreadonly() if readonly else view


def _pickle_failure(obj: Any, exc: BaseException) -> str:
    where = _find_unpicklable(obj, "value", 0)
    at = f" (at {where})" if where != "value" else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _find_unpicklable(obj: Any, path: str, depth: int) -> str:
    """The path of the innermost part of ``obj`` that fails to pickle (best effort)."""
    if depth >= 20:
        return path
    for sub, sub_path in _parts(obj, path):
        try:
            _cloudpickle(sub, lambda _buffer: None)
        except RecursionError:
            return sub_path
        except Exception:  # noqa: BLE001 - any failure means: look inside this part
            return _find_unpicklable(sub, sub_path, depth + 1)
    return path


def _parts(obj: Any, path: str) -> Iterator[tuple[Any, str]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, f"a key of {path}"
            yield value, f"{path}[{_short.repr(key)}]"
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield value, f"{path}[{i}]"
    elif isinstance(obj, set | frozenset):
        for value in obj:
            yield value, f"an element of {path}"
    elif not isinstance(obj, type) and isinstance(getattr(obj, "__dict__", None), dict):
        for name, value in vars(obj).items():
            yield value, f"{path}.{name}"


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def _write_all(file: IO[bytes], data: bytes | memoryview) -> None:
    """Write all of ``data``: a raw stream may accept only part of it per call."""
    total, done, chunk = len(data), 0, data
    while True:
        n = file.write(chunk)
        if n is None or done + n >= total:  # None: a stream that does not count took it all
            return
        if n <= 0:
            raise OSError(f"the output stream accepted no bytes ({done} of {total} written)")
        done += n
        chunk = memoryview(data)[done:]


def _remaining(file: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream (None when it cannot tell), to check a header
    before allocating what it announces."""
    try:
        if not file.seekable():
            return None
        pos = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return None


class _ExactReader:
    """A stream that returns as many bytes as asked (fewer only at its end).

    pickle's C unpickler treats any short ``read``/``readinto`` as truncated data, but
    a raw file or a pipe may return fewer bytes than asked: this loops until it has
    them. It can also put back bytes already read (the codec peeks at the magic)."""

    __slots__ = ("_pending", "_readinto", "_stream")

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._pending = b""
        self._readinto: Callable[[memoryview], int | None] | None = getattr(stream, "readinto", None)

    def unread(self, data: bytes) -> None:
        self._pending = data + self._pending

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._pending] if self._pending else []
            self._pending = b""
            while chunk := self._stream.read():
                parts.append(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
        else:
            data = self._stream.read(size)
            if len(data) == size or not data:
                return data
        parts, got = [data], len(data)
        while got < size:
            chunk = self._stream.read(size - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) < size:
            raise EOFError(f"pickle data truncated in {what} ({len(data)} of {size} bytes)")
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size, got = len(view), 0
        if self._pending:
            got = min(size, len(self._pending))
            view[:got] = self._pending[:got]
            self._pending = self._pending[got:]
        while got < size:
            if self._readinto is not None:
                n = self._readinto(view[got:]) or 0
            else:
                chunk = self._stream.read(size - got)
                n = len(chunk)
                view[got : got + n] = chunk
            if not n:
                break
            got += n
        return got

    def readline(self, size: int | None = -1) -> bytes:
        # Only protocol 0-1 text opcodes read lines; byte by byte is fast enough for them.
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            ch = self.read(1)
            out += ch
            if not ch or ch == b"\n":
                break
        return bytes(out)


# -- JSON -------------------------------------------------------------------------------
class JsonCodec(_BytesMixin):
    """Human-readable checkpoints, safe to load from an untrusted directory.

    Strict: a value that would not come back equal and of the same types is refused
    when it is dumped, with the path of the offending part. Tuples (they would come
    back as lists), sets, bytes, non-str dict keys (they would come back as str),
    NaN and infinities (not JSON), str with lone surrogates (not UTF-8), subclasses
    such as ``IntEnum`` or ``numpy.float64`` (they would come back as the plain type)
    and other objects all raise ``CodecError``.

    >>> JsonCodec().loads(JsonCodec().dumps({"rows": 3}))
    {'rows': 3}
    >>> JsonCodec().dumps({"rows": [1, (2, 3)]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nbflow.core.errors.CodecError: codec 'json' cannot handle the output of task '?': tuple at value["rows"][1] would come back as a list; ...
    """

    name = "json"

    def dump(self, obj: Any, file: IO[bytes]) -> None:
        # The C encoder does the work and catches NaN, cycles and unknown types; a
        # quick type walk catches what it would silently change (tuples, keys,
        # subclasses). The slow walk that names the path runs only on a refusal.
        try:
            data = _JSON_ENCODER.encode(obj).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(self.name, "?", _json_problem(obj) or f"{type(exc).__name__}: {exc}") from None
        try:
            exact = _exact_json(obj)
        except RecursionError:  # deep but encodable: let the iterative walk decide
            exact = False
        if not exact:
            problem = _json_problem(obj)
            if problem is not None:
                raise CodecError(self.name, "?", problem)
        _write_all(file, data)

    def load(self, file: IO[bytes]) -> Any:
        data = _ExactReader(file).read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"not a JSON checkpoint: byte {exc.start} is not UTF-8 ({data[exc.start : exc.start + 4]!r})"
            ) from None
        parse_float: Callable[[str], float] = _finite_float if _may_overflow(data) else float
        try:
            return json.loads(text, parse_constant=_refuse_constant, parse_float=parse_float)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON checkpoint: {exc}") from None

    def __repr__(self) -> str:
        return "JsonCodec()"


_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
# Digits become b"0", e/E become b"e", "+" is dropped and the rest is a space: a number
# can overflow to infinity only if that holds b"e000" (an exponent of 3+ digits) or a
# run of 309 digits. One translate and two searches cost ~10% of json.loads; a regex
# costs more than the parse.
_OVERFLOW_TABLE = bytes(
    b"0"[0] if chr(c) in "0123456789" else b"e"[0] if chr(c) in "eE" else b" "[0] for c in range(256)
)


def _may_overflow(data: bytes) -> bool:
    shape = data.translate(_OVERFLOW_TABLE, b"+")
    return b"e000" in shape or b"0" * 309 in shape


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"not a JSON checkpoint: the number {text[:40]} overflows to infinity")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not a JSON checkpoint: {name} is not JSON")


def _exact_json(obj: Any) -> bool:
    """True when ``obj`` holds only exact JSON types and str keys (NaN, cycles and
    lone surrogates are left to the encoder)."""
    kind = type(obj)
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str:
                return False
            if type(value) not in _JSON_SCALARS and not _exact_json(value):
                return False
        return True
    if kind is list:
        for value in obj:  # noqa: SIM110 - a loop is ~2x faster than all() over a generator
            if type(value) not in _JSON_SCALARS and not _exact_json(value):
                return False
        return True
    return kind in _JSON_SCALARS


_LEAVE = object()  # marks the end of a container's children in the walk below


def _json_problem(obj: Any) -> str | None:
    """The first part of ``obj`` (in document order) that JSON would not give back
    equal, with its path; None if there is none. Iterative, so depth is no limit."""
    stack: list[tuple[Any, Any]] = [(obj, "value")]
    open_ids: set[int] = set()
    while stack:
        value, path = stack.pop()
        if value is _LEAVE:
            open_ids.discard(path)
            continue
        kind = type(value)
        if kind is str:
            problem = _str_problem(value, f"str at {path}")
        elif kind is float:
            problem = (
                None if math.isfinite(value) else f"float {value!r} at {path} is not JSON (it has no NaN or Infinity)"
            )
        elif kind is int:
            problem = _int_problem(value, path)
        elif kind is bool or value is None:
            problem = None
        elif kind is dict or kind is list:
            if id(value) in open_ids:
                return f"circular reference at {path}: this {kind.__name__} contains itself"
            open_ids.add(id(value))
            stack.append((_LEAVE, id(value)))
            if kind is list:
                stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))
                continue
            children = []
            for key, item in value.items():
                if type(key) is not str:
                    return _key_problem(key, path)
                problem = _str_problem(key, f"dict key {_short.repr(key)} at {path}")
                if problem is not None:
                    return problem
                children.append((item, f"{path}[{json.dumps(key)}]"))
            stack.extend(reversed(children))
            continue
        else:
            problem = _type_problem(value, path)
        if problem is not None:
            return problem
    return None


def _str_problem(text: str, what: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} has a lone surrogate ({text[exc.start]!r} at index {exc.start}), which is not UTF-8"
    return None


def _int_problem(value: int, path: str) -> str | None:
    if value.bit_length() < 10_000:
        return None
    try:
        str(value)
    except ValueError as exc:  # the interpreter's limit on int-to-text conversion
        return f"int at {path}: {exc}"
    return None


def _key_problem(key: Any, path: str) -> str:
    name = _type_name(type(key))
    if type(key) in _JSON_SCALARS:
        return (
            f"{name} dict key {key!r} at {path} would come back as the str {json.dumps(key)!r} "
            "(JSON object keys are str); convert the keys with str()"
        )
    return f"{name} dict key {_short.repr(key)} at {path}: JSON object keys are str"


def _type_problem(value: Any, path: str) -> str:
    kind = type(value)
    name = _type_name(kind)
    if kind is tuple:
        return f"tuple at {path} would come back as a list; return a list"
    if kind is set or kind is frozenset:
        return f"{name} at {path} is not a JSON type; return a sorted list"
    if kind in (bytes, bytearray, memoryview):
        return f"{name} at {path} is not a JSON type; decode it to str (e.g. base64)"
    for base, back in _COMES_BACK_AS:
        if isinstance(value, base):
            return (
                f"{name} (a subclass of {base.__name__}) at {path} would come back as a plain {back.__name__}; "
                f"convert it with {back.__name__}(...)"
            )
    return f"{name} at {path} is not a JSON type"


# What the JSON encoder turns a subclass of each base into (a namedtuple becomes a list).
_COMES_BACK_AS: tuple[tuple[type, type], ...] = (
    (int, int),
    (float, float),
    (str, str),
    (list, list),
    (dict, dict),
    (tuple, list),
)


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# -- lookup by name ---------------------------------------------------------------------
_REGISTRY: dict[str, Codec] = {"pickle": PickleCodec(), "json": JsonCodec()}


def register_codec(codec: Codec) -> None:
    """Make a custom codec loadable by name (its ``name`` must be unique)."""
    if not isinstance(codec, Codec):
        raise ConfigurationError("codec", codec, "an object with name, dump(obj, file) and load(file)")
    _REGISTRY[codec.name] = codec


def codec_by_name(name: str) -> Codec:
    """The codec registered under ``name`` (as stored in a checkpoint record)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CodecError(
            name,
            "?",
            f"no codec named {name!r} is registered (known: {sorted(_REGISTRY)}); "
            "call nbflow.core.codecs.register_codec(...) before loading these checkpoints",
        ) from None
