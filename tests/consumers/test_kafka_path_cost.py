"""What the Kafka path's cheaper bookkeeping must keep: the same records released, held and published as the
per-record code it replaced (kept here as the reference), the same prediction bytes, the same metrics; and
what ``fusionstream bench`` counts of CPU time, the broker's included (docs/performance.md)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fusionstream.consumers.bench.cpu import CpuMeter, efficiency, find_broker, ms_per_window, process_cpu_s
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.intake import PartitionMerger, _Lane
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.offsets import OffsetTracker


@dataclass(frozen=True)
class Rec:
    timestamp: int
    offset: int = 0
    key: bytes | None = None


def _reference_release(merger: PartitionMerger[Rec], owned, log_end, now_ms: float) -> list[tuple]:
    """PartitionMerger.release as it was, one record at a time (the commit before the run-by-run merge)."""
    inf = float("inf")
    groups: dict[int, list] = {}
    for tp in owned:
        groups.setdefault(tp[1], []).append(tp)
        merger._lanes.setdefault(tp, _Lane(last_arrival_ms=now_ms))
    out = []
    for tps in groups.values():
        lanes = [(tp, merger._lanes[tp]) for tp in tps]
        seen = []
        for tp, lane in lanes:
            reported = log_end(tp)
            seen.append(inf if merger._idle(lane, now_ms) else -inf if reported is None else reported)
        while True:
            head, head_tp = None, None
            for tp, lane in lanes:
                if lane.records and (head is None or lane.records[0].timestamp < head.records[0].timestamp):
                    head, head_tp = lane, tp
            if head is None:
                break
            timestamp, fetched = head.records[0].timestamp, head.fetched[0]
            if not all(lane is head or lane.newest_ms >= timestamp or seen_at >= fetched
                       for (_, lane), seen_at in zip(lanes, seen, strict=True)):
                break
            head.fetched.popleft()
            out.append((head_tp, head.records.popleft()))
    return out


def test_the_merger_releases_what_the_per_record_merge_released_in_the_same_order() -> None:
    total, held_back = 0, 0
    for seed in range(150):
        released, waiting = _merge_both(random.Random(seed))
        total, held_back = total + released, held_back + waiting
    assert total > 1000 and held_back > 100  # both ways exercised: records released, records made to wait


def _merge_both(rng: random.Random) -> tuple[int, int]:
    topics = ("v", "a", "t")
    owned = [(topic, p) for topic in topics for p in range(rng.randint(1, 2))]
    idle_ms = rng.choice([50.0, 1000.0])
    mergers = [PartitionMerger[Rec](max_idle_ms=idle_ms) for _ in range(2)]
    log_ends = {tp: rng.choice([None, None, 0.0, 5.0, 10.0, float("inf")]) for tp in owned}
    released: list[list[tuple]] = [[], []]
    for step in range(rng.randint(1, 6)):
        now = step * 30.0
        for tp in owned:
            if rng.random() < 0.6:
                start = rng.randint(0, 400)
                # Roughly in time order, as producers write, with ties and a few out of order.
                stamps = sorted(start + rng.randint(0, 60) for _ in range(rng.randint(0, 25)))
                if stamps and rng.random() < 0.3:
                    stamps[rng.randrange(len(stamps))] = rng.randint(0, 500)
                fetched = rng.choice([now, now - 10.0, now + 5.0])
                for merger in mergers:
                    merger.add(tp, [Rec(ts) for ts in stamps], now, fetched_ms=fetched)
        log_ends = {tp: end if rng.random() < 0.7 else rng.choice([None, now]) for tp, end in log_ends.items()}
        released[0] += _reference_release(mergers[0], owned, log_ends.get, now)
        released[1] += mergers[1].release(owned, log_ends.get, now)
        assert released[0] == released[1]
        assert [mergers[0].buffered(tp) for tp in owned] == [mergers[1].buffered(tp) for tp in owned]
    return len(released[1]), mergers[1].total()


@pytest.mark.parametrize("seed", range(40))
def test_holding_a_fetch_at_once_holds_what_holding_each_record_held(seed: int) -> None:
    rng = random.Random(seed)
    tp = ("fs.video", 0)
    one, bulk = OffsetTracker(), OffsetTracker()
    committed = rng.choice([None, 0, 5])
    one.resume(tp, committed=committed)
    bulk.resume(tp, committed=committed)
    start = 0
    for _ in range(rng.randint(1, 5)):
        start = max(0, start + rng.randint(-6, 8))  # a re-seek delivers some offsets again
        offsets = list(range(start, start + rng.randint(0, 12)))
        if offsets and rng.random() < 0.25:
            offsets.reverse()  # never from a fetch: must fall back, holding the same
        expected = [o for o in offsets if one.fetched((tp[0], tp[1], o))]
        skipped = bulk.fetched_run(tp, offsets)
        got = offsets[skipped:] if skipped is not None else [o for o in offsets if bulk.fetched((tp[0], tp[1], o))]
        assert got == expected
        assert (skipped is None) == (len(offsets) > 1 and offsets != sorted(offsets))
        start = offsets[-1] + 1 if offsets else start
        for o in expected:
            windows = rng.choice([0, 1, 2])
            for tracker in (one, bulk):
                tracker.admitted((tp[0], tp[1], o), windows)
        assert (one.held, one.position(tp), one.replay_mark(tp), one.next_offset(tp)) == \
            (bulk.held, bulk.position(tp), bulk.replay_mark(tp), bulk.next_offset(tp))


def test_a_published_window_releases_its_records_across_partitions_once_each() -> None:
    tracker = OffsetTracker()
    video, audio = ("fs.video", 0), ("fs.audio", 0)
    for tp in (video, audio):
        tracker.resume(tp, committed=None)
        assert tracker.fetched_run(tp, [0, 1, 2]) == 0
        for offset in (0, 1, 2):
            tracker.admitted((tp[0], tp[1], offset), 2 if offset == 1 else 1)
    window = [(video[0], 0, 0), (video[0], 0, 1), (audio[0], 0, 0), (audio[0], 0, 1), ("fs.gone", 0, 7)]
    tracker.published(window)
    assert tracker.held == 4  # video 1 (one window left), video 2, audio 1, audio 2
    assert tracker.position(video) == 1 and tracker.position(audio) == 1
    tracker.published([(video[0], 0, 1), (video[0], 0, 2), (audio[0], 0, 1), (audio[0], 0, 2)])
    assert tracker.held == 0 and tracker.position(video) == 3 and tracker.position(audio) == 3


def test_the_handover_keeps_streams_least_recently_seen_first_as_before() -> None:
    handover = Handover(500_000_000, max_streams_per_partition=3)
    keys = [b"a", b"a", b"b", b"c", b"a", None, b"d", b"b", b"b"]
    records = [Rec(0, offset, key) for offset, key in enumerate(keys)]
    assert handover.fetched(("fs.video", 0), records) == records
    # Moving each stream to the end at every record it sends: c, a, d, b; a bound of 3 forgets c.
    expected: OrderedDict[str, None] = OrderedDict()
    for key in keys:
        if key is not None:
            expected[key.decode()] = None
            expected.move_to_end(key.decode())
    assert list(handover._streams[0]) == list(expected)[-3:] == ["a", "d", "b"]
    assert handover.fetched(("fs.video", 0), records[4:]) == []  # fetched before: nothing new
    assert handover.held == len(records)


def _prediction(**changes: object) -> Prediction:
    fields: dict[str, object] = dict(
        stream_id="cam-é", t_start_ns=1_764_470_000_000_000_000, t_end_ns=1_764_470_001_000_000_000,
        label="speech", score=0.912345678, scores={"speech": 0.912345678, "music": 0.05, "noise\"": 1e-9},
        mask=(True, True, False), coverage=(1.0, 0.98765432, 0.0), model_version="2026.11.29",
        closed_by="watermark", queue_ms=1.2345678, inference_ms=3.4567891, latency_ms=4.6789012, batch_size=16,
    )
    return Prediction(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize("prediction", [
    _prediction(),
    _prediction(labels={"speech": 0.9, "music": 0.6}, revision=1),
    _prediction(label="", score=0.0, scores={}, embedding=(0.1, -2.5, float("nan")), final=False),
])
def test_a_prediction_is_published_as_the_same_bytes(prediction: Prediction) -> None:
    for capture in (None, 12.3456789):
        expected = json.dumps(prediction.to_dict(capture_to_publish_ms=capture), separators=(",", ":")).encode()
        assert prediction.to_json(capture_to_publish_ms=capture) == expected


def test_the_metrics_count_the_same_with_their_labels_looked_up_once() -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    for closed_by in ("watermark", "idle", "watermark"):
        metrics.observe_prediction(_prediction(closed_by=closed_by), 20.0)
    metrics.records_fetched("fs.video", 5)
    metrics.records_fetched("fs.video", 2)
    metrics.records_fetched("fs.audio", 1)
    value = metrics.registry.get_sample_value
    assert value("fusionstream_windows_emitted_total", {"closed_by": "watermark"}) == 2
    assert value("fusionstream_windows_emitted_total", {"closed_by": "idle"}) == 1
    assert value("fusionstream_records_consumed_total", {"topic": "fs.video"}) == 7
    assert value("fusionstream_records_consumed_total", {"topic": "fs.audio"}) == 1
    assert value("fusionstream_modality_coverage_count", {"modality": "audio"}) == 3
    assert value("fusionstream_modality_coverage_sum", {"modality": "video"}) == 3.0
    assert value("fusionstream_capture_to_publish_seconds_count") == 3


# -- CPU time (fusionstream.consumers.bench.cpu) ----------------------------------------------------------


def test_cpu_per_window_and_efficiency_say_unknown_rather_than_guess(tmp_path: Path) -> None:
    assert ms_per_window(0.5, 250) == 2.0 and ms_per_window(None, 250) is None and ms_per_window(1.0, 0) is None
    assert efficiency(6.0, 8.0) == 0.75 and efficiency(None, 8.0) is None and efficiency(6.0, None) is None
    # /proc/<pid>/stat with a command name holding spaces and parentheses: utime and stime after the last ')'.
    (tmp_path / "42").mkdir()
    fields = ["S", *["0"] * 10, "250", "150", *["0"] * 20]
    (tmp_path / "42" / "stat").write_text(f"42 (java (my broker)) {' '.join(fields)}\n")
    assert process_cpu_s(42, proc=tmp_path) == 4.0  # 400 ticks of 100 a second
    assert process_cpu_s(43, proc=tmp_path) is None
    # Addresses of no machine here (documentation ranges): only a bind is tried, nothing is sent.
    for bootstrap in ("192.0.2.1:9092", "[2001:db8::1]:9092", "127.0.0.1:not-a-port"):
        broker = find_broker(bootstrap)
        assert broker.pids == () and broker.unknown and broker.cpu_s() is None
        assert broker.describe()["local"] is False


@pytest.mark.kafka
def test_the_local_broker_is_found_from_its_port_and_its_cpu_time_counted(kafka_bootstrap: str) -> None:
    broker = find_broker(kafka_bootstrap)
    assert broker.unknown is None and broker.pids, broker.describe()
    assert broker.describe()["local"] is True
    meter = CpuMeter(broker)
    meter.start()
    sum(i * i for i in range(300_000))  # this process's CPU time moves; the broker's never goes back
    meter.stop()
    assert meter.process_s is not None and meter.process_s > 0
    assert meter.broker_s is not None and meter.broker_s >= 0


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_reports_cpu_per_window_for_every_stage_the_broker_apart_and_the_efficiency(
    kafka_bootstrap: str,
) -> None:
    command = [
        sys.executable, "-m", "fusionstream", "bench", "--streams", "2", "--seconds", "8", "--batch-sizes", "16",
        "--naive-streams", "1", "--rounds", "1", "--no-realtime", "--no-int8", "--bootstrap", kafka_bootstrap, "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    cpu, stages = report["cpu_ms_per_window"], report["stages"]
    assert set(cpu) == {"engine", "engine_no_reuse", "intake", "pipeline", "kafka", "naive"}
    assert all(value > 0 for value in cpu.values())
    assert all(stages[name]["cpu_ms_per_window"] == value for name, value in cpu.items())
    # The service runs the engine's work and more besides: the intake, Kafka's client, the publishing.
    assert cpu["kafka"] > cpu["intake"] and cpu["pipeline"] > cpu["intake"]
    assert report["efficiency"] == report["ratios"]["efficiency"] == round(cpu["engine"] / cpu["kafka"], 3)
    # Found and measured apart; /proc counts in clock ticks (10 ms), which a short run on a fast CPU may not fill.
    assert report["broker"]["local"] is True and report["broker"]["pids"]
    assert report["broker_cpu_ms_per_window"] is not None and report["broker_cpu_ms_per_window"] >= 0
    assert stages["kafka"]["broker_cpu_ms_per_window"] == report["broker_cpu_ms_per_window"]
    assert "efficiency" in done.stderr and "broker" in done.stderr


def test_the_producers_partitioner_puts_every_key_where_the_default_one_does() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from fusionstream.consumers.kafka.clients import KeyPartitioner

    rng = random.Random(7)
    ours, default = KeyPartitioner(), DefaultPartitioner()
    for _ in range(3000):
        key = bytes(rng.randrange(256) for _ in range(rng.randint(0, 24)))
        partitions = list(range(rng.randint(1, 16)))
        for _ in range(2):  # the second time from the kept hash
            assert ours(key, partitions, partitions) == default(key, partitions, partitions)
    assert ours(None, [0, 1, 2], [2]) == 2  # no key: one of the available partitions, as aiokafka does
