"""What flows: the wire format, media decoding, sources, and event-time alignment into windows.

``stream`` never imports ``engines`` or Kafka: it is a library of pure parts that the
service (``consumers``), the embedded demo and the trainer all share.
"""

from fusionstream.stream.errors import BadRecord, FusionStreamError
from fusionstream.stream.records import (
    MODALITIES,
    AudioChunk,
    Encoding,
    Frame,
    MediaItem,
    Modality,
    Record,
    TextSegment,
)

__all__ = [
    "MODALITIES",
    "AudioChunk",
    "BadRecord",
    "Encoding",
    "Frame",
    "FusionStreamError",
    "MediaItem",
    "Modality",
    "Record",
    "TextSegment",
]
