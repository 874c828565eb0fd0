"""Ground truth of a synthetic source: which digit each stream shows when, and how each modality was corrupted.

The label of a window is the digit covering the largest share of it; a window is
*clear* when that share is at least :data:`CLEAR_SHARE`. Time outside every segment
(before a stream starts, after it ends) counts as no digit, so a window hanging off a
stream's edge is labelled by what it does contain, with a smaller share.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: A window is clear when one digit covers at least this share of it.
CLEAR_SHARE = 0.75

VideoState = Literal["clean", "blank", "occlude", "drop"]
AudioState = Literal["clean", "silence", "noise", "drop"]
TextState = Literal["clean", "missing", "wrong"]

VIDEO_STATES: tuple[VideoState, ...] = ("clean", "blank", "occlude", "drop")
AUDIO_STATES: tuple[AudioState, ...] = ("clean", "silence", "noise", "drop")
TEXT_STATES: tuple[TextState, ...] = ("clean", "missing", "wrong")


@dataclass(frozen=True, slots=True)
class Segment:
    """One digit shown on ``[t_start_ns, t_end_ns)``, with the corruption each modality got."""

    t_start_ns: int
    t_end_ns: int
    digit: int
    video_state: VideoState = "clean"
    audio_state: AudioState = "clean"
    text_state: TextState = "clean"

    @property
    def duration_ns(self) -> int:
        return self.t_end_ns - self.t_start_ns


@dataclass(frozen=True, slots=True)
class WindowTruth:
    """The label of one window: ``digit`` is None when no segment overlaps it."""

    digit: int | None
    share: float
    clear: bool


class GroundTruth:
    """Segments per stream, and window labels computed from them."""

    __slots__ = ("_segments", "_starts")

    def __init__(self, segments: Mapping[str, Iterable[Segment]]) -> None:
        self._segments: dict[str, tuple[Segment, ...]] = {}
        self._starts: dict[str, list[int]] = {}
        for stream_id, items in segments.items():
            ordered = tuple(items)
            for prev, seg in itertools.pairwise(ordered):
                if seg.t_start_ns < prev.t_end_ns:
                    raise ValueError(f"{stream_id}: segments overlap or are out of order at {seg.t_start_ns}")
            for seg in ordered:
                if seg.t_end_ns <= seg.t_start_ns:
                    raise ValueError(f"{stream_id}: empty segment at {seg.t_start_ns}")
            self._segments[stream_id] = ordered
            self._starts[stream_id] = [s.t_start_ns for s in ordered]

    @property
    def stream_ids(self) -> list[str]:
        return list(self._segments)

    def segments(self, stream_id: str) -> list[Segment]:
        """The stream's segments in time order."""
        return list(self._segments[stream_id])

    def span(self, stream_id: str) -> tuple[int, int]:
        """``(t_start_ns, t_end_ns)`` of the stream's first and last segment."""
        segs = self._segments[stream_id]
        return segs[0].t_start_ns, segs[-1].t_end_ns

    def segment_at(self, stream_id: str, t_ns: int) -> Segment | None:
        """The segment covering ``t_ns``, or None."""
        segs = self._segments[stream_id]
        i = bisect.bisect_right(self._starts[stream_id], t_ns) - 1
        if i >= 0 and t_ns < segs[i].t_end_ns:
            return segs[i]
        return None

    def label(self, stream_id: str, t_start_ns: int, t_end_ns: int) -> WindowTruth:
        """The digit covering the largest share of ``[t_start_ns, t_end_ns)``; ties go to the earlier digit."""
        if t_end_ns <= t_start_ns:
            raise ValueError(f"empty window [{t_start_ns}, {t_end_ns})")
        segs = self._segments[stream_id]
        # The first candidate is the segment that starts at or before the window start.
        i = max(bisect.bisect_right(self._starts[stream_id], t_start_ns) - 1, 0)
        covered: dict[int, int] = {}
        while i < len(segs) and segs[i].t_start_ns < t_end_ns:
            overlap = min(segs[i].t_end_ns, t_end_ns) - max(segs[i].t_start_ns, t_start_ns)
            if overlap > 0:
                covered[segs[i].digit] = covered.get(segs[i].digit, 0) + overlap
            i += 1
        if not covered:
            return WindowTruth(None, 0.0, False)
        digit = max(covered, key=covered.__getitem__)  # dicts keep insertion order: the earlier digit wins ties
        share = covered[digit] / (t_end_ns - t_start_ns)
        return WindowTruth(digit, share, share >= CLEAR_SHARE)

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """JSON-ready form, so a producer can save the truth of what it published for a later evaluation."""
        return {sid: [asdict(s) for s in segs] for sid, segs in self._segments.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[Mapping[str, Any]]]) -> GroundTruth:
        return cls({sid: [Segment(**s) for s in segs] for sid, segs in data.items()})

    def __repr__(self) -> str:
        sizes = ", ".join(f"{sid}: {len(segs)}" for sid, segs in self._segments.items())
        return f"GroundTruth({{{sizes}}} segments)"


__all__ = [
    "AUDIO_STATES",
    "CLEAR_SHARE",
    "TEXT_STATES",
    "VIDEO_STATES",
    "AudioState",
    "GroundTruth",
    "Segment",
    "TextState",
    "VideoState",
    "WindowTruth",
]
