"""The pipeline core shared by the embedded demo and the Kafka service (docs/architecture.md).

    feed(records) ─> decode (thread pool) ─> aligner ─> window queue ─> micro-batcher
                         │ bad / late                                    │
                         └─> returned as DeadLetter          engine thread ─> prediction queue

JPEG frames are only checked at intake; the pixels of the frames a closed window samples
are decoded (in the same pool) just before it is queued, each frame once.

While the engine is idle, windows whose data is complete but that still wait out the allowed
lateness are encoded ahead (``speculate``, see ``fusionstream.consumers.pipeline.reuse``): when such a
window closes, only what changed since (a late record) and the fusion head are left to run. Before
that, with revisions on, the frames open windows will sample are decoded and embedded as soon as
they are known (``fusionstream.stream.frames_ahead``), so a window closing the moment its audio is
complete (a provisional prediction) has only its audio and its last frames left to encode.

Every queue is bounded: when the engine falls behind, ``feed`` waits on the full
window queue, and the caller (a source, or the Kafka consumer loop) slows down.
Nothing is dropped: a record is either in a window, or returned as a dead letter.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fusionstream.consumers.pipeline.batcher import MicroBatcher, WindowQueue
from fusionstream.consumers.pipeline.frames import Decoded, decode_frames, decode_sampled_frames
from fusionstream.consumers.pipeline.late import late_detail
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow, Runner
from fusionstream.consumers.pipeline.stats import PipelineStats
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.jpeg import LazyJpeg
from fusionstream.stream.media import decode_media, decode_wire
from fusionstream.stream.records import MediaItem, Modality, Progress, Record, TextSegment
from fusionstream.stream.windows import Window, WindowConfig
from fusionstream.units import NS

log = logging.getLogger(__name__)

#: GIL switch interval while a pipeline runs (see ``Pipeline.__aenter__``).
GIL_SWITCH_S = 0.001
#: Windows encoded ahead per engine call: small, since a closed window arriving meanwhile waits for
#: it, but not so small that encoding ahead falls behind at high load. Embedded real-time trials on
#: 2 cores, 8 against 4 side by side: p99 lower in all 6 pairs (64-80 live streams).
WARM_CHUNK = 8
#: Failures in a row of encoding ahead after which the pipeline stops trying (each loses only a head start).
WARM_FAILURES = 10
#: Most windows held for encoding ahead (each holds its audio, 64 KiB at 16 kHz): those beyond
#: wait in the aligner until there is room, or close first.
MAX_AHEAD = 256
#: Most frames held for encoding ahead, and the most per engine call: a closing window waits for at most
#: one such call (16 frames, a few ms on one core).
MAX_FRAMES_AHEAD = 1024
FRAME_CHUNK = 16


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that will never be in a window, and why."""

    reason: str
    detail: str
    ref: Any
    stream_id: str | None = None


def _too_far_ahead(item: MediaItem | Progress, horizon: int, limit_ns: int) -> str:
    """The ``future`` dead letter's detail: how far ahead of the wall clock ``item``'s event time is."""
    ahead_s = ((item.t_ns if isinstance(item, Progress) else item.t_start_ns) - horizon + limit_ns) / NS
    ahead = f"{ahead_s / 86400:.0f} days" if ahead_s >= 86400 else f"{ahead_s:.3f} s"
    return (f"its event time is {ahead} ahead of the service's clock, more than max_future_ms "
            f"({limit_ns // 1_000_000} ms) allows: its source's clock is wrong")


#: A record to feed: wire bytes (or a record) and its ref, and, from Kafka, its key (checked against the stream id).
Fed = tuple[bytes | Record, Any] | tuple[bytes | Record, Any, bytes | None]
#: What a record fed without a Kafka key carries instead (the embedded pipeline's, a file's): nothing to check.
UNKEYED: Any = object()


def _decode(value: bytes | Record, ref: Any, key: bytes | None = UNKEYED) -> MediaItem | Progress | DeadLetter:
    try:
        item = decode_media(value, ref, lazy_jpeg=True) if isinstance(value, Record) else \
            decode_wire(value, ref, lazy_jpeg=True)
    except BadRecord as exc:
        stream_id = value.stream_id if isinstance(value, Record) else None
        return DeadLetter(exc.reason, exc.detail, ref, stream_id)
    # The key places a record on its partition: a stream's records under another key (or none) may land
    # on another partition, or another worker, than the rest of the stream, and its windows lose them.
    if key is not UNKEYED and (key is None or key != item.stream_id.encode()):
        shown = "no key" if key is None else f"key {key.decode('utf-8', 'replace')!r}"
        return DeadLetter("key-mismatch", f"{shown}, but the record's stream id is {item.stream_id!r} (they must "
                          "be equal: the key decides the partition)", ref, item.stream_id)
    return item


class Pipeline:
    """Records in, predictions out; use as ``async with Pipeline(...) as p``."""

    def __init__(
        self,
        runner: Runner,
        window_config: WindowConfig,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        queue_windows: int = 256,
        decode_workers: int = 1,
        clock: Callable[[], int] = time.time_ns,
        on_admit: Callable[[Any, int], None] | None = None,
        on_unpredicted: Callable[[Window], None] | None = None,
        speculate: bool = True,
    ) -> None:
        self.runner = runner
        #: The model's input side: sampled frames are decoded no larger than it needs.
        self._frame_side = runner.frame_side
        #: Modalities the model does not use (a model may declare a subset): their records
        #: are counted and dropped, so that windows never wait for them.
        self._ignored = frozenset(m for m in Modality if m.label not in runner.modalities)
        self._prepare: Callable[[Sequence[Window]], None] | None = (
            getattr(runner, "prepare", None) if speculate else None
        )
        # Only with provisional predictions: without them a window closes a lateness after its media is
        # complete, and encoding it whole meanwhile (above) covers its frames, in larger batches. At 64
        # live streams, revisions off, encoding frames ahead as well made the closing engine calls longer.
        self._prepare_frames: Callable[[Sequence[tuple[str, int]], Sequence[Any]], None] | None = (
            getattr(runner, "prepare_frames", None) if speculate and window_config.provisional_without else None
        )
        #: Frames open windows will sample, by (stream, frame time), not embedded yet, oldest first.
        self._frames_ahead: dict[tuple[str, int], Any] = {}
        self._warming: asyncio.Task[None] | None = None
        #: Windows offered by ``Aligner.ready`` and not encoded yet, oldest first.
        self._ahead: dict[tuple[str, int], Window] = {}
        self._warm_failures = 0
        # Told (ref, number of windows) for every admitted record: the service's offset
        # bookkeeping holds a record's offset until that many windows are published.
        self._on_admit = on_admit
        # Told each window that will get no prediction (its data fails the engine): its records' share is
        # released as a published window's would be, or their offsets would be held for ever.
        self._on_unpredicted = on_unpredicted
        self.aligner = Aligner(window_config, [m for m in Modality if m not in self._ignored])
        self.stats = PipelineStats()
        self._clock = clock
        #: Provisional windows first (see WindowQueue).
        self._windows: asyncio.Queue[ClosedWindow] = WindowQueue(maxsize=queue_windows)
        self._predictions: asyncio.Queue[Prediction | None] = asyncio.Queue(maxsize=max(queue_windows, max_batch))
        self._batcher = MicroBatcher(self._windows, max_batch, max_delay_ms / 1000)
        self._decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="fs-decode")
        # One engine thread: backends are not re-entrant, and batching already fills the cores.
        self._engine_pool = ThreadPoolExecutor(1, thread_name_prefix="fs-engine")
        self._decode_workers = decode_workers
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._switch_interval = sys.getswitchinterval()

    async def __aenter__(self) -> Pipeline:
        _freeze_heap()
        # The engine thread gives the GIL up for every graph it runs (four per batch) and needs
        # it back at once when the graph returns; at CPython's default 5 ms switch interval it
        # can wait that long behind the intake's Python code each time, and the cores idle.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_S))
        self._task = asyncio.create_task(self._infer_loop(), name="fs-infer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        _thaw_heap()
        sys.setswitchinterval(self._switch_interval)
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._batcher.close()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._engine_pool.shutdown(wait=True, cancel_futures=True)

    # -- intake ---------------------------------------------------------------------------------

    async def feed(self, records: Sequence[Fed]) -> list[DeadLetter]:
        """Decode, align and enqueue; waits while the window queue is full. Returns the rejects.

        Each record is ``(value, ref)``, or ``(value, ref, key)`` from Kafka: a record whose key is not
        its stream id is a dead letter (``key-mismatch``)."""
        if not records:
            return []
        items = await self._decode_all(records)
        now = self._clock()
        # The wall clock, not the pipeline's (which stands still in a broker outage): what a source can stamp.
        horizon = time.time_ns() + self.aligner.config.max_future_ns
        dead: list[DeadLetter] = []
        # Once per record the service consumes: the attributes it uses, looked up once per call.
        add, on_admit, ignored, stats = self.aligner.add, self._on_admit, self._ignored, self.stats
        partly_late = 0
        for item in items:
            if isinstance(item, DeadLetter):
                dead.append(item)
                continue
            if (item.t_ns if item.__class__ is Progress else item.t_start_ns) > horizon:
                dead.append(DeadLetter("future", _too_far_ahead(item, horizon, self.aligner.config.max_future_ns),
                                       item.ref, item.stream_id))
                continue
            skipped = (ignored and item.modality in ignored) or (item.__class__ is TextSegment and not item.is_final)
            if not skipped and isinstance(item, Progress):
                self.aligner.progress(item, now)
                stats.progress_records += 1
                if on_admit is not None:
                    on_admit(item.ref, 0)
                continue
            admission = None if skipped else add(item, now)
            if admission is None or admission.duplicate:
                # Ignored: a modality the model does not use; an interim transcript result (is_final false),
                # which its final replaces (fused, it would count twice, and it moves the text's watermark past
                # words still to come); or a record resent by its producer (the copy taken before stands).
                stats.records_ignored += 1
                if on_admit is not None:
                    on_admit(item.ref, 0)  # in no window: nothing to wait for
                continue
            if admission.late:
                dead.append(DeadLetter("late", late_detail(item.t_end_ns, admission.closed_until_ns), item.ref,
                                       item.stream_id))
                continue
            # In some of its windows only: counted (the closed ones were published without it).
            partly_late += admission.missed > 0
            if on_admit is not None:
                on_admit(item.ref, len(admission.window_starts))
        stats.records_partly_late += partly_late
        stats.records += len(records)
        self.stats.dead_letters += len(dead)
        # Only the streams these records moved: the others' windows wait for the clock, which tick() polls.
        recent = self.aligner.take_recent()
        await self._enqueue(self.aligner.poll(now, recent))
        await self._enqueue(self.aligner.provisional(now, streams=recent))
        if self._prepare_frames is not None:
            if len(self._frames_ahead) >= MAX_FRAMES_AHEAD:
                # The engine has not been idle for a while: most of their windows closed meanwhile, and
                # encoded them. Forget them rather than encode them late, or stop taking new ones.
                self._frames_ahead.clear()
            for stream_id, frame in self.aligner.frames_due(recent, MAX_FRAMES_AHEAD - len(self._frames_ahead)):
                self._frames_ahead[(stream_id, frame.t_start_ns)] = frame.image
        self._maybe_warm(now)
        return dead

    async def tick(self) -> None:
        """Close windows by timeout when no record arrives (call it a few times a second)."""
        now = self._clock()
        # At most half the queue: each closed window holds its own media (a second of audio is 64 KB), and a
        # burst of 10,000 new stream ids going silent together built 20,000 at once (1.3 GB), ahead of every
        # other stream's windows (89 s late). The rest close at the next ticks, oldest streams first, and the
        # other half is left to the windows live streams close as their records come (p50 0.6 s meanwhile).
        room = max(0, max(1, self._windows.maxsize // 2) - self._in_flight)
        await self._enqueue(self.aligner.poll(now, limit=room))
        await self._enqueue(self.aligner.provisional(now))
        self._maybe_warm(now)

    def _maybe_warm(self, now: int) -> None:
        """Collect complete, still open windows; encode them whenever the engine is idle."""
        if self._prepare is None:
            return
        if self._windows.empty():  # closed windows waiting come first: no building windows ahead meanwhile
            if len(self._ahead) >= MAX_AHEAD:  # full: forget those that closed before the engine got to them
                self._ahead = {key: w for key, w in self._ahead.items() if self.aligner.is_open(*key)}
            room = MAX_AHEAD - len(self._ahead)
            if room > 0:
                for window in self.aligner.ready(now, limit=room):
                    self._ahead[window.window_id] = window
        if (self._ahead or self._frames_ahead) and self._warming is None and not self._in_flight:
            self._warming = asyncio.create_task(self._warm(), name="fs-warm")

    async def _warm(self) -> None:
        assert self._prepare is not None
        loop = asyncio.get_running_loop()
        try:
            # Closed windows come first: stop as soon as one is in flight (the rest wait for the next
            # moment the engine is idle). A window closing meanwhile waits at most for one chunk. Complete
            # windows and frames take turns: the first close sooner, unless they wait for their text (with
            # revisions on, their first prediction is out already), while the frames' windows may be a
            # provisional prediction about to be made. Either first alone was worse at one of the two.
            while (self._ahead or self._frames_ahead) and not self._in_flight:
                if self._frames_ahead and self._prepare_frames is not None:
                    await self._warm_frames(loop, self._prepare_frames)
                    if self._in_flight:
                        break
                elif not self._ahead:
                    break
                chunk: list[Window] = []
                while self._ahead and len(chunk) < WARM_CHUNK:
                    key = next(iter(self._ahead))
                    window = self._ahead.pop(key)
                    if self.aligner.is_open(*key):
                        chunk.append(window)
                if chunk:
                    chunk = await self._decode_frames(chunk)  # the same frames the closing window samples
                    await loop.run_in_executor(self._engine_pool, self._prepare, chunk)
                    self.stats.windows_warmed += len(chunk)
                    self._warm_failures = 0  # in a row: an occasional bad caption never switches it off
        except Exception:
            # Only a head start is lost: the windows are encoded in full when they close (where a window
            # whose data an encoder fails on is predicted without that modality). One such window must not
            # end the head start of every later one; an engine that fails again and again is left alone.
            self._warm_failures += 1
            giving_up = self._warm_failures >= WARM_FAILURES
            log.exception("encoding windows ahead failed%s", "; not trying again" if giving_up else
                          f" ({self._warm_failures} of {WARM_FAILURES} before it stops trying)")
            if giving_up:
                self._prepare = self._prepare_frames = None
            self._ahead.clear()
            self._frames_ahead.clear()
        finally:
            self._warming = None

    async def _warm_frames(self, loop: asyncio.AbstractEventLoop,
                           prepare: Callable[[Sequence[tuple[str, int]], Sequence[Any]], None]) -> None:
        """Decode and embed up to ``FRAME_CHUNK`` of the frames waiting to be encoded ahead."""
        keys = []
        for key in self._frames_ahead:
            keys.append(key)
            if len(keys) == FRAME_CHUNK:
                break
        images = [self._frames_ahead.pop(key) for key in keys]
        pixels, found = await loop.run_in_executor(self._decode_pool, decode_frames, images, self._frame_side)
        self._count_decoded([found])  # counted here: at close these frames are decoded already, and not again
        await loop.run_in_executor(self._engine_pool, prepare, keys, pixels)
        self.stats.frames_warmed += len(keys)

    async def flush(self, stream_ids: list[str] | None = None) -> None:
        """Close every open window of these streams (all by default), e.g. at the end of input."""
        await self._enqueue(self.aligner.flush(stream_ids))

    async def drain(self) -> None:
        """Wait until every enqueued window has come out as a prediction; the engine's error if it stopped."""
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait([idle] if self._task is None else [idle, self._task],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        if not self._idle.is_set() and self._task is not None and self._task.done():
            self._task.result()  # its exception: waiting on would be for ever

    async def _decode_all(
        self, records: Sequence[Fed]
    ) -> list[MediaItem | Progress | DeadLetter]:
        loop = asyncio.get_running_loop()
        parts = max(1, min(self._decode_workers, len(records) // 8))
        size = -(-len(records) // parts)
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._decode_pool, decode_records, chunk) for chunk in chunks)
        )
        return [item for chunk in results for item in chunk]

    async def _enqueue(self, windows: list[Window]) -> None:
        if not windows:
            return
        closed_at = time.perf_counter_ns()
        windows = await self._decode_frames(windows)
        self.stats.windows_closed += len(windows)
        self._in_flight += len(windows)
        self._idle.clear()
        for window in windows:
            await self._windows.put(ClosedWindow(window, closed_at))

    def _count_decoded(self, found: list[Decoded]) -> None:
        failed = sum(f.failed for f in found)
        self.stats.frames_damaged += sum(f.damaged for f in found)
        if failed:
            self.stats.frames_undecodable += failed
            log.warning("%d sampled JPEG frame(s) passed the intake check but did not decode; shown black", failed)

    async def _decode_frames(self, windows: list[Window]) -> list[Window]:
        """Decode the JPEG frames these windows sampled (each frame once, however many windows share it)."""
        lazy = [w for w in windows if any(isinstance(f, LazyJpeg) for f in w.frames)]
        if not lazy:
            return windows
        loop = asyncio.get_running_loop()
        parts = max(1, min(self._decode_workers, len(lazy) // 4))
        size = -(-len(lazy) // parts)
        done = await asyncio.gather(
            *(loop.run_in_executor(self._decode_pool, decode_sampled_frames, lazy[i : i + size], self._frame_side)
              for i in range(0, len(lazy), size))
        )
        decoded = {id(old): new for part in done for old, new, _ in part}
        self._count_decoded([found for part in done for _, _, found in part])
        return [decoded.get(id(w), w) for w in windows]

    # -- output ---------------------------------------------------------------------------------

    async def predictions(self) -> AsyncIterator[Prediction]:
        """Predictions in the order they are made (ordered per stream)."""
        while True:
            prediction = await self._predictions.get()
            if prediction is None:
                return
            yield prediction

    def engine_failure(self) -> BaseException | None:
        """What stopped the inference loop, once it has stopped on an error (its predictions then end)."""
        task = self._task
        return task.exception() if task is not None and task.done() and not task.cancelled() else None

    def backlog(self) -> int:
        """Windows closed but not yet predicted."""
        return self._in_flight

    async def _infer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._batcher.next_batch()
            try:
                predictions = await loop.run_in_executor(self._engine_pool, self.runner.run, batch)
            except Exception as failure:
                try:
                    # The data's, or the engine's? Each window alone, then without the modality that fails.
                    predictions, degraded, unpredicted = await loop.run_in_executor(
                        self._engine_pool, self.runner.run_isolating, batch, failure)
                except Exception:
                    # An engine failure is ours, not the input's: stop loudly rather than skip windows.
                    log.exception("inference failed on a batch of %d windows", len(batch))
                    await self._predictions.put(None)
                    raise
                self.stats.windows_degraded += degraded
                self.stats.windows_failed += sum(w.final for w in unpredicted)  # a provisional's final fails too
                for window in unpredicted if self._on_unpredicted else ():
                    self._on_unpredicted(window)
            self.stats.batches += 1
            for prediction in predictions:
                await self._predictions.put(prediction)
            self.stats.predictions += len(predictions)
            self._in_flight -= len(batch)
            if self._in_flight == 0:
                self._idle.set()

    async def close_output(self) -> None:
        """Tell ``predictions()`` readers that no more will come."""
        await self._predictions.put(None)


# The objects alive when a pipeline starts (modules, the model's runtime, settings) live as long
# as it does. A full garbage collection walks all of them, hundreds of thousands after torch and
# ONNX Runtime are imported: a 50-70 ms pause of every thread, measured, which shows up as a p99
# latency spike. Frozen, they are left out of every collection; they are thawed when the last
# running pipeline stops (several can run in one process: tests, notebooks).
_pipelines_running = 0


def _freeze_heap() -> None:
    global _pipelines_running
    if _pipelines_running == 0:
        gc.freeze()
    _pipelines_running += 1


def _thaw_heap() -> None:
    global _pipelines_running
    _pipelines_running -= 1
    if _pipelines_running == 0:
        gc.unfreeze()


def decode_records(chunk: Sequence[Fed]) -> list[MediaItem | Progress | DeadLetter]:
    """Wire bytes (or records) to media items for the aligner, JPEGs only checked; the rejects as
    dead letters (a record fed with its Kafka key that is not its stream id too). Runs on a decode thread."""
    return [_decode(*fed) for fed in chunk]
