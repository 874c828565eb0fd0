"""Sources of records: the synthetic AV-digits source (with ground truth) and its speech bank.

``SyntheticAV(SyntheticConfig(...)).records()`` yields wire :class:`~stream.records.Record`
objects in event-time order, ready for a Kafka producer, the embedded demo or training;
``.truth`` labels any window of any stream.
"""

from stream.sources.speech import DIGIT_WORDS, Clip, SpeechBank
from stream.sources.synthetic import ASR_CONFUSIONS, Corruption, SyntheticAV, SyntheticConfig
from stream.sources.truth import CLEAR_SHARE, GroundTruth, Segment, WindowTruth

__all__ = [
    "ASR_CONFUSIONS",
    "CLEAR_SHARE",
    "DIGIT_WORDS",
    "Clip",
    "Corruption",
    "GroundTruth",
    "Segment",
    "SpeechBank",
    "SyntheticAV",
    "SyntheticConfig",
    "WindowTruth",
]
