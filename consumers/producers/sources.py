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

import contextlib
import dataclasses
import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fusionstream.stream.records import Modality, Record
from fusionstream.units import NS

if TYPE_CHECKING:
    import queue

    from fusionstream.stream.sources import GroundTruth, SyntheticConfig
    from fusionstream.stream.sources.asr import AsrConfig, AsrEvent
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

    info = probe(path)  # FileNotFoundError / ValueError now, not at the first record
    if not (info.has_video or info.has_audio):
        raise ValueError(f"{path}: no video or audio stream")
    if captions is not None:
        read_captions(captions)  # a broken caption file fails now too

    def passes(start: int) -> Iterator[Record]:
        return _passes(
            path, stream_id, start, info.has_video, info.has_audio, captions, loop, max_fps, size, sample_rate, language
        )

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
    from fusionstream.stream.sources import audio_track_records, has_audio

    if not has_audio(path):
        raise ValueError(f"{path}: no audio track")

    def records(start: int) -> Iterator[Record]:
        return audio_track_records(path, stream_id, start, chunk_ms=chunk_ms, sample_rate=sample_rate)

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

    from fusionstream.stream.sources import caption_records, read_captions, stdin_caption_records

    if path == "-":
        return stdin_caption_records(stdin or sys.stdin, stream_id, clock, language=language)
    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such caption file", path)
    read_captions(path)  # a broken file fails now

    def records(start: int) -> Iterator[Record]:
        return caption_records(path, stream_id, start, language=language)

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


#: Least event time between two ASR progress records (docs/wire-format.md#progress asks 100-500 ms).
ASR_PROGRESS_NS = 250_000_000
#: Audio chunks the recogniser may fall behind by before the audio waits for it (about 40 s of 40 ms chunks).
ASR_BACKLOG = 1000


def asr_transcripts(
    records: Iterator[Record], config: AsrConfig | None = None, *, progress: bool = True, language: str = "en"
) -> Iterator[Record]:
    """``records`` as they come, plus one transcript record per word recognised in their audio.

    Recognition runs in its own thread, so the audio and video leave on time however long the
    decoding takes; each word is published when its utterance is final, stamped with when it was
    spoken, ``meta`` adding ``confidence`` (posterior probability) and ``utterance`` (its
    number). ``progress``: also a text progress record (docs/wire-format.md#progress) at most
    every :data:`ASR_PROGRESS_NS` of event time as decoding advances, and one with ``ended`` at
    the end. The recogniser is made on the first audio chunk, at that chunk's sample rate; each
    stream gets its own.
    """
    import queue
    import threading

    results: queue.Queue[Record | BaseException | None] = queue.Queue()
    audio: queue.Queue[Record | None] = queue.Queue(ASR_BACKLOG)
    worker = threading.Thread(target=_recognise, args=(audio, results, config, progress, language),
                              name="fusionstream-asr", daemon=True)
    worker.start()
    try:
        for record in records:
            yield from _drain(results)
            if record.modality is Modality.AUDIO:
                audio.put(record)  # waits when the recogniser is ASR_BACKLOG chunks behind
            yield record
        audio.put(None)
        while (item := results.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if worker.is_alive():
            with contextlib.suppress(queue.Full):
                audio.put_nowait(None)


def _drain(results: queue.Queue[Record | BaseException | None]) -> Iterator[Record]:
    import queue

    while True:
        try:
            item = results.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            yield item


def _recognise(
    audio: queue.Queue[Record | None],
    results: queue.Queue[Record | BaseException | None],
    config: AsrConfig | None,
    progress: bool,
    language: str,
) -> None:
    """The recogniser thread: one :class:`~fusionstream.stream.sources.asr.Recognizer` per stream."""
    from fusionstream.stream.media import decode_media, progress_record, text_record
    from fusionstream.stream.records import AudioChunk
    from fusionstream.stream.sources.asr import Decoded, Recognizer, Utterance

    recognisers: dict[str, Recognizer] = {}
    seq: dict[str, int] = {}
    utterances: dict[str, int] = {}
    reported: dict[str, int] = {}

    def emit(stream_id: str, events: list[AsrEvent], *, final_ns: int | None = None) -> None:
        for event in events:
            if isinstance(event, Utterance):
                for word in event.words:
                    record = text_record(stream_id, seq[stream_id], word.t_start_ns, word.t_end_ns, word.text,
                                         language=language)
                    meta = {**record.meta, "confidence": word.confidence, "utterance": utterances[stream_id]}
                    results.put(dataclasses.replace(record, meta=meta))
                    seq[stream_id] += 1
                utterances[stream_id] += 1
            elif isinstance(event, Decoded) and progress and event.t_ns - reported[stream_id] >= ASR_PROGRESS_NS:
                reported[stream_id] = event.t_ns
                results.put(progress_record(stream_id, Modality.TEXT, seq[stream_id], event.t_ns))
                seq[stream_id] += 1
        if final_ns is not None and progress:
            results.put(progress_record(stream_id, Modality.TEXT, seq[stream_id], final_ns, ended=True))
            seq[stream_id] += 1

    try:
        while (record := audio.get()) is not None:
            chunk = decode_media(record)
            assert isinstance(chunk, AudioChunk)
            sid = chunk.stream_id
            if sid not in recognisers:
                recognisers[sid] = Recognizer(chunk.sample_rate, config)
                seq[sid], utterances[sid], reported[sid] = 0, 0, -(2**63)
            emit(sid, recognisers[sid].feed(chunk.samples, chunk.t_start_ns))
        for sid, recogniser in recognisers.items():
            emit(sid, recogniser.flush(), final_ns=recogniser.decoded_ns)
    except BaseException as exc:  # handed to the source's thread, which raises it
        results.put(exc)
    results.put(None)


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
    "ASR_PROGRESS_NS",
    "asr_transcripts",
    "audio_source",
    "camera_source",
    "captions_source",
    "media_source",
    "microphone_source",
    "on_time",
    "synthetic_source",
]
