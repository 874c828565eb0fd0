"""Sources of records: the synthetic AV-digits source (with ground truth) and its speech bank.

``SyntheticAV(SyntheticConfig(...)).records()`` yields wire :class:`~fusionstream.stream.records.Record`
objects in event-time order, ready for a Kafka producer, the embedded demo or training;
``.truth`` labels any window of any stream.
"""

from fusionstream.stream.sources.captions import (
    Cue,
    caption_records,
    parse_captions,
    read_captions,
    stdin_caption_records,
)
from fusionstream.stream.sources.devices import DeviceError, camera_records, microphone_records
from fusionstream.stream.sources.files import (
    MediaInfo,
    audio_track_records,
    has_audio,
    media_file_records,
    paced,
    probe,
    restamp,
    video_frame_records,
)
from fusionstream.stream.sources.speech import DIGIT_WORDS, Clip, SpeechBank
from fusionstream.stream.sources.synthetic import ASR_CONFUSIONS, Corruption, SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.truth import CLEAR_SHARE, GroundTruth, Segment, WindowTruth

__all__ = [
    "ASR_CONFUSIONS",
    "CLEAR_SHARE",
    "DIGIT_WORDS",
    "Clip",
    "Corruption",
    "Cue",
    "DeviceError",
    "GroundTruth",
    "MediaInfo",
    "Segment",
    "SpeechBank",
    "SyntheticAV",
    "SyntheticConfig",
    "WindowTruth",
    "audio_track_records",
    "camera_records",
    "caption_records",
    "has_audio",
    "media_file_records",
    "microphone_records",
    "paced",
    "parse_captions",
    "probe",
    "read_captions",
    "restamp",
    "stdin_caption_records",
    "video_frame_records",
]
