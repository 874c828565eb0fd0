"""The wire envelope: a fixed 40-byte big-endian header, the stream id, JSON meta, the payload.

Layout (docs/wire-format.md is the reference for other languages)::

    offset size field
    0      2    magic            b"FS"
    2      1    version          1 (media), 2 (also progress records)
    3      1    modality         1 video, 2 audio, 3 text
    4      1    encoding         1 jpeg, 2 raw-rgb24, 3 pcm-s16le, 4 pcm-f32le, 5 utf8, 6 progress (version 2)
    5      1    flags            bit 0: complete up to t_end_ns (in-order producer); other bits reserved
    6      2    stream_id_len    bytes of UTF-8 stream id, 1..1024
    8      8    seq              unsigned, per stream and modality
    16     8    t_start_ns       signed, Unix epoch ns
    24     8    t_end_ns         signed, >= t_start_ns
    32     4    meta_len         bytes of UTF-8 JSON object (0 = {})
    36     4    payload_len
    40     ...  stream_id, meta, payload

``decode`` validates everything that can be checked without decoding media and
raises :class:`~fusionstream.stream.errors.BadRecord` (and nothing else) on any input.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from fusionstream.stream.errors import BadRecord
from fusionstream.stream.records import (
    ENCODINGS_OF,
    PROGRESS_VERSION,
    READ_VERSIONS,
    Encoding,
    Modality,
    Record,
)

MAGIC = b"FS"
HEADER = struct.Struct(">2sBBBBHQqqII")
HEADER_SIZE = HEADER.size  # 40
MAX_STREAM_ID_BYTES = 1024
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
MAX_IMAGE_SIDE = 16_384
# A chunk's duration may differ from len(samples) / sample_rate by producer rounding;
# beyond this, the declared rate is wrong and the audio would be stretched.
DURATION_TOLERANCE = 0.05
DURATION_SLACK_NS = 2_000_000
# The longest media unit (a transcript segment, a slow camera's frame). A record joins every
# window it overlaps, so an unbounded t_end (one flipped bit) would open billions of windows.
MAX_DURATION_NS = 60_000_000_000
# Event times within ±2^62 ns (the years 1823 to 2116), so that a window's bounds (a record's time plus a
# window's length) and every time a prediction reports stay within a signed 64-bit integer, which is what
# clients in other languages read them into. Beyond it is a clock or a unit gone wrong, not media.
MAX_ABS_TIME_NS = 2**62

# Read-only, so records sharing it cannot change each other's meta.
_EMPTY_META: Mapping[str, Any] = MappingProxyType({})


def encode(record: Record) -> bytes:
    """Serialise ``record`` to its wire bytes (it is validated exactly as ``decode`` would)."""
    stream_id = record.stream_id.encode("utf-8")
    meta = (
        json.dumps(dict(record.meta), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if record.meta
        else b""
    )
    if not 0 <= record.seq < 2**64:
        raise ValueError(f"seq {record.seq} is outside 0..2**64-1")
    if len(stream_id) > MAX_STREAM_ID_BYTES:
        raise ValueError(f"stream id of {len(stream_id)} bytes exceeds {MAX_STREAM_ID_BYTES}")
    if not all(-(2**63) <= t < 2**63 for t in (record.t_start_ns, record.t_end_ns)):
        raise ValueError("event times must fit in a signed 64-bit integer of nanoseconds")
    header = HEADER.pack(
        MAGIC,
        record.version,
        int(record.modality),
        int(record.encoding),
        record.flags,
        len(stream_id),
        record.seq,
        record.t_start_ns,
        record.t_end_ns,
        len(meta),
        len(record.payload),
    )
    data = b"".join((header, stream_id, meta, record.payload))
    decode(data)  # a producer must never publish what the service would dead-letter
    return data


#: A record's fields in ``Record``'s order, as :func:`parse` returns them (``Record(*fields)``).
Fields = tuple[str, Modality, int, int, int, Encoding, bytes, Mapping[str, Any], int, int]


def decode(data: bytes) -> Record:
    """Parse and validate wire bytes; raise ``BadRecord`` with a reason on anything wrong."""
    return Record(*parse(data))


# Enum construction by value costs a microsecond; a dict lookup a tenth of that.
_MODALITY_OF_BYTE = {int(m): m for m in Modality}
_ENCODING_OF_BYTE = {int(e): e for e in Encoding}
_PREFIXES = frozenset(MAGIC + bytes([v]) for v in READ_VERSIONS)


def parse(data: bytes | bytearray | memoryview) -> Fields:
    """:func:`decode` without building the :class:`Record`: the service's intake goes straight
    from these fields to a media item (``fusionstream.stream.media.decode_wire``), once per record."""
    size = len(data)
    if size < HEADER_SIZE or bytes(data[:3]) not in _PREFIXES:
        _raise_bad_prefix(data)
    (_, version, modality_b, encoding_b, flags, sid_len, seq, t_start, t_end, meta_len, payload_len) = (
        HEADER.unpack_from(data)
    )
    expected = HEADER_SIZE + sid_len + meta_len + payload_len
    if size != expected:
        kind = "truncated" if size < expected else "trailing-bytes"
        raise BadRecord(kind, f"{size} bytes, header declares {expected}")
    modality = _MODALITY_OF_BYTE.get(modality_b)
    if modality is None:
        raise BadRecord("unknown-modality", f"modality byte {modality_b}")
    encoding = _ENCODING_OF_BYTE.get(encoding_b)
    if encoding is None or (encoding is Encoding.PROGRESS and version < PROGRESS_VERSION):
        raise BadRecord("unknown-encoding", f"encoding byte {encoding_b} in a version {version} record")
    if encoding not in ENCODINGS_OF[modality] and encoding is not Encoding.PROGRESS:
        raise BadRecord("encoding-mismatch", f"{encoding.label} is not a {modality.label} encoding")
    if t_end < t_start:
        raise BadRecord("t_end-before-t_start", f"t_end {t_end} < t_start {t_start}")
    if t_start < -MAX_ABS_TIME_NS or t_end > MAX_ABS_TIME_NS:
        raise BadRecord("bad-time", f"event time {t_start if t_start < -MAX_ABS_TIME_NS else t_end} ns is outside "
                        "±2^62 ns (the years 1823 to 2116): a clock or a unit gone wrong")
    if t_end - t_start > MAX_DURATION_NS:
        raise BadRecord("too-long", f"lasts {(t_end - t_start) / 1e9:.6g} s, at most {MAX_DURATION_NS / 1e9:g} s")
    if not 0 < sid_len <= MAX_STREAM_ID_BYTES:
        raise BadRecord("bad-stream-id", f"stream id of {sid_len} bytes (1..{MAX_STREAM_ID_BYTES})")

    pos = HEADER_SIZE + sid_len
    stream_id = _stream_id_text(bytes(data[HEADER_SIZE:pos]))
    meta = _parsed_meta(bytes(data[pos : pos + meta_len])) if meta_len else _EMPTY_META
    payload = bytes(data[pos + meta_len :])
    _VALIDATORS[encoding](encoding, payload, meta, t_start, t_end)
    return (stream_id, modality, seq, t_start, t_end, encoding, payload, meta, version, flags)


def _raise_bad_prefix(data: bytes | bytearray | memoryview) -> NoReturn:
    """The reason a record is too short for a header, or does not start with this version's magic."""
    head = bytes(data[:3])
    if len(head) < 3:
        raise BadRecord("truncated", f"{len(head)} bytes is shorter than any header")
    if head[:2] != MAGIC:
        raise BadRecord("bad-magic", f"starts with {head[:2]!r}, expected {MAGIC!r}")
    if head[2] not in READ_VERSIONS:
        readable = " and ".join(map(str, READ_VERSIONS))
        raise BadRecord("unsupported-version", f"version {head[2]}, this build reads {readable}")
    raise BadRecord("truncated", f"{len(data)} bytes, header needs {HEADER_SIZE}")


# A stream's id and meta repeat in every one of its records (15 frames and 25 audio chunks a
# second), so each distinct one is parsed once. Bad ones raise, and exceptions are not cached.
@functools.lru_cache(maxsize=8192)
def _stream_id_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("bad-stream-id", "stream id is not UTF-8") from None


@functools.lru_cache(maxsize=8192)
def _parsed_meta(raw: bytes) -> Mapping[str, Any]:
    """Read-only, since records share the parsed object."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRecord("bad-meta", f"meta is not UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BadRecord("bad-meta", f"meta is a JSON {type(meta).__name__}, expected an object")
    return MappingProxyType(meta)


def _int_field(meta: Mapping[str, Any], key: str, low: int, high: int, reason: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRecord(reason, f"meta.{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadRecord(reason, f"{key.replace('_', ' ')} {value} outside {low}..{high}")
    return value


# Each validator gets (encoding, payload, meta, t_start_ns, t_end_ns) and raises BadRecord.


def _validate_jpeg(encoding: Encoding, payload: bytes, meta: Mapping[str, Any], t_start: int, t_end: int) -> None:
    # Full decoding is the media stage's job (it costs milliseconds); the markers are free.
    if not payload.startswith(b"\xff\xd8"):
        raise BadRecord("bad-jpeg", "payload does not start with a JPEG SOI marker")


def _validate_raw_rgb24(
    encoding: Encoding, payload: bytes, meta: Mapping[str, Any], t_start: int, t_end: int
) -> None:
    width = _int_field(meta, "width", 1, MAX_IMAGE_SIDE, "bad-size")
    height = _int_field(meta, "height", 1, MAX_IMAGE_SIDE, "bad-size")
    if len(payload) != width * height * 3:
        raise BadRecord("bad-size", f"{len(payload)} bytes for {width}x{height} rgb24")


def _validate_pcm(encoding: Encoding, payload: bytes, meta: Mapping[str, Any], t_start: int, t_end: int) -> None:
    rate = meta.get("sample_rate")
    if rate == 0:
        raise BadRecord("bad-sample-rate", "sample rate 0")
    rate = _int_field(meta, "sample_rate", 1, MAX_SAMPLE_RATE, "bad-sample-rate")
    channels = _int_field(meta, "channels", 1, MAX_CHANNELS, "bad-channels")
    width = 2 if encoding is Encoding.PCM_S16LE else 4
    frame_bytes = width * channels
    if len(payload) % frame_bytes:
        raise BadRecord("bad-pcm-size", f"{len(payload)} bytes is not whole {frame_bytes}-byte frames")
    frames = len(payload) // frame_bytes
    declared = t_end - t_start
    actual = frames * 1_000_000_000 / rate
    if abs(declared - actual) > max(DURATION_SLACK_NS, DURATION_TOLERANCE * actual):
        raise BadRecord(
            "sample-rate-mismatch",
            f"{frames} frames at {rate} Hz last {actual / 1e6:.1f} ms, times span {declared / 1e6:.1f} ms"
            + _unit_hint(declared, actual),
        )


def _unit_hint(declared: float, actual: float) -> str:
    """A chunk's times a thousand or a million times too short: a producer writing ms or µs, not ns."""
    for unit, factor in (("milliseconds", 1e6), ("microseconds", 1e3)):
        if declared > 0 and abs(declared * factor - actual) <= max(DURATION_SLACK_NS, DURATION_TOLERANCE * actual):
            return f" (times in {unit}? t_start_ns and t_end_ns are nanoseconds since the Unix epoch)"
    return ""


def _validate_utf8(encoding: Encoding, payload: bytes, meta: Mapping[str, Any], t_start: int, t_end: int) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord("bad-utf8", f"text payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    language = meta.get("language", "und")
    if not isinstance(language, str):
        raise BadRecord("bad-meta", f"meta.language must be a string, got {language!r}")
    if not isinstance(meta.get("is_final", True), bool):
        raise BadRecord("bad-meta", "meta.is_final must be a boolean")


def _validate_progress(
    encoding: Encoding, payload: bytes, meta: Mapping[str, Any], t_start: int, t_end: int
) -> None:
    if payload:
        raise BadRecord("bad-progress", f"a progress record carries no payload, this one has {len(payload)} bytes")
    if not isinstance(meta.get("ended", False), bool):
        raise BadRecord("bad-meta", "meta.ended must be a boolean")


_VALIDATORS = {
    Encoding.JPEG: _validate_jpeg,
    Encoding.RAW_RGB24: _validate_raw_rgb24,
    Encoding.PCM_S16LE: _validate_pcm,
    Encoding.PCM_F32LE: _validate_pcm,
    Encoding.UTF8: _validate_utf8,
    Encoding.PROGRESS: _validate_progress,
}

__all__ = ["HEADER_SIZE", "MAGIC", "MAX_ABS_TIME_NS", "MAX_DURATION_NS", "Fields", "decode", "encode", "parse"]
