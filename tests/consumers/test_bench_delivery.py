"""The live trials' delivery profiles (consumers/bench/delivery.py) and what a trial reports of them."""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

from fusionstream.consumers.bench.delivery import PACED, REALISTIC, DeliveryProfile, Lag, ideal_times, parse_range_ms
from fusionstream.consumers.bench.workload import Workload
from fusionstream.stream.records import FLAG_COMPLETE, Modality, Record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS

START = 1_800_000_000 * NS


@pytest.fixture(scope="module")
def records() -> list[Record]:
    """4 live streams of 8 s: frames, 40 ms chunks, one record per word, dropped segments."""
    return Workload.synthetic(2, 8.0, seed=2).cloned(4, START)


def _lanes(schedule: list[tuple[int, Record]]) -> dict[tuple[str, Modality], list[tuple[int, Record]]]:
    lanes: dict[tuple[str, Modality], list[tuple[int, Record]]] = defaultdict(list)
    for due, record in schedule:
        lanes[(record.stream_id, record.modality)].append((due, record))
    return lanes


def test_each_stream_and_modality_is_delivered_in_event_order(records: list[Record]) -> None:
    schedule = REALISTIC.schedule(records)
    assert [due for due, _ in schedule] == sorted(due for due, _ in schedule), "the schedule is in delivery order"
    media = sorted((r.stream_id, r.modality, r.seq) for _, r in schedule if not r.is_progress)
    assert media == sorted((r.stream_id, r.modality, r.seq) for r in records), "every record, once"
    for (_, modality), lane in _lanes(schedule).items():
        words = [r for _, r in lane if not r.is_progress]
        assert [r.t_start_ns for r in words] == sorted(r.t_start_ns for r in words), modality
        assert all(r.flags & FLAG_COMPLETE for r in words), "our producers flag every media record complete"
        assert lane[-1][1].is_progress and lane[-1][1].meta.get("ended"), "each source says when it ended"


@pytest.mark.parametrize("profile", [REALISTIC, REALISTIC.with_text_delay(100, 150)])
def test_delays_fall_in_the_configured_ranges(records: list[Record], profile: DeliveryProfile) -> None:
    by_modality: dict[Modality, list[float]] = defaultdict(list)
    for (_, modality), lane in _lanes(profile.schedule(records)).items():
        lag = profile.lag_of(modality)
        previous = -(2**63)
        for due, record in lane:
            if not record.is_progress:
                own = record.t_end_ns if lag.anchor == "end" else record.t_start_ns
                delay_ms = (due - own) / MS
                assert delay_ms >= lag.lo_ms - 1e-6, (modality, delay_ms)
                # Above the range only when held behind the record before it (event order).
                assert delay_ms <= lag.hi_ms + 1e-6 or due == previous, (modality, delay_ms)
                by_modality[modality].append(delay_ms)
            previous = due
    text = by_modality[Modality.TEXT]
    assert text and min(text) < profile.text.lo_ms + 0.3 * (profile.text.hi_ms - profile.text.lo_ms)
    assert max(text) > profile.text.hi_ms - 0.3 * (profile.text.hi_ms - profile.text.lo_ms), "the range is used"
    assert max(by_modality[Modality.VIDEO]) > 40 and max(by_modality[Modality.AUDIO]) <= 10 + 1e-6


def test_text_progress_never_promises_past_a_word_not_sent(records: list[Record]) -> None:
    schedule = REALISTIC.schedule(records)
    checked = 0
    for (_, modality), lane in _lanes(schedule).items():
        if modality is not Modality.TEXT:
            continue
        sent: list[Record] = []
        words = [r for _, r in lane if not r.is_progress]
        for _, record in lane:
            if record.is_progress:
                promised = record.t_start_ns
                unsent = [w for w in words if w.t_start_ns < promised and w not in sent]
                assert not unsent, f"progress to {promised} before words starting at {[w.t_start_ns for w in unsent]}"
                checked += 1
            else:
                sent.append(record)
        marks = [r.t_start_ns for _, r in lane if r.is_progress and not r.meta.get("ended")]
        gaps = {b - a for a, b in itertools.pairwise(marks)}
        assert gaps == {int(REALISTIC.text_progress_every_ms * MS)}, "a recogniser's progress every 250 ms"
    assert checked > 100


def test_a_dropped_source_says_so_and_paced_delivery_is_the_old_one(records: list[Record]) -> None:
    schedule = REALISTIC.schedule(records)
    lanes = _lanes(schedule)

    def resumes(notice: Record) -> bool:
        return any(not m.is_progress and m.t_start_ns > notice.t_start_ns
                   for _, m in lanes[(notice.stream_id, notice.modality)])

    mid_stream = [(due, r) for due, r in schedule
                  if r.is_progress and r.meta.get("ended") and r.modality is not Modality.TEXT and resumes(r)]
    assert mid_stream, "the workload drops video or audio for a while: the source says it stopped"
    for due, notice in mid_stream:
        assert due >= notice.t_start_ns + int(REALISTIC.drop_notice_ms * MS)
    silent = dataclasses.replace(REALISTIC, drop_notice_ms=None).schedule(records)
    assert len(silent) == len(schedule) - len(mid_stream)
    paced = PACED.schedule(records)
    assert {id(r) for _, r in paced} == {id(r) for r in records}, "the records as they are: no flag, no progress"
    assert all(due == r.t_start_ns and not r.flags for due, r in paced), "each at its start"


def test_schedules_are_reproducible_and_seeded(records: list[Record]) -> None:
    again = REALISTIC.schedule(records)
    once_more = REALISTIC.schedule(records)
    assert [(d, r.stream_id, r.seq) for d, r in again] == [(d, r.stream_id, r.seq) for d, r in once_more]
    other = dataclasses.replace(REALISTIC, seed=1).schedule(records)
    assert [d for d, _ in other] != [d for d, _ in again]


def test_profiles_refuse_impossible_ranges() -> None:
    with pytest.raises(ValueError):
        Lag("end", 700, 300)
    with pytest.raises(ValueError):
        Lag("middle", 0, 1)  # type: ignore[arg-type]
    assert parse_range_ms("300-700") == (300.0, 700.0)
    for bad in ("700", "7-3", "a-b"):
        with pytest.raises(ValueError):
            parse_range_ms(bad)


def test_through_an_aligner_provisional_predictions_come_before_the_text() -> None:
    """The floor of a realistic feed: with revisions, a window's first prediction waits for video and
    audio only, its final for the transcript, which comes 300-700 ms after each word."""
    records = Workload.synthetic(2, 8.0, seed=3).cloned(2, START)
    config = WindowConfig(provisional_without=frozenset({Modality.TEXT}))
    ideal = ideal_times(REALISTIC.schedule(records), config)
    ends = {key: key[1] + config.window_ns for key in ideal.final}
    first = sorted((ideal.first[k] - ends[k]) / MS for k in ends)
    final = sorted((ideal.final[k] - ends[k]) / MS for k in ends)
    assert all(ideal.first[k] <= ideal.final[k] for k in ends)
    assert first[len(first) // 2] < 100 < 300 < final[len(final) // 2], (first[len(first) // 2], final[len(final) // 2])
    without = ideal_times(REALISTIC.schedule(records), WindowConfig())
    assert all(without.first[k] == without.final[k] for k in without.final), "no revisions: the first is the final"


@pytest.mark.kafka
def test_kafka_a_live_trial_reports_what_users_see(kafka_bootstrap: str, shipped_model: Path) -> None:
    """A few streams for a few seconds through the service and the broker, revisions on: each window's
    first prediction comes no later than its final, provisional predictions are counted, and every
    window got its final."""
    from fusionstream.consumers.bench.kafka_stage import kafka_realtime
    from fusionstream.consumers.pipeline.runner import Runner
    from fusionstream.consumers.settings import Settings
    from fusionstream.engines.backends import open_runtime

    settings = Settings(bootstrap_servers=kafka_bootstrap, model_dir=shipped_model, threads=1)
    workload = Workload.synthetic(2, 8.0, seed=5)
    with open_runtime("onnxruntime", shipped_model) as runtime:
        _, trial = kafka_realtime(lambda: Runner(runtime), runtime.manifest, settings, workload, 3, seconds=7.0,
                                  warmup_s=1.0, bound_ms=1000.0, revisions=True)
    summary = trial.summary()
    assert summary["revisions"] and summary["delivery"] == "realistic"
    assert trial.predicted == trial.expected > 20 and trial.dead_letters == 0
    first, final = trial.end_to_first_ms, trial.end_to_final_ms
    assert first is not None and final is not None
    assert all(first[p] <= final[p] for p in ("p50", "p95", "p99")), (first, final)
    # The text comes 300-700 ms after each word: finals wait for it, provisional predictions do not.
    assert final["p50"] > 300 and first["p50"] < final["p50"]
    counts = trial.counts
    assert counts["provisional"] > 0 and counts["final"] == trial.predicted
    assert {"late", "partly_late", "dead_letters"} <= set(counts)
    assert trial.intake_lag_ms["p99"] < 1000, "intake lag is measured from when a record was due, not its timestamp"
    split = summary["first_split_ms"]
    assert set(split) == {"end_to_close", "queue", "engine", "close_to_seen"}
    # close -> ack holds the wait for the engine and the engine call; the parts of the median first prediction
    # add up to about its end -> first (not exactly: each part's median is its own).
    assert split["close_to_seen"]["p50"] >= split["engine"]["p50"] > 0 and split["queue"]["p50"] >= 0
    assert split["end_to_close"]["p50"] + split["close_to_seen"]["p50"] == pytest.approx(first["p50"], rel=0.5)


def test_the_first_prediction_is_split_into_its_parts() -> None:
    """Seen splits each measured first prediction at its close: end -> close, then close -> seen, which
    holds the wait for the engine and the engine call; predictions read back from another process (no
    close instant) and later revisions are not split."""
    import time

    from fusionstream.consumers.bench.realtime import Seen
    from fusionstream.consumers.pipeline.prediction import Prediction

    end = time.time_ns() - 120 * MS

    def prediction(start: int, *, final: bool, closed_ago_ms: float | None) -> Prediction:
        closed = 0 if closed_ago_ms is None else time.perf_counter_ns() - round(closed_ago_ms * MS)
        return Prediction("s", start, end, "one", 0.9, {"one": 0.9}, (True, True, False), (1.0, 1.0, 0.0), "v",
                          "provisional", queue_ms=10.0, inference_ms=25.0, latency_ms=35.0, batch_size=4,
                          closed_at_ns=closed, revision=0 if not final else 1, final=final)

    seen = Seen()
    assert seen.first_split_ms() is None
    seen.saw(prediction(0, final=False, closed_ago_ms=50.0), time.time_ns(), True)
    seen.saw(prediction(0, final=True, closed_ago_ms=5.0), time.time_ns(), True)  # its final: not a first
    seen.saw(prediction(1, final=True, closed_ago_ms=None), time.time_ns(), True)  # read back: not split
    split = seen.first_split_ms()
    assert split is not None and len(seen.first_ms) == 2
    assert split["queue"]["p50"] == 10.0 and split["engine"]["p50"] == 25.0
    assert split["close_to_seen"]["p50"] == pytest.approx(50.0, abs=5.0)
    assert split["end_to_close"]["p50"] == pytest.approx(70.0, abs=5.0)


def test_a_provisional_windows_audio_is_encoded_once_for_its_final_and_amendments(untrained_model: Path) -> None:
    """Revisions on, a window is predicted twice: its final reuses the provisional one's audio embedding
    (the audio graph is most of the engine's time), unless the audio changed in between."""
    import numpy as np

    from fusionstream.consumers.pipeline.reuse import Embedder
    from fusionstream.consumers.training.dataset import windows_of
    from fusionstream.engines.backends import open_runtime
    from fusionstream.engines.spec import ModelSpec
    from fusionstream.stream.sources import SyntheticAV, SyntheticConfig

    spec = ModelSpec.load(untrained_model)
    config = WindowConfig(frames_per_window=spec.frames_per_window, sample_rate=spec.sample_rate)
    finals = [w for w in windows_of(SyntheticAV(SyntheticConfig(streams=1, seconds=4, seed=11)).records(), config)
              if w.mask[1]]
    provisional = [dataclasses.replace(w, final=False, text=(), refs=()) for w in finals]
    changed = dataclasses.replace(finals[0], audio=finals[0].audio + np.float32(0.01))
    with open_runtime("onnxruntime", untrained_model) as runtime:
        cold, _ = Embedder(runtime)(finals)
        embedder = Embedder(runtime)
        embedder(provisional)
        assert embedder.audio_warm_hits == 0
        again, _ = embedder(finals)
        assert embedder.audio_warm_hits == len(finals), "every final took its provisional window's audio"
        np.testing.assert_allclose(again["audio"], cold["audio"], rtol=0, atol=1e-6)
        embedder(provisional[:1])
        embedder([changed])
        assert embedder.audio_warm_hits == len(finals), "other samples: encoded again"
        # A final after a provisional one is revision 1; a late word amends it as revision 2, with the same
        # audio: both take the embedding the provisional one left.
        revised = Embedder(runtime)
        revised(provisional)
        # Still open, waiting for its text, the window is offered to be encoded ahead: its audio is not again.
        encoded: list[int] = []
        encode_audio = revised._encode_audio
        revised._encode_audio = lambda ws: encoded.append(len(ws)) or encode_audio(ws)  # type: ignore[method-assign]
        revised.warm([dataclasses.replace(w, closed_by="ready") for w in finals])
        assert encoded == [], "encoded ahead again on the samples its provisional prediction had"
        revised([dataclasses.replace(w, revision=1) for w in finals])
        revised([dataclasses.replace(w, revision=2) for w in finals])
        assert revised.audio_warm_hits == 2 * len(finals), "the amendments encoded the audio again"
        revised.warm([changed])
        assert encoded == [1], "the window whose samples changed is encoded ahead"
