"""What flows: the wire record and the decoded media items the aligner consumes.

A :class:`Record` is exactly what one Kafka value carries (see docs/wire-format.md).
``fusionstream.stream.media.decode_media`` turns it into a :class:`Frame`, :class:`AudioChunk` or
:class:`TextSegment`: validated, decoded, and ready for the aligner.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fusionstream.stream.jpeg import LazyJpeg

#: The version media records are written with (every reader since the first reads them).
WIRE_VERSION = 1
#: The version of progress records (docs/wire-format.md#progress): readers of version 1 only reject
#: them as ``unsupported-version``, as the format always told them to.
PROGRESS_VERSION = 2
#: The versions this build reads.
READ_VERSIONS = (1, 2)
#: Flags bit of a media record: its producer sends this modality of this stream in event-time order,
#: so after it the modality is complete up to the record's ``t_end_ns`` (version-1 readers ignore flags).
FLAG_COMPLETE = 0x01


class Modality(enum.IntEnum):
    """The three input modalities; the value is the byte on the wire."""

    VIDEO = 1
    AUDIO = 2
    TEXT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Encoding(enum.IntEnum):
    """Payload encodings; the value is the byte on the wire."""

    JPEG = 1
    RAW_RGB24 = 2
    PCM_S16LE = 3
    PCM_F32LE = 4
    UTF8 = 5
    #: No media: "this modality of this stream is complete up to ``t_end_ns``" (version 2).
    PROGRESS = 6

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Encoding:
        return cls[label.upper().replace("-", "_")]


#: Which encodings each modality may use.
ENCODINGS_OF: dict[Modality, frozenset[Encoding]] = {
    Modality.VIDEO: frozenset({Encoding.JPEG, Encoding.RAW_RGB24}),
    Modality.AUDIO: frozenset({Encoding.PCM_S16LE, Encoding.PCM_F32LE}),
    Modality.TEXT: frozenset({Encoding.UTF8}),
}
#: Encodings that carry media (every one but ``progress``, which any modality may send).
MEDIA_ENCODINGS = frozenset(e for e in Encoding if e is not Encoding.PROGRESS)

#: The modalities in the order every mask and coverage tuple uses.
MODALITIES: tuple[Modality, ...] = (Modality.VIDEO, Modality.AUDIO, Modality.TEXT)


@dataclass(frozen=True, slots=True)
class Record:
    """One media unit as carried on the wire: a frame, an audio chunk or a transcript segment.

    Times are Unix-epoch nanoseconds of the media itself (capture time).
    ``meta`` holds the encoding's parameters (width/height, sample_rate/channels,
    language/is_final) and any extra keys a producer adds.
    """

    stream_id: str
    modality: Modality
    seq: int
    t_start_ns: int
    t_end_ns: int
    encoding: Encoding
    payload: bytes
    meta: Mapping[str, Any] = field(default_factory=dict)
    version: int = WIRE_VERSION
    #: Header flags: ``FLAG_COMPLETE`` or 0.
    flags: int = 0

    @property
    def is_progress(self) -> bool:
        return self.encoding is Encoding.PROGRESS


@dataclass(frozen=True, slots=True)
class Frame:
    """A video frame: ``image`` is HxWx3 uint8 RGB, or a checked JPEG not decoded yet
    (``decode_media(..., lazy_jpeg=True)``, which only the pipeline uses; it decodes the
    frames windows sample before the windows leave it)."""

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    image: np.ndarray | LazyJpeg
    ref: Any = None
    #: Sent with ``FLAG_COMPLETE``: the modality is complete up to ``t_end_ns`` after it.
    complete: bool = False

    modality = Modality.VIDEO


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Decoded mono audio: ``samples`` is float32 in [-1, 1] at ``sample_rate``."""

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    samples: np.ndarray
    sample_rate: int
    ref: Any = None
    complete: bool = False

    modality = Modality.AUDIO


@dataclass(frozen=True, slots=True)
class TextSegment:
    """A transcript segment (a word, a phrase or a caption cue)."""

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    text: str
    language: str = "und"
    is_final: bool = True
    ref: Any = None
    complete: bool = False

    modality = Modality.TEXT


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress record decoded: ``modality`` of ``stream_id`` is complete up to ``t_ns`` (every
    record starting before it was sent). ``ended``: the source stopped (a camera dropped, a file
    ended); the aligner stops waiting for the modality until it sends again."""

    stream_id: str
    modality: Modality
    t_ns: int
    ended: bool = False
    ref: Any = None


MediaItem = Frame | AudioChunk | TextSegment
