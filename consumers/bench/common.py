"""Helpers every ``fusionstream bench`` run shares, whatever the model's format: the machine, ratios,
the best of rounds, the broker probe, the real-time search."""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.realtime import Trial, realtime_trial, search_max_streams, trial_line
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
        # The cores this process may run on (taskset, a container's cpuset), as `serve --workers auto` counts
        # them: a bench pinned to one core of a 2-core box measured one core, and said 2.
        "cores": len(os.sched_getaffinity(0)),
        "host_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def best_of(results: list[StageResult]) -> StageResult:
    """The round with the most windows/s, and the least CPU time per window of any round: each the least
    disturbed by whatever else the machine ran (another process can slow a stage down, or make it spend
    more CPU time on the same work, through contention and cache misses, never less)."""
    best = max(results, key=lambda r: r.windows_per_s)
    best.extra["rounds_windows_per_s"] = [round(r.windows_per_s, 1) for r in results]
    counted = [r for r in results if r.cpu_ms_per_window is not None]
    if counted:
        best.extra["rounds_cpu_ms_per_window"] = [r.cpu_ms_per_window for r in results]
        least = min(counted, key=lambda r: r.cpu_ms_per_window or 0.0)
        best.cpu_seconds, best.cpu_windows = least.cpu_seconds, least.cpu_windows or least.windows
        if "broker_cpu_ms_per_window" in least.extra:  # the broker's over the same span as the service's
            best.extra["broker_cpu_ms_per_window"] = least.extra["broker_cpu_ms_per_window"]
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
    """The most live streams sustained, delivered as ``options.delivery`` says, revisions as
    ``options.revisions`` (None: the settings'): through the service and the broker when one answers
    (latency = window close → prediction acknowledged, the figure the half-load stage reports), else
    through the embedded pipeline (close → prediction). Each trial also has window end → first and
    → final prediction."""
    revisions = settings.revisions if options.revisions is None else options.revisions
    if kafka_settings is None and revisions != settings.revisions:
        config = settings.model_copy(update={"revisions": revisions}).model_window_config(spec)

    def trial(streams: int) -> Trial:
        where = "through the broker" if kafka_settings is not None else "embedded"
        with console.status(f"real time: {streams} live streams for {options.trial_seconds:g} s, {where}"):
            if kafka_settings is not None:
                from fusionstream.consumers.bench.kafka_stage import kafka_realtime

                return kafka_realtime(
                    make_runner, spec, kafka_settings, workload, streams, seconds=options.trial_seconds,
                    warmup_s=options.warmup_s, bound_ms=options.bound_ms, delivery=options.delivery,
                    revisions=revisions,
                )[1]
            return realtime_trial(
                make_runner, workload, config, streams, seconds=options.trial_seconds, warmup_s=options.warmup_s,
                bound_ms=options.bound_ms, max_batch=max_batch, decode_workers=settings.decode_workers,
                speculate=settings.speculate, delivery=options.delivery,
            )

    def show(t: Trial) -> None:
        console.print(f"  {t.streams:4d} live streams: {trial_line(t)}")

    best, trials = search_max_streams(trial, start=options.start_streams, limit=options.max_streams, progress=show,
                                      attempts=options.trial_attempts)
    return {
        "max_realtime_streams": best,
        "realtime": {"through": "kafka" if kafka_settings is not None else "pipeline", "bound_ms": options.bound_ms,
                     "trial_seconds": options.trial_seconds, "trial_attempts": options.trial_attempts,
                     "delivery": options.delivery.describe(), "revisions": revisions,
                     "trials": [t.summary() for t in trials]},
    }
