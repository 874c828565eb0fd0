"""Per-stream buffers of the aligner and the arithmetic that builds a window from them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fusionstream.stream.jpeg import LazyJpeg
from fusionstream.stream.learned_wait import LearnedWait
from fusionstream.stream.records import AudioChunk, Frame, MediaItem, Modality, TextSegment

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fusionstream.stream.windows import Window, WindowConfig

NEVER = -(2**63)
#: The watermark of a stream all of whose sources said they ended (progress with ``ended``).
ENDED = 2**63 - 1


@dataclass(slots=True)
class ModalityBuffer:
    """One modality's items of one stream, sorted by start time."""

    starts: list[int] = field(default_factory=list)
    #: ``last_instant`` of each item, kept beside it: windows ask for it on every emission.
    lasts: list[int] = field(default_factory=list)
    items: list[MediaItem] = field(default_factory=list)
    latest_end_ns: int = NEVER
    last_arrival_ns: int = NEVER
    #: How far its producer said it is complete (progress records, ``complete`` media).
    complete_ns: int = NEVER
    #: Its producer said the source ended (a progress record with ``ended``) and sent nothing since.
    ended: bool = False
    #: The end of the last item dropped from the front: a frame is a window member only at its start, but the
    #: frame before a window's first one is still showing when the window starts (video coverage counts it).
    dropped_end_ns: int = NEVER

    def insert(self, item: MediaItem, last: int) -> None:
        start = item.t_start_ns
        if not self.starts or start >= self.starts[-1]:  # the usual case: items arrive in order
            self.starts.append(start)
            self.lasts.append(last)
            self.items.append(item)
            return
        index = bisect.bisect_right(self.starts, start)
        self.starts.insert(index, start)
        self.lasts.insert(index, last)
        self.items.insert(index, item)

    def holds(self, item: MediaItem) -> bool:
        """Whether a copy of ``item`` (same span, same content) is buffered: a producer that restarted and
        sent its last second again. Free for the usual item, which starts after every buffered one."""
        starts = self.starts
        start = item.t_start_ns
        if not starts or start > starts[-1]:
            return False
        index = bisect.bisect_left(starts, start)
        while index < len(starts) and starts[index] == start:
            if _same(self.items[index], item):
                return True
            index += 1
        return False

    def prune_before(self, t_ns: int) -> None:
        """Drop leading items that no window starting at ``t_ns`` or later can contain."""
        lasts = self.lasts
        keep = 0
        while keep < len(lasts) and lasts[keep] < t_ns:
            keep += 1
        if keep:
            self.dropped_end_ns = self.items[keep - 1].t_end_ns
            del self.starts[:keep], self.lasts[:keep], self.items[:keep]

    def retire_before(self, t_ns: int, into: ModalityBuffer) -> None:
        """Like :meth:`prune_before`, but the items dropped go to the end of ``into`` (kept a while for amendments)."""
        lasts = self.lasts
        keep = 0
        while keep < len(lasts) and lasts[keep] < t_ns:
            keep += 1
        if keep:
            self.dropped_end_ns = self.items[keep - 1].t_end_ns
            into.starts += self.starts[:keep]
            into.lasts += lasts[:keep]
            into.items += self.items[:keep]
            del self.starts[:keep], self.lasts[:keep], self.items[:keep]

    def joined(self, later: ModalityBuffer) -> ModalityBuffer:
        """This buffer's items then ``later``'s, as one buffer (this one's were retired from ``later``: all
        start no later than ``later``'s first)."""
        return ModalityBuffer(self.starts + later.starts, self.lasts + later.lasts, self.items + later.items)


@dataclass(slots=True)
class StreamState:
    buffers: dict[Modality, ModalityBuffer]
    #: Start of the first window not yet emitted; ``None`` until the first emission.
    next_start_ns: int | None
    first_start_ns: int
    last_arrival_ns: int
    #: Where the stream's window starts sit on the hop (``WindowConfig.offset_ns``).
    offset_ns: int = 0
    #: Start of the first window not yet offered by ``Aligner.ready``.
    offered_until_ns: int = NEVER
    #: Start of the first window without a provisional prediction (``Aligner.provisional``).
    provisional_until_ns: int = NEVER
    #: Starts of the windows offered a provisional prediction: their finals are revision 1. (Not every window
    #: before ``provisional_until_ns``: one with no data when the provisionals passed it has none.)
    provisioned: set[int] = field(default_factory=set)
    #: Windows before it had a provisional prediction published before a restart (``Aligner.resume``).
    resumed_provisional_ns: int = NEVER
    #: Windows before it were published by an earlier run (``Aligner.resume``): a record re-read for the
    #: open ones that missed those is not partly late, it was in them.
    resumed_until_ns: int = NEVER
    #: The last window instant whose frame ``frames_ahead.frames_due`` gave out (to be encoded ahead).
    frames_due_until_ns: int = NEVER
    #: The start time of the last frame it gave out: neighbouring instants often pick the same frame.
    last_frame_due_ns: int = NEVER
    #: With amendments on: the items of the windows closed most recently, per modality, so a record that
    #: missed one of them can revise it (docs/predictions.md#revisions).
    retired: dict[Modality, ModalityBuffer] | None = None
    #: Window start -> the revision of its latest prediction, for kept windows closed with a revision above 0.
    revisions: dict[int, int] = field(default_factory=dict)
    #: Amended windows made by ``Aligner.add``, handed out by the next ``Aligner.poll``.
    amended: list[Window] = field(default_factory=list)
    #: The furthest event time any modality reached (media end or progress): no watermark passes it, so a
    #: window ending later cannot close yet. ``ENDED`` while any of the stream's sources says it ended
    #: (the watermark can then jump to ``ENDED``).
    newest_ns: int = NEVER
    #: When its first record arrived (processing time): a modality that has sent nothing yet is waited for
    #: at most ``idle_timeout_ns`` from then (``stream_watermark``).
    arrived_ns: int = NEVER
    #: Learned wait budgets (``WindowConfig.learn_wait``): by modality, and the budgets the watermark uses
    #: (the fixed ones with the learned ones; ``None`` until one is learned).
    learned: dict[Modality, LearnedWait] = field(default_factory=dict)
    budgets: dict[Modality, int] | None = None


def stream_watermark(state: StreamState, cfg: WindowConfig, budgets: Mapping[Modality, int], now_ns: int,
                     without: frozenset[Modality] = frozenset(), awaited: frozenset[Modality] = frozenset(),
                     behind: frozenset[Modality] = frozenset()) -> int:
    """``Aligner._watermark`` (see there), given the wait budgets by modality, the modalities ``awaited``
    before they sent anything, and those whose input is ``behind`` (unread: never left behind for lagging)."""
    lateness = cfg.lateness_ns
    # One pass for the newest, one for the sides, no containers: it runs for every stream a fetch moved.
    # How far a modality lags is measured from the leader's latest start, not from ends or promises: a
    # caption cue is sent at its start and ends seconds later, and its end (or the complete flag on it,
    # a promise up to that end) made a camera and a microphone in real time look more than max_skew
    # behind, so they were not waited for and their records were late. The laggard's own promise counts
    # (a modality complete up to T is not behind T).
    newest, front_newest, promised_newest, ended = NEVER, NEVER, NEVER, True
    for modality, b in state.buffers.items():
        reach = b.latest_end_ns if b.latest_end_ns > b.complete_ns else b.complete_ns
        if reach == NEVER or modality in without:
            continue
        ended = ended and b.ended
        if reach > newest:
            newest = reach
        front = _lead(b)
        if front > front_newest:
            front_newest = front
        if b.complete_ns > promised_newest:
            promised_newest = b.complete_ns
    if newest == NEVER:
        return NEVER
    if front_newest == NEVER:  # promises alone so far (progress records, no media yet)
        front_newest = promised_newest
    if ended:
        return ENDED  # every source said it stopped: nothing more is coming, close everything
    watermark = None
    for modality, b in state.buffers.items():
        if modality in without or b.ended:
            continue
        if b.last_arrival_ns == NEVER:
            # Nothing from it yet: a source that starts later than the others (a camera after its microphone)
            # lags them by an unknown amount, so each window waits for it as for one that lags: until the
            # newest is its budget (or the allowed skew) past the window's end, or the stream has been open
            # for the idle timeout. A producer without this modality says so with an ``ended`` progress record.
            # One whose budget was learnt before a restart (resumed from the checkpoint) is waited for as long
            # as it is due: the stream had it, and its next words may be as late as the budget says.
            if modality in awaited and (modality in behind or now_ns - state.arrived_ns < cfg.idle_timeout_ns
                                        or modality in state.learned):
                budget = budgets.get(modality)
                # Behind: its first record may be among those not read yet.
                side = NEVER if modality in behind else front_newest - (cfg.max_skew_ns if budget is None else budget)
                if watermark is None or side < watermark:
                    watermark = side
            continue
        # Silent for the idle timeout: not waited for, unless it has a wait budget, which bounds the wait anyway.
        # A transcript is silent through every pause in speech, and its next word, published up to the budget
        # late, was late when the pause had dropped it.
        silent = now_ns - b.last_arrival_ns >= cfg.idle_timeout_ns
        if silent and budgets.get(modality) is None:
            continue
        latest, complete = b.latest_end_ns, b.complete_ns
        if latest == NEVER and complete == NEVER:
            continue
        side = latest - lateness if latest - lateness > complete else complete
        # A modality ``behind`` has records waiting unread (a backlog; a log where streams with other clocks
        # follow each other): it lags because the service has not read it yet, not because its source fell
        # behind, so neither its budget nor the allowed skew lets a window close without it. Unless it is
        # silent too: the unread records may be other streams' (a dead captioner's windows waited for
        # another stream's backlog), and its budget still bounds the wait, as the idle timeout did without one.
        lagging_allowed = modality not in behind or silent
        budget = budgets.get(modality) if lagging_allowed else None
        if budget is not None:
            # Not dropped once it lags by its budget (that closed every window up to the others' side,
            # even those whose budget had not run out, and made the words still coming for them late):
            # each window waits for it until the newest data is the budget past the window's end.
            side = max(side, newest - budget)
        elif lagging_allowed and _front(b) < front_newest - cfg.max_skew_ns:
            continue
        if watermark is None or side < watermark:
            watermark = side
    return newest - lateness if watermark is None else watermark


def _lead(b: ModalityBuffer) -> int:
    """How far a modality's media have come: its latest item's start (its latest end once none is held)."""
    return b.starts[-1] if b.starts else b.latest_end_ns


def _front(b: ModalityBuffer) -> int:
    """How far a modality has come, for telling how far it lags: the latest end it delivered (a late record's
    included), its latest item's start, or its promise, whichever is furthest. By its start alone, a word
    published 1.5 s after it ended looked 1.5 s plus its length behind, past ``max_skew_ms`` between words."""
    lead = _lead(b)
    front = b.latest_end_ns if b.latest_end_ns > lead else lead
    return b.complete_ns if b.complete_ns > front else front


def contiguous(placed: list[tuple[int, np.ndarray]]) -> bool:
    """Whether the chunks follow each other sample for sample (no gap, no overlap)."""
    end = placed[0][0]
    for offset, samples in placed:
        if offset != end:
            return False
        end = offset + len(samples)
    return True


def overlapping(buffer: ModalityBuffer, start: int, end: int) -> list[MediaItem]:
    """Items that share at least one instant with ``[start, end)``."""
    stop = bisect.bisect_left(buffer.starts, end)
    return [item for item, last in zip(buffer.items[:stop], buffer.lasts[:stop], strict=True) if last >= start]


def _same(a: MediaItem, b: MediaItem) -> bool:
    """Two items of one modality and start: the same record's content (a resent copy)?"""
    if a.t_end_ns != b.t_end_ns:
        return False
    if isinstance(a, TextSegment) and isinstance(b, TextSegment):
        return a.text == b.text
    if isinstance(a, AudioChunk) and isinstance(b, AudioChunk):
        return np.array_equal(a.samples, b.samples)
    if isinstance(a, Frame) and isinstance(b, Frame):
        image_a, image_b = a.image, b.image
        if isinstance(image_a, LazyJpeg) and isinstance(image_b, LazyJpeg):
            return image_a.data == image_b.data
        return isinstance(image_a, np.ndarray) and isinstance(image_b, np.ndarray) and np.array_equal(image_a, image_b)
    return False


def showing_at(buffer: ModalityBuffer, start: int) -> int:
    """Until when the last frame that started before ``start`` shows (``NEVER``: none known): the lead-in
    of a window's video, which its first frame (a member only from its own start) does not cover."""
    index = bisect.bisect_left(buffer.starts, start)
    return buffer.items[index - 1].t_end_ns if index else buffer.dropped_end_ns


def interval_coverage(items: list[MediaItem], start: int, end: int, lead_in_until: int = NEVER) -> float:
    """Fraction of ``[start, end)`` covered by the union of the items' intervals (``items`` in start order),
    and by ``[start, lead_in_until)``: an item before them still running."""
    covered = min(max(lead_in_until, start), end) - start
    reach = start + covered
    for item in items:
        lo, hi = max(item.t_start_ns, reach), min(item.t_end_ns, end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered / (end - start)


def gaps(spans: list[tuple[int, int]], n: int) -> tuple[tuple[int, int], ...]:
    """The sample ranges ``(first, end)`` of ``[0, n)`` that merged, ordered ``spans`` leave uncovered."""
    holes, reach = [], 0
    for lo, hi in spans:
        if lo > reach:
            holes.append((reach, lo))
        reach = max(reach, hi)
    if reach < n:
        holes.append((reach, n))
    return tuple(holes)


__all__ = [
    "ENDED", "NEVER", "ModalityBuffer", "StreamState", "contiguous", "gaps", "interval_coverage", "overlapping",
    "showing_at",
    "stream_watermark",
]
