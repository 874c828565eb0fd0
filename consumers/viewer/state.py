"""What the viewer shows: the latest of everything, per stream, fed by the Kafka feed and read by the server.

Pure and synchronous, with no Kafka and no hidden clock (callers pass the processing
time), like the aligner, so it is unit-tested directly. Only the latest frame is kept,
never a queue of them: a slow browser skips frames instead of falling behind.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionstream.consumers.subscribers.api import PredictionRecord
from fusionstream.stream.media import decode_pcm
from fusionstream.stream.records import Encoding, Record
from fusionstream.units import NS

#: Predictions kept per stream for the timeline (a minute at the default 0.5 s hop).
TIMELINE_LENGTH = 120
#: Event time over which the audio level is measured, as a VU meter's integration time.
LEVEL_SPAN_NS = 300_000_000
#: Silence floor of the level meter, dBFS.
LEVEL_FLOOR_DB = -90.0
#: Transcript segments kept, and how far back (event time) the "current" transcript reaches.
TRANSCRIPT_SEGMENTS = 16
TRANSCRIPT_SPAN_NS = 6 * NS
#: The most of the transcript shown (its newest characters): six seconds of speech is about a hundred, and one
#: caption of a megabyte made every update of its stream megabytes (JSON-escaped) to every open page.
TRANSCRIPT_CHARS = 1000
#: A record this much older than the newest one seen means the producer restarted (a replay), not disorder.
RESTART_NS = 10 * NS
#: Frames kept to show video in step with its predictions: this much event time, at most one per gap.
FRAME_HISTORY_NS = 5 * NS
FRAME_GAP_NS = 100_000_000
#: How many recent measurements of "video ahead of predictions" set the delay of synced video.
LAG_SAMPLES = 8
#: --no-sync: how much further behind the newest frame than recently a prediction may be and still be drawn as
#: current (a service stopped or fallen behind makes it fall further every second).
NO_SYNC_SLACK_NS = NS


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One prediction on a stream's timeline; ``n`` counts predictions received, so clients fetch only new ones."""

    n: int
    window_id: str
    t_start_ns: int
    t_end_ns: int
    label: str
    score: float
    mask: tuple[bool, bool, bool]
    record: PredictionRecord

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n, "window_id": self.window_id, "t_start_ns": self.t_start_ns, "t_end_ns": self.t_end_ns,
            "label": self.label, "score": self.score, "mask": list(self.mask),
        }  # fmt: skip


@dataclass(slots=True)
class StreamView:
    """The latest frame, audio level, transcript and predictions of one stream."""

    stream_id: str
    updated: float  # processing time of the last record, for staleness and eviction
    version: int = 0  # bumped on every change the page can see
    # Recent frames, oldest first, each with its number (frames accepted so far): the page asks for
    # /frame only when the number of the frame to show moved.
    frames: deque[tuple[int, Record]] = field(default_factory=deque)
    frame_count: int = 0
    lags: deque[int] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))  # newest frame - prediction end
    audio: deque[tuple[int, int, float]] = field(default_factory=lambda: deque(maxlen=64))  # t0, t1, mean square
    transcript: deque[tuple[int, int, str, bool]] = field(default_factory=lambda: deque(maxlen=TRANSCRIPT_SEGMENTS))
    prediction: PredictionRecord | None = None
    timeline: deque[TimelineEntry] = field(default_factory=lambda: deque(maxlen=TIMELINE_LENGTH))
    predictions_seen: int = 0

    @property
    def newest_frame(self) -> Record | None:
        return self.frames[-1][1] if self.frames else None

    def shown(self, sync: bool) -> tuple[tuple[int, Record] | None, PredictionRecord | None]:
        """The frame to show and the prediction to draw over it.

        ``sync``: video is delayed by how far it runs ahead of the predictions (the recent
        maximum), and the prediction drawn is the one of the window the frame is in, so a
        label is never drawn over a frame it was not made on. Otherwise: the newest frame
        and the newest prediction.
        """
        if not sync or not self.frames or self.prediction is None:
            return (self.frames[-1] if self.frames else None), self.prediction
        newest_t = self.frames[-1][1].t_start_ns
        target = newest_t - max(self.lags) if self.lags else self.prediction.t_end_ns - 1
        frame = self.frames[0]
        for item in self.frames:
            if item[1].t_start_ns > target:
                break
            frame = item
        t = frame[1].t_start_ns
        covering = [e for e in self.timeline if e.t_start_ns <= t < e.t_end_ns]
        if not covering:
            return frame, self.prediction
        nearest = min(covering, key=lambda e: abs((e.t_start_ns + e.t_end_ns) // 2 - t))
        return frame, nearest.record

    def level_db(self) -> float | None:
        """RMS level of the newest audio (the last ``LEVEL_SPAN_NS`` of event time), dBFS; None before any audio."""
        if not self.audio:
            return None
        newest = max(t1 for _, t1, _ in self.audio)
        recent = [(t1 - t0, ms) for t0, t1, ms in self.audio if t1 > newest - LEVEL_SPAN_NS]
        duration = sum(d for d, _ in recent)
        power = sum(d * ms for d, ms in recent) / duration if duration > 0 else recent[-1][1]
        return max(LEVEL_FLOOR_DB, 10 * math.log10(power)) if power > 0 else LEVEL_FLOOR_DB

    def current_transcript(self) -> tuple[str, bool, int] | None:
        """Text of the segments within ``TRANSCRIPT_SPAN_NS`` of the newest, whether it is final, the newest end."""
        if not self.transcript:
            return None
        ordered = sorted(self.transcript)
        newest = ordered[-1][1]
        words = [text.strip() for t0, t1, text, _ in ordered if t1 > newest - TRANSCRIPT_SPAN_NS and text.strip()]
        return _newest_chars(" ".join(words)), ordered[-1][3], newest


class ViewerState:
    """Every stream's :class:`StreamView`; ``version`` moves whenever anything does."""

    def __init__(
        self,
        *,
        stream_ids: Iterable[str] | None = None,
        sync: bool = True,
        forget_after_s: float = 300.0,
        max_streams: int = 256,
    ) -> None:
        self.sync = sync
        self.only: frozenset[str] | None = None if stream_ids is None else frozenset(stream_ids)
        self.forget_after_s = forget_after_s
        self.max_streams = max_streams
        self.streams: dict[str, StreamView] = {}
        self.version = 0
        #: Records used, per modality ("video", "audio", "text", "prediction"), and records ignored, per reason.
        self.counts: dict[str, int] = {}
        self.ignored: dict[str, int] = {}

    def wants(self, stream_id: str) -> bool:
        return self.only is None or stream_id in self.only

    # -- input ------------------------------------------------------------------------------------

    def on_record(self, record: Record, now: float) -> bool:
        """Take a decoded input record; False if it was not used (a progress record, filtered, too old, no room)."""
        if record.encoding is Encoding.PROGRESS:
            return False  # a producer's "complete up to T" or "ended": nothing to show
        view = self._view(record.stream_id, now)
        if view is None:
            return False
        kind = record.modality.label
        if kind == "video":
            used = self._on_frame(view, record)
        elif kind == "audio":
            used = self._on_audio(view, record)
        else:
            used = self._on_text(view, record)
        if used:
            self._count(kind)
            self._changed(view, now)
        return used

    def on_prediction(self, prediction: PredictionRecord, now: float) -> bool:
        """Take a prediction; False if it was filtered or is already on the timeline (a duplicate, a re-read).
        A higher revision of a window on the timeline (its final, after a provisional one) replaces it."""
        view = self._view(prediction.stream_id, now)
        if view is None:
            return False
        earlier = [e for e in view.timeline if e.window_id == prediction.window_id]
        if earlier and earlier[0].record.revision >= prediction.revision:
            return False
        if earlier:
            view.timeline.remove(earlier[0])
        view.predictions_seen += 1
        entry = TimelineEntry(
            view.predictions_seen, prediction.window_id, prediction.t_start_ns, prediction.t_end_ns,
            shown_label(prediction), shown_score(prediction) or 0.0, prediction.present, prediction,
        )  # fmt: skip
        view.timeline.append(entry)
        if len(view.timeline) > 1 and view.timeline[-2].t_start_ns > entry.t_start_ns:
            # Arrival order is not trusted (a look-back re-read, several partitions): keep event-time order.
            ordered = sorted(view.timeline, key=lambda e: e.t_start_ns)
            view.timeline.clear()
            view.timeline.extend(ordered)
        current = view.prediction
        revised = current is not None and current.window_id == prediction.window_id
        if current is None or revised or _newer(prediction.t_start_ns, current.t_start_ns):
            newest = view.newest_frame
            if current is not None and newest is not None and prediction.t_start_ns > current.t_start_ns:
                # Measured just before the newest prediction moves on: the most video runs ahead of it.
                view.lags.append(max(0, newest.t_start_ns - current.t_end_ns))
            view.prediction = prediction
        self._count("prediction")
        self._changed(view, now)
        return True

    def ignore(self, reason: str) -> None:
        """Count a record that could not be used (a bad envelope, not a prediction, ...)."""
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def evict(self, now: float) -> list[str]:
        """Forget streams silent for ``forget_after_s`` of processing time; return their ids."""
        gone = [sid for sid, view in self.streams.items() if now - view.updated > self.forget_after_s]
        for sid in gone:
            del self.streams[sid]
        if gone:
            self.version += 1
        return gone

    # -- output -----------------------------------------------------------------------------------

    def frame(self, stream_id: str, number: int | None = None) -> tuple[int, Record] | None:
        """``(number, record)`` of frame ``number`` if it is still kept, else of the frame to show now."""
        view = self.streams.get(stream_id)
        if view is None or not view.frames:
            return None
        if number is not None:
            for item in view.frames:
                if item[0] == number:
                    return item
        return view.shown(self.sync)[0]

    def snapshot(self, stream_id: str, now: float, *, since: int = 0) -> dict[str, Any] | None:
        """The stream as the page draws it (JSON-ready), with the timeline entries numbered above ``since``."""
        view = self.streams.get(stream_id)
        if view is None:
            return None
        shown, p = view.shown(self.sync)
        level = view.level_db()
        transcript = view.current_transcript()
        frame = shown[1] if shown else None
        on_frame = frame is not None and p is not None and p.t_start_ns <= frame.t_start_ns < p.t_end_ns
        return {
            "stream": view.stream_id,
            "version": view.version,
            "idle_s": round(max(0.0, now - view.updated), 1),
            "frame": None if shown is None or frame is None else {
                "seq": shown[0], "t_ns": frame.t_start_ns,
                "width": frame.meta.get("width"), "height": frame.meta.get("height"),
                "behind_ms": round((view.frames[-1][1].t_start_ns - frame.t_start_ns) / 1e6),
            },
            "audio": None if level is None else {"level_db": round(level, 1), "t_ns": max(t for _, t, _ in view.audio)},
            "transcript": None if transcript is None else {
                "text": transcript[0], "is_final": transcript[1], "t_ns": transcript[2],
            },
            "prediction": None if p is None else {
                "window_id": p.window_id, "t_start_ns": p.t_start_ns, "t_end_ns": p.t_end_ns,
                "label": shown_label(p), "score": shown_score(p), "top": _top(p.scores, 3),
                "task": p.task, "labels": None if p.labels is None else [[k, v] for k, v in p.labels.items()],
                "embedding_size": None if p.embedding is None else len(p.embedding),
                "modalities": dict(p.modalities), "coverage": dict(p.coverage), "closed_by": p.closed_by,
                "model_version": p.model_version, "capture_to_publish_ms": p.capture_to_publish_ms,
                "revision": p.revision, "final": p.final,
                # Whether the frame shown lies in this prediction's window (what --sync aims for).
                "on_frame": on_frame,
                "current": on_frame if self.sync else self._current_unsynced(view, frame, p),
            },
            "predictions_seen": view.predictions_seen,
            "timeline": [e.to_json() for e in view.timeline if e.n > since],
        }  # fmt: skip

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _current_unsynced(view: StreamView, frame: Record | None, p: PredictionRecord) -> bool:
        """Whether an unsynced label is drawn as current (else faded; synced: when the frame is in its window).
        The newest prediction is always of a window before the newest frame (its label was drawn faded for
        ever): it is current while it is no further behind than predictions recently were, plus a second."""
        return frame is not None and frame.t_start_ns - p.t_end_ns <= max(view.lags, default=0) + NO_SYNC_SLACK_NS

    def _view(self, stream_id: str, now: float) -> StreamView | None:
        view = self.streams.get(stream_id)
        if view is not None:
            return view
        if not self.wants(stream_id):
            return None
        if len(self.streams) >= self.max_streams:
            self.ignore("too-many-streams")
            return None
        view = self.streams[stream_id] = StreamView(stream_id, updated=now)
        return view

    def _changed(self, view: StreamView, now: float) -> None:
        view.updated = now
        view.version += 1
        self.version += 1

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @staticmethod
    def _on_frame(view: StreamView, record: Record) -> bool:
        newest = view.newest_frame
        t = record.t_start_ns
        if newest is not None and not _newer(t, newest.t_start_ns):
            return False
        if newest is not None and t < newest.t_start_ns:  # a restarted producer: its times start over
            view.frames.clear()
            view.lags.clear()
        view.frame_count += 1
        if len(view.frames) > 1 and view.frames[-1][1].t_start_ns - view.frames[-2][1].t_start_ns < FRAME_GAP_NS:
            view.frames.pop()  # kept only while it was the newest: history is thinned to one frame per gap
        view.frames.append((view.frame_count, record))
        while view.frames[0][1].t_start_ns < t - FRAME_HISTORY_NS:
            view.frames.popleft()
        return True

    @staticmethod
    def _on_audio(view: StreamView, record: Record) -> bool:
        if view.audio and record.t_end_ns < max(t1 for _, t1, _ in view.audio) - RESTART_NS:
            view.audio.clear()  # a restarted producer: its old chunks would hold the meter
        samples = decode_pcm(record)
        mean_square = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
        view.audio.append((record.t_start_ns, record.t_end_ns, mean_square))
        return True

    @staticmethod
    def _on_text(view: StreamView, record: Record) -> bool:
        if view.transcript and record.t_end_ns < max(t1 for _, t1, _, _ in view.transcript) - RESTART_NS:
            view.transcript.clear()
        if view.transcript and not view.transcript[-1][3]:
            view.transcript.pop()  # a partial (is_final false) result is replaced by whatever follows it
        text = _newest_chars(record.payload.decode("utf-8"))
        view.transcript.append((record.t_start_ns, record.t_end_ns, text, bool(record.meta.get("is_final", True))))
        return True


def _newest_chars(text: str) -> str:
    """``text``, or its last ``TRANSCRIPT_CHARS`` characters after an ellipsis."""
    return text if len(text) <= TRANSCRIPT_CHARS else "…" + text[-TRANSCRIPT_CHARS:]


def to_jpeg(frame: Record) -> bytes:
    """The frame as JPEG bytes: a JPEG's own payload, a raw frame encoded (milliseconds: not on the event loop)."""
    if frame.encoding is Encoding.JPEG:
        return frame.payload
    import cv2

    from fusionstream.stream.media import decode_image

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(decode_image(frame), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return bytes(buf.tobytes())


def _newer(t_ns: int, current_ns: int) -> bool:
    """Whether ``t_ns`` replaces ``current_ns`` as the latest: later, or so much earlier that the source restarted."""
    return t_ns >= current_ns or t_ns < current_ns - RESTART_NS


def shown_label(p: PredictionRecord) -> str:
    """What the page draws as the label: the class; every asserted label of a multi-label model
    (``car+person``, ``none``); ``embedding[N]`` for an embedding model, which has no label."""
    if p.embedding is not None:
        return f"embedding[{len(p.embedding)}]"
    if p.labels is not None:
        return "+".join(p.labels) or "none"
    return p.label


def shown_score(p: PredictionRecord) -> float | None:
    """The score drawn beside it: the best asserted label's (multi-label), none for an embedding."""
    if p.embedding is not None:
        return None
    if p.labels:
        return max(p.labels.values())
    return p.score


def _top(scores: Any, k: int) -> list[list[Any]]:
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k]
    # Unrounded: the page rounds for display, and rounding twice (0.995001 -> 0.995 -> "0.99") would show
    # a score other than the one published ("1.00").
    return [[label, float(score)] for label, score in ranked]


__all__ = ["StreamView", "TimelineEntry", "ViewerState", "to_jpeg"]
