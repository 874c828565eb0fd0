"""File sources: a video file's frames (OpenCV), its audio track (PyAV), and both merged with captions.

Event times follow docs/wire-format.md: a file source's start time plus pts. ``start_ns`` is the
event time of the file's origin, time zero of its presentation timeline (the container's
start time, which is what a player shows as 0:00 and what caption files count from).
OpenCV reports a frame's time relative to the *video stream's* first pts, so the video
stream's offset from the origin is probed with PyAV and added back; without it, a file
whose video starts after its audio would come out of sync by that offset.

Every function opens its input when called, so a missing or unreadable file raises then,
and returns a lazy iterator that decodes one frame at a time and closes the file at its end.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fusionstream.stream.media import image_record
from fusionstream.stream.records import Encoding, Modality, Record
from fusionstream.stream.sources.captions import caption_records
from fusionstream.stream.wire import MAX_DURATION_NS
from fusionstream.units import NS

if TYPE_CHECKING:
    import av.container

#: Frame rate assumed when a video declares none (raw elementary streams, some webcams).
FALLBACK_FPS = 25.0
#: An audio frame starting this much later than the previous one ended is a gap, not jitter:
#: the chunk timeline restarts at the frame's pts. Timestamps quantised to 1 ms stay well inside it.
AUDIO_GAP_NS = 5_000_000
#: Decimation keeps the first frame in each 1/max_fps slot; this share of a slot absorbs pts rounding.
_SLOT_TOLERANCE = 0.01

Size = int | tuple[int, int]
"""A bounding box ``(width, height)``, or one number for a square box; images are fitted inside it."""

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What :func:`probe` learns from a file's header."""

    has_video: bool
    has_audio: bool
    #: Seconds from the file's origin to the video stream's first frame (OpenCV counts from there).
    video_offset_s: float
    fps: float | None
    duration_s: float | None


def probe(path: PathLike) -> MediaInfo:
    """Read a media file's header with PyAV; ``ValueError`` if it is not media it can read.

    Attached pictures (cover art in audio files) are not video: they hold one still image.
    """
    with _open_container(path) as container:
        video = _video_stream(container)
        offset = 0.0
        fps = None
        if video is not None:
            if video.start_time is not None:
                offset = max(0.0, float(video.start_time * video.time_base - Fraction(_origin_ns(container), NS)))
            rate = video.average_rate or video.guessed_rate
            fps = float(rate) if rate else None
        duration = container.duration / 1_000_000 if container.duration is not None else None
        if container.format.name == "wav":
            duration = _wav_header_s(path) or duration
        return MediaInfo(video is not None, bool(container.streams.audio), offset, fps, duration)


#: A data chunk this large (within a frame of the 32-bit maximum) is the "size unknown" of a streamed WAV.
_WAV_UNKNOWN_SIZE = 0xFFFFFFFF - 64


def _wav_header_s(path: PathLike) -> float | None:
    """What a PCM WAV's header declares (its data chunk's size), or None: FFmpeg reports a WAV's duration
    from the bytes the file holds, so a copy cut short looked whole. The stdlib reads PCM only."""
    import wave

    try:
        with wave.open(os.fspath(path), "rb") as header:
            frames, rate = header.getnframes(), header.getframerate()
            data_bytes = frames * header.getsampwidth() * header.getnchannels()
    except (wave.Error, EOFError, OSError):  # float or compressed WAV, or not one the stdlib reads
        return None
    # A WAV written to a pipe as it was recorded (ffmpeg, sox, arecord) declares 0 or 0xFFFFFFFF: no size known.
    return frames / rate if rate and 0 < data_bytes < _WAV_UNKNOWN_SIZE else None


def has_audio(path: PathLike) -> bool:
    """Whether the file has an audio track (``ValueError`` if it is not media PyAV can read)."""
    return probe(path).has_audio


def fit_size(width: int, height: int, size: Size) -> tuple[int, int]:
    """The largest ``(width, height)`` with the same aspect ratio that fits inside ``size``."""
    box_w, box_h = (size, size) if isinstance(size, int) else size
    if box_w < 1 or box_h < 1:
        raise ValueError(f"size {size} must be positive")
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_to_fit(image: np.ndarray, size: Size | None) -> np.ndarray:
    """``image`` scaled to fit inside ``size``, aspect ratio kept (unchanged when ``size`` is ``None``)."""
    if size is None:
        return image
    height, width = image.shape[:2]
    new_w, new_h = fit_size(width, height, size)
    if (new_w, new_h) == (width, height):
        return image
    # INTER_AREA averages the source pixels when shrinking (no aliasing); it degrades to bilinear when growing.
    interpolation = cv2.INTER_AREA if new_w < width else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def video_frame_records(
    path: PathLike,
    stream_id: str,
    start_ns: int,
    *,
    max_fps: float | None = None,
    size: Size | None = None,
    quality: int = 85,
    encoding: Encoding = Encoding.JPEG,
    first_seq: int = 0,
) -> Iterator[Record]:
    """The video's frames as records at ``start_ns`` + pts, RGB, JPEG-encoded by default.

    ``t_end`` is the next emitted frame's time (the last frame lasts one frame period), so
    frames tile the timeline. ``max_fps`` decimates: the first frame of each ``1/max_fps``
    slot is kept, which holds the rate even when it does not divide the source rate.
    ``size`` fits frames inside a box, keeping the aspect ratio.
    """
    if max_fps is not None and not max_fps > 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps}")
    if size is not None:
        fit_size(1, 1, size)  # validates the box now rather than at the first frame
    _require_file(path)
    try:
        offset_s = probe(path).video_offset_s
    except ValueError:
        offset_s = 0.0  # something only OpenCV reads (an image sequence pattern): its own timeline is all there is
    capture = cv2.VideoCapture(os.fspath(path))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: OpenCV cannot open this video")
    return _video_records(
        capture, stream_id, start_ns + round(offset_s * NS), max_fps, size, quality, encoding, first_seq
    )


def audio_track_records(
    path: PathLike,
    stream_id: str,
    start_ns: int,
    *,
    chunk_ms: float = 40,
    sample_rate: int | None = None,
    first_seq: int = 0,
) -> Iterator[Record]:
    """The first audio track as mono ``pcm-s16le`` chunks of ``chunk_ms`` at ``start_ns`` + pts.

    ``sample_rate`` resamples (``None`` keeps the track's rate). Chunk times come from the
    sample count since the last timestamp discontinuity, so consecutive chunks tile the
    timeline exactly; a gap in the track's pts starts a new run at the new pts (the run
    before it ends with a shorter chunk). A file without audio yields nothing.
    """
    if not chunk_ms > 0:
        raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
    if sample_rate is not None and not 1 <= sample_rate <= 384_000:
        raise ValueError(f"sample_rate {sample_rate} outside 1..384000")
    container = _open_container(path)
    if not container.streams.audio:
        container.close()
        return iter(())
    return _audio_records(container, stream_id, start_ns, chunk_ms, sample_rate, first_seq)


def media_file_records(
    path: PathLike,
    stream_id: str,
    *,
    start_ns: int | None = None,
    captions: PathLike | None = None,
    max_fps: float | None = None,
    size: Size | None = None,
    quality: int = 85,
    chunk_ms: float = 40,
    sample_rate: int | None = None,
    language: str = "en",
) -> Iterator[Record]:
    """A media file's video frames, audio chunks and (optionally) caption cues merged in ``t_start`` order.

    ``start_ns`` is the event time of the file's 0:00 (default: now). ``captions`` is an SRT
    or WebVTT file (or caption text, see :func:`~fusionstream.stream.sources.captions.load_cues`) whose
    times count from that same 0:00. Either track may be missing (an audio-only file
    works), but not both. The merge is lazy: one record per source is held at a time.
    """
    start = time.time_ns() if start_ns is None else start_ns
    info = probe(path)
    if not (info.has_video or info.has_audio):
        raise ValueError(f"{path}: no video or audio stream")
    sources: list[Iterator[Record]] = []
    if info.has_video:
        sources.append(video_frame_records(path, stream_id, start, max_fps=max_fps, size=size, quality=quality))
    if info.has_audio:
        sources.append(audio_track_records(path, stream_id, start, chunk_ms=chunk_ms, sample_rate=sample_rate))
    if captions is not None:
        # Training and the embedded demo never send these over the wire: a long cue is one long record.
        sources.append(caption_records(captions, stream_id, start, language=language, max_cue_s=None))
    return heapq.merge(*sources, key=record_order)


def record_order(record: Record) -> tuple[int, int]:
    """Merge key: event time, then video before audio before text at the same instant."""
    return record.t_start_ns, int(record.modality)


def paced(
    records: Iterable[Record],
    *,
    speed: float = 1.0,
    clock: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Record]:
    """Yield each record when the wall clock reaches its ``t_start`` relative to the first record's.

    Replays a file as if it were live (``speed`` 2.0 plays twice as fast, ``math.inf`` does not
    wait). Records are expected in event-time order; a late one is yielded at once, never
    held back, so pacing does not reorder them. The next record is produced (decoded)
    before the wait, so decoding time does not add to the schedule.
    """
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    return _paced(records, speed, clock, sleep)


def restamp(records: Iterable[Record], start_ns: int) -> Iterator[Record]:
    """Shift every record by the same amount so that the first one starts at ``start_ns``."""
    shift: int | None = None
    for record in records:
        if shift is None:
            shift = start_ns - record.t_start_ns
        yield dataclasses.replace(record, t_start_ns=record.t_start_ns + shift, t_end_ns=record.t_end_ns + shift)


# -- video -------------------------------------------------------------------------------------


def _video_records(
    capture: Any,
    stream_id: str,
    start_ns: int,
    max_fps: float | None,
    size: Size | None,
    quality: int,
    encoding: Encoding,
    seq: int,
) -> Iterator[Record]:
    declared = capture.get(cv2.CAP_PROP_FPS)
    frame_s = 1.0 / (declared if math.isfinite(declared) and declared > 0 else FALLBACK_FPS)
    slot_s = 1.0 / max_fps if max_fps else 0.0
    last_slot = -1
    pending: tuple[float, np.ndarray] | None = None

    def record(pts: float, bgr: np.ndarray, end: float) -> Record:
        # image_record takes RGB (the wire's convention); OpenCV decodes to BGR.
        rgb = cv2.cvtColor(resize_to_fit(bgr, size), cv2.COLOR_BGR2RGB)
        # A still held longer than a record may last (a variable-rate slideshow) is cut to that
        # length rather than aborting the stream mid-file: the windows after it have no video.
        t_start = start_ns + round(pts * NS)
        t_end = min(start_ns + round(end * NS), t_start + MAX_DURATION_NS)
        return image_record(stream_id, seq, t_start, t_end, rgb, encoding=encoding, quality=quality)

    for pts, bgr in _decoded_frames(capture, frame_s):
        if slot_s:
            slot = math.floor(pts / slot_s + _SLOT_TOLERANCE)
            if slot <= last_slot:
                continue
            last_slot = slot
        # A frame's end is the next kept frame's start, so it is yielded one frame late.
        if pending is not None:
            yield record(*pending, pts)
            seq += 1
        pending = (pts, bgr)
    if pending is not None:
        yield record(*pending, pending[0] + max(frame_s, slot_s))


def _decoded_frames(capture: Any, frame_s: float) -> Iterator[tuple[float, np.ndarray]]:
    """``(seconds from the video stream's start, BGR image)`` per frame; releases the capture at the end."""
    previous: float | None = None
    try:
        while True:
            ok, bgr = capture.read()
            if not ok or bgr is None:
                return
            pts = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            # Streams without timestamps report 0 (or repeat one); count frames at the declared rate instead.
            if previous is not None and not (math.isfinite(pts) and pts > previous):
                pts = previous + frame_s
            elif not math.isfinite(pts):
                pts = 0.0
            previous = pts
            yield pts, bgr
    finally:
        capture.release()


# -- audio -------------------------------------------------------------------------------------


def _audio_records(
    container: av.container.InputContainer,
    stream_id: str,
    start_ns: int,
    chunk_ms: float,
    sample_rate: int | None,
    seq: int,
) -> Iterator[Record]:
    with container:
        stream = container.streams.audio[0]
        rate = sample_rate or stream.codec_context.sample_rate
        chunk = max(1, round(rate * chunk_ms / 1000))
        run_start = 0  # ns from the origin at which the current run's first sample plays
        done = 0  # samples of the current run already sent
        pending = np.empty(0, dtype=np.int16)

        def emit(samples: np.ndarray) -> Record:
            nonlocal done, seq
            t_start = start_ns + run_start + done * NS // rate
            done += len(samples)
            t_end = start_ns + run_start + done * NS // rate
            seq += 1
            return pcm16_record(stream_id, seq - 1, t_start, t_end, samples, rate)

        for new_run, pcm in _resampled_runs(container, stream, rate):
            if new_run is not None:
                if len(pending):
                    yield emit(pending)  # the run before the gap ends with a short chunk
                run_start, done, pending = new_run, 0, pcm
            else:
                pending = np.concatenate((pending, pcm)) if len(pending) else pcm
            cut = len(pending) - len(pending) % chunk
            for at in range(0, cut, chunk):
                yield emit(pending[at : at + chunk])
            pending = pending[cut:]
        if len(pending):
            yield emit(pending)


def _resampled_runs(container: Any, stream: Any, rate: int) -> Iterator[tuple[int | None, np.ndarray]]:
    """Mono s16 samples at ``rate``, as ``(run start in ns from the origin or None, samples)``.

    A non-``None`` start opens a new run: the first frame, or one after a gap in the pts.
    Backward jumps and jitter below :data:`AUDIO_GAP_NS` are played back to back, as a
    player would, which keeps the times of the records in order.
    """
    import av

    origin = _origin_ns(container)
    resampler: av.AudioResampler | None = None
    layout: tuple[str, str, int] | None = None
    expected: int | None = None  # where the next frame should start if there is no gap

    def drain(frames: list[Any]) -> Iterator[np.ndarray]:
        for frame in frames:
            if frame is not None:  # a passthrough resampler answers a flush with [None]
                yield frame.to_ndarray().reshape(-1)

    for frame in container.decode(stream):
        time_base = frame.time_base or stream.time_base
        at = round(Fraction(frame.pts) * time_base * NS) - origin if frame.pts is not None else None
        if expected is None or (at is not None and at - expected > AUDIO_GAP_NS):
            if resampler is not None:
                for pcm in drain(resampler.resample(None)):
                    yield None, pcm
                resampler = None
            expected = at if at is not None else (expected or 0)
            yield expected, np.empty(0, dtype=np.int16)
        # A resampler is built for one input format; a change mid-track continues the same run.
        if resampler is None or layout != (frame.format.name, frame.layout.name, frame.sample_rate):
            if resampler is not None:
                for pcm in drain(resampler.resample(None)):
                    yield None, pcm
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            layout = (frame.format.name, frame.layout.name, frame.sample_rate)
        expected += frame.samples * NS // frame.sample_rate
        for pcm in drain(resampler.resample(frame)):
            yield None, pcm
    if resampler is not None:
        for pcm in drain(resampler.resample(None)):
            yield None, pcm


def pcm16_record(stream_id: str, seq: int, t_start: int, t_end: int, samples: np.ndarray, rate: int) -> Record:
    """A mono ``pcm-s16le`` audio record from int16 samples, with the caller's times.

    Unlike ``fusionstream.stream.media.audio_record`` (float in), decoded or captured s16 samples go on
    the wire bit for bit instead of being requantised, and the caller sets ``t_end`` so that
    consecutive chunks tile the timeline exactly.
    """
    payload = samples.astype("<i2", copy=False).tobytes()
    meta = {"sample_rate": rate, "channels": 1}
    return Record(stream_id, Modality.AUDIO, seq, t_start, t_end, Encoding.PCM_S16LE, payload, meta)


# -- helpers -----------------------------------------------------------------------------------


def _paced(
    records: Iterable[Record], speed: float, clock: Callable[[], int], sleep: Callable[[float], object]
) -> Iterator[Record]:
    first_event: int | None = None
    first_wall = 0
    for record in records:
        if first_event is None:
            first_event, first_wall = record.t_start_ns, clock()
        else:
            due = first_wall + (record.t_start_ns - first_event) / speed
            delay = due - clock()
            if delay > 0:
                sleep(delay / NS)
        yield record


def _require_file(path: PathLike) -> None:
    # URLs (rtsp://, http://) are for FFmpeg to resolve; only local paths can be checked here.
    text = os.fspath(path)
    if "://" not in text and not os.path.exists(text):
        raise FileNotFoundError(2, "no such media file", text)


def _open_container(path: PathLike) -> av.container.InputContainer:
    import av

    _require_file(path)
    try:
        return av.open(os.fspath(path))
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: not a media file PyAV can read ({exc.strerror or exc})") from exc


def _video_stream(container: av.container.InputContainer) -> Any:
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _origin_ns(container: av.container.InputContainer) -> int:
    """The file's time zero in ns of pts: the container's start, else its earliest stream's."""
    if container.start_time is not None:
        return container.start_time * 1000  # AV_TIME_BASE is microseconds
    starts = [round(s.start_time * s.time_base * NS) for s in container.streams if s.start_time is not None]
    return min(starts, default=0)


__all__ = [
    "AUDIO_GAP_NS",
    "FALLBACK_FPS",
    "MediaInfo",
    "Size",
    "audio_track_records",
    "fit_size",
    "has_audio",
    "media_file_records",
    "paced",
    "pcm16_record",
    "probe",
    "record_order",
    "resize_to_fit",
    "restamp",
    "video_frame_records",
]
