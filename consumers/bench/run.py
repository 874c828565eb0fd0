"""``fusionstream bench``: every stage on the same input and model, in one process, side by side.

Ratios are what the benchmark is for: each is two stages measured minutes apart on the same
machine, so the machine's speed mostly cancels out.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.common import best_of, broker_available, machine, ratio, realtime_search
from fusionstream.consumers.bench.stages import (
    StageResult,
    engine_stage,
    engine_without_reuse,
    intake_stage,
    naive_stage,
    pipeline_stage,
)
from fusionstream.consumers.bench.workload import DEFAULT_FRAME_SIZE, Workload
from fusionstream.consumers.engine import backend_options, model_format
from fusionstream.consumers.pipeline.runner import WindowRunner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import load_backend
from fusionstream.engines.spec import INT8, ModelSpec


@dataclass(frozen=True)
class BenchOptions:
    streams: int = 8
    seconds: float = 30.0
    seed: int = 0
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    naive_streams: int = 2
    kafka: bool = True
    realtime: bool = True
    trial_seconds: float = 20.0
    trial_attempts: int = 2
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    warmup_s: float = 2.0
    bound_ms: float = 100.0
    start_streams: int = 8
    max_streams: int = 512
    int8: bool = True
    rounds: int = 3


def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run every stage and return the report (figures, ratios, trials)."""
    if model_format(settings.model_dir) != 1:
        from fusionstream.consumers.bench.manifest_run import run_manifest_bench

        return run_manifest_bench(settings, options, console)
    spec = ModelSpec.load(settings.model_dir)
    config = settings.model_window_config(spec)
    options_of_backend = backend_options(settings)
    frame_size = "x".join(map(str, options.frame_size))
    stages: dict[str, StageResult] = {}
    report: dict[str, Any] = {
        "machine": machine(),
        "model": {"dir": str(settings.model_dir), "version": spec.version, "fusion": spec.fusion},
        "backend": settings.backend,
        "backend_options": {k: str(v) for k, v in options_of_backend.items()},
        "workload": {"streams": options.streams, "seconds": options.seconds, "window_ms": settings.window_ms,
                     "hop_ms": settings.hop_ms, "fps": 15, "sample_rate": spec.sample_rate,
                     "frame_size": frame_size},
    }

    def done(result: StageResult) -> None:
        stages[result.name] = result
        line = f"  {result.name:<16} {result.windows_per_s:8.1f} windows/s"
        if result.latencies_ms:
            p = result.summary()["latency_ms"]
            line += f"   latency p50 {p['p50']:.1f} ms  p99 {p['p99']:.1f} ms"
        console.print(line)

    with console.status("making the synthetic workload"):
        workload = Workload.synthetic(options.streams, options.seconds, options.seed, options.frame_size)
        windows = workload.windows(config, spec.image_size)
        _ = workload.encoded
    console.print(
        f"[bold]fusionstream bench[/]: {options.streams} streams x {options.seconds:g} s = {len(windows)} windows, "
        f"{len(workload.records)} records, {frame_size} frames; "
        f"model {spec.fusion} v{spec.version} on {settings.backend}"
    )
    with load_backend(settings.backend, settings.model_dir, **options_of_backend) as backend, ExitStack() as int8_scope:

        def make_runner() -> WindowRunner:
            return WindowRunner(backend, spec)

        with console.status("engine: the model alone, per batch size"):
            sweep = engine_stage(backend, spec, windows, options.batch_sizes)
        best_batch = int(sweep.extra["batch_size"])
        console.print(f"  batch sizes (windows/s): {sweep.extra['by_batch_size']}; using {best_batch}")
        kafka_settings = settings.model_copy(update={"max_batch": best_batch})
        broker = options.kafka and broker_available(kafka_settings, console)
        int8 = options.int8 and settings.backend == "onnxruntime" and settings.precision != "int8" and _has_int8(spec)
        int8_backend = (
            int8_scope.enter_context(
                load_backend("onnxruntime", settings.model_dir, **options_of_backend, precision="int8")
            )
            if int8 else None
        )
        # The stages take turns, round after round, and each keeps its best round: a machine that
        # is busier during one stage's turn then distorts no ratio (the best of each is the least
        # disturbed), which one long measurement per stage could not promise.
        rounds: dict[str, list[StageResult]] = {}
        for turn in range(1, options.rounds + 1):
            label = f"round {turn}/{options.rounds}"
            turns = [("engine", backend)]
            if int8_backend is not None:
                # fp32 and int8 in the order A B B A, so a machine speeding up or slowing down
                # during the turn favours neither; both before the pipeline and kafka stages,
                # whose threads and broker flushes may still be winding down after them.
                turns = [("engine", backend), ("engine_int8", int8_backend), ("engine_int8", int8_backend),
                         ("engine", backend)]
            for name, engine in turns:
                with console.status(f"{label}: {name} (the model alone, batch {best_batch})"):
                    result = engine_stage(engine, spec, windows, (best_batch,), repeats=1)
                result.name = name
                rounds.setdefault(name, []).append(result)
            with console.status(f"{label}: intake (the pipeline's input work alone, one thread, no model)"):
                rounds.setdefault("intake", []).append(intake_stage(workload, config, spec))
            with console.status(f"{label}: pipeline (the embedded pipeline at maximum rate)"):
                rounds.setdefault("pipeline", []).append(pipeline_stage(
                    backend, spec, workload, config, max_batch=best_batch, decode_workers=settings.decode_workers,
                    speculate=settings.speculate,
                ))
            if broker:
                from fusionstream.consumers.bench.kafka_stage import kafka_max_rate

                with console.status(f"{label}: kafka (the service consuming the local broker at maximum rate)"):
                    rounds.setdefault("kafka", []).append(kafka_max_rate(make_runner, spec, kafka_settings, workload))
        int8_scope.close()  # its sessions are not needed past the rounds
        for name in ("engine", "intake", "pipeline", "kafka", "engine_int8"):
            if name in rounds:
                done(best_of(rounds[name]))
        stages["engine"].extra["by_batch_size"] = sweep.extra["by_batch_size"]
        with console.status("engine without reuse"):
            done(engine_without_reuse(backend, spec, windows, best_batch))
        with console.status("naive: one window at a time, PyTorch eager, no batching, no reuse"):
            done(naive_stage(settings.model_dir, spec, workload, config, options.naive_streams))
        if options.realtime:
            report |= realtime_search(options, workload, config, make_runner, best_batch, settings, console,
                                      kafka_settings if broker else None, spec)
            if broker and report["max_realtime_streams"] >= 2:
                from fusionstream.consumers.bench.kafka_stage import kafka_realtime

                half = report["max_realtime_streams"] // 2
                with console.status(f"kafka at half the maximum load: {half} live streams"):
                    result, _ = kafka_realtime(make_runner, spec, kafka_settings, workload, half,
                                               seconds=options.trial_seconds, warmup_s=options.warmup_s,
                                               bound_ms=options.bound_ms)
                done(result)
                report["half_load"] = {"streams": half, "close_to_ack_ms": result.summary().get("latency_ms")}

    rate = {name: round(result.windows_per_s, 1) for name, result in stages.items()}
    ratios = {
        "pipeline/engine": ratio(rate["pipeline"], rate["engine"]),
        "pipeline/naive": ratio(rate["pipeline"], rate["naive"]),
        "engine/engine_no_reuse": ratio(rate["engine"], rate["engine_no_reuse"]),
    }
    if "kafka" in rate:
        ratios["kafka/engine"] = ratio(rate["kafka"], rate["engine"])
    if "intake" in rate:
        # Below 1, one process's input work cannot keep the engine busy: more serve replicas can.
        ratios["intake/engine"] = ratio(rate["intake"], rate["engine"])
    if "engine_int8" in rate:
        ratios["engine_int8/engine"] = ratio(rate["engine_int8"], rate["engine"])
    report["windows_per_s"] = rate
    report["latency_ms"] = {
        name: result.summary()["latency_ms"] for name, result in stages.items() if result.latencies_ms
    }
    report["ratios"] = ratios
    report["stages"] = {name: result.summary() for name, result in stages.items()}
    report.setdefault("max_realtime_streams", None)
    return report


def _has_int8(spec: ModelSpec) -> bool:
    return any(name.endswith(INT8) for name in spec.files)
