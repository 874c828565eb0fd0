"""``fusionstream bench --live-streams N``: what a user sees at N live streams, revisions off and on.

No throughput stages and no search: two live trials at exactly N streams through the service and
the broker, one with revisions off and one with them on, each delivered as the profile says
(docs/performance.md). Each reports close → broker ack, window end → first prediction and window
end → final prediction (p50/p95/p99), the predictions by kind, the records late or partly late,
and the floor: the same schedule through an aligner alone, which is what the feed and the
alignment rules impose before the service adds its part.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.common import broker_available, machine
from fusionstream.consumers.bench.realtime import trial_line
from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.engine import effective_precision, engine_title, model_title, service_options
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import open_runtime


class NoBroker(RuntimeError):
    """Live trials go through the broker, and none answered."""


def run_live(settings: Settings, options: Any, console: Console) -> dict[str, Any]:
    """Two live trials of ``options.live_streams`` streams (revisions off, then on); the report."""
    from fusionstream.consumers.bench.kafka_stage import kafka_realtime

    streams = int(options.live_streams)
    if not broker_available(settings, console):
        raise NoBroker(f"--live-streams runs through the broker, and none answers at {settings.bootstrap_servers}")
    with open_runtime(settings.backend, settings.model_dir, **service_options(settings)) as runtime:
        manifest = runtime.manifest
        with console.status("making the synthetic workload"):
            workload = Workload.synthetic(options.streams, options.seconds, options.seed, options.frame_size)
            workload = workload.declared(runtime.modalities)
        console.print(
            f"[bold]fusionstream bench --live-streams {streams}[/]: {options.trial_seconds:g} s trials, delivery "
            f"{options.delivery.name}, model {model_title(manifest)} on {engine_title(settings)}, max_batch "
            f"{settings.max_batch}, text_wait_ms {settings.text_wait_ms}"
        )

        def make_runner() -> Runner:
            return Runner(runtime)

        trials: dict[str, dict[str, Any]] = {}
        for revisions in (False, True):
            name = "revisions_on" if revisions else "revisions_off"
            with console.status(f"{streams} live streams for {options.trial_seconds:g} s, revisions "
                                f"{'on' if revisions else 'off'}, then the floor"):
                _, trial = kafka_realtime(make_runner, manifest, settings, workload, streams,
                                          seconds=options.trial_seconds, warmup_s=options.warmup_s,
                                          bound_ms=options.bound_ms, delivery=options.delivery,
                                          revisions=revisions, floor=True)
            console.print(f"  revisions {'on ' if revisions else 'off'}: {trial_line(trial)}")
            trials[name] = trial.summary()
        return {
            "machine": machine(),
            "model": {"dir": str(settings.model_dir), "version": manifest.version, "format": manifest.source_format},
            "backend": settings.backend,
            "precision": effective_precision(settings),
            "live": {"streams": streams, "trial_seconds": options.trial_seconds, "warmup_s": options.warmup_s,
                     "bound_ms": options.bound_ms, "delivery": options.delivery.describe(),
                     "text_wait_ms": settings.text_wait_ms, "max_skew_ms": settings.max_skew_ms,
                     "lateness_ms": settings.lateness_ms, "max_batch": settings.max_batch, "trials": trials},
        }


__all__ = ["NoBroker", "run_live"]
