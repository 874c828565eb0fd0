"""What the aligner tells its caller about each item it took, and the counters it keeps for metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of one item: the starts of the windows it joined, empty when it was late."""

    window_starts: tuple[int, ...]
    #: Windows it belongs to that had already closed: it is in the others only (partly late).
    missed: int = 0
    #: A copy of an item already buffered (a producer that resent it): taken once, in no window twice.
    duplicate: bool = False
    #: Late: where the stream's windows were closed up to (the start of its first open one), if known.
    closed_until_ns: int | None = None

    @property
    def late(self) -> bool:
        return not self.window_starts and not self.duplicate

    @property
    def partly_late(self) -> bool:
        return bool(self.window_starts) and self.missed > 0


@dataclass(slots=True)
class AlignerStats:
    """Counters for metrics; monotonic except ``open_streams``."""

    items: int = 0
    late: int = 0
    #: Items that missed some of their windows (already closed) but joined others.
    partly_late: int = 0
    #: Progress records taken (docs/wire-format.md#progress).
    progress: int = 0
    #: Closed windows predicted again because a partly late record changed what they hold (revisions on).
    amended: int = 0
    #: Copies of items already buffered (``Admission.duplicate``): not buffered again.
    duplicates: int = 0
    windows: int = 0
    closed_by_watermark: int = 0
    closed_by_timeout: int = 0
    closed_by_flush: int = 0
    evicted_streams: int = 0
    open_streams: int = 0


__all__ = ["Admission", "AlignerStats"]
