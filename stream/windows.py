"""Windows: the unit the model sees, and the settings that shape them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fusionstream.stream.records import Modality, TextSegment
from fusionstream.units import MS, NS


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """How records become windows (docs/architecture.md#alignment). Times are nanoseconds.

    ``lateness_ns`` is how long the watermark waits behind the slowest modality.
    A modality more than ``max_skew_ns`` of event time behind the stream's newest
    record, or silent for ``idle_timeout_ns`` of processing time, is not waited for,
    so a dead microphone cannot stall a camera's predictions; one with a wait budget
    (``wait_ns``) is waited for until its budget runs out instead. A stream silent for
    ``idle_timeout_ns`` has all its windows closed; after ``evict_after_ns`` its
    state is dropped so memory stays bounded.
    """

    window_ns: int = NS
    hop_ns: int = NS // 2
    frames_per_window: int = 8
    sample_rate: int = 16_000
    lateness_ns: int = 200_000_000
    max_skew_ns: int = 2 * NS
    idle_timeout_ns: int = 2 * NS
    evict_after_ns: int = 30 * NS
    #: How far past the wall clock a record's event time may be. Beyond it the record is refused (``future``):
    #: taken, it would carry its stream's watermark there, and every record after it would be late.
    max_future_ns: int = 3600 * NS
    #: How many evicted streams keep a tombstone (their emitted-up-to time) to reject stale records.
    tombstones: int = 100_000
    #: Early predictions with revisions (docs/predictions.md#revisions): the modalities a provisional
    #: prediction does not wait for (empty: no provisional predictions, today's behaviour).
    provisional_without: frozenset[Modality] = frozenset()
    #: Per modality, the most event time it may lag the newest modality and still be waited for (its
    #: wait budget, e.g. ``text_wait_ms``); modalities not listed use ``max_skew_ns``.
    wait_ns: tuple[tuple[Modality, int], ...] = ()
    #: Modalities whose wait budget each stream learns from how late their records arrive
    #: (``stream/learned_wait.py``, ``text_wait_ms = "auto"``), at most ``learned_wait_max_ns``.
    learn_wait: frozenset[Modality] = frozenset()
    learned_wait_max_ns: int = 10 * NS
    #: Staggered windows (docs/architecture.md#staggered-windows): each stream's window starts are offset
    #: from the hop grid by a fixed amount derived from its id, so many streams' windows do not all close
    #: at the same instant. False: every stream's windows start at multiples of the hop.
    stagger: bool = False

    def __post_init__(self) -> None:
        if self.window_ns <= 0 or self.hop_ns <= 0:
            raise ValueError("window and hop must be positive")
        if self.hop_ns > self.window_ns:
            raise ValueError(
                f"hop {self.hop_ns} ns is longer than the window {self.window_ns} ns: "
                "records would fall between windows"
            )
        if self.frames_per_window < 1:
            raise ValueError("frames_per_window must be at least 1")
        if (self.window_ns * self.sample_rate) % NS:
            raise ValueError(f"a {self.window_ns} ns window is not a whole number of samples at {self.sample_rate} Hz")
        timeouts = (self.lateness_ns, self.max_skew_ns, self.idle_timeout_ns, *(ns for _, ns in self.wait_ns))
        if min(timeouts) < 0 or self.evict_after_ns < self.idle_timeout_ns:
            raise ValueError("timeouts must be non-negative and evict_after_ns >= idle_timeout_ns")

    @property
    def samples_per_window(self) -> int:
        return self.window_ns * self.sample_rate // NS

    def offset_ns(self, stream_id: str) -> int:
        """Where ``stream_id``'s window starts sit on the hop: they are ``offset + k * hop``."""
        return stream_offset_ns(stream_id, self.hop_ns) if self.stagger else 0

    def stream_starts(self, stream_id: str, first_ns: int, last_ns: int) -> range:
        """Starts of ``stream_id``'s windows that contain any instant of ``[first_ns, last_ns]``."""
        return self.starts_overlapping(first_ns, last_ns, self.offset_ns(stream_id))

    def starts_overlapping(self, first_ns: int, last_ns: int, offset_ns: int) -> range:
        """Starts of the windows on the grid ``offset_ns + k * hop`` that contain any instant of
        ``[first_ns, last_ns]``."""
        hop = self.hop_ns
        first = (first_ns - offset_ns - self.window_ns) // hop * hop + hop + offset_ns
        last = (last_ns - offset_ns) // hop * hop + offset_ns
        return range(first, last + 1, hop)

    def first_start_from(self, t_ns: int, offset_ns: int = 0) -> int:
        """The first window start at or after ``t_ns`` on the grid ``offset_ns + k * hop``."""
        return -(-(t_ns - offset_ns) // self.hop_ns) * self.hop_ns + offset_ns


@lru_cache(maxsize=65_536)
def stream_offset_ns(stream_id: str, hop_ns: int) -> int:
    """A stream's window offset: whole milliseconds in ``[0, hop)`` from a CRC-32 of its id, the same in
    every process and every run (not Python's salted ``hash``), so restarts and other instances agree."""
    slots = max(1, hop_ns // MS)
    return zlib.crc32(stream_id.encode()) % slots * (hop_ns // slots)


@dataclass(frozen=True, slots=True)
class Window:
    """Everything one prediction is made from.

    ``frames`` holds exactly ``frames_per_window`` images (nearest frame to K evenly
    spaced instants, repeated when the window has fewer) or none when video is
    absent; ``audio`` always holds exactly ``samples_per_window`` float32 samples,
    zero where nothing covered them (listed in ``audio_gaps`` as sample ranges).
    ``mask`` and ``coverage`` are in ``MODALITIES`` order: video, audio, text.
    """

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    frames: tuple[np.ndarray, ...]
    frame_times_ns: tuple[int, ...]
    audio: np.ndarray
    audio_gaps: tuple[tuple[int, int], ...]
    text: tuple[TextSegment, ...]
    mask: tuple[bool, bool, bool]
    coverage: tuple[float, float, float]
    closed_by: str
    refs: tuple[Any, ...] = ()
    #: How many predictions of this window were made before this one (docs/predictions.md#revisions).
    revision: int = 0
    #: False for a provisional window (built before every modality was complete; it closes later).
    final: bool = True

    @property
    def window_id(self) -> tuple[str, int]:
        return (self.stream_id, self.t_start_ns)

    @property
    def transcript(self) -> str:
        return " ".join(segment.text for segment in self.text)
