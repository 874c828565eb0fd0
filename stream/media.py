"""Media payloads: records to decoded items (for the aligner) and media to records (for producers).

Decoding a JPEG costs milliseconds, so callers run :func:`decode_media` off the
event loop (the service uses a thread pool; OpenCV releases the GIL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from fusionstream.stream import wire
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.jpeg import LazyJpeg, decode_jpeg
from fusionstream.stream.records import (
    FLAG_COMPLETE,
    PROGRESS_VERSION,
    AudioChunk,
    Encoding,
    Frame,
    MediaItem,
    Modality,
    Progress,
    Record,
    TextSegment,
)


def decode_media(record: Record, ref: Any = None, *, lazy_jpeg: bool = False) -> MediaItem | Progress:
    """Decode a validated record's payload; raise ``BadRecord`` if the media is corrupt.

    With ``lazy_jpeg`` a JPEG frame is only checked (:func:`fusionstream.stream.jpeg.check_jpeg`) and its
    ``image`` is a :class:`~fusionstream.stream.jpeg.LazyJpeg`, decoded when a window samples it: the
    pipeline's way of decoding only the frames windows use.
    """
    return _item(
        record.stream_id, record.modality, record.t_start_ns, record.t_end_ns, record.encoding, record.payload,
        record.meta, ref, lazy_jpeg, record.flags,
    )


def decode_wire(data: bytes, ref: Any = None, *, lazy_jpeg: bool = False) -> MediaItem | Progress:
    """``decode_media(wire.decode(data), ...)`` without the intermediate :class:`Record`: the
    intake's path, taken by every record the service consumes."""
    stream_id, modality, _seq, t_start, t_end, encoding, payload, meta, _version, flags = wire.parse(data)
    return _item(stream_id, modality, t_start, t_end, encoding, payload, meta, ref, lazy_jpeg, flags)


def _item(
    stream_id: str,
    modality: Modality,
    t_start: int,
    t_end: int,
    encoding: Encoding,
    payload: bytes,
    meta: Mapping[str, Any],
    ref: Any,
    lazy_jpeg: bool,
    flags: int,
) -> MediaItem | Progress:
    if encoding is Encoding.PROGRESS:
        return Progress(stream_id, modality, t_end, bool(meta.get("ended", False)), ref)
    complete = bool(flags & FLAG_COMPLETE)
    if modality is Modality.AUDIO:
        samples = _pcm(encoding, payload, meta)
        return AudioChunk(stream_id, t_start, t_end, samples, meta["sample_rate"], ref, complete)
    if modality is Modality.VIDEO:
        if encoding is Encoding.JPEG:
            image: np.ndarray | LazyJpeg = LazyJpeg(payload) if lazy_jpeg else _jpeg(payload)
        else:
            image = _raw_rgb24(payload, meta)
        return Frame(stream_id, t_start, t_end, image, ref, complete)
    return TextSegment(
        stream_id,
        t_start,
        t_end,
        payload.decode("utf-8"),
        str(meta.get("language", "und")),
        bool(meta.get("is_final", True)),
        ref,
        complete,
    )


def decode_image(record: Record) -> np.ndarray:
    """HxWx3 uint8 RGB from a ``jpeg`` or ``raw-rgb24`` record."""
    if record.encoding is Encoding.RAW_RGB24:
        return _raw_rgb24(record.payload, record.meta)
    return _jpeg(record.payload)


def decode_pcm(record: Record) -> np.ndarray:
    """Mono float32 samples in [-1, 1] (channels are averaged)."""
    return _pcm(record.encoding, record.payload, record.meta)


def _raw_rgb24(payload: bytes, meta: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8).reshape(int(meta["height"]), int(meta["width"]), 3)


def _jpeg(payload: bytes) -> np.ndarray:
    return decode_jpeg(payload)  # which checks the markers first (``check_jpeg``'s walk, cached per header block)


_S16 = np.dtype("<i2")
_F32 = np.dtype("<f4")
_S16_SCALE = np.float32(1 / 32768)


def _pcm(encoding: Encoding, payload: bytes, meta: Mapping[str, Any]) -> np.ndarray:
    if encoding is Encoding.PCM_S16LE:
        # One float32 array from the int16 view, not a cast and then a scaled copy.
        samples = np.multiply(np.frombuffer(payload, dtype=_S16), _S16_SCALE, dtype=np.float32)
    else:
        samples = np.frombuffer(payload, dtype=_F32).astype(np.float32)
        if not np.isfinite(samples).all():
            raise BadRecord("bad-pcm", "float PCM contains NaN or infinity")
        # Full scale is ±1; beyond it (a hot mix, a resampler's overshoot) is clipped, as any conversion to
        # integer PCM would, rather than refusing the chunk or letting it outweigh the window's other audio.
        np.clip(samples, -1.0, 1.0, out=samples)
    channels = meta["channels"]
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples


def image_record(
    stream_id: str,
    seq: int,
    t_start_ns: int,
    t_end_ns: int,
    rgb: np.ndarray,
    *,
    encoding: Encoding = Encoding.JPEG,
    quality: int = 85,
    complete: bool = False,
) -> Record:
    """A video record from an HxWx3 uint8 RGB image."""
    height, width = rgb.shape[:2]
    if encoding is Encoding.RAW_RGB24:
        payload = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    else:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not encode the frame as JPEG")
        payload = buf.tobytes()
    return Record(
        stream_id, Modality.VIDEO, seq, t_start_ns, t_end_ns, encoding, payload, {"width": width, "height": height},
        flags=FLAG_COMPLETE if complete else 0,
    )


def audio_record(
    stream_id: str,
    seq: int,
    t_start_ns: int,
    samples: np.ndarray,
    sample_rate: int,
    *,
    encoding: Encoding = Encoding.PCM_S16LE,
    complete: bool = False,
) -> Record:
    """An audio record from mono float samples in [-1, 1]; ``t_end`` follows from the sample count.
    ``complete``: the producer sends this stream's audio in order (``FLAG_COMPLETE``)."""
    if encoding is Encoding.PCM_S16LE:
        payload = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    else:
        payload = np.asarray(samples, dtype="<f4").tobytes()
    t_end_ns = t_start_ns + round(len(samples) * 1_000_000_000 / sample_rate)
    return Record(
        stream_id,
        Modality.AUDIO,
        seq,
        t_start_ns,
        t_end_ns,
        encoding,
        payload,
        {"sample_rate": sample_rate, "channels": 1},
        flags=FLAG_COMPLETE if complete else 0,
    )


def text_record(
    stream_id: str,
    seq: int,
    t_start_ns: int,
    t_end_ns: int,
    text: str,
    *,
    language: str = "en",
    is_final: bool = True,
    complete: bool = False,
) -> Record:
    """A transcript record; ``complete``: nothing of this stream's transcript starting before its end follows."""
    return Record(
        stream_id,
        Modality.TEXT,
        seq,
        t_start_ns,
        t_end_ns,
        Encoding.UTF8,
        text.encode("utf-8"),
        {"language": language, "is_final": is_final},
        flags=FLAG_COMPLETE if complete else 0,
    )


def progress_record(stream_id: str, modality: Modality, seq: int, t_ns: int, *, ended: bool = False) -> Record:
    """A progress record (version 2): ``modality`` of ``stream_id`` is complete up to ``t_ns``;
    ``ended``: its source stopped (docs/wire-format.md#progress)."""
    return Record(stream_id, modality, seq, t_ns, t_ns, Encoding.PROGRESS, b"", {"ended": True} if ended else {},
                  version=PROGRESS_VERSION)
