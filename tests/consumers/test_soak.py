"""Soak: live synthetic streams at real-time rate through the service (a subprocess) for minutes.

``make test`` runs it for 2 minutes, ``make soak`` for 10 (``FUSIONSTREAM_SOAK_SECONDS``).
It samples the service's resident memory and consumer lag all along and checks that
memory stops growing after the warm-up (the first half), that lag stays bounded, and
that every window of every stream is predicted exactly once. The figures go to stdout
as one JSON line (and to ``$FUSIONSTREAM_ARTIFACTS/soak.json``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultkit import Sampler, duration_s, report, service_processes, until_covered, window_figures
from servicekit import NS, PARTITIONS, Reader, ServiceProcess, all_topics, census_of, service_settings

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.producers.publish import publish
from fusionstream.consumers.producers.sources import on_time
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig

SECONDS = duration_s(120)
STREAMS = 4
#: RSS may grow this much over the second half of the run (after the warm-up) and still count as flat.
MAX_GROWTH = 0.05
#: Lag may reach this many seconds of input (a commit interval, a batch, a loaded machine) and count as bounded.
MAX_LAG_S = 10.0

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(SECONDS + 600)]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from service_processes(tmp_path)


def test_kafka_soak_live_streams_keep_memory_flat_lag_bounded_and_every_window(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess]
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    census = census_of(settings)
    interval_s = max(1.0, SECONDS / 100)

    async def scenario() -> tuple[Reader, Reader, Sampler, int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            service = processes(settings, "soak")
            await service.health()
            assert service.proc is not None
            # Event time starts a moment from now; on_time releases each record when the clock reaches it.
            start_ns = time.time_ns() + 2 * NS
            config = SyntheticConfig(streams=STREAMS, seconds=SECONDS, voices="test", seed=51, start_ns=start_ns)
            records = on_time(census.watch(SyntheticAV(config).records()))
            sampler = Sampler(service.proc.pid, service.port, interval_s=interval_s).start()
            try:
                async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, \
                        Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                    producing = asyncio.create_task(publish(records, settings, create_topics=False))
                    while not producing.done():  # read as we go: the topic is not read all at the end
                        service.alive()
                        await reader.poll()
                    published = await producing
                    await until_covered(reader, census.expected, 180, service.alive)
                    await sampler.stop()
                    assert service.terminate() == 0
                    await reader.to_end()
                    await dead.to_end()
            finally:
                await sampler.stop()
            return reader, dead, sampler, published.total
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, sampler, produced = asyncio.run(scenario())

    figures = window_figures(reader.windows(), census.expected)
    half = SECONDS / 2
    rss_half = sampler.rss_between(half, half + SECONDS / 10)
    rss_end = sampler.rss_between(SECONDS * 0.9, SECONDS)
    growth = rss_end / rss_half - 1
    second_half_lag = max((lag for t, _, lag in sampler.samples if half <= t <= SECONDS), default=0.0)
    latencies = sorted(v["latency_ms"]["capture_to_publish"] for v in reader.values())
    rate = produced / SECONDS  # records per second of input
    report("soak", {
        **figures, "seconds": SECONDS, "streams": STREAMS, "records": produced, "dead_letters": len(dead.records),
        "rss_mib_first_sample": round(sampler.samples[0][1], 1), "rss_mib_half": round(rss_half, 1),
        "rss_mib_end": round(rss_end, 1), "rss_mib_max": round(sampler.max_rss(), 1),
        "rss_growth_second_half_pct": round(100 * growth, 2), "max_lag": sampler.max_lag(),
        "max_lag_second_half": second_half_lag, "max_lag_s_of_input": round(sampler.max_lag() / rate, 2),
        "capture_to_publish_ms": {"p50": round(statistics.median(latencies), 1),
                                  "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1)},
        "samples": len(sampler.samples),
    })
    assert figures["windows_lost"] == 0 and figures["duplicates"] == 0 and figures["windows_unexpected"] == 0
    assert dead.records == [], "live input on time has no late or bad records"
    assert growth < MAX_GROWTH, f"RSS grew {100 * growth:.1f}% in the second half ({rss_half:.0f} -> {rss_end:.0f} MiB)"
    assert sampler.max_lag() <= MAX_LAG_S * rate, f"lag reached {sampler.max_lag():.0f} records ({rate:.0f}/s input)"
