"""The store's record format: data only, never pickle, each payload checksummed.

Everything a store keeps about an instance except task outputs — instance meta, task
record headers, task state, claims, control requests, signal queues — is JSON (UTF-8).
Only payloads (task outputs, signal payloads) go through a codec, and the codec a
reader uses is the one *it* was configured with: a name written inside a record is
compared with it, never obeyed. So a store opened with ``JsonCodec`` cannot be made to
unpickle anything by editing its files.

A task record is one byte string::

    b"NBR2" | u32 header length | JSON header | inline payload (may be empty)

The header holds every ``CheckpointRecord`` field but the payload, plus the payload's
XXH3 checksum (``checksum``) and the instance generation the record was written under.
A payload too large to keep inline lives in ``blobs/<32 hex>.bin``; the header names the
file, and a name of any other form is refused, so a record can never point outside its
instance's folder.

Every decoding function raises :class:`RecordFormatError` on bytes it does not accept;
the backend turns that into a ``CheckpointCorruptError`` naming the instance.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Iterable
from typing import IO, Any

import xxhash

from nbflow.store.base import CheckpointRecord, Claim, InstanceMeta

__all__ = [
    "BLOB_NAME",
    "ChecksumReader",
    "new_hasher",
    "RecordFormatError",
    "checksum_bytes",
    "checksum_of",
    "decode_claim",
    "decode_control",
    "decode_json",
    "decode_meta",
    "decode_record",
    "decode_signals",
    "encode_claim",
    "encode_control",
    "encode_json",
    "encode_meta",
    "encode_record",
    "encode_signals",
    "verify_inline",
]

RECORD_MAGIC = b"NBR2"
_HEAD = struct.Struct("<4sI")
BLOB_NAME = re.compile(r"^[0-9a-f]{32}\.bin$")
CHECKSUM_PREFIX = "xxh3:"
_MAX_HEADER = 64 * 1024 * 1024  # a header is small; a larger length is damage, not data


class RecordFormatError(ValueError):
    """Bytes that are not a record of this format (damaged, foreign or planted)."""


def new_hasher() -> xxhash.xxh3_64:
    """A running checksum: XXH3-64, ~15 GB/s, so verifying a 100 MB array costs ~7 ms.
    It guards against damage (flipped or lost bytes), not against a deliberate forger,
    who could rewrite the checksum too; refusing to run code is what protects there."""
    return xxhash.xxh3_64()


def checksum_of(hasher: xxhash.xxh3_64) -> str:
    """The stored form of a finished checksum."""
    return CHECKSUM_PREFIX + hasher.hexdigest()


def checksum_bytes(data: bytes | bytearray | memoryview) -> str:
    """The stored checksum of an in-memory payload."""
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(data)


def encode_json(value: Any) -> bytes:
    """Strict JSON bytes (no NaN): what every store-level record is made of.

    ``ensure_ascii`` keeps lone surrogates (which Python strings may hold, e.g. in
    captured output) representable; the bytes are plain ASCII either way."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value).encode("ascii")
    return "".join(_C_ENCODE(value, 0)).encode("ascii")


# Built once: json.dumps with options builds a new encoder per call, a noticeable part of
# a trivial task's checkpoint. Store records are trees of plain values, never cyclic.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)


def _unencodable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder itself, made once: JSONEncoder.encode makes a new one for every call (and
# its Python layers around it), most of what encoding a small record costs. The same
# options, so the same bytes; None where the C accelerator is missing.
_C_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _unencodable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def decode_json(data: bytes | str, what: str) -> Any:
    """Parse a JSON record, or raise RecordFormatError naming ``what`` it should be."""
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise RecordFormatError(f"the {what} is not JSON ({exc})") from None


def _expect(data: Any, what: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, kind):
        raise RecordFormatError(f"the {what} is a JSON {type(data).__name__}, not an object")
    return data


# -- task records -------------------------------------------------------------------------
_STR_FIELDS = ("task_id", "fingerprint", "codec", "preview", "stdout", "stderr", "checksum", "generation")
_NUM_FIELDS = ("started_at", "finished_at")
_INT_FIELDS = ("attempt", "size")


def encode_record(record: CheckpointRecord) -> bytes:
    """The bytes stored for one finished task (header + inline payload)."""
    head = _header_json(record.__dict__)
    if head is None:  # a field of an unusual type: the general encoder writes (or refuses) it
        header = record.to_dict()
        del header["payload"]
        head = encode_json(header)
    return b"".join((_HEAD.pack(RECORD_MAGIC, len(head)), head, record.payload or b""))


_escape = json.encoder.encode_basestring_ascii
_STR_OR_NONE = (str, type(None))
_FINITE = 1.8e308  # past the largest float: inf is not below it, and NaN fails every comparison
_HEADER = (
    '{"task_id":%s,"fingerprint":%s,"codec":%s,"attempt":%d,"started_at":%r,"finished_at":%r,"size":%d,'
    '"blob":%s,"preview":%s,"stdout":%s,"stderr":%s,"worker":%s,"preview_bundle":%s,"extra":%s,'
    '"checksum":%s,"generation":%s}'
)


def _header_json(own: dict[str, Any]) -> bytes | None:
    """A record's header written field by field: the very bytes ``encode_json`` makes of
    ``to_dict()`` (same field order, same escapes, floats by ``repr`` as the JSON encoder
    writes them) in about half its time, since it runs for every checkpoint. None when
    a field is not of its usual type (the general path then checks it)."""
    task_id, fingerprint, codec = own["task_id"], own["fingerprint"], own["codec"]
    attempt, size, started, finished = own["attempt"], own["size"], own["started_at"], own["finished_at"]
    blob, worker, extra, bundle = own["blob"], own["worker"], own["extra"], own["preview_bundle"]
    preview, stdout, stderr = own["preview"], own["stdout"], own["stderr"]
    checksum, generation = own["checksum"], own["generation"]
    if not (
        type(attempt) is int
        and type(size) is int
        and type(started) is float
        and type(finished) is float
        and -_FINITE < started < _FINITE
        and -_FINITE < finished < _FINITE
        and type(task_id) is str
        and type(fingerprint) is str
        and type(codec) is str
        and type(preview) is str
        and type(stdout) is str
        and type(stderr) is str
        and type(checksum) is str
        and type(generation) is str
        and type(blob) in _STR_OR_NONE
        and type(worker) in _STR_OR_NONE
        and type(extra) is dict
        and type(bundle) is dict
        and _C_ENCODE is not None
    ):
        return None
    text = _HEADER % (
        _escape(task_id),
        _escape(fingerprint),
        _escape(codec),
        attempt,
        started,
        finished,
        size,
        "null" if blob is None else _escape(blob),
        _escape(preview),
        _escape(stdout),
        _escape(stderr),
        "null" if worker is None else _escape(worker),
        "".join(_C_ENCODE(bundle, 0)) if bundle else "{}",
        "".join(_C_ENCODE(extra, 0)) if extra else "{}",
        _escape(checksum),
        _escape(generation),
    )
    return text.encode("ascii")


def decode_record(data: bytes) -> CheckpointRecord:
    """Inverse of :func:`encode_record`, checking every field's type."""
    if not isinstance(data, bytes) or len(data) < _HEAD.size:
        raise RecordFormatError("a task record is too short")
    magic, length = _HEAD.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise RecordFormatError(f"a task record starts with {magic!r}, not {RECORD_MAGIC!r}")
    end = _HEAD.size + length
    if length > _MAX_HEADER or end > len(data):
        raise RecordFormatError("a task record's header length runs past its end")
    header = _expect(decode_json(data[_HEAD.size : end], "task record header"), "task record header", dict)
    record = _plain_record(header)
    if record is not None:
        record.payload = data[end:] if record.blob is None else None
        return record
    for name in _STR_FIELDS:
        if not isinstance(header.get(name, ""), str):
            raise RecordFormatError(f"field {name!r} of a task record is not a string")
    for name in _NUM_FIELDS:
        value = header.get(name, 0.0)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise RecordFormatError(f"field {name!r} of a task record is not a number")
    for name in _INT_FIELDS:
        value = header.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordFormatError(f"field {name!r} of a task record is not an integer")
    blob = header.get("blob")
    if blob is not None and not (isinstance(blob, str) and BLOB_NAME.match(blob)):
        raise RecordFormatError(f"a task record names the output file {blob!r}, which is not an nbflow blob name")
    worker = header.get("worker")
    if worker is not None and not isinstance(worker, str):
        raise RecordFormatError("field 'worker' of a task record is not a string")
    if not isinstance(header.get("extra", {}), dict):
        raise RecordFormatError("field 'extra' of a task record is not an object")
    payload = data[end:] if blob is None else None
    try:
        record = CheckpointRecord.from_dict(header)
    except TypeError as exc:
        raise RecordFormatError(f"a task record lacks a field ({exc})") from None
    record.payload = payload
    return record


_HEADER_KEYS = frozenset(f.name for f in dataclasses.fields(CheckpointRecord)) - {"payload"}  # what the header holds


def _plain_record(header: dict[str, Any]) -> CheckpointRecord | None:
    """The record of a header exactly as :func:`encode_record` writes it (its sixteen
    fields, each of its usual type), made without the general checks and keyword
    constructor: every reader of a store decodes records, a worker hundreds per scan.
    None for anything else; the general path then checks it field by field and says
    what is wrong."""
    if header.keys() != _HEADER_KEYS:
        return None
    started, finished, blob, worker, bundle = (
        header["started_at"], header["finished_at"], header["blob"], header["worker"], header["preview_bundle"],
    )  # fmt: skip
    if not (
        type(header["task_id"]) is str
        and type(header["fingerprint"]) is str
        and type(header["codec"]) is str
        and type(header["preview"]) is str
        and type(header["stdout"]) is str
        and type(header["stderr"]) is str
        and type(header["checksum"]) is str
        and type(header["generation"]) is str
        and type(header["attempt"]) is int
        and type(header["size"]) is int
        and (type(started) is float or type(started) is int)
        and (type(finished) is float or type(finished) is int)
        and (worker is None or type(worker) is str)
        and (blob is None or (type(blob) is str and BLOB_NAME.match(blob) is not None))
        and type(header["extra"]) is dict
        and type(bundle) is dict
        and all(type(k) is str and type(v) is str for k, v in bundle.items())
    ):
        return None
    record: CheckpointRecord = object.__new__(CheckpointRecord)
    record.__dict__.update(header)
    return record


def verify_inline(record: CheckpointRecord) -> bool:
    """Whether an inline payload matches its checksum (every record nbflow writes has one)."""
    return bool(record.checksum) and checksum_bytes(record.payload or b"") == record.checksum


_READ_PIECE = 1 << 20  # bytes read and summed at a time: fits the CPU's cache


class ChecksumReader:
    """A read-only binary stream over a payload file that computes its checksum as it is
    read; :meth:`verify` reads what the decoder left and compares with the record.

    The sum runs over the caller's own buffer (``readinto``), so verifying a 100 MB
    array costs no copy."""

    def __init__(self, raw: IO[bytes], expected: str) -> None:
        self._raw, self._expected, self._sum = raw, expected, new_hasher()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._sum.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (to the end of the file at most), summing each piece right
        after it is read, while it is still in the CPU's cache: one pass over memory
        where reading it all and then summing it would be two."""
        view = memoryview(buffer).cast("B")
        total, size = 0, len(view)
        while total < size:
            piece = view[total : total + _READ_PIECE]
            n = int(self._raw.readinto(piece) or 0)  # type: ignore[attr-defined]
            if n == 0:
                break
            self._sum.update(piece[:n])
            total += n
        return total

    def readline(self, size: int = -1) -> bytes:
        data = self._raw.readline(size)
        self._sum.update(data)
        return data

    def verify(self) -> bool:
        """Consume the rest of the stream; True if the whole payload matched."""
        while chunk := self._raw.read(1 << 20):
            self._sum.update(chunk)
        return bool(self._expected) and checksum_of(self._sum) == self._expected

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> ChecksumReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- instance meta ------------------------------------------------------------------------
def encode_meta(meta: InstanceMeta) -> bytes:
    return encode_json(meta.to_dict())


def decode_meta(data: bytes | str) -> InstanceMeta:
    raw = _expect(decode_json(data, "instance record"), "instance record", dict)
    for name in ("instance_id", "workflow", "definition_hash"):
        if not isinstance(raw.get(name), str):
            raise RecordFormatError(f"field {name!r} of the instance record is missing or not a string")
    for name in ("state", "input_digest", "message", "generation", "codec"):
        if not isinstance(raw.get(name, ""), str):
            raise RecordFormatError(f"field {name!r} of the instance record is not a string")
    for name in ("shape", "sinks"):
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecordFormatError(f"field {name!r} of the instance record is not a list of strings")
    if raw.get("error") is not None and not isinstance(raw["error"], dict):
        raise RecordFormatError("field 'error' of the instance record is not an object")
    try:
        return InstanceMeta.from_dict(raw)
    except TypeError as exc:
        raise RecordFormatError(f"the instance record lacks a field ({exc})") from None


# -- claims, control, signals -------------------------------------------------------------
def encode_claim(claim: Claim) -> bytes:
    return encode_json(claim.to_dict())


def decode_claim(data: bytes | str) -> Claim:
    raw = _expect(decode_json(data, "claim"), "claim", dict)
    if not all(isinstance(raw.get(k), str) for k in ("task_id", "worker", "token")) or not isinstance(
        raw.get("expires_at"), int | float
    ):
        raise RecordFormatError("a claim record lacks task_id, worker, token or expires_at")
    return Claim.from_dict(raw)


def encode_control(action: str, reason: str) -> bytes:
    return encode_json([action, reason])


def decode_control(data: bytes | str) -> tuple[str, str]:
    raw = decode_json(data, "control request")
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, str) for v in raw)):
        raise RecordFormatError("a control request is not [action, reason]")
    return raw[0], raw[1]


_LEN = struct.Struct("<I")


def encode_signals(payloads: Iterable[bytes]) -> bytes:
    """A FIFO of signal payloads as length-prefixed bytes."""
    return b"".join(_LEN.pack(len(p)) + bytes(p) for p in payloads)


def decode_signals(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        if at + _LEN.size > len(data):
            raise RecordFormatError("a signal queue is cut short")
        (n,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        if at + n > len(data):
            raise RecordFormatError("a signal queue is cut short")
        out.append(data[at : at + n])
        at += n
    return out
