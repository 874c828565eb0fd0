"""Fuzzing the service (a subprocess, real broker): 10,000 mutated records among good streams.

Every fuzzed record must end up in the dead-letter topic with a reason, or in a predicted
window; the service must stay healthy; the good streams must come out as they do without
the fuzz (every window once, the same labels as an in-process run of the same records).
The mutations are seeded (``FUZZ_SEED``), so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import report, rss_mib, service_processes, until_covered, window_figures
from fuzzing import mutate
from servicekit import (
    PARTITIONS,
    Reader,
    ServiceProcess,
    all_topics,
    census_of,
    http_get,
    produce,
    service_settings,
    synthetic,
    topic_of,
)

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.engine import open_engine
from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.settings import Settings
from fusionstream.stream import wire
from fusionstream.stream.aligner import last_instant
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import MediaItem, Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FUZZ_RECORDS = 10_000
FUZZ_SEED = 20261129
DEADLINE_S = 240.0
#: Far above what the service needs (~200 MiB), far below what would hurt the machine.
MAX_RSS_MIB = 3000
#: Scores of the same window in batches of other sizes differ by float rounding, never by more.
SCORE_TOLERANCE = 1e-4

Raw = tuple[str, bytes | None, bytes, int, list[tuple[str, bytes]]]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from service_processes(tmp_path)


def _admitted(value: bytes) -> MediaItem | None:
    """What the service's intake makes of these bytes (as the pipeline core decodes), or None if rejected."""
    try:
        return decode_media(wire.decode(value), lazy_jpeg=True)
    except BadRecord:
        return None


def _fuzz(settings: Settings, base: list[Record], good_ids: set[str]) -> tuple[list[Raw], dict[int, MediaItem | None],
                                                                            Counter[str]]:
    rng = random.Random(FUZZ_SEED)
    encoded = [(record, wire.encode(record)) for record in base]
    topics = [settings.video_topic, settings.audio_topic, settings.text_topic]
    raws: list[Raw] = []
    admitted: dict[int, MediaItem | None] = {}
    kinds: Counter[str] = Counter()
    while len(raws) < FUZZ_RECORDS:
        record, data = rng.choice(encoded)
        kind, value = mutate(rng, data)
        item = _admitted(value)
        if item is not None and item.stream_id in good_ids:
            continue  # impersonating a good stream is not damage, it is another producer of that stream
        topic = topic_of(settings, record) if rng.random() < 0.85 else rng.choice(topics)
        key = rng.choice([None, rng.randbytes(8)]) if rng.random() < 0.1 else record.stream_id.encode()
        fuzz_id = len(raws)
        raws.append((topic, key, value, record.t_start_ns // 1_000_000, [("fuzz-id", str(fuzz_id).encode())]))
        admitted[fuzz_id] = item
        kinds[kind] += 1
    return raws, admitted, kinds


def _reference(settings: Settings, records: list[Record]) -> dict[tuple[str, int], dict[str, Any]]:
    """The good streams' predictions from an in-process run of the same records, without Kafka and without fuzz."""
    async def run() -> dict[tuple[str, int], dict[str, Any]]:
        with open_engine(settings) as (runner, spec):
            config = settings.model_window_config(spec)
            async with Pipeline(runner, config, max_batch=settings.max_batch) as pipeline:
                result = await run_embedded(pipeline, records, realtime=False)
        return {(p.stream_id, p.t_start_ns): p.to_dict() for p in result.predictions}

    return asyncio.run(run())


def _same_window(served: dict[str, Any], reference: dict[str, Any] | None) -> bool:
    """Made from the same records: the same coverage per modality, and scores equal up to batch-size rounding."""
    if reference is None or served["coverage"] != reference["coverage"]:
        return False
    return all(abs(served["scores"][k] - v) <= SCORE_TOLERANCE for k, v in reference["scores"].items())


def test_kafka_service_survives_fuzzed_records_and_good_streams_are_unaffected(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess]
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    census = census_of(settings)
    source = synthetic(streams=4, seconds=20, seed=61)
    good = list(census.watch(source.records()))
    config = SyntheticConfig(streams=2, seconds=20, seed=62, voices="test", start_ns=good[0].t_start_ns,
                             stream_prefix="fuzz")
    raws, admitted, kinds = _fuzz(settings, list(SyntheticAV(config).records()), set(source.stream_ids))
    good_raws: list[Raw] = [(topic_of(settings, r), r.stream_id.encode(), wire.encode(r), r.t_start_ns // 1_000_000, [])
                            for r in good]
    interleaved = sorted(good_raws + raws, key=lambda raw: raw[3])  # stable: each part keeps its own order

    def accounted(predictions: Reader, dead: Reader) -> tuple[set[int], dict[int, str], list[int]]:
        """(fuzz ids in a predicted window, fuzz id -> dead-letter reason, fuzz ids nowhere yet)."""
        letters: dict[int, str] = {}
        for record in dead.records:
            headers = dict(record.headers)
            if "fuzz-id" in headers:
                letters[int(headers["fuzz-id"])] = headers.get("fs.reason", b"").decode()
        windows: dict[str, list[int]] = defaultdict(list)
        for sid, start in predictions.windows():
            windows[sid].append(start)
        predicted, nowhere = set(), []
        for fuzz_id, item in admitted.items():
            if fuzz_id in letters:
                continue
            if item is not None:
                starts = census.config.stream_starts(item.stream_id, item.t_start_ns, last_instant(item))
                if any(s in starts for s in windows.get(item.stream_id, ())):
                    predicted.add(fuzz_id)
                    continue
            nowhere.append(fuzz_id)
        return predicted, letters, nowhere

    async def scenario() -> tuple[Reader, Reader, dict[str, Any], int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            service = processes(settings, "fuzz")

            def guard() -> None:  # a record that makes memory explode must fail the test, not the machine
                service.alive()
                assert service.proc is not None
                if (rss := rss_mib(service.proc.pid)) > MAX_RSS_MIB:
                    service.kill()
                    raise AssertionError(f"the service's memory reached {rss:.0f} MiB")

            async with Reader(kafka_bootstrap, settings.predictions_topic) as predictions, \
                    Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                await produce(settings, interleaved)
                await until_covered(predictions, census.expected, DEADLINE_S, guard)
                deadline = time.monotonic() + DEADLINE_S
                while nowhere := accounted(predictions, dead)[2]:  # the fuzz streams' windows close last
                    assert time.monotonic() < deadline, f"{len(nowhere)} fuzzed records unaccounted for"
                    guard()
                    await predictions.poll()
                    await dead.poll()
                status, body = await asyncio.to_thread(http_get, service.port, "/healthz")
                assert status == 200, f"/healthz after the fuzz: {status} {body!r}"
                health = json.loads(body)
                rc = service.terminate()
                await predictions.to_end()
                await dead.to_end()
            return predictions, dead, health, rc
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    predictions, dead, health, rc = asyncio.run(scenario())
    reference = _reference(settings, good)

    predicted, letters, nowhere = accounted(predictions, dead)
    good_values = [v for v in predictions.values() if (v["stream_id"], v["t_start_ns"]) in census.expected]
    figures = window_figures([(v["stream_id"], v["t_start_ns"]) for v in good_values], census.expected)
    changed = [v["window_id"] for v in good_values if not _same_window(v, reference.get((v["stream_id"],
                                                                                        v["t_start_ns"])))]
    same_labels = sum(reference[(v["stream_id"], v["t_start_ns"])]["label"] == v["label"] for v in good_values
                      if (v["stream_id"], v["t_start_ns"]) in reference)
    good_letters = [r for r in dead.records if "fuzz-id" not in dict(r.headers)]
    report("fuzz", {
        **figures, "fuzzed": len(raws), "mutations": dict(kinds), "dead_lettered": len(letters),
        "in_predicted_windows": len(predicted), "unaccounted": len(nowhere), "reasons": dict(Counter(letters.values())),
        "good_windows": len(good_values), "good_windows_changed": len(changed), "good_labels_same": same_labels,
        "good_records_dead_lettered": len(good_letters), "health": health["status"],
    })
    assert rc == 0 and health["status"] == "ok"
    assert not nowhere, f"{len(nowhere)} fuzzed records neither dead-lettered nor predicted, e.g. {nowhere[:5]}"
    assert all(letters.values()), "every dead letter carries its reason"
    assert figures["windows_lost"] == 0 and figures["duplicates"] == 0, "the good streams are complete, once"
    assert not good_letters, f"good records dead-lettered: {[dict(r.headers)['fs.reason'] for r in good_letters][:5]}"
    assert len(reference) == len(good_values) and not changed, f"good windows not as without the fuzz: {changed[:5]}"
