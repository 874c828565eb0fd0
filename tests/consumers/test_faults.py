"""The service under faults, as a subprocess against a real broker: a broker restart mid-run, and input in bursts.

Both check the same promise as the rest of the service tests (every window predicted,
nothing lost), while something outside the service goes wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultkit import (
    PrivateBroker,
    Sampler,
    free_ports,
    produce_paced,
    report,
    scrape,
    service_processes,
    total,
    until_covered,
    window_figures,
)
from servicekit import (
    NS,
    PARTITIONS,
    Reader,
    ServiceProcess,
    all_topics,
    census_of,
    produce,
    service_settings,
    synthetic,
)

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.stream.records import Record

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: Generous: these tests share two cores with whatever else runs.
DEADLINE_S = 180.0


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from service_processes(tmp_path)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A broker of these tests' own: the shared one must not go away under other tests."""
    broker = PrivateBroker(tmp_path_factory.mktemp("kafka"), *free_ports(2))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(keep_state=False)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_kafka_service_rides_out_a_broker_restart_without_losing_a_window(
    private_broker: PrivateBroker, topic_prefix: str, untrained_model: Path,
    processes: Callable[..., ServiceProcess], exactly_once: bool,
) -> None:
    broker, prefix, model = private_broker, topic_prefix, untrained_model
    # The last windows before the outage close by timeout 4 s after their input, while the broker is away:
    # their predictions wait for it in the service.
    settings = service_settings(broker.bootstrap, prefix, model, idle_timeout_ms=4000, exactly_once=exactly_once)
    census = census_of(settings)
    records = synthetic(streams=4, seconds=16, seed=31).records()
    source = list(records)
    t0 = source[0].t_start_ns
    # The input stops while the broker is away and goes on 2 s (> one window) later in event time: a live
    # source that could not publish meanwhile. So no window straddles the outage, and every record of the
    # second part is on time (one that belonged to a window closed during the outage would rightly be late).
    first = [r for r in source if r.t_start_ns < t0 + 7 * NS]
    second = [r for r in source if r.t_start_ns >= t0 + 9 * NS]
    first, second = list(census.watch(first)), list(census.watch(second))
    outage_s = 12.0  # longer than the consumer's 10 s session timeout: the group has to be rejoined

    async def scenario() -> tuple[Reader, Reader, int, int, float]:
        await ensure_topics(broker.bootstrap, all_topics(settings), PARTITIONS)
        await produce(settings, first)
        service = processes(settings, "restart")
        async with Reader(broker.bootstrap, settings.predictions_topic) as reader:
            await reader.until(lambda r: len(r.records) >= 10, timeout_s=DEADLINE_S, on_wait=service.alive)
            before = len(reader.records)
        stopped = time.monotonic()
        await asyncio.to_thread(broker.stop, keep_state=True)
        while time.monotonic() - stopped < outage_s:
            service.alive()  # no broker is no reason to exit
            await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.start)
        down_s = time.monotonic() - stopped
        await produce(settings, second)
        async with Reader(broker.bootstrap, settings.predictions_topic, read_committed=exactly_once) as reader, \
                Reader(broker.bootstrap, settings.deadletter_topic, read_committed=exactly_once) as dead:
            await until_covered(reader, census.expected, DEADLINE_S, service.alive)
            rc = service.terminate()
            await reader.to_end()
            await dead.to_end()
        return reader, dead, before, rc, down_s

    try:
        reader, dead, before, rc, down_s = asyncio.run(scenario())
    finally:
        broker.start()  # back up for the next test, whatever happened (a no-op when it runs)

    figures = window_figures(reader.windows(), census.expected)
    mode = "exactly_once" if exactly_once else "at_least_once"
    report(f"broker_restart_{mode}", {**figures, "predicted_before_outage": before, "broker_down_s": round(down_s, 1),
                                      "dead_letters": len(dead.records)})
    assert rc == 0, "the service stopped cleanly after the broker came back"
    assert before < len(census.expected), "the broker went away mid-run"
    assert figures["windows_lost"] == 0, f"missing {sorted(census.expected - set(reader.windows()))[:5]}"
    assert dead.records == [], "nothing was late or bad"
    if exactly_once:
        assert figures["duplicates"] == 0, "read_committed sees every window once, outage or not"


def test_kafka_service_holds_its_windows_while_the_broker_is_away(
    private_broker: PrivateBroker, topic_prefix: str, untrained_model: Path,
    processes: Callable[..., ServiceProcess],
) -> None:
    """A live source holds its records while the broker is away and sends them when it is back, its event
    times running on through the outage. The service cannot read them meanwhile: its streams are unread, not
    silent, so no window may close by timeout (12 windows closed short and 90 records went late before)."""
    import json

    broker, prefix, model = private_broker, topic_prefix, untrained_model
    # Generous: between the service catching up and the broker going away (kafka.sh stop takes seconds) the
    # streams are silent for real, and a timeout then would be right.
    settings = service_settings(broker.bootstrap, prefix, model, idle_timeout_ms=8000)
    census = census_of(settings)
    source = list(synthetic(streams=4, seconds=14, seed=33).records())
    t0 = source[0].t_start_ns
    first = list(census.watch([r for r in source if r.t_start_ns < t0 + 7 * NS]))
    held = list(census.watch([r for r in source if r.t_start_ns >= t0 + 7 * NS]))  # no gap in event time
    outage_s = 12.0  # longer than idle_timeout_ms: the windows open at the outage would time out in it

    async def scenario() -> tuple[Reader, Reader, int]:
        await ensure_topics(broker.bootstrap, all_topics(settings), PARTITIONS)
        await produce(settings, first)
        service = processes(settings, "outage")
        async with Reader(broker.bootstrap, settings.predictions_topic) as reader:
            await reader.until(lambda r: len(r.records) >= 10, timeout_s=DEADLINE_S, on_wait=service.alive)
        stopped = time.monotonic()
        await asyncio.to_thread(broker.stop, keep_state=True)
        while time.monotonic() - stopped < outage_s:
            service.alive()
            await asyncio.sleep(0.5)
        # consumer_lag cannot show an outage (it is as the last answered fetch left it): this gauge does.
        silent.append(total(await asyncio.to_thread(scrape, service.port), "fusionstream_broker_silent_seconds"))
        await asyncio.to_thread(broker.start)
        await produce(settings, held)
        async with Reader(broker.bootstrap, settings.predictions_topic) as reader, \
                Reader(broker.bootstrap, settings.deadletter_topic) as dead:
            await until_covered(reader, census.expected, DEADLINE_S, service.alive)
            silent.append(total(await asyncio.to_thread(scrape, service.port), "fusionstream_broker_silent_seconds"))
            rc = service.terminate()
            await reader.to_end()
            await dead.to_end()
        return reader, dead, rc

    silent: list[float] = []
    try:
        reader, dead, rc = asyncio.run(scenario())
    finally:
        broker.start()
    predictions = [json.loads(r.value) for r in reader.records]
    # The windows open when the broker went away: their records after it were held by the source. (Windows at
    # the end of the input close by timeout, rightly: a modality of a synthetic stream may end early.)
    short = [p for p in predictions if p["closed_by"] == "timeout" and p["t_start_ns"] < t0 + 7 * NS]
    figures = window_figures(reader.windows(), census.expected)
    report("broker_outage_held_records", {**figures, "dead_letters": len(dead.records),
                                          "closed_by_timeout_at_the_outage": len(short)})
    assert rc == 0 and figures["windows_lost"] == 0
    assert silent[0] >= 5 and silent[1] < 5, silent
    assert dead.records == [], f"late: {[(r.headers, r.key) for r in dead.records[:3]]}"
    assert short == [], f"closed by timeout during the outage: {[(p['stream_id'], p['t_start_ns']) for p in short[:3]]}"


def test_kafka_service_under_bursts_at_ten_times_real_time_stays_bounded_and_catches_up(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess]
) -> None:
    bursts, burst_s, pause_s, speed = 4, 10.0, 3.0, 10.0
    # Silence between bursts is not the end of a stream: the idle timeout outlasts the pauses, so the
    # windows at a burst's edge wait for the next burst instead of closing and making it late.
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, idle_timeout_ms=8000)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=8, seconds=bursts * burst_s, seed=41).records()))
    t0 = records[0].t_start_ns
    parts: list[list[Record]] = [[] for _ in range(bursts)]
    for record in records:  # the last burst takes the records that start exactly at the end
        parts[min(int((record.t_start_ns - t0) / NS // burst_s), bursts - 1)].append(record)

    async def scenario() -> tuple[Reader, Reader, Sampler, list[float], dict[str, float]]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            # A small window queue and small batches: the engine falls behind in every burst and fetching must
            # pause. With 8 and 4 a fast CPU (AVX-512) kept up with some runs' bursts and never paused: the pause
            # comes when one fetch closes more windows than the queue holds, so the queue is what must be small.
            service = processes(settings, "bursts", queue_windows="3", max_batch="2")
            await service.health()
            assert service.proc is not None
            sampler = Sampler(service.proc.pid, service.port, interval_s=0.5).start()
            peaks: list[float] = []
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                await sampler.sample()
                for part in parts:
                    burst_started = len(sampler.samples)
                    await produce_paced(settings, part, speed=speed)
                    await asyncio.sleep(pause_s)
                    service.alive()
                    peaks.append(max(rss for _, rss, _ in sampler.samples[burst_started:]))
                await until_covered(reader, census.expected, DEADLINE_S, service.alive)
                deadline = time.monotonic() + 30
                while (lag := (await sampler.sample())[2]) > 0:  # caught up: nothing left to fetch
                    assert time.monotonic() < deadline, f"lag still {lag} after every window was predicted"
                    await asyncio.sleep(0.5)
                metrics = await asyncio.to_thread(scrape, service.port)
                await sampler.stop()
                assert service.terminate() == 0
                await reader.to_end()
                await dead.to_end()
            return reader, dead, sampler, peaks, metrics
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, sampler, peaks, metrics = asyncio.run(scenario())

    figures = window_figures(reader.windows(), census.expected)
    pauses = total(metrics, "fusionstream_fetch_pauses_total")
    report("bursts", {**figures, "rss_mib_start": round(sampler.samples[0][1], 1),
                      "rss_mib_peak_per_burst": [round(p, 1) for p in peaks], "max_lag": sampler.max_lag(),
                      "final_lag": sampler.samples[-1][2], "fetch_pauses": pauses, "dead_letters": len(dead.records)})
    assert pauses > 0, "the bursts outran the engine, so backpressure paused fetching"
    assert figures["windows_lost"] == 0 and figures["duplicates"] == 0
    assert dead.records == []
    # Bounded: later bursts, each as large as the first, do not take more memory than it did.
    assert max(peaks[1:]) < peaks[0] * 1.10, f"RSS peaks per burst grow: {peaks}"


def test_kafka_a_subscription_says_when_its_broker_stops_answering_and_when_it_answers_again(
    private_broker: PrivateBroker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber app that logs at WARNING saw one line in a 41 s outage (none without a group): aiokafka
    says next to nothing while the broker of a consumer that only fetches is away."""
    from fusionstream.consumers.subscribers import silence, subscribe

    monkeypatch.setattr(silence, "SILENT_AFTER_S", 2.0)
    broker, topic = private_broker, f"{topic_prefix}.silence"
    said = "fusionstream.consumers.subscribers"

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == said]

    async def until(condition: Callable[[], bool], deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while not condition():
            assert time.monotonic() < deadline, lines()
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, [topic], partitions=1, replication=1)
        async with subscribe(broker.bootstrap, topic) as predictions:
            reading = asyncio.create_task(anext(predictions))  # a quiet topic: it waits, fetching
            consumer = predictions._consumer
            assert consumer is not None
            await until(lambda: any(consumer.last_poll_timestamp(tp) for tp in consumer.assignment()), 30)
            await asyncio.sleep(3)
            assert lines() == [], "a quiet topic is not a silent broker"
            broker.stop(keep_state=True)
            try:
                await until(lambda: len(lines()) == 1, 30)
            finally:
                broker.start()
            await until(lambda: len(lines()) == 2, 60)
            assert not reading.done(), "nothing raised meanwhile"
            reading.cancel()

    with caplog.at_level("WARNING", logger=said):
        asyncio.run(scenario())
    away, back = lines()
    assert away.startswith(f"the broker at {broker.bootstrap} has not answered for ") and "waiting for it" in away
    assert back.startswith(f"the broker at {broker.bootstrap} answers again, after "), back
