"""``fusionstream bench``: every stage on the same input and model, in one process, side by side.

Ratios are what the benchmark is for: each is two stages measured minutes apart on the same
machine, so the machine's speed mostly cancels out. Any model directory (either format, any
task) runs every stage through ``open_runtime``, on the synthetic workload cut to the modalities the
model declares (the pipeline ignores the others). A stage that cannot run here (``naive`` without
the torch backend for this model, ``engine_int8`` without int8 graphs) is left out, with the reason
under ``skipped`` in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.common import best_of, broker_available, machine, ratio, realtime_search
from fusionstream.consumers.bench.cpu import efficiency, find_broker
from fusionstream.consumers.bench.delivery import REALISTIC, DeliveryProfile
from fusionstream.consumers.bench.stages import (
    StageResult,
    engine_stage,
    engine_without_reuse,
    intake_stage,
    naive_stage,
    pipeline_stage,
)
from fusionstream.consumers.bench.workload import DEFAULT_FRAME_SIZE, Workload
from fusionstream.consumers.engine import (
    backend_options,
    effective_precision,
    engine_title,
    model_title,
    service_options,
)
from fusionstream.consumers.pipeline.runner import Runner, Runtime
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.errors import EngineError

#: Told a stage's name and why it is left out.
Skip = Callable[[str, str], None]


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
    #: How the live trials deliver their records (docs/performance.md); revisions in them (None: the settings').
    delivery: DeliveryProfile = REALISTIC
    revisions: bool | None = None
    #: Only live trials at this many streams through the broker, revisions off then on (``--live-streams``).
    live_streams: int | None = None
    #: Worker counts the Kafka stage and the real-time search also run through (``--workers``: a tuple or
    #: "auto"); with them, ``live_streams`` is one live trial per count instead of the search.
    workers: tuple[int, ...] | str | None = None


def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run every stage and return the report (figures, ratios, trials)."""
    options_of_backend = backend_options(settings)
    frame_size = "x".join(map(str, options.frame_size))
    stages: dict[str, StageResult] = {}
    skipped: dict[str, str] = {}

    def done(result: StageResult) -> None:
        stages[result.name] = result
        line = f"  {result.name:<16} {result.windows_per_s:8.1f} windows/s"
        if result.cpu_ms_per_window is not None:
            line += f"   {result.cpu_ms_per_window:6.2f} CPU ms/window"
        if result.extra.get("broker_cpu_ms_per_window") is not None:
            line += f" (+ broker {result.extra['broker_cpu_ms_per_window']:.2f})"
        if result.latencies_ms:
            p = result.summary()["latency_ms"]
            line += f"   latency p50 {p['p50']:.1f} ms  p99 {p['p99']:.1f} ms"
        console.print(line)

    def skip(name: str, reason: str) -> None:
        skipped[name] = reason
        console.print(f"  {name:<16} [yellow]skipped[/]: {reason}")

    runtime: Runtime
    with open_runtime(settings.backend, settings.model_dir, **options_of_backend) as runtime, \
            ExitStack() as int8_scope, ExitStack() as service_scope:
        manifest = runtime.manifest
        config = settings.model_window_config(manifest)
        report: dict[str, Any] = {
            "machine": machine(),
            "model": {"dir": str(settings.model_dir), "version": manifest.version, "format": manifest.source_format,
                      "task": runtime.task.kind, "modalities": list(runtime.modalities),
                      "fusion": runtime.fusion.method},
            "backend": settings.backend,
            "precision": effective_precision(settings),
            "backend_options": {k: str(v) for k, v in options_of_backend.items()},
            "workload": {"streams": options.streams, "seconds": options.seconds,
                         "window_ms": config.window_ns // 1_000_000, "hop_ms": config.hop_ns // 1_000_000,
                         "fps": 15, "sample_rate": config.sample_rate,
                         "frame_size": frame_size},
        }
        with console.status("making the synthetic workload"):
            full = Workload.synthetic(options.streams, options.seconds, options.seed, options.frame_size)
            workload = full.declared(runtime.modalities)
            windows = workload.windows(config, runtime.frame_side)
            _ = workload.encoded
        console.print(
            f"[bold]fusionstream bench[/]: {options.streams} streams x {options.seconds:g} s = {len(windows)} windows, "
            f"{len(workload.records)} records of {', '.join(runtime.modalities)}, {frame_size} frames; "
            f"model {model_title(manifest)} (format {manifest.source_format}, {runtime.task.kind}) "
            f"on {engine_title(settings)}"
        )

        # The stages with a pipeline beside the engine run it with the service's engine threads (one core
        # left to the pipeline's Python thread); the engine alone has every core.
        options_of_service = service_options(settings)
        served = runtime if options_of_service == options_of_backend else service_scope.enter_context(
            open_runtime(settings.backend, settings.model_dir, **options_of_service))
        report["service_backend_options"] = {k: str(v) for k, v in options_of_service.items()}

        def make_runner() -> Runner:
            return Runner(served)

        with console.status("engine: the model alone, per batch size"):
            sweep = engine_stage(runtime, windows, options.batch_sizes)
        best_batch = int(sweep.extra["batch_size"])
        console.print(f"  batch sizes (windows/s): {sweep.extra['by_batch_size']}; using {best_batch}")
        kafka_settings = settings.model_copy(update={"max_batch": best_batch})
        broker = options.kafka and broker_available(kafka_settings, console)
        int8_runtime = _int8_runtime(settings, options, options_of_backend, int8_scope, skip)
        # The stages take turns, round after round, and each keeps its best round: a machine that
        # is busier during one stage's turn then distorts no ratio (the best of each is the least
        # disturbed), which one long measurement per stage could not promise.
        rounds: dict[str, list[StageResult]] = {}
        for turn in range(1, options.rounds + 1):
            label = f"round {turn}/{options.rounds}"
            turns = [("engine", runtime)]
            if int8_runtime is not None:
                # fp32 and int8 in the order A B B A, so a machine speeding up or slowing down
                # during the turn favours neither; both before the pipeline and kafka stages,
                # whose threads and broker flushes may still be winding down after them.
                turns = [("engine", runtime), ("engine_int8", int8_runtime), ("engine_int8", int8_runtime),
                         ("engine", runtime)]
            for name, engine in turns:
                with console.status(f"{label}: {name} (the model alone, batch {best_batch})"):
                    result = engine_stage(engine, windows, (best_batch,), repeats=1)
                result.name = name
                rounds.setdefault(name, []).append(result)
            with console.status(f"{label}: intake (the pipeline's input work alone, one thread, no model)"):
                rounds.setdefault("intake", []).append(intake_stage(workload, config, runtime.frame_side))
            with console.status(f"{label}: pipeline (the embedded pipeline at maximum rate)"):
                rounds.setdefault("pipeline", []).append(pipeline_stage(
                    served, workload, config, max_batch=best_batch, decode_workers=settings.decode_workers,
                    speculate=settings.speculate,
                ))
            if broker:
                from fusionstream.consumers.bench.kafka_stage import kafka_max_rate

                with console.status(f"{label}: kafka (the service consuming the local broker at maximum rate)"):
                    rounds.setdefault("kafka", []).append(
                        kafka_max_rate(make_runner, manifest, kafka_settings, workload)
                    )
        int8_scope.close()  # its sessions are not needed past the rounds
        for name in ("engine", "intake", "pipeline", "kafka", "engine_int8"):
            if name in rounds:
                done(best_of(rounds[name]))
        stages["engine"].extra["by_batch_size"] = sweep.extra["by_batch_size"]
        with console.status("engine without reuse"):
            done(engine_without_reuse(runtime, windows, best_batch))
        with console.status("naive: one window at a time, PyTorch eager, no batching, no reuse"):
            naive = _naive(settings.model_dir, workload, config, options.naive_streams, skip)
        if naive is not None:
            done(naive)
        if broker and options.workers:
            from fusionstream.consumers.bench.workers import worker_scaling

            # The engine's figure as the report gives it (to 0.1), so that its ratios are those of its figures.
            report["workers"] = worker_scaling(kafka_settings, manifest, workload, options.workers, options,
                                               round(stages["engine"].windows_per_s, 1), console)
        elif options.workers and (options.realtime or options.live_streams):
            # No broker: the search (or the one live trial) through W embedded pipeline processes instead.
            from fusionstream.consumers.bench.embedded_workers import embedded_scaling

            report["workers"] = embedded_scaling(kafka_settings, workload, config, options.workers, options,
                                                 best_batch, console)
        elif options.workers:
            skip("workers", f"no broker at {kafka_settings.bootstrap_servers}, and no real-time search to run "
                            "through pipeline processes instead (--no-realtime)")
        # Through workers, the real-time search ran per worker count above, in place of this one.
        if options.realtime and not options.workers:
            report |= realtime_search(options, workload, config, make_runner, best_batch, settings, console,
                                      kafka_settings if broker else None, manifest)
            if broker and report["max_realtime_streams"] >= 2:
                from fusionstream.consumers.bench.kafka_stage import kafka_realtime

                half = report["max_realtime_streams"] // 2
                with console.status(f"kafka at half the maximum load: {half} live streams"):
                    result, trial = kafka_realtime(make_runner, manifest, kafka_settings, workload, half,
                                                   seconds=options.trial_seconds, warmup_s=options.warmup_s,
                                                   bound_ms=options.bound_ms, delivery=options.delivery,
                                                   revisions=options.revisions)
                done(result)
                report["half_load"] = {"streams": half, "close_to_ack_ms": result.summary().get("latency_ms"),
                                       "end_to_first_ms": trial.end_to_first_ms,
                                       "end_to_final_ms": trial.end_to_final_ms, "trial": trial.summary()}

    rate = {name: round(result.windows_per_s, 1) for name, result in stages.items()}
    ratios = {"pipeline/engine": ratio(rate["pipeline"], rate["engine"])}
    if "naive" in rate:
        ratios["pipeline/naive"] = ratio(rate["pipeline"], rate["naive"])
    ratios["engine/engine_no_reuse"] = ratio(rate["engine"], rate["engine_no_reuse"])
    if "kafka" in rate:
        ratios["kafka/engine"] = ratio(rate["kafka"], rate["engine"])
    # Below 1, one process's input work cannot keep the engine busy: more serve replicas can.
    ratios["intake/engine"] = ratio(rate["intake"], rate["engine"])
    if "workers" in report and "ratios" in report["workers"]:
        ratios |= report["workers"]["ratios"]
    if "engine_int8" in rate:
        ratios["engine_int8/engine"] = ratio(rate["engine_int8"], rate["engine"])
    # What each stage's own process spent per window, whatever else the machine ran meanwhile; the broker
    # (another process, on this machine only in a test setup) apart. Efficiency: engine / service.
    cpu = {name: result.cpu_ms_per_window for name, result in stages.items() if result.cpu_ms_per_window is not None}
    report["cpu_ms_per_window"] = cpu
    if "kafka" in stages:
        report["broker_cpu_ms_per_window"] = stages["kafka"].extra.get("broker_cpu_ms_per_window")
        report["broker"] = find_broker(kafka_settings.bootstrap_servers).describe()
        report["efficiency"] = ratios["efficiency"] = efficiency(cpu.get("engine"), cpu.get("kafka"))
        console.print(_cpu_line(cpu, report["broker_cpu_ms_per_window"], report["broker"], report["efficiency"]))
    report["windows_per_s"] = rate
    report["latency_ms"] = {
        name: result.summary()["latency_ms"] for name, result in stages.items() if result.latencies_ms
    }
    report["ratios"] = ratios
    report["stages"] = {name: result.summary() for name, result in stages.items()}
    report["skipped"] = skipped
    report.setdefault("max_realtime_streams", None)
    return report


def _cpu_line(cpu: dict[str, float], broker_ms: float | None, where: dict[str, Any], ratio_: float | None) -> str:
    broker = f"unknown ({where.get('why_unknown', 'not measured')})" if broker_ms is None else f"{broker_ms:.2f}"
    return (f"  CPU ms per window: engine {cpu.get('engine')}, kafka service {cpu.get('kafka')}, broker {broker}; "
            f"efficiency (engine / kafka service) {ratio_} (target >= 0.75)")


def _int8_runtime(settings: Settings, options: BenchOptions, options_of_backend: dict[str, Any], scope: ExitStack,
                  skip: Skip) -> Runtime | None:
    """The model with its int8 encoders on onnxruntime (the backend that runs them), or ``None`` with the reason."""
    if not options.int8:
        return None
    if settings.backend != "onnxruntime" or settings.precision == "int8":
        skip("engine_int8", f"compares int8 with fp32 on onnxruntime; this run is {settings.backend} "
                            f"in {settings.precision}")
        return None
    try:
        return scope.enter_context(open_runtime("onnxruntime", settings.model_dir,
                                                **(options_of_backend | {"precision": "int8"})))
    except EngineError as exc:  # no int8 graphs (`fusionstream quantize` writes them), named by the runtime
        skip("engine_int8", str(exc))
        return None


def _naive(model_dir: Path, workload: Workload, config: Any, streams: int, skip: Skip) -> StageResult | None:
    """The naive stage on the torch backend (PyTorch eager on CPU), or ``None`` with the reason."""
    try:
        torch_runtime = open_runtime("torch", model_dir).activate()
    except EngineError as exc:  # the torch backend cannot run this model here: say so, run the rest
        skip("naive", str(exc))
        return None
    try:
        return naive_stage(torch_runtime, workload, config, streams)
    finally:
        torch_runtime.release()
