"""What flows: the wire format, media decoding, sources, and event-time alignment into windows.

``stream`` never imports ``engines`` or Kafka: it is a library of pure parts that the
service (``consumers``), the embedded demo and the trainer all share.
"""

from typing import TYPE_CHECKING

from fusionstream.lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported when first read: fusionstream.stream.errors alone (every error class) must not import numpy.
__getattr__, __dir__ = lazy_exports(__name__, {
    "BadRecord": "errors", "FusionStreamError": "errors", **dict.fromkeys(
        ("MODALITIES", "AudioChunk", "Encoding", "Frame", "MediaItem", "Modality", "Record", "TextSegment"), "records"),
})

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
