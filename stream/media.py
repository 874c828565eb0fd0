"""Media payloads: records to decoded items (for the aligner) and media to records (for producers).

Decoding a JPEG costs milliseconds, so callers run :func:`decode_media` off the
event loop (the service uses a thread pool; OpenCV releases the GIL).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from stream.errors import BadRecord
from stream.jpeg import LazyJpeg, check_jpeg, decode_jpeg
from stream.records import AudioChunk, Encoding, Frame, MediaItem, Modality, Record, TextSegment


def decode_media(record: Record, ref: Any = None, *, lazy_jpeg: bool = False) -> MediaItem:
    """Decode a validated record's payload; raise ``BadRecord`` if the media is corrupt.

    With ``lazy_jpeg`` a JPEG frame is only checked (:func:`stream.jpeg.check_jpeg`) and its
    ``image`` is a :class:`~stream.jpeg.LazyJpeg`, decoded when a window samples it: the
    pipeline's way of decoding only the frames windows use.
    """
    if record.modality is Modality.VIDEO:
        if lazy_jpeg and record.encoding is Encoding.JPEG:
            image: np.ndarray | LazyJpeg = LazyJpeg(record.payload)
        else:
            image = decode_image(record)
        return Frame(record.stream_id, record.t_start_ns, record.t_end_ns, image, ref)
    if record.modality is Modality.AUDIO:
        samples = decode_pcm(record)
        return AudioChunk(
            record.stream_id, record.t_start_ns, record.t_end_ns, samples, int(record.meta["sample_rate"]), ref
        )
    return TextSegment(
        record.stream_id,
        record.t_start_ns,
        record.t_end_ns,
        record.payload.decode("utf-8"),
        str(record.meta.get("language", "und")),
        bool(record.meta.get("is_final", True)),
        ref,
    )


def decode_image(record: Record) -> np.ndarray:
    """HxWx3 uint8 RGB from a ``jpeg`` or ``raw-rgb24`` record."""
    if record.encoding is Encoding.RAW_RGB24:
        height, width = int(record.meta["height"]), int(record.meta["width"])
        return np.frombuffer(record.payload, dtype=np.uint8).reshape(height, width, 3)
    check_jpeg(record.payload)
    return decode_jpeg(record.payload)


def decode_pcm(record: Record) -> np.ndarray:
    """Mono float32 samples in [-1, 1] (channels are averaged)."""
    channels = int(record.meta["channels"])
    if record.encoding is Encoding.PCM_S16LE:
        samples = np.frombuffer(record.payload, dtype="<i2").astype(np.float32)
        samples *= np.float32(1 / 32768)  # in place: one array per chunk, not two
    else:
        samples = np.frombuffer(record.payload, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise BadRecord("bad-pcm", "float PCM contains NaN or infinity")
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
        stream_id, Modality.VIDEO, seq, t_start_ns, t_end_ns, encoding, payload, {"width": width, "height": height}
    )


def audio_record(
    stream_id: str,
    seq: int,
    t_start_ns: int,
    samples: np.ndarray,
    sample_rate: int,
    *,
    encoding: Encoding = Encoding.PCM_S16LE,
) -> Record:
    """An audio record from mono float samples in [-1, 1]; ``t_end`` follows from the sample count."""
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
) -> Record:
    """A transcript record."""
    return Record(
        stream_id,
        Modality.TEXT,
        seq,
        t_start_ns,
        t_end_ns,
        Encoding.UTF8,
        text.encode("utf-8"),
        {"language": language, "is_final": is_final},
    )
