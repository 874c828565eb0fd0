"""Helpers every ``fusionstream bench`` run shares, whatever the model's format: the machine, ratios,
the best of rounds, the broker probe, the real-time search."""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.realtime import Trial, realtime_trial, search_max_streams
from fusionstream.consumers.bench.stages import StageResult
from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.manifest import Manifest


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import onnxruntime
    import torch  # the naive stage needs it anyway

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def best_of(results: list[StageResult]) -> StageResult:
    best = max(results, key=lambda r: r.windows_per_s)
    best.extra["rounds_windows_per_s"] = [round(r.windows_per_s, 1) for r in results]
    return best


def broker_available(settings: Settings, console: Console) -> bool:
    from fusionstream.consumers.bench.kafka_stage import broker_reachable

    if asyncio.run(broker_reachable(settings)):
        return True
    console.print(f"[yellow]no broker at {settings.bootstrap_servers}: skipping the kafka stages[/] "
                  "(start one with `make kafka-start`, or pass --bootstrap)")
    return False


def realtime_search(
    options: Any,
    workload: Workload,
    config: Any,
    make_runner: Callable[[], Runner],
    max_batch: int,
    settings: Settings,
    console: Console,
    kafka_settings: Settings | None,
    spec: Manifest,
) -> dict[str, Any]:
    """The most live streams sustained: through the service and the broker when one answers (latency
    = window close → prediction acknowledged, the figure the half-load stage reports), else through
    the embedded pipeline (close → prediction)."""

    def trial(streams: int) -> Trial:
        where = "through the broker" if kafka_settings is not None else "embedded"
        with console.status(f"real time: {streams} live streams for {options.trial_seconds:g} s, {where}"):
            if kafka_settings is not None:
                from fusionstream.consumers.bench.kafka_stage import kafka_realtime

                return kafka_realtime(
                    make_runner, spec, kafka_settings, workload, streams, seconds=options.trial_seconds,
                    warmup_s=options.warmup_s, bound_ms=options.bound_ms,
                )[1]
            return realtime_trial(
                make_runner, workload, config, streams, seconds=options.trial_seconds, warmup_s=options.warmup_s,
                bound_ms=options.bound_ms, max_batch=max_batch, decode_workers=settings.decode_workers,
                speculate=settings.speculate,
            )

    def show(t: Trial) -> None:
        verdict = "[green]sustained[/]" if t.sustained else "[red]not sustained[/]"
        console.print(
            f"  {t.streams:4d} live streams: latency p99 {t.latency_ms['p99']:.1f} ms, intake lag p99 "
            f"{t.intake_lag_ms['p99']:.1f} ms, {t.predicted}/{t.expected} windows: {verdict}"
        )

    best, trials = search_max_streams(trial, start=options.start_streams, limit=options.max_streams, progress=show,
                                      attempts=options.trial_attempts)
    return {
        "max_realtime_streams": best,
        "realtime": {"through": "kafka" if kafka_settings is not None else "pipeline", "bound_ms": options.bound_ms,
                     "trial_seconds": options.trial_seconds, "trial_attempts": options.trial_attempts,
                     "trials": [t.summary() for t in trials]},
    }
