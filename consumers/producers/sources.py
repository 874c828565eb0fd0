"""What each `fusionstream produce` command publishes: record iterators built from ``fusionstream.stream.sources``.

No Kafka here: each function checks its input at once (so a missing file or camera fails
before anything is sent) and returns a lazy iterator of records, stamped the way
docs/wire-format.md asks. Replays of files and of the synthetic source are real time by default:
their event times start at the wall clock (a file's 0:00 is when its first record is
read), and each record is released when the wall clock reaches its ``t_start``, so they
look live to the service and its capture→publish latency means what it says. Unpaced,
they go as fast as the broker takes them.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fusionstream.stream.records import Modality, Record
from fusionstream.units import NS

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from fusionstream.stream.sources import GroundTruth, SyntheticConfig
    from fusionstream.stream.sources.files import Size

Clock = Callable[[], int]


def synthetic_source(
    config: SyntheticConfig, *, realtime: bool = True, clock: Clock = time.time_ns
) -> tuple[Iterator[Record], GroundTruth]:
    """The synthetic AV-digit streams and their ground truth.

    Real time: every record and segment is shifted so that the earliest stream starts now,
    and records are released when the wall clock reaches them. Otherwise the records are
    exactly the source's (event times from ``config.start_ns``, reproducible byte for byte).
    """
    from fusionstream.stream.sources import GroundTruth, SyntheticAV

    source = SyntheticAV(config)
    records: Iterator[Record] = source.records()
    truth = source.truth
    if realtime:
        shift = clock() - min(truth.span(sid)[0] for sid in truth.stream_ids)
        truth = GroundTruth(
            {
                sid: [
                    dataclasses.replace(s, t_start_ns=s.t_start_ns + shift, t_end_ns=s.t_end_ns + shift)
                    for s in truth.segments(sid)
                ]
                for sid in truth.stream_ids
            }
        )
        records = on_time(_shifted(records, shift), clock=clock)
    return records, truth


def media_source(
    path: str | os.PathLike[str],
    stream_id: str,
    *,
    captions: str | os.PathLike[str] | None = None,
    loop: bool = False,
    realtime: bool = True,
    max_fps: float | None = None,
    size: Size | None = None,
    sample_rate: int | None = None,
    language: str = "en",
    start_ns: int | None = None,
    clock: Clock = time.time_ns,
) -> Iterator[Record]:
    """A media file's frames, audio chunks and captions, merged in event time; ``loop`` replays it forever.

    The file's 0:00 is ``start_ns`` (default: when the first record is read). Each replay
    starts where the previous one ended and continues every modality's ``seq``, so the
    service sees one long stream.
    """
    from fusionstream.stream.sources import probe, read_captions
    from fusionstream.stream.sources.captions import MAX_CUE_SECONDS

    info = probe(path)  # FileNotFoundError / ValueError now, not at the first record
    if not (info.has_video or info.has_audio):
        raise ValueError(f"{path}: no video or audio stream")
    if not (info.has_video and info.has_audio):
        log.warning("%s has no %s track: its %s alone is published", path, "video" if info.has_audio else "audio",
                    "audio" if info.has_audio else "video")
    if captions is not None:
        read_captions(captions, max_cue_s=MAX_CUE_SECONDS)  # a broken caption file fails now too

    def passes(start: int) -> Iterator[Record]:
        every = _passes(
            path, stream_id, start, info.has_video, info.has_audio, captions, loop, max_fps, size, sample_rate, language
        )
        return every if loop else _said_if_short(every, path, start, info.duration_s)

    return _paced(_started(passes, start_ns, clock), realtime, clock)


def audio_source(
    path: str | os.PathLike[str],
    stream_id: str,
    *,
    realtime: bool = True,
    sample_rate: int | None = None,
    chunk_ms: float = 40,
    start_ns: int | None = None,
    clock: Clock = time.time_ns,
) -> Iterator[Record]:
    """The first audio track of a file (audio or video) as mono ``pcm-s16le`` chunks."""
    from fusionstream.stream.sources import audio_track_records, probe

    info = probe(path)
    if not info.has_audio:
        raise ValueError(f"{path}: no audio track")

    def records(start: int) -> Iterator[Record]:
        tracks = audio_track_records(path, stream_id, start, chunk_ms=chunk_ms, sample_rate=sample_rate)
        return _said_if_short(tracks, path, start, info.duration_s)

    return _paced(_started(records, start_ns, clock), realtime, clock)


def captions_source(
    path: str,
    stream_id: str,
    *,
    realtime: bool = True,
    language: str = "en",
    stdin: TextIO | None = None,
    start_ns: int | None = None,
    clock: Clock = time.time_ns,
) -> Iterator[Record]:
    """An SRT/WebVTT file's cues from ``start_ns`` (default: the first read), or live lines when ``path`` is ``-``.

    Live lines are stamped as they arrive (``fusionstream.stream.sources.stdin_caption_records``), so they
    are never paced.
    """
    import sys

    from fusionstream.consumers.producers.progress import EVERY_NS
    from fusionstream.stream.sources import caption_records, read_captions, stdin_caption_records
    from fusionstream.stream.sources.captions import MAX_CUE_SECONDS

    if path == "-":
        if stdin is None:
            # The wire's text is UTF-8 whatever the locale says (a Latin-1 locale read UTF-8 as mojibake).
            sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # type: ignore[attr-defined]
        return stdin_caption_records(_caption_lines(stdin or sys.stdin), stream_id, clock, language=language)
    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such caption file", path)
    if not read_captions(path, max_cue_s=MAX_CUE_SECONDS):  # a broken file fails now
        raise ValueError(f"{path}: no caption cues in it (an SRT or WebVTT file)")

    def records(start: int) -> Iterator[Record]:
        return caption_records(path, stream_id, start, language=language, progress_every_ns=EVERY_NS,
                               clip_overlaps=True)

    return _paced(_started(records, start_ns, clock), realtime, clock)


def camera_source(
    index_or_url: str, stream_id: str, *, fps: float | None = None, size: Size | None = None, quality: int = 85
) -> Iterator[Record]:
    """A camera (``0``, ``1``, ... or ``/dev/videoN``) or a stream URL (``rtsp://...``), stamped when grabbed."""
    from fusionstream.stream.sources import camera_records

    source: int | str = int(index_or_url) if index_or_url.isdigit() else index_or_url
    return camera_records(source, stream_id, fps=fps, size=size, quality=quality)


def microphone_source(
    stream_id: str, *, device: str | None = None, sample_rate: int = 16_000, chunk_ms: float = 40
) -> Iterator[Record]:
    """The default microphone, or ``device`` by index or name, as mono ``pcm-s16le`` chunks."""
    from fusionstream.stream.sources import microphone_records

    which: int | str | None = int(device) if device is not None and device.isdigit() else device
    return microphone_records(stream_id, sample_rate=sample_rate, chunk_ms=chunk_ms, device=which)


def _passes(
    path: str | os.PathLike[str],
    stream_id: str,
    start: int,
    has_video: bool,
    has_audio: bool,
    captions: str | os.PathLike[str] | None,
    loop: bool,
    max_fps: float | None,
    size: Size | None,
    sample_rate: int | None,
    language: str,
) -> Iterator[Record]:
    from fusionstream.stream.sources import audio_track_records, caption_records, video_frame_records
    from fusionstream.stream.sources.files import record_order

    seq = dict.fromkeys(Modality, 0)
    for _ in itertools.count() if loop else range(1):
        parts: list[Iterator[Record]] = []
        if has_video:
            parts.append(
                video_frame_records(path, stream_id, start, max_fps=max_fps, size=size, first_seq=seq[Modality.VIDEO])
            )
        if has_audio:
            parts.append(
                audio_track_records(path, stream_id, start, sample_rate=sample_rate, first_seq=seq[Modality.AUDIO])
            )
        if captions is not None:
            parts.append(caption_records(captions, stream_id, start, language=language, first_seq=seq[Modality.TEXT]))
        end = start
        for record in heapq.merge(*parts, key=record_order):
            seq[record.modality] = record.seq + 1
            end = max(end, record.t_end_ns)
            yield record
        if end == start:
            return  # nothing decoded: looping would spin
        start = end


def _said_if_short(records: Iterable[Record], path: str | os.PathLike[str], start: int,
                   declared_s: float | None) -> Iterator[Record]:
    """``records``, and a WARNING at their end when the file held much less than its header declares: a copy cut
    short (a download or transfer that stopped) is published as far as it goes, which an archive job should hear."""
    end = start
    for record in records:
        end = max(end, record.t_end_ns)
        yield record
    held_s = (end - start) / NS
    if declared_s is not None and held_s < declared_s - max(1.0, 0.05 * declared_s):
        log.warning("%s ended at %.1f s of the %.1f s its header declares: the file may be truncated", path, held_s,
                    declared_s)


#: The most of one stdin line sent as a caption: a minute of speech is about a kilobyte, and a line of
#: megabytes (a binary piped by mistake) would end the live feed at Kafka's record limit.
MAX_CAPTION_LINE_BYTES = 64 * 1024


def _caption_lines(lines: Iterable[str]) -> Iterator[str]:
    """Live lines that can be sent: a line that is not UTF-8 is skipped and one too long is cut, each with a
    WARNING naming the line; either ended the producer (and every line after it) with a codec or size error."""
    for number, line in enumerate(lines, 1):
        try:
            data = line.rstrip("\r\n").encode("utf-8")  # stdin decodes bad bytes as lone surrogates
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start:exc.end].encode("utf-8", "surrogateescape")
            log.warning("stdin line %d is not valid UTF-8 (bytes %s at character %d): skipped; convert the feed to "
                        "UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)", number, bad.hex(" "), exc.start)
            continue
        if len(data) > MAX_CAPTION_LINE_BYTES:
            line = data[:MAX_CAPTION_LINE_BYTES].decode("utf-8", "ignore")  # "ignore": a character cut in two
            log.warning("stdin line %d has %d bytes: sent its first %d", number, len(data), len(line.encode()))
        yield line


def _shifted(records: Iterable[Record], shift: int) -> Iterator[Record]:
    for record in records:
        yield dataclasses.replace(record, t_start_ns=record.t_start_ns + shift, t_end_ns=record.t_end_ns + shift)


def on_time(
    records: Iterable[Record], *, clock: Clock = time.time_ns, sleep: Callable[[float], object] = time.sleep
) -> Iterator[Record]:
    """Release each record when ``clock()`` reaches its ``t_start`` (at once if that has passed).

    Unlike ``fusionstream.stream.sources.paced``, which keeps the records' spacing from whenever the first
    one comes, this holds them to their absolute event times, so a record never leaves before
    the moment it claims to have been captured, and a slow start is caught up.
    """
    for record in records:
        delay = record.t_start_ns - clock()
        if delay > 0:
            sleep(delay / NS)
        yield record


def _started(make: Callable[[int], Iterator[Record]], start_ns: int | None, clock: Clock) -> Iterator[Record]:
    """``make(start)`` with ``start`` taken when the first record is asked for (unless given)."""
    yield from make(clock() if start_ns is None else start_ns)


def _paced(records: Iterator[Record], realtime: bool, clock: Clock) -> Iterator[Record]:
    return on_time(records, clock=clock) if realtime else records


__all__ = [
    "audio_source",
    "camera_source",
    "captions_source",
    "media_source",
    "microphone_source",
    "on_time",
    "synthetic_source",
]
