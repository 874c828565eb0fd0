"""The in-process benchmark stages: the model alone, the embedded pipeline, and the naive baseline.

Each stage runs the same workload and returns a :class:`StageResult`; ``fusionstream bench``
puts them side by side (see ``fusionstream.consumers.bench.run``). Every stage takes a runtime of
``open_runtime`` (any model directory, any backend) and talks to it by modality name.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionstream.consumers.bench.cpu import ms_per_window
from fusionstream.consumers.bench.workload import Workload, chunks
from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline, decode_records, decode_sampled_frames
from fusionstream.consumers.pipeline.reuse import Embedder
from fusionstream.consumers.pipeline.runner import Runner, Runtime
from fusionstream.consumers.report import percentiles
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.windows import Window, WindowConfig

#: Records handed to ``Pipeline.feed`` at a time at maximum rate (what one Kafka fetch brings).
FEED_CHUNK = 500


@dataclass
class StageResult:
    """Windows a stage turned into predictions, in how long, each window's latency, and the CPU time the
    stage's process spent on them (``cpu_seconds``, over the same span; ``cpu_windows`` when the CPU was
    counted over another number of windows than ``windows``)."""

    name: str
    windows: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None
    cpu_windows: int | None = None

    @property
    def cpu_ms_per_window(self) -> float | None:
        return ms_per_window(self.cpu_seconds, self.windows if self.cpu_windows is None else self.cpu_windows)

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "windows": self.windows,
            "seconds": round(self.seconds, 3),
            "windows_per_s": round(self.windows_per_s, 1),
        }
        if self.cpu_seconds is not None:
            out["cpu_ms_per_window"] = self.cpu_ms_per_window
        if self.latencies_ms:
            out["latency_ms"] = percentiles(self.latencies_ms)
        return out | self.extra


def _batches(windows: Sequence[Window], size: int) -> list[Sequence[Window]]:
    return [windows[i : i + size] for i in range(0, len(windows), size)]


def engine_stage(
    runtime: Runtime, windows: Sequence[Window], batch_sizes: Sequence[int], *, repeats: int = 2
) -> StageResult:
    """Encoders + fusion head alone on already aligned, decoded windows, at the best batch size.

    The model does the same work per window as in the pipeline (each frame and caption
    embedded once, fresh caches per pass), so the pipeline's ratio to this is the cost of
    the streaming machinery alone. Each batch size gets ``repeats`` passes; the best counts,
    with the process's CPU time over that pass (ONNX Runtime's threads included).
    """
    best: StageResult | None = None
    tried: dict[str, float] = {}
    run_engine(runtime, windows[: max(batch_sizes)], max(batch_sizes))  # warm-up: sessions, caches, cv2
    for size in batch_sizes:
        for _ in range(repeats):
            runtime.graph_seconds.clear()
            seconds, cpu = run_engine(runtime, windows, size)
            result = StageResult("engine", len(windows), seconds, cpu_seconds=cpu)
            if best is None or result.windows_per_s > best.windows_per_s:
                best = result
                best.extra["batch_size"] = size
                best.extra["graph_share"] = graph_shares(runtime.graph_seconds, result.seconds)
            tried[str(size)] = max(tried.get(str(size), 0.0), round(result.windows_per_s, 1))
    assert best is not None
    best.extra["by_batch_size"] = tried
    return best


def graph_shares(graph_seconds: dict[str, float], total_s: float) -> dict[str, float]:
    """Each graph's share of the engine's time, and ``other`` (featurising, caches, Python): which
    encoder to shrink when the engine is the bottleneck."""
    shares = {graph: round(seconds / total_s, 3) for graph, seconds in sorted(graph_seconds.items())}
    shares["other"] = round(max(0.0, 1 - sum(graph_seconds.values()) / total_s), 3)
    return shares


def run_engine(runtime: Runtime, windows: Sequence[Window], size: int) -> tuple[float, float]:
    """Wall and process CPU seconds of one pass over ``windows``."""
    embed = Embedder(runtime)
    started, cpu = time.perf_counter(), time.process_time()
    for batch in _batches(windows, size):
        runtime.fuse(*embed(batch))
    return time.perf_counter() - started, time.process_time() - cpu


@dataclass
class _Prepared:
    """One batch's encoder inputs, prepared beforehand: per present modality, its rows and feed."""

    size: int
    mask: np.ndarray
    feeds: list[tuple[str, list[int], dict[str, np.ndarray], int]]  # modality, rows, feed, frames per row


def _prepare(runtime: Runtime, embed: Embedder, windows: Sequence[Window]) -> _Prepared:
    prepare = embed.prepare
    feeds = []
    for name in runtime.modalities:
        rows = [i for i, w in enumerate(windows) if w.mask[embed.columns[name]]]
        if not rows:
            continue
        present = [windows[i] for i in rows]
        if name == "video":
            assert prepare.video is not None
            pixels = np.stack([prepare.video.window(w.frames) for w in present])  # [B, frames, ...one frame]
            per_row = pixels.shape[1] if runtime.embeds_frames else 1
            if runtime.embeds_frames:  # a per-frame graph: every frame of every window, then the mean
                pixels = pixels.reshape(-1, *pixels.shape[2:])
            feeds.append((name, rows, prepare.video_feed(pixels), per_row))
        elif name == "audio":
            feeds.append((name, rows, prepare.audio_feed(np.stack([w.audio for w in present])), 1))
        else:
            feeds.append((name, rows, prepare.text_feed([w.transcript for w in present]), 1))
    return _Prepared(len(windows), embed.mask(windows), feeds)


def _infer(runtime: Runtime, batch: _Prepared) -> np.ndarray:
    embeddings = {name: np.zeros((batch.size, runtime.sizes[name]), np.float32) for name in runtime.modalities}
    for name, rows, feed, per_row in batch.feeds:
        out = runtime.encode(name, feed)
        embeddings[name][rows] = out.reshape(len(rows), per_row, -1).mean(axis=1) if per_row > 1 else out
    return runtime.fuse(embeddings, batch.mask)


def engine_without_reuse(runtime: Runtime, windows: Sequence[Window], size: int) -> StageResult:
    """The model on whole windows (every frame of every window encoded), inputs prepared beforehand:
    the usual way to time a model, for comparison with the reuse above."""
    embed = Embedder(runtime, reuse=False)
    batches = [_prepare(runtime, embed, batch) for batch in _batches(windows, size)]
    _infer(runtime, batches[0])
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        _infer(runtime, batch)
    return StageResult("engine_no_reuse", len(windows), time.perf_counter() - started, extra={"batch_size": size},
                       cpu_seconds=time.process_time() - cpu)


def pipeline_stage(
    runtime: Runtime, workload: Workload, config: WindowConfig, *, max_batch: int, decode_workers: int,
    speculate: bool = True,
) -> StageResult:
    """The embedded pipeline (wire decode, media decode, aligner, micro-batcher, engine thread) fed
    the workload's wire bytes as fast as it takes them."""
    return asyncio.run(_pipeline(Runner(runtime), workload, config, max_batch, decode_workers, speculate))


async def _pipeline(
    runner: Runner, workload: Workload, config: WindowConfig, max_batch: int, decode_workers: int, speculate: bool,
) -> StageResult:
    latencies: list[float] = []
    async with Pipeline(
        runner, config, max_batch=max_batch, decode_workers=decode_workers, speculate=speculate
    ) as pipeline:

        async def collect() -> None:
            async for prediction in pipeline.predictions():
                latencies.append(prediction.latency_ms)

        collector = asyncio.create_task(collect())
        started, cpu = time.perf_counter(), time.process_time()
        dead = 0
        for chunk in chunks(workload.encoded, FEED_CHUNK):
            dead += len(await pipeline.feed(chunk))
        await pipeline.flush()
        await pipeline.drain()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await pipeline.close_output()
        await collector
    stats = runner.embed.stats
    extra = {"dead_letters": dead, "frames_saved": round(stats.frames_saved, 3), "max_batch": max_batch}
    return StageResult("pipeline", len(latencies), seconds, latencies, extra, cpu_seconds=cpu)


def intake_stage(workload: Workload, config: WindowConfig, frame_side: int) -> StageResult:
    """The pipeline's input work alone, on one thread, no model: wire decode, media checks, alignment,
    and the decode of the frames each closed window samples, in the chunks ``pipeline`` is fed.

    Its windows/s is the most one process's intake can hand an engine (the bound of a ``serve``
    process on a GPU server); ``cpu_ms_per_window`` is what the streaming machinery costs beside
    the model on any machine. ``frame_side``: the model's input side (``Runtime.frame_side``), which
    sampled frames are decoded no larger than.
    """
    aligner = Aligner(config)
    windows = dead = 0
    # As a running pipeline does (``Pipeline.__aenter__``): the objects alive before it (torch, the runtimes,
    # the workload) are left out of every collection. Without it, one full collection walking them cost
    # this stage 75 ms, 2.5 ms a window on a 36-window workload against 0.33 without it.
    gc.freeze()
    try:
        started, cpu = time.perf_counter(), time.thread_time()
        for chunk in chunks(workload.encoded, FEED_CHUNK):
            now = time.time_ns()
            for item in decode_records(chunk):
                if isinstance(item, DeadLetter) or aligner.add(item, now).late:
                    dead += 1
            windows += len(decode_sampled_frames(aligner.poll(now), frame_side))
        windows += len(decode_sampled_frames(aligner.flush(), frame_side))
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    finally:
        gc.unfreeze()
    # This thread's CPU time only: the stage is one thread, and the process's idle pools are no part of it.
    return StageResult("intake", windows, seconds, extra={"dead_letters": dead}, cpu_seconds=cpu)


def naive_stage(runtime: Runtime, workload: Workload, config: WindowConfig, streams: int) -> StageResult:
    """What the classic tutorial does: decode every record, then per window (one at a time, batch 1)
    prepare all inputs and run the PyTorch model eagerly (``runtime``: the torch backend), every
    encoder on every window.

    Runs on the first ``streams`` streams of the workload only: it is slow.
    """
    from fusionstream.stream import wire
    from fusionstream.stream.media import decode_media

    keep = set(workload.stream_ids()[:streams])
    values = [v for v, r in zip(workload.encoded, workload.records, strict=True) if r.stream_id in keep]
    latencies: list[float] = []

    def predict(window: Window) -> None:
        started = time.perf_counter()
        runtime.fuse(*Embedder(runtime, reuse=False)([window])).argmax(axis=1)  # nothing kept between windows
        latencies.append((time.perf_counter() - started) * 1e3)

    aligner = Aligner(config)
    started, cpu = time.perf_counter(), time.process_time()
    for value in values:
        aligner.add(decode_media(wire.decode(value)), 0)
        for window in aligner.poll(0):
            predict(window)
    for window in aligner.flush():
        predict(window)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return StageResult("naive", len(latencies), seconds, latencies, {"streams": streams, "backend": runtime.name},
                       cpu_seconds=cpu)
