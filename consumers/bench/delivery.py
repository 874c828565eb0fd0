"""When live records reach the broker: the delivery profiles of ``fusionstream bench``'s real-time trials.

A camera, a microphone and a speech recogniser do not deliver a moment at the moment it happened:

- a video frame leaves the camera 0-80 ms after its capture (encoding, the network);
- a 40 ms audio chunk can only leave once it ends, plus a few milliseconds;
- a transcript word comes 300-700 ms after the word *ends* (an ASR waits for the pause that ends
  the utterance, then decodes; a captioner types): one record per word;
- and our producers say how far they have got (docs/wire-format.md#progress): the complete flag
  on every media record, and the recogniser's "decoded up to T" text progress every 250 ms of
  event time, which comes with the same delay as the words and never promises past a word not
  sent yet (progress T follows every word that starts before T); each source's ``ended`` at the end.

:data:`REALISTIC` is that, with those ranges (configurable); :data:`PACED` is how the trials
delivered before it: every record at its ``t_start``, no progress, which hides what a user waits for.

Each (stream, modality) stays in event order, as a producer sends it: a record is delivered at
``max(previous delivery, its own time + lag)``. Lags are drawn from a generator seeded per
profile, stream and modality: the same profile gives the same schedule.

:func:`ideal_times` replays a schedule through the aligner alone, with no broker, no engine and
no clock but the schedule's: when each window's first and final prediction could be made at the
earliest, which is what the feed and the alignment rules impose before the service adds anything.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fusionstream.stream.media import decode_media, progress_record
from fusionstream.stream.records import FLAG_COMPLETE, Modality, Progress, Record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS

#: A delivery schedule: (wall-clock ns at which the record is sent, record), in delivery order.
Schedule = list[tuple[int, Record]]


@dataclass(frozen=True)
class Lag:
    """A modality's delivery: ``anchor`` (the record's ``"start"`` or ``"end"``) plus a uniform draw
    in ``[lo_ms, hi_ms]``."""

    anchor: Literal["start", "end"]
    lo_ms: float
    hi_ms: float

    def __post_init__(self) -> None:
        if self.anchor not in ("start", "end"):
            raise ValueError(f"a lag is anchored at the record's start or end, not {self.anchor!r}")
        if not 0 <= self.lo_ms <= self.hi_ms:
            raise ValueError(f"a lag needs 0 <= lo <= hi (ms), got {self.lo_ms:g}-{self.hi_ms:g}")


@dataclass(frozen=True)
class DeliveryProfile:
    """How the live trials deliver each modality; the defaults are :data:`REALISTIC`."""

    name: str = "realistic"
    #: Frames: 0-80 ms after capture.
    video: Lag = Lag("start", 0, 80)
    #: 40 ms chunks: when they end, plus 0-10 ms.
    audio: Lag = Lag("end", 0, 10)
    #: One record per word, 300-700 ms after the word ends; the text progress records have the same delay.
    text: Lag = Lag("end", 300, 700)
    #: The complete flag on every media record, text progress, and ``ended`` progress at each source's end.
    progress: bool = True
    #: Event time between two text progress records of a stream (a recogniser's "decoded up to T").
    text_progress_every_ms: float = 250.0
    #: A camera or microphone whose records stop (the workload's dropped segments) says so this long
    #: after its last record: progress marked ``ended`` (docs/wire-format.md#progress asks it of "a
    #: camera whose frames stopped"); its next record takes it back. None: it says nothing, and windows
    #: wait for it until ``max_skew_ms`` or ``idle_timeout_ms``. Only with ``progress``.
    drop_notice_ms: float | None = 200.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.text_progress_every_ms <= 0:
            raise ValueError("text_progress_every_ms must be positive")
        if self.drop_notice_ms is not None and self.drop_notice_ms < 0:
            raise ValueError("drop_notice_ms must be >= 0")

    def with_text_delay(self, lo_ms: float, hi_ms: float) -> DeliveryProfile:
        """This profile with the words (and text progress) ``lo_ms``-``hi_ms`` after the word's end."""
        return dataclasses.replace(self, text=Lag(self.text.anchor, lo_ms, hi_ms))

    def lag_of(self, modality: Modality) -> Lag:
        return {Modality.VIDEO: self.video, Modality.AUDIO: self.audio, Modality.TEXT: self.text}[modality]

    def describe(self) -> dict[str, object]:
        """The profile as the bench report shows it."""
        return {
            "name": self.name,
            **{m.label: f"{lag.lo_ms:g}-{lag.hi_ms:g} ms after {lag.anchor}"
               for m in Modality for lag in (self.lag_of(m),)},
            "progress": self.progress,
            **({"text_progress_every_ms": self.text_progress_every_ms, "drop_notice_ms": self.drop_notice_ms}
               if self.progress else {}),
            "seed": self.seed,
        }

    def schedule(self, records: Iterable[Record]) -> Schedule:
        """``records`` (media, any order) as they would be delivered: each (stream, modality) in event
        order with this profile's lags and progress, all of them merged in delivery order."""
        lanes: dict[tuple[str, Modality], list[Record]] = {}
        for record in records:
            lanes.setdefault((record.stream_id, record.modality), []).append(record)
        span: dict[str, tuple[int, int]] = {}
        for (stream_id, _), lane in lanes.items():
            lane.sort(key=lambda r: (r.t_start_ns, r.seq))
            first, last = span.get(stream_id, (lane[0].t_start_ns, lane[-1].t_end_ns))
            span[stream_id] = (min(first, lane[0].t_start_ns), max(last, max(r.t_end_ns for r in lane)))
        out: list[tuple[int, int, Record]] = []
        for stream_id in sorted(span):
            for modality in Modality:
                lane = lanes.get((stream_id, modality), [])
                if not lane and modality is not Modality.TEXT:
                    continue
                timed = (self._announced(stream_id, modality, lane, span[stream_id]) if self.progress
                         else [(record, None) for record in lane])
                if timed:
                    out += self._delivered(stream_id, modality, timed, len(out))
        out.sort(key=lambda entry: (entry[0], entry[1]))
        return [(due, record) for due, _, record in out]

    # -- inside ---------------------------------------------------------------------------------

    def _announced(self, stream_id: str, modality: Modality, lane: list[Record],
                   span: tuple[int, int]) -> list[tuple[Record, int | None]]:
        """The lane as our producers send it: flagged complete, text progress between the words (the
        recogniser decodes the stream's audio from its first instant to its last), a dropped camera's
        or microphone's notice, ``ended`` last. Each record comes with its own delivery time when that
        is not the lag's (a drop notice goes when the source notices, not with a lag)."""
        flagged = [dataclasses.replace(r, flags=r.flags | FLAG_COMPLETE) for r in lane]
        next_seq = max((r.seq for r in lane), default=-1) + 1
        out: list[tuple[Record, int | None]] = []
        if modality is Modality.TEXT:
            every = int(self.text_progress_every_ms * MS)
            # Sorted by (time, kind): progress T goes after every word starting before T, and may go
            # before a word starting at T itself (T promises only what starts before it).
            marks = [((t, 0), progress_record(stream_id, modality, next_seq, t))
                     for t in range(span[0] + every, span[1] + 1, every)]
            words = [((r.t_start_ns, 1), r) for r in flagged]
            out = [(record, None) for _, record in sorted(marks + words, key=lambda pair: pair[0])]
        else:
            notice = None if self.drop_notice_ms is None else int(self.drop_notice_ms * MS)
            for record, following in zip(flagged, [*flagged[1:], None], strict=True):
                out.append((record, None))
                if notice is not None and following is not None and following.t_start_ns - record.t_end_ns > notice:
                    # Silent for longer than the notice: the source says it stopped, at that moment.
                    out.append((progress_record(stream_id, modality, following.seq, record.t_end_ns, ended=True),
                                record.t_end_ns + notice))
        if not out:
            return []
        end = span[1] if modality is Modality.TEXT else max(r.t_end_ns for r in lane)
        return [*out, (progress_record(stream_id, modality, next_seq, end, ended=True), None)]

    def _delivered(self, stream_id: str, modality: Modality, lane: list[tuple[Record, int | None]],
                   order: int) -> list[tuple[int, int, Record]]:
        lag = self.lag_of(modality)
        seed = np.random.SeedSequence(self.seed, spawn_key=(zlib.crc32(stream_id.encode()), int(modality)))
        lags = np.random.default_rng(seed).uniform(lag.lo_ms * MS, lag.hi_ms * MS, len(lane))
        out: list[tuple[int, int, Record]] = []
        due = -(2**63)
        for i, (record, at) in enumerate(lane):
            if at is None:
                # A progress record's own time is the instant it promises (t_start = t_end = T).
                own = record.t_end_ns if lag.anchor == "end" or record.is_progress else record.t_start_ns
                at = own + int(lags[i])
            due = max(due, at)
            out.append((due, order + i, record))
        return out


#: Feeds as they arrive (the default of ``fusionstream bench``).
REALISTIC = DeliveryProfile()
#: The trials before the delivery profiles: every record at its ``t_start``, no progress.
PACED = DeliveryProfile("paced", Lag("start", 0, 0), Lag("start", 0, 0), Lag("start", 0, 0), progress=False)
PROFILES = {"realistic": REALISTIC, "paced": PACED}


def parse_range_ms(text: str) -> tuple[float, float]:
    """``"300-700"`` → (300.0, 700.0); raises ValueError otherwise."""
    lo, sep, hi = text.partition("-")
    if not sep:
        raise ValueError(f"not LO-HI in milliseconds: {text!r}")
    low, high = float(lo), float(hi)
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= LO <= HI: {text!r}")
    return low, high


def delivered(
    schedule: Iterable[tuple[int, Record]], *, clock: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Record]:
    """Release each record of a schedule when ``clock()`` reaches its delivery time (at once if past)."""
    for due, record in schedule:
        wait = due - clock()
        if wait > 0:
            sleep(wait / NS)
        yield record


@dataclass(frozen=True)
class IdealTimes:
    """When each window (``(stream_id, start)``) could have its predictions at the earliest."""

    first: dict[tuple[str, int], int]
    final: dict[tuple[str, int], int]
    #: Items the aligner took in some windows only (they came after others had closed), and items too late for any.
    partly_late: int
    late: int


def ideal_times(schedule: Sequence[tuple[int, Record]], config: WindowConfig, tick_ms: float = 5.0) -> IdealTimes:
    """Feed ``schedule`` to an aligner at its delivery times: the instant each window was offered
    first (provisional, or its close) and closed (its final). No transport, batching or engine: the
    floor the feed and the alignment rules put under the latency a service can reach. Windows are
    polled every ``tick_ms`` of delivery time (a service's fetches take longer), which keeps a
    minute of 32 streams to seconds."""
    from fusionstream.stream.aligner import Aligner

    aligner = Aligner(config)
    first: dict[tuple[str, int], int] = {}
    final: dict[tuple[str, int], int] = {}
    tick = int(tick_ms * MS)

    def poll(now: int) -> None:
        for window in aligner.poll(now):
            if window.final:  # the close; a later amendment (a partly late record changed it) is not
                first.setdefault(window.window_id, now)
                final.setdefault(window.window_id, now)
        for window in aligner.provisional(now):
            first.setdefault(window.window_id, now)

    due = polled = schedule[0][0] if schedule else 0
    for due, record in schedule:
        if due - polled >= tick:
            poll(due)
            polled = due
        item = decode_media(record, lazy_jpeg=True)
        if isinstance(item, Progress):
            aligner.progress(item, due)
        else:
            aligner.add(item, due)
    poll(due)
    for window in aligner.flush():
        first.setdefault(window.window_id, due)
        final.setdefault(window.window_id, due)
    return IdealTimes(first, final, aligner.stats.partly_late, aligner.stats.late)


__all__ = [
    "PACED",
    "PROFILES",
    "REALISTIC",
    "DeliveryProfile",
    "IdealTimes",
    "Lag",
    "Schedule",
    "delivered",
    "ideal_times",
    "parse_range_ms",
]
