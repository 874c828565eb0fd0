"""``fusionstream bench`` on a format-2 model directory (docs/model-format.md), on ONNX Runtime.

The stages that do not depend on fusionstream's own architecture run as for format 1, on the same
synthetic workload cut to the modalities the model declares (the pipeline ignores the others):
``engine`` (encoders + fusion head alone, reusing frames and transcripts, best batch size),
``intake``, ``pipeline``, ``kafka`` with a broker, and the real-time search. ``naive`` (PyTorch
eager on the format-1 architecture), ``engine_no_reuse`` and ``engine_int8`` are format-1 stages
and are left out, with a note in the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.common import best_of, broker_available, machine, ratio, realtime_search
from fusionstream.consumers.bench.stages import FEED_CHUNK, StageResult, graph_shares, intake_stage
from fusionstream.consumers.bench.workload import Workload, chunks
from fusionstream.consumers.engine import model_title, open_manifest_engine
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.manifest_embed import ManifestEmbedder
from fusionstream.consumers.pipeline.manifest_runner import ManifestRunner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends.manifest_onnx import ManifestRuntime
from fusionstream.stream.windows import Window, WindowConfig

#: Format-1 stages a format-2 model has no counterpart for.
SKIPPED = {
    "naive": "PyTorch eager on fusionstream's own architecture (format 1 only)",
    "engine_no_reuse": "format 1 only",
    "engine_int8": "int8 graphs come from `fusionstream quantize` (format 1 only)",
}


def declared_workload(workload: Workload, modalities: Sequence[str]) -> Workload:
    """The workload without the records of modalities the model does not use (the pipeline ignores them)."""
    kept = tuple(record for record in workload.records if record.modality.label in modalities)
    return dataclasses.replace(workload, records=kept)


def engine_stage(runtime: ManifestRuntime, windows: Sequence[Window], batch_sizes: Sequence[int], *,
                 repeats: int = 2) -> StageResult:
    """Encoders + fusion head alone on aligned, decoded windows (fresh caches per pass), at the best batch size."""
    best: StageResult | None = None
    tried: dict[str, float] = {}
    _run_engine(runtime, windows[: max(batch_sizes)], max(batch_sizes))  # warm-up
    for size in batch_sizes:
        for _ in range(repeats):
            runtime.graph_seconds.clear()
            result = StageResult("engine", len(windows), _run_engine(runtime, windows, size))
            if best is None or result.windows_per_s > best.windows_per_s:
                best = result
                best.extra["batch_size"] = size
                best.extra["graph_share"] = graph_shares(runtime.graph_seconds, result.seconds)
            tried[str(size)] = max(tried.get(str(size), 0.0), round(result.windows_per_s, 1))
    assert best is not None
    best.extra["by_batch_size"] = tried
    return best


def _run_engine(runtime: ManifestRuntime, windows: Sequence[Window], size: int) -> float:
    embed = ManifestEmbedder(runtime)
    started = time.perf_counter()
    for i in range(0, len(windows), size):
        runtime.fuse(*embed(windows[i : i + size]))
    return time.perf_counter() - started


def pipeline_stage(runtime: ManifestRuntime, workload: Workload, config: WindowConfig, *, max_batch: int,
                   decode_workers: int, speculate: bool = True) -> StageResult:
    """The embedded pipeline fed the workload's wire bytes as fast as it takes them."""
    return asyncio.run(_pipeline(ManifestRunner(runtime), workload, config, max_batch, decode_workers, speculate))


async def _pipeline(runner: ManifestRunner, workload: Workload, config: WindowConfig, max_batch: int,
                    decode_workers: int, speculate: bool) -> StageResult:
    latencies: list[float] = []
    async with Pipeline(runner, config, max_batch=max_batch, decode_workers=decode_workers,
                        speculate=speculate) as pipeline:

        async def collect() -> None:
            async for prediction in pipeline.predictions():
                latencies.append(prediction.latency_ms)

        collector = asyncio.create_task(collect())
        started = time.perf_counter()
        dead = 0
        for chunk in chunks(workload.encoded, FEED_CHUNK):
            dead += len(await pipeline.feed(chunk))
        await pipeline.flush()
        await pipeline.drain()
        seconds = time.perf_counter() - started
        await pipeline.close_output()
        await collector
    stats = runner.embed.stats
    extra = {"dead_letters": dead, "frames_saved": round(stats.frames_saved, 3), "max_batch": max_batch}
    return StageResult("pipeline", len(latencies), seconds, latencies, extra)


def run_manifest_bench(settings: Settings, options: Any, console: Console) -> dict[str, Any]:
    """``run_bench`` for a format-2 directory: the stages above, the same report layout."""
    frame_size = "x".join(map(str, options.frame_size))
    stages: dict[str, StageResult] = {}
    with open_manifest_engine(settings) as (runner, manifest):
        runtime = runner.runtime
        config = settings.model_window_config(manifest)
        report: dict[str, Any] = {
            "machine": machine(),
            "model": {"dir": str(settings.model_dir), "version": manifest.version, "format": 2,
                      "task": runner.task.kind, "modalities": list(runner.modalities),
                      "fusion": manifest.fusion.method if manifest.fusion else None},
            "backend": settings.backend,
            "workload": {"streams": options.streams, "seconds": options.seconds, "window_ms": settings.window_ms,
                         "hop_ms": settings.hop_ms, "fps": 15, "sample_rate": config.sample_rate,
                         "frame_size": frame_size},
            "skipped": SKIPPED,
        }

        def done(result: StageResult) -> None:
            stages[result.name] = result
            line = f"  {result.name:<16} {result.windows_per_s:8.1f} windows/s"
            if result.latencies_ms:
                p = result.summary()["latency_ms"]
                line += f"   latency p50 {p['p50']:.1f} ms  p99 {p['p99']:.1f} ms"
            console.print(line)

        with console.status("making the synthetic workload"):
            full = Workload.synthetic(options.streams, options.seconds, options.seed, options.frame_size)
            workload = declared_workload(full, runner.modalities)
            windows = workload.windows(config, runtime.frame_side)
            _ = workload.encoded
        console.print(
            f"[bold]fusionstream bench[/]: {options.streams} streams x {options.seconds:g} s = {len(windows)} windows, "
            f"{len(workload.records)} records of {', '.join(runner.modalities)}, {frame_size} frames; "
            f"model {model_title(manifest)} (format 2, {runner.task.kind}) on {settings.backend}"
        )

        def make_runner() -> ManifestRunner:
            return ManifestRunner(runtime)

        with console.status("engine: the model alone, per batch size"):
            sweep = engine_stage(runtime, windows, options.batch_sizes)
        best_batch = int(sweep.extra["batch_size"])
        console.print(f"  batch sizes (windows/s): {sweep.extra['by_batch_size']}; using {best_batch}")
        kafka_settings = settings.model_copy(update={"max_batch": best_batch})
        broker = options.kafka and broker_available(kafka_settings, console)
        rounds: dict[str, list[StageResult]] = {}
        shim = SimpleNamespace(image_size=runtime.frame_side)  # what intake_stage reads of a spec
        for turn in range(1, options.rounds + 1):
            label = f"round {turn}/{options.rounds}"
            with console.status(f"{label}: engine (the model alone, batch {best_batch})"):
                rounds.setdefault("engine", []).append(engine_stage(runtime, windows, (best_batch,), repeats=1))
            with console.status(f"{label}: intake (the pipeline's input work alone, one thread, no model)"):
                rounds.setdefault("intake", []).append(intake_stage(workload, config, shim))  # type: ignore[arg-type]
            with console.status(f"{label}: pipeline (the embedded pipeline at maximum rate)"):
                rounds.setdefault("pipeline", []).append(pipeline_stage(
                    runtime, workload, config, max_batch=best_batch, decode_workers=settings.decode_workers,
                    speculate=settings.speculate,
                ))
            if broker:
                from fusionstream.consumers.bench.kafka_stage import kafka_max_rate

                with console.status(f"{label}: kafka (the service consuming the local broker at maximum rate)"):
                    rounds.setdefault("kafka", []).append(
                        kafka_max_rate(make_runner, manifest, kafka_settings, workload)  # type: ignore[arg-type]
                    )
        for name in ("engine", "intake", "pipeline", "kafka"):
            if name in rounds:
                done(best_of(rounds[name]))
        stages["engine"].extra["by_batch_size"] = sweep.extra["by_batch_size"]
        if options.realtime:
            report |= realtime_search(options, workload, config, make_runner, best_batch, settings,  # type: ignore[arg-type]
                                console, kafka_settings if broker else None, manifest)  # type: ignore[arg-type]

    rate = {name: round(result.windows_per_s, 1) for name, result in stages.items()}
    ratios = {"pipeline/engine": ratio(rate["pipeline"], rate["engine"]),
              "intake/engine": ratio(rate["intake"], rate["engine"])}
    if "kafka" in rate:
        ratios["kafka/engine"] = ratio(rate["kafka"], rate["engine"])
    report["windows_per_s"] = rate
    report["latency_ms"] = {name: r.summary()["latency_ms"] for name, r in stages.items() if r.latencies_ms}
    report["ratios"] = ratios
    report["stages"] = {name: result.summary() for name, result in stages.items()}
    report.setdefault("max_realtime_streams", None)
    return report
