"""``fusionstream bench --workers``: how one host scales with several service processes.

For each worker count W the Kafka max-rate stage and the real-time search run again through W
processes of ``serve --workers`` (:mod:`fusionstream.consumers.bench.workers_run`): windows/s, the CPU
milliseconds per window of all the workers together (the broker's apart), the most live streams
sustained (or one live trial at ``--live-streams``), and ``kafka_w<W>/engine`` beside the engine stage.
``auto`` adds one worker at a time while the last one helped, up to the cores.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.common import ratio
from fusionstream.consumers.bench.realtime import Trial, search_max_streams, trial_line
from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.settings import Settings
from fusionstream.engines.manifest import Manifest

#: ``auto`` stops at the first count that adds less than this share of windows/s to the best so far: below
#: it, run-to-run noise on a shared machine is as large as the gain.
AUTO_GAIN = 0.05

#: Worker counts: an explicit list, or "auto" (decided as the runs go).
Counts = tuple[int, ...] | str


def parse_workers(text: str) -> Counts:
    """``N`` (1, 2, … N), ``A,B,C`` (those counts) or ``auto``; ValueError otherwise."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()}) if "," in text \
            else list(range(1, int(text) + 1))
    except ValueError:
        raise ValueError(f"not N, a list like 1,2,4, or auto: {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"worker counts must be at least 1: {text!r}")
    return tuple(counts)


#: Fewer windows than this through the workers make a rate that says more about starting them than serving.
FEW_WINDOWS = 200


def worker_scaling(settings: Settings, spec: Manifest, workload: Workload, counts: Counts, options: Any,
                   engine_windows_per_s: float, console: Console) -> dict[str, Any]:
    """Every worker count's figures, the ``kafka_w<W>/engine`` ratios and the best count."""
    from fusionstream.consumers.bench.workers_run import live_trial, max_rate

    cores = len(os.sched_getaffinity(0))
    most = cores if counts == "auto" else max(counts)  # type: ignore[arg-type]
    # Every count runs on the same partition count (comparable runs), enough for the most workers.
    partitions = max(settings.partitions, most)
    by_count: dict[int, dict[str, Any]] = {}
    best = 0
    for workers in (range(1, cores + 1) if counts == "auto" else counts):
        with console.status(f"kafka through {workers} worker process{'es' if workers > 1 else ''} at maximum rate"):
            figures = asyncio.run(max_rate(settings, spec, workload, workers, partitions))
        by_count[workers] = figures
        console.print(f"  kafka_w{workers:<9} {_max_rate_line(figures)}")
        if figures["windows"] < FEW_WINDOWS:
            console.print(f"  [yellow]only {figures['windows']} windows measured through {workers} worker(s): "
                          "start-up and hand-over weigh on so short a run; raise --seconds or --streams[/]")
        if counts == "auto":
            top = max((by_count[w]["windows_per_s"] for w in by_count if w != workers), default=0.0)
            if top and figures["windows_per_s"] < top * (1 + AUTO_GAIN):
                break
    if options.realtime or options.live_streams:
        for workers, figures in by_count.items():

            def trial(streams: int, workers: int = workers) -> Trial:
                with console.status(f"real time: {streams} live streams for {options.trial_seconds:g} s through "
                                    f"{workers} workers"):
                    return asyncio.run(live_trial(
                        settings, spec, workload, workers, partitions, streams, seconds=options.trial_seconds,
                        warmup_s=options.warmup_s, bound_ms=options.bound_ms, delivery=options.delivery,
                        revisions=options.revisions))

            def show(t: Trial, workers: int = workers) -> None:
                console.print(f"  w{workers} {t.streams:4d} live streams: {trial_line(t)}")

            if options.live_streams:  # one trial at the given count, no search
                done = trial(int(options.live_streams))
                show(done)
                figures["live_streams"] = options.live_streams if done.sustained else 0
                figures["live_trials"] = [done.summary()]
            else:
                most_streams, trials = search_max_streams(trial, start=options.start_streams,
                                                          limit=options.max_streams, progress=show,
                                                          attempts=options.trial_attempts)
                figures["live_streams"] = most_streams
                figures["live_trials"] = [t.summary() for t in trials]
    best = max(by_count, key=lambda w: (by_count[w].get("live_streams") or 0, by_count[w]["windows_per_s"]))
    return {
        "counts": list(by_count), "asked": counts if counts == "auto" else list(counts), "partitions": partitions,
        "cores": cores, "by_workers": {str(w): f for w, f in by_count.items()}, "best": best,
        "best_by": "live streams, then windows/s" if any("live_streams" in f for f in by_count.values())
        else "windows/s",
        "ratios": {f"kafka_w{w}/engine": ratio(f["windows_per_s"], engine_windows_per_s) for w, f in by_count.items()},
    }


def _max_rate_line(f: dict[str, Any]) -> str:
    cpu, broker = f.get("cpu_ms_per_window"), f.get("broker_cpu_ms_per_window")
    return (f"{f['windows_per_s']:8.1f} windows/s   "
            + ("-" if cpu is None else f"{cpu:6.2f}") + " CPU ms/window"
            + (f" (+ broker {broker:.2f})" if broker is not None else "")
            + f"; windows per worker {f['windows_by_worker']}, {f['missing']} missing, {f['duplicated']} doubled")


def print_workers(scaling: dict[str, Any], console: Console, print_trials: Callable[..., None]) -> None:
    """The scaling table of a ``--workers`` report (called by ``print_report``)."""
    from rich.table import Table

    table = Table(title=f"workers (one consumer group, {scaling['partitions']} partitions, "
                        f"{scaling['cores']} cores)")
    for column in ("workers", "windows/s", "CPU ms/window", "broker CPU ms", "live streams", "kafka_wW/engine",
                   "windows per worker", "missing", "doubled"):
        table.add_column(column, justify="right")
    for workers, f in scaling["by_workers"].items():
        cpu, broker = f.get("cpu_ms_per_window"), f.get("broker_cpu_ms_per_window")
        live = f.get("live_streams")
        table.add_row(workers, f"{f['windows_per_s']:.1f}", "-" if cpu is None else f"{cpu:.2f}",
                      "-" if broker is None else f"{broker:.2f}", "-" if live is None else str(live),
                      f"{scaling['ratios'][f'kafka_w{workers}/engine']:.3f}",
                      " ".join(map(str, f["windows_by_worker"])), str(f["missing"]), str(f["duplicated"]))
    console.print(table)
    console.print(f"best worker count: [bold]{scaling['best']}[/] (by {scaling['best_by']})")
    for workers, f in scaling["by_workers"].items():
        if f.get("live_trials"):
            print_trials(f["live_trials"], console, f"real-time trials through {workers} workers "
                                                    "(close→ack here: close → prediction published)")


__all__ = ["parse_workers", "print_workers", "worker_scaling"]
