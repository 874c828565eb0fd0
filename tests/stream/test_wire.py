"""The wire envelope: exact bytes, round trips, and a decoder that only ever raises BadRecord."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionstream.stream import wire
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.media import audio_record, decode_media, image_record, text_record
from fusionstream.stream.records import AudioChunk, Encoding, Frame, Modality, Record, TextSegment

T = 1_767_225_600_000_000_000


def test_documented_example_bytes() -> None:
    """The worked example of docs/wire-format.md, byte for byte."""
    record = text_record("cam-01", 7, T, T + 300_000_000, "seven")
    data = wire.encode(record)
    meta = b'{"language":"en","is_final":true}'
    expected = (
        b"FS\x01\x03\x05\x00\x00\x06"
        + struct.pack(">Q", 7)
        + bytes.fromhex("18867251edfa0000")
        + bytes.fromhex("18867251ffdba300")
        + struct.pack(">II", len(meta), 5)
        + b"cam-01"
        + meta
        + b"seven"
    )
    assert data == expected
    assert len(data) == 84


def test_all_encodings_round_trip() -> None:
    rgb = np.zeros((24, 32, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 32, dtype=np.uint8)
    rgb[..., 1] = np.linspace(0, 255, 24, dtype=np.uint8)[:, None]
    samples = np.sin(np.linspace(0, 50, 640)).astype(np.float32) * 0.5
    records = [
        image_record("cam", 1, T, T + 66_000_000, rgb),
        image_record("cam", 2, T, T + 66_000_000, rgb, encoding=Encoding.RAW_RGB24),
        audio_record("cam", 3, T, samples, 16_000),
        audio_record("cam", 4, T, samples, 16_000, encoding=Encoding.PCM_F32LE),
        text_record("cam", 5, T, T + 1, "sieben – sept", language="de", is_final=False),
    ]
    for record in records:
        assert wire.decode(wire.encode(record)) == record
    frame = decode_media(records[1])
    assert isinstance(frame, Frame) and np.array_equal(frame.image, rgb)
    jpeg = decode_media(records[0])
    assert isinstance(jpeg, Frame) and jpeg.image.shape == rgb.shape
    assert np.abs(jpeg.image.astype(int) - rgb).mean() < 8  # lossy, but the same picture
    pcm = decode_media(records[2])
    assert isinstance(pcm, AudioChunk) and np.allclose(pcm.samples, samples, atol=1 / 16000)
    f32 = decode_media(records[3])
    assert isinstance(f32, AudioChunk) and np.array_equal(f32.samples, samples)
    text = decode_media(records[4])
    assert isinstance(text, TextSegment) and text.text == "sieben – sept" and text.is_final is False


def _raw(**overrides: object) -> bytes:
    fields = {"version": 1, "modality": 2, "encoding": 3, "sid": b"cam", "seq": 0, "t0": T,
              "t1": T + 40_000_000, "meta": b'{"sample_rate":16000,"channels":1}', "payload": b"\x00" * 1280}
    fields.update(overrides)
    header = wire.HEADER.pack(b"FS", fields["version"], fields["modality"], fields["encoding"], 0,
                              len(fields["sid"]), fields["seq"], fields["t0"], fields["t1"],
                              len(fields["meta"]), len(fields["payload"]))
    return header + fields["sid"] + fields["meta"] + fields["payload"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"XX\x01" + bytes(40), "bad-magic"),
        (_raw(version=3), "unsupported-version"),
        (_raw()[:30], "truncated"),
        (_raw()[:-1], "truncated"),
        (_raw() + b"\x00", "trailing-bytes"),
        (_raw(modality=9), "unknown-modality"),
        (_raw(encoding=9), "unknown-encoding"),
        (_raw(encoding=1), "encoding-mismatch"),
        (_raw(t1=T - 1), "t_end-before-t_start"),
        # Times near the int64 ends: a window's end (start + length) would overflow what clients read.
        (_raw(t0=2**63 - 40_000_001, t1=2**63 - 1), "bad-time"),
        (_raw(t0=-(2**63), t1=-(2**63) + 40_000_000), "bad-time"),
        (_raw(modality=3, encoding=5, meta=b"", payload=b"one", t0=wire.MAX_ABS_TIME_NS, t1=wire.MAX_ABS_TIME_NS + 1),
         "bad-time"),
        (_raw(modality=3, encoding=5, meta=b"", payload=b"one", t1=T + wire.MAX_DURATION_NS + 1), "too-long"),
        (_raw(sid=b""), "bad-stream-id"),
        (_raw(sid=b"\xff\xfe"), "bad-stream-id"),
        (_raw(meta=b"[1]"), "bad-meta"),
        (_raw(meta=b"{not json"), "bad-meta"),
        (_raw(meta=b'{"sample_rate":0,"channels":1}'), "bad-sample-rate"),
        (_raw(meta=b'{"sample_rate":16000.0,"channels":1}'), "bad-sample-rate"),
        (_raw(meta=b'{"sample_rate":16000,"channels":0}'), "bad-channels"),
        (_raw(payload=b"\x00" * 1281), "bad-pcm-size"),
        (_raw(meta=b'{"sample_rate":44100,"channels":1}'), "sample-rate-mismatch"),
        (_raw(modality=3, encoding=5, meta=b"", payload=b"caf\xc3"), "bad-utf8"),
        (_raw(modality=1, encoding=1, meta=b"", payload=b"GIF89a"), "bad-jpeg"),
        (_raw(modality=1, encoding=2, meta=b'{"width":4,"height":4}', payload=b"\x00" * 47), "bad-size"),
    ],
)
def test_bad_records_name_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as info:
        wire.decode(data)
    assert info.value.reason == reason


def test_corrupt_and_truncated_jpegs_are_bad_media() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    cv2.putText(rgb, "7", (4, 28), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    good = image_record("cam", 1, T, T + 1, rgb)
    truncated = Record("cam", Modality.VIDEO, 1, T, T + 1, Encoding.JPEG, good.payload[: len(good.payload) // 2])
    garbage = Record("cam", Modality.VIDEO, 1, T, T + 1, Encoding.JPEG, b"\xff\xd8" + bytes(200) + b"\xff\xd9")
    for record in (truncated, garbage):
        wire.decode(wire.HEADER.pack(b"FS", 1, 1, 1, 0, 3, 1, T, T + 1, 0, len(record.payload)) + b"cam"
                    + record.payload)  # the envelope itself is fine
        with pytest.raises(BadRecord) as info:
            decode_media(record)
        assert info.value.reason == "bad-jpeg"


def test_encode_refuses_what_decode_would_reject() -> None:
    with pytest.raises(BadRecord):
        wire.encode(Record("cam", Modality.AUDIO, 0, T, T + 1, Encoding.PCM_S16LE, b"\x00\x00",
                           {"sample_rate": 0, "channels": 1}))


texts = st.text(min_size=0, max_size=50)
stream_ids = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 1024)
times = st.integers(min_value=-wire.MAX_ABS_TIME_NS, max_value=wire.MAX_ABS_TIME_NS - wire.MAX_DURATION_NS)


@settings(max_examples=300, deadline=None)
@given(stream_ids, st.integers(0, 2**64 - 1), times, st.integers(0, wire.MAX_DURATION_NS), texts, st.booleans())
def test_text_round_trips(sid: str, seq: int, t0: int, dur: int, text: str, final: bool) -> None:
    record = text_record(sid, seq, t0, t0 + dur, text, is_final=final)
    assert wire.decode(wire.encode(record)) == record


@settings(max_examples=200, deadline=None)
@given(stream_ids, times, st.lists(st.floats(-1, 1, width=32), min_size=0, max_size=400),
       st.sampled_from([8000, 16000, 44100, 48000]), st.sampled_from([Encoding.PCM_S16LE, Encoding.PCM_F32LE]))
def test_audio_round_trips(sid: str, t0: int, values: list[float], rate: int, encoding: Encoding) -> None:
    record = audio_record(sid, 1, t0, np.array(values, dtype=np.float32), rate, encoding=encoding)
    back = wire.decode(wire.encode(record))
    assert back == record
    chunk = decode_media(back)
    assert isinstance(chunk, AudioChunk) and len(chunk.samples) == len(values)


def test_float_pcm_beyond_full_scale_is_clipped_and_non_finite_is_refused() -> None:
    hot = np.array([0.5, 2.0, -3.5, 1.0, -1.0], np.float32)
    chunk = decode_media(wire.decode(wire.encode(audio_record("mic", 0, T, hot, 8000, encoding=Encoding.PCM_F32LE))))
    assert isinstance(chunk, AudioChunk)
    assert chunk.samples.tolist() == [0.5, 1.0, -1.0, 1.0, -1.0]
    hot[1] = np.nan
    with pytest.raises(BadRecord, match="NaN or infinity") as refused:
        decode_media(wire.decode(wire.encode(audio_record("mic", 0, T, hot, 8000, encoding=Encoding.PCM_F32LE))))
    assert refused.value.reason == "bad-pcm"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.binary(min_size=0, max_size=1))
def test_raw_frames_round_trip(width: int, height: int, seed: bytes) -> None:
    rgb = np.random.default_rng(list(seed)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    record = image_record("cam", 1, T, T + 1, rgb, encoding=Encoding.RAW_RGB24)
    frame = decode_media(wire.decode(wire.encode(record)))
    assert isinstance(frame, Frame) and np.array_equal(frame.image, rgb)


def _decode_fully(data: bytes) -> None:
    try:
        record = wire.decode(data)
        decode_media(record)
    except BadRecord as exc:
        assert exc.reason and isinstance(exc.reason, str)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_bad_record(data: bytes) -> None:
    _decode_fully(data)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([_raw(), _raw(modality=3, encoding=5, meta=b"", payload=b"seven"),
                        wire.encode(image_record("c", 1, T, T + 1, np.zeros((8, 8, 3), np.uint8)))]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 10_000))
def test_mutated_records_raise_only_bad_record(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_fully(bytes(data[: len(data) - cut % 50]))


def test_meta_nesting_bomb_is_bad_meta() -> None:
    with pytest.raises(BadRecord) as info:
        wire.decode(_raw(modality=3, encoding=5, meta=b"[" * 100_000, payload=b""))
    assert info.value.reason == "bad-meta"
    assert json.loads(b'{"a":1}') == {"a": 1}


DOC = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _doc_blocks() -> list[str]:
    return DOC.read_text().split("```")[1::2]


def doc_dump(marker: str) -> bytes:
    """The bytes of docs/wire-format.md's hex dump that mentions ``marker``."""
    dump = next(block for block in _doc_blocks() if block.lstrip().startswith("46 53") and marker in block)
    hex_bytes = []
    for line in dump.splitlines():
        for token in line.split():
            if len(token) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in token):
                break
            hex_bytes.append(token)
    return bytes.fromhex("".join(hex_bytes))


def test_wire_format_page_example_is_what_encode_writes() -> None:
    """docs/wire-format.md is the spec for other languages: its bytes and its snippet must stay true."""
    expected = wire.encode(text_record("cam-01", 7, T, T + 300_000_000, "seven"))
    assert doc_dump('"seven"') == expected

    # The snippet that builds the example record (the page has other Python, e.g. client settings).
    snippet = next(block for block in _doc_blocks() if block.startswith("python") and "value =" in block)
    namespace: dict = {}
    exec(snippet.removeprefix("python"), namespace)
    assert namespace["value"] == expected


def test_the_intake_path_gives_what_decode_then_decode_media_gives() -> None:
    from fusionstream.stream.media import decode_wire
    from fusionstream.stream.sources import SyntheticAV, SyntheticConfig

    records = list(SyntheticAV(SyntheticConfig(streams=1, seconds=2, seed=2)).records())
    assert {r.modality for r in records} == set(Modality)
    for record in records:
        data = wire.encode(record)
        assert Record(*wire.parse(data)) == wire.decode(data) == record
        fast, slow = decode_wire(data, "ref"), decode_media(wire.decode(data), "ref")
        assert type(fast) is type(slow) and fast.ref == "ref"
        for name in ("stream_id", "t_start_ns", "t_end_ns", "text", "language", "is_final", "sample_rate"):
            assert getattr(fast, name, None) == getattr(slow, name, None)
        for name in ("image", "samples"):
            if hasattr(fast, name):
                np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))


def test_audio_times_in_milliseconds_or_microseconds_are_named_as_such() -> None:
    # A producer writing time.time() * 1000 got "times span 0.0 ms", with no word of the unit.
    import dataclasses

    chunk = audio_record("s", 0, 0, np.zeros(1600, np.float32), 16_000)  # 100 ms
    now_ms, now_us = 1_795_793_000_000, 1_795_793_000_000_000
    for t0, t1, unit in ((now_ms, now_ms + 100, "milliseconds"), (now_us, now_us + 100_000, "microseconds"),
                         (0, 50_000_000, None)):
        with pytest.raises(BadRecord) as refused:
            wire.decode(wire.encode(dataclasses.replace(chunk, t_start_ns=t0, t_end_ns=t1)))
        assert refused.value.reason == "sample-rate-mismatch"
        assert (f"times in {unit}?" in refused.value.detail) if unit else "times in" not in refused.value.detail
