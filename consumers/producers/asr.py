"""`--asr`: a source's records plus the words PocketSphinx recognises in their audio (docs/asr.md).

:func:`asr_transcripts` wraps any record iterator (a file, a microphone, the synthetic source):
audio and video pass through as they come, and each stream's audio chunks also go to a
:class:`~fusionstream.stream.sources.asr.Recognizer`, whose words come back as transcript
records and whose "decoded up to T" marks come back as text progress records.

Where the decoding runs, and why:

- live and paced sources: in recogniser processes (:class:`Recognisers`) beside the caller, one
  per stream up to one per core. PocketSphinx holds the GIL while it decodes (two recogniser
  threads ran no faster than one), so in the caller's process it would take turns with the
  publisher or the demo's pipeline and delay both (a recogniser thread pushed the demo's own
  replay up to 1.4 s behind, p95); a process of its own decodes on another core while the audio
  leaves on time. They load their models (about a second each) before the source starts.
- unpaced replays (``inline``): in the caller's thread, each word right after the audio chunk
  that completed its utterance. Audio sent as fast as it goes would leave any concurrent
  recogniser behind, and its words would arrive arbitrarily late; inline, a word trails its
  audio by exactly the event time the recogniser needed to decide it, as in real time, and the
  output is reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusionstream.consumers.producers.errors import RecogniserError
from fusionstream.stream.errors import FusionStreamError
from fusionstream.stream.records import Modality, Record

if TYPE_CHECKING:
    from fusionstream.stream.sources.asr import AsrConfig, AsrEvent, Recognizer

#: Least event time between two ASR progress records (docs/wire-format.md#progress asks 100-500 ms).
ASR_PROGRESS_NS = 250_000_000
#: Audio chunks a recogniser process may fall behind by before the audio waits for it (40 s of 40 ms chunks).
ASR_BACKLOG = 1000
#: Streams recognised in real time on this project's machine (2 shared cores), per grammar, with one
#: recogniser process per core: the general model costs about 0.5 CPU s per audio s and stream,
#: the digits grammar about 0.03 (docs/asr.md, "Measured"); the rest of the CPU is the pipeline's.
ASR_REALTIME_STREAMS: dict[str, int] = {"general": 1, "digits": 8}


@dataclass
class AsrStats:
    """What the recognisers did, for reports: filled in by :func:`asr_transcripts` when it ends."""

    words: int = 0
    progress: int = 0
    audio_s: float = 0.0
    #: Processor time spent decoding (PocketSphinx is single-threaded), all recognisers together.
    cpu_s: float = 0.0
    #: Per audio chunk: wall clock when its decoding finished minus the chunk's end, ms. It means
    #: "how far recognition ran behind the audio" when the records carry the wall clock (real time).
    lag_ms: list[float] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Processor seconds per second of audio (below 1: faster than real time)."""
        return self.cpu_s / self.audio_s if self.audio_s else 0.0

    def add(self, other: AsrStats) -> None:
        self.words += other.words
        self.progress += other.progress
        self.audio_s += other.audio_s
        self.cpu_s += other.cpu_s
        self.lag_ms += other.lag_ms


def asr_realtime_refusal(streams: int, grammar: str) -> str | None:
    """Why ``streams`` streams cannot be recognised in real time with ``grammar`` here, or None."""
    limit = ASR_REALTIME_STREAMS.get(grammar, 1)
    if streams <= limit:
        return None
    return (f"--asr with the {grammar} grammar keeps up with at most {limit} stream(s) in real time on this "
            f"machine (docs/asr.md): use --streams {limit}" + (", --asr-grammar digits" if grammar != "digits" else "")
            + " or --fast")


def asr_transcripts(
    records: Iterator[Record],
    config: AsrConfig | None = None,
    *,
    progress: bool = True,
    language: str = "en",
    inline: bool = False,
    stats: AsrStats | None = None,
) -> Iterator[Record]:
    """``records`` as they come, plus one transcript record per word recognised in their audio.

    Each word is published when its utterance is final, stamped with when it was spoken,
    ``meta`` adding ``confidence`` (posterior probability) and ``utterance`` (its number).
    ``progress``: also a text progress record (docs/wire-format.md#progress) at most every
    :data:`ASR_PROGRESS_NS` of event time as decoding advances, and one with ``ended`` at the
    end. Each stream gets its own recogniser. ``inline``, or else a :class:`Recognisers`
    started at the first record: see the module docstring. ``stats`` gets the counts at the end.
    """
    if inline:
        transcriber = _Transcriber(config, progress, language)
        for record in records:
            yield record
            if record.modality is Modality.AUDIO:
                yield from transcriber.feed(record)
        yield from transcriber.finish()
        if stats is not None:
            stats.add(transcriber.stats)
        return
    recognisers = Recognisers(config, progress=progress, language=language)
    yield from recognisers.transcripts(records)
    if stats is not None:
        stats.add(recognisers.stats)



class Recognisers:
    """Recogniser processes for ``streams`` streams (one per stream, at most ``processes``, default
    one per core), started with their models loaded when made: make them before a live source
    starts its clock, so that its first seconds are not decoded late.

    They are spawned, so a script that makes them must start under ``if __name__ == "__main__":``.
    """

    def __init__(
        self, config: AsrConfig | None = None, *, streams: int = 1, progress: bool = True, language: str = "en",
        processes: int | None = None,
    ) -> None:
        import multiprocessing

        self.stats = AsrStats()
        count = max(1, min(streams, processes or os.cpu_count() or 1))
        # Spawned, not forked: the caller may hold threads (onnxruntime, the Kafka client) a fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        self._results: Any = context.Queue()
        self._workers: list[tuple[Any, Any]] = []  # (process, its audio queue)
        self._route: dict[str, int] = {}  # stream id -> the worker recognising it
        spares = -(-streams // count)  # recognisers each worker loads ahead (at 16 kHz, the usual rate)
        try:
            for i in range(count):
                audio = context.Queue(ASR_BACKLOG)
                worker = context.Process(target=_recognise, name=f"fusionstream-asr-{i}", daemon=True,
                                         args=(audio, self._results, config, progress, language, spares))
                worker.start()
                self._workers.append((worker, audio))
            ready = 0
            while ready < count:
                item = self._next(timeout=60.0)
                if item == READY:
                    ready += 1
                else:
                    list(self._taken(item))  # an error raises; nothing else comes before READY
        except BaseException:
            self.close()
            raise

    def transcripts(self, records: Iterator[Record]) -> Iterator[Record]:
        """``records`` as they come, plus the words and progress records of their audio (once per instance).

        A recogniser that dies (killed, or failed) stops the source with one error line naming its stream:
        the recognisers share one results queue, whose lock a process killed while writing holds for ever,
        so the others cannot be trusted to go on."""
        workers, route = self._workers, self._route
        try:
            for record in records:
                yield from self._drain()
                if record.modality is Modality.AUDIO:
                    index = route.setdefault(record.stream_id, len(route) % len(workers))
                    if not self._send(index, record):
                        yield from self._drain()  # its error, if it sent one, is raised here
                        raise RecogniserError(f"the speech recogniser of {record.stream_id} stopped (exit status "
                                              f"{workers[index][0].exitcode})")
                yield record
            for index in range(len(workers)):
                self._send(index, None)
            ended = 0
            while ended < len(workers):
                item = self._next(timeout=None)
                if item is None:
                    ended += 1
                else:
                    yield from self._taken(item)
        finally:
            self.close()

    def _send(self, index: int, record: Record | None) -> bool:
        """Queue ``record`` for recogniser ``index`` (waiting while it is ASR_BACKLOG chunks behind); False if
        it is dead (a full queue would otherwise wait for it forever)."""
        worker, audio = self._workers[index]
        while worker.is_alive():
            try:
                audio.put(record, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the processes (at once if they are still decoding: their source was abandoned)."""
        for worker, audio in self._workers:
            if worker.is_alive():
                with contextlib.suppress(queue.Full, ValueError):
                    audio.put_nowait(None)
                worker.join(timeout=2)
            if worker.is_alive():
                worker.kill()
            # Chunks a dead recogniser never read would keep this process from exiting (the queue's feeder
            # thread is joined at exit, and waits for room in a pipe nobody reads).
            audio.cancel_join_thread()
            audio.close()

    def _next(self, timeout: float | None) -> Any:
        """The next result; a recogniser that died without saying so is an error, not a hang."""
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                if not any(worker.is_alive() for worker, _ in self._workers):
                    raise RecogniserError("the speech recognisers stopped before the end of their audio") from None
                if timeout is not None and waited >= timeout:
                    raise RecogniserError(f"the speech recognisers did not start in {timeout:g} s") from None

    def _drain(self) -> Iterator[Record]:
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                yield from self._taken(item)

    def _taken(self, item: Record | AsrStats | BaseException) -> Iterator[Record]:
        if isinstance(item, FusionStreamError):
            raise item
        if isinstance(item, BaseException):  # the recogniser's own failure: one line, not its traceback
            raise RecogniserError(f"speech recognition failed: {type(item).__name__}: {item}") from item
        if isinstance(item, AsrStats):
            self.stats.add(item)
            return
        yield item


#: What a recogniser process sends when its models are loaded.
READY = "ready"


def _recognise(audio: Any, results: Any, config: AsrConfig | None, progress: bool, language: str, spares: int) -> None:
    """A recogniser process: READY, then for audio chunk records in: word and progress records, its
    stats, then None out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us with None
    try:
        transcriber = _Transcriber(config, progress, language, spares=spares)
        results.put(READY)
        while (record := _next_chunk(audio)) is not None:
            for item in transcriber.feed(record):
                results.put(item)
        for item in transcriber.finish():
            results.put(item)
        results.put(transcriber.stats)
    except BaseException as exc:  # the parent raises it where it reads the results
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RecogniserError(f"speech recognition failed: {exc!r}")
        results.put(exc)
    results.put(None)


def _next_chunk(audio: Any) -> Record | None:
    """The next audio record; exits the process once its parent is gone (killed: ``daemon`` processes are
    only ended by a parent that exits normally), instead of waiting on the queue for ever."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    while True:
        try:
            record: Record | None = audio.get(timeout=PARENT_CHECK_S)
            return record
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                os._exit(0)  # nobody to send anything to; no cleanup that could wait on the dead parent


#: How often an idle recogniser checks that its parent still runs.
PARENT_CHECK_S = 1.0


class _Transcriber:
    """Audio chunk records in, word and progress records out: a
    :class:`~fusionstream.stream.sources.asr.Recognizer` and a text ``seq`` per stream."""

    def __init__(self, config: AsrConfig | None, progress: bool, language: str, *, spares: int = 0) -> None:
        from fusionstream.stream.sources.asr import ASR_SAMPLE_RATE, Recognizer

        self.config, self.progress, self.language = config, progress, language
        self.stats = AsrStats()
        # Loaded ahead (about a second each): a stream at their rate starts with one at no delay.
        self.spares = [Recognizer(ASR_SAMPLE_RATE, config) for _ in range(spares)]
        self.recognisers: dict[str, Recognizer] = {}
        self.seq: dict[str, int] = {}
        self.utterances: dict[str, int] = {}
        self.reported: dict[str, int] = {}

    def feed(self, record: Record) -> list[Record]:
        from fusionstream.stream.media import decode_media
        from fusionstream.stream.records import AudioChunk
        from fusionstream.stream.sources.asr import Recognizer

        chunk = decode_media(record)
        assert isinstance(chunk, AudioChunk)
        sid = chunk.stream_id
        if sid not in self.recognisers:
            spare = next((r for r in self.spares if r.sample_rate == chunk.sample_rate), None)
            if spare is not None:
                self.spares.remove(spare)
            self.recognisers[sid] = spare or Recognizer(chunk.sample_rate, self.config)
            self.seq[sid], self.utterances[sid], self.reported[sid] = 0, 0, -(2**63)
        started = time.thread_time()
        events = self.recognisers[sid].feed(chunk.samples, chunk.t_start_ns)
        self.stats.cpu_s += time.thread_time() - started
        self.stats.audio_s += len(chunk.samples) / chunk.sample_rate
        self.stats.lag_ms.append((time.time_ns() - chunk.t_end_ns) / 1e6)
        return self._records(sid, events)

    def finish(self) -> list[Record]:
        from fusionstream.stream.media import progress_record

        out: list[Record] = []
        for sid, recogniser in self.recognisers.items():
            started = time.thread_time()
            events = recogniser.flush()
            self.stats.cpu_s += time.thread_time() - started
            out += self._records(sid, events)
            if self.progress:
                out.append(progress_record(sid, Modality.TEXT, self.seq[sid], recogniser.decoded_ns, ended=True))
                self.seq[sid] += 1
                self.stats.progress += 1
        return out

    def _records(self, sid: str, events: list[AsrEvent]) -> list[Record]:
        from fusionstream.stream.media import progress_record, text_record
        from fusionstream.stream.sources.asr import Decoded, Utterance

        out: list[Record] = []
        for event in events:
            if isinstance(event, Utterance):
                for word in event.words:
                    # Complete: a recogniser's words follow one another, none starts inside another.
                    record = text_record(sid, self.seq[sid], word.t_start_ns, word.t_end_ns, word.text,
                                         language=self.language, complete=True)
                    meta = {**record.meta, "confidence": word.confidence, "utterance": self.utterances[sid]}
                    out.append(dataclasses.replace(record, meta=meta))
                    self.seq[sid] += 1
                    self.stats.words += 1
                self.utterances[sid] += 1
            elif isinstance(event, Decoded) and self.progress and event.t_ns - self.reported[sid] >= ASR_PROGRESS_NS:
                self.reported[sid] = event.t_ns
                out.append(progress_record(sid, Modality.TEXT, self.seq[sid], event.t_ns))
                self.seq[sid] += 1
                self.stats.progress += 1
        return out


__all__ = [
    "ASR_PROGRESS_NS",
    "ASR_REALTIME_STREAMS",
    "AsrStats",
    "Recognisers",
    "asr_realtime_refusal",
    "asr_transcripts",
]
