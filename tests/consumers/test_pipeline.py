"""The pipeline core: every window once, bad input as dead letters, bounded memory under a slow engine."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow, Runner
from fusionstream.consumers.report import WindowCensus
from fusionstream.consumers.settings import model_geometry
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.manifest import Manifest, load_manifest
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream import wire
from fusionstream.stream.media import audio_record, image_record, text_record
from fusionstream.stream.records import Modality
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import NS


def _config(spec: Manifest) -> WindowConfig:
    frames, rate = model_geometry(spec)
    return WindowConfig(frames_per_window=frames, sample_rate=rate)


async def _run(model_dir: Path, records, *, runner_cls: type[Runner] = Runner, **pipeline_kwargs):
    with open_runtime("onnxruntime", model_dir) as runtime:
        pipeline = Pipeline(runner_cls(runtime), _config(runtime.manifest), **pipeline_kwargs)
        async with pipeline:
            result = await run_embedded(pipeline, records, realtime=False)
        return result, pipeline


def _whole_windows(model_dir: Path, windows: list) -> np.ndarray:
    """A format-1 model's probabilities on ``windows`` the way it was trained: training's featuriser
    (``Featurizer``), every window's frames through the whole-window ``video.onnx``, the graphs run
    directly by ONNX Runtime. The reference the serving path (frames reused, per-frame graph) must equal."""
    import onnxruntime as ort

    from fusionstream.consumers.pipeline.featurize import Featurizer

    spec = ModelSpec.load(model_dir)
    batch = Featurizer(spec)(windows)
    embeddings = {}
    for name, array in zip(("video", "audio", "text"), (batch.video, batch.audio, batch.text), strict=True):
        session = ort.InferenceSession(str(model_dir / spec.files[name]), providers=["CPUExecutionProvider"])
        embeddings[name] = session.run(None, {name: array})[0]
    fusion = ort.InferenceSession(str(model_dir / spec.files["fusion"]), providers=["CPUExecutionProvider"])
    return fusion.run(None, embeddings | {"mask": batch.mask})[0]


def test_every_window_is_predicted_exactly_once(untrained_model: Path) -> None:
    source = SyntheticAV(SyntheticConfig(streams=3, seconds=8, seed=5))
    census = WindowCensus(_config(load_manifest(untrained_model)))
    result, pipeline = asyncio.run(_run(untrained_model, census.watch(source.records())))
    ids = [(p.stream_id, p.t_start_ns) for p in result.predictions]
    assert len(ids) == len(set(ids)), "a window was predicted twice"
    assert set(ids) == census.expected and len(census.expected) > 3 * 14
    assert result.dead_letters == []
    assert pipeline.stats.windows_closed == len(ids) == pipeline.stats.predictions
    for p in result.predictions:
        assert p.label in [str(d) for d in range(10)] and 0 < p.score <= 1
        assert abs(sum(p.scores.values()) - 1) < 1e-4
    # Per stream, predictions come out in window order.
    for stream in source.stream_ids:
        starts = [p.t_start_ns for p in result.predictions if p.stream_id == stream]
        assert starts == sorted(starts)


def test_bad_records_are_dead_lettered_with_their_reason_and_good_ones_still_predicted(untrained_model: Path) -> None:
    t0 = 1_767_225_600 * NS
    good = []
    for i in range(60):  # 3 s of a clean stream
        t = t0 + i * 50_000_000
        good.append(wire.encode(audio_record("good", i, t, np.zeros(800, np.float32), 16_000)))
        good.append(wire.encode(image_record("good", i, t, t + 50_000_000, np.zeros((32, 32, 3), np.uint8))))
    frame = image_record("bad", 0, t0, t0 + 1, np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    jpeg = wire.encode(frame)
    utf8 = wire.encode(text_record("bad", 0, t0, t0 + 1, "ok"))
    rate0 = b'{"sample_rate":0,"channels":1}'
    corrupt = frame.payload[: len(frame.payload) // 3] + b"\xff\xd9"  # a valid envelope around a broken JPEG
    bad = {
        "bad-jpeg": wire.HEADER.pack(b"FS", 1, 1, 1, 0, 3, 0, t0, t0 + 1, 0, len(corrupt)) + b"bad" + corrupt,
        "truncated": jpeg[:-10],
        "unsupported-version": jpeg[:2] + b"\x07" + jpeg[3:],
        "bad-sample-rate": wire.HEADER.pack(b"FS", 1, 2, 3, 0, 3, 0, t0, t0, len(rate0), 2) + b"bad" + rate0 + bytes(2),
        "bad-utf8": utf8[:-2] + b"\xc3\x28",
    }

    async def go() -> tuple[list, list[Prediction]]:
        with open_runtime("onnxruntime", untrained_model) as runtime:
            async with Pipeline(Runner(runtime), _config(runtime.manifest)) as pipeline:
                out: list[Prediction] = []

                async def read() -> None:
                    async for p in pipeline.predictions():
                        out.append(p)

                reader = asyncio.create_task(read())
                values = good[:80] + [(v) for v in bad.values()] + good[80:]
                dead = await pipeline.feed([(v, i) for i, v in enumerate(values)])
                # A record far in the past: its windows are long closed.
                late = wire.encode(audio_record("good", 999, t0 - 3600 * NS, np.zeros(800, np.float32), 16_000))
                dead += await pipeline.feed([(late, "late-ref")])
                await pipeline.flush()
                await pipeline.drain()
                await pipeline.close_output()
                await reader
                return dead, out

    dead, predictions = asyncio.run(go())
    assert sorted(d.reason for d in dead) == sorted([*bad, "late"])
    assert {d.ref for d in dead if d.reason == "late"} == {"late-ref"}
    assert all(d.detail for d in dead)
    good_windows = {p.t_start_ns for p in predictions if p.stream_id == "good"}
    assert len(good_windows) == 7  # starts -0.5, 0, ..., 2.5: every window holding a record of the 3 s stream
    assert all(p.stream_id == "good" for p in predictions)


class SlowRunner(Runner):
    """A real runner made slower than the source, to exercise backpressure."""

    delay_s = 0.05

    def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        time.sleep(self.delay_s)
        return super().run(closed)


@pytest.mark.slow
def test_memory_stays_bounded_when_the_engine_is_slower_than_the_source(untrained_model: Path) -> None:
    source = SyntheticAV(SyntheticConfig(streams=4, seconds=10, seed=9))
    census = WindowCensus(_config(load_manifest(untrained_model)))
    peaks = {"queue": 0, "buffered": 0}

    def watch(records):
        for record in census.watch(records):
            queue = pipeline_ref[0]._windows.qsize() if pipeline_ref else 0
            peaks["queue"] = max(peaks["queue"], queue)
            if pipeline_ref:
                peaks["buffered"] = max(peaks["buffered"], pipeline_ref[0].aligner.buffered_items())
            yield record

    pipeline_ref: list[Pipeline] = []

    async def go():
        with open_runtime("onnxruntime", untrained_model) as runtime:
            pipeline = Pipeline(SlowRunner(runtime), _config(runtime.manifest), max_batch=2, queue_windows=4)
            pipeline_ref.append(pipeline)
            async with pipeline:
                started = time.perf_counter()
                result = await run_embedded(pipeline, watch(source.records()), realtime=False)
                return result, time.perf_counter() - started

    result, elapsed = asyncio.run(go())
    windows = len(census.expected)
    assert {(p.stream_id, p.t_start_ns) for p in result.predictions} == census.expected, "a window was dropped"
    assert peaks["queue"] <= 4, "the window queue grew past its bound"
    # Intake waited for the engine: the run took as long as the engine needed, not as long as decoding.
    assert elapsed >= (windows / 2 - 4) * SlowRunner.delay_s
    # The aligner holds about two windows of records per stream, not the whole 10 s.
    per_stream_second = 15 + 25 + 3
    assert peaks["buffered"] < 4 * 3 * per_stream_second


def test_only_sampled_frames_are_decoded_and_each_is_embedded_once(
    untrained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusionstream.consumers.training.dataset import windows_of
    from fusionstream.stream import jpeg

    decoded: list[int] = []
    real_decode = jpeg.decode_jpeg_noting_damage
    monkeypatch.setattr(
        jpeg, "decode_jpeg_noting_damage", lambda data, *size: decoded.append(1) or real_decode(data, *size)
    )
    source = SyntheticAV(SyntheticConfig(streams=2, seconds=10, seed=3))
    records = list(source.records())
    frames = sum(1 for r in records if r.modality.name == "VIDEO")
    spec = load_manifest(untrained_model)
    classes = spec.task.classes  # type: ignore[union-attr]
    runners: list[Runner] = []

    class Spy(Runner):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            runners.append(self)

    result, _ = asyncio.run(_run(untrained_model, records, runner_cls=Spy))
    stats = runners[0].embed.stats
    # 15 fps, 4 samples per 1 s window, 0.5 s hop: about 4 distinct frames a second are ever looked at.
    assert len(decoded) <= 0.35 * frames
    assert stats.frames_encoded == len(decoded)  # a frame is decoded only to be embedded, and only once
    assert 0.45 <= stats.frames_saved <= 0.55  # overlapping windows share half their samples
    assert stats.texts_encoded < stats.texts_needed
    # ... and the predictions are exactly those of every window decoded and encoded whole.
    windows = list(windows_of(records, _config(spec)))
    expected = _whole_windows(untrained_model, windows)
    got = {(p.stream_id, p.t_start_ns): np.array([p.scores[c] for c in classes]) for p in result.predictions}
    assert len(got) == len(windows)
    for window, probs in zip(windows, expected, strict=True):
        np.testing.assert_allclose(got[(window.stream_id, window.t_start_ns)], probs, rtol=0, atol=1e-5)


def test_camera_frames_larger_than_the_model_needs_are_decoded_smaller_with_the_same_predictions(
    shipped_model: Path,
) -> None:
    import cv2

    from fusionstream.consumers.training.dataset import windows_of
    from fusionstream.stream.jpeg import reduction
    from fusionstream.stream.media import decode_image

    spec = load_manifest(shipped_model)
    classes = spec.task.classes  # type: ignore[union-attr]
    records = []
    for record in SyntheticAV(SyntheticConfig(streams=2, seconds=6, seed=11)).records():
        if record.modality.name == "VIDEO":  # what a 4x larger camera sends of the same scene
            big = cv2.resize(decode_image(record), None, fx=4, fy=3, interpolation=cv2.INTER_CUBIC)
            record = image_record(record.stream_id, record.seq, record.t_start_ns, record.t_end_ns, big)
        records.append(record)
    sizes: set[tuple[int, ...]] = set()

    class Spy(Runner):
        def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
            sizes.update(frame.shape for c in closed for frame in c.window.frames)
            return super().run(closed)

    result, _ = asyncio.run(_run(shipped_model, records, runner_cls=Spy))
    # 384x288 frames for the model's 64x64 input: libjpeg decoded them at a quarter of the size, the
    # smallest that still covers the input.
    assert _config(spec).frames_per_window == 4 and reduction(288, 384, 64) == 4
    assert sizes == {(72, 96, 3)}, sizes
    # The model sees the same scene: its predictions match those on the frames decoded in full.
    windows = list(windows_of(records, _config(spec)))
    assert {w.frames[0].shape for w in windows if w.mask[0]} == {(288, 384, 3)}
    expected = _whole_windows(shipped_model, windows)
    got = {(p.stream_id, p.t_start_ns): np.array([p.scores[c] for c in classes]) for p in result.predictions}
    assert len(got) == len(windows) > 15
    mine = np.stack([got[(w.stream_id, w.t_start_ns)] for w in windows])
    # About a quarter of a percentage point per class on average; a label may only move where the model
    # was torn between two (the small decode differs from the full one by half a grey level per pixel).
    assert np.abs(mine - expected).mean() < 0.01
    clear = expected.max(axis=1) >= 0.6
    assert clear.sum() > 10 and (mine.argmax(axis=1) == expected.argmax(axis=1))[clear].all()
    assert (mine.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.9


async def _live(model_dir: Path, records: list, *, speculate: bool,
                revisions: bool = False) -> tuple[dict, Pipeline, Runner]:
    """Feed ``records`` a few at a time, letting the engine go idle in between, as a live feed does.
    Returns each prediction's scores by (stream, window start, revision)."""
    with open_runtime("onnxruntime", model_dir) as runtime:
        runner = Runner(runtime)
        classes = runtime.task.classes
        got: dict = {}
        config = _config(runtime.manifest)
        if revisions:
            config = dataclasses.replace(config, provisional_without=frozenset({Modality.TEXT}))
        async with Pipeline(runner, config, speculate=speculate) as pipeline:

            async def collect() -> None:
                async for p in pipeline.predictions():
                    got[(p.stream_id, p.t_start_ns, p.revision)] = np.array([p.scores[c] for c in classes])

            collector = asyncio.create_task(collect())
            for i in range(0, len(records), 12):
                assert await pipeline.feed([(r, None) for r in records[i : i + 12]]) == []
                await pipeline.drain()
                while pipeline._warming is not None:
                    await asyncio.sleep(0.002)
            await pipeline.flush()
            await pipeline.drain()
            await pipeline.close_output()
            await collector
    return got, pipeline, runner


def test_windows_encoded_ahead_give_the_same_predictions(untrained_model: Path) -> None:
    source = SyntheticAV(SyntheticConfig(streams=2, seconds=6, seed=9))
    records = list(source.records())
    ahead, pipeline, runner = asyncio.run(_live(untrained_model, records, speculate=True))
    plain, cold, cold_runner = asyncio.run(_live(untrained_model, records, speculate=False))
    assert ahead.keys() == plain.keys() and len(ahead) > 20
    for key, probs in plain.items():
        np.testing.assert_allclose(ahead[key], probs, rtol=0, atol=1e-5)
    # Most windows were encoded while they waited out the lateness; at the close they reused it.
    assert pipeline.stats.windows_warmed >= 0.6 * len(ahead) and cold.stats.windows_warmed == 0
    assert runner.embed.audio_warm_hits >= 0.5 * len(ahead) and cold_runner.embed.audio_warm_hits == 0
    # No frame was encoded twice for it; single frames are encoded ahead only with revisions on (below).
    assert runner.embed.stats.frames_encoded == cold_runner.embed.stats.frames_encoded
    assert pipeline.stats.frames_warmed == 0


def test_frames_encoded_ahead_for_provisional_predictions_give_the_same_predictions(untrained_model: Path) -> None:
    """With revisions on a window's first prediction is made the moment its video and audio are complete:
    its frames are embedded before that, as soon as the video passes each instant the window samples."""
    records = list(SyntheticAV(SyntheticConfig(streams=2, seconds=6, seed=9)).records())
    # Words arrive about a second after they were said, as from a captioner: windows get a provisional prediction.
    records.sort(key=lambda r: r.t_end_ns + (NS if r.modality is Modality.TEXT else 0))
    ahead, pipeline, runner = asyncio.run(_live(untrained_model, records, speculate=True, revisions=True))
    plain, cold, cold_runner = asyncio.run(_live(untrained_model, records, speculate=False, revisions=True))
    assert ahead.keys() == plain.keys() and len(ahead) > 40
    assert any(revision > 0 for _, _, revision in ahead), "no window was revised"
    for key, probs in plain.items():
        np.testing.assert_allclose(ahead[key], probs, rtol=0, atol=1e-5)
    # Most frames were embedded ahead, and none twice.
    assert pipeline.stats.frames_warmed >= 0.5 * cold_runner.embed.stats.frames_encoded > 0
    assert cold.stats.frames_warmed == 0
    assert runner.embed.stats.frames_encoded == cold_runner.embed.stats.frames_encoded


def test_frames_waiting_to_be_encoded_ahead_stay_bounded_when_the_engine_is_never_idle(
    untrained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusionstream.consumers.pipeline import core

    monkeypatch.setattr(core, "MAX_FRAMES_AHEAD", 6)
    records = list(SyntheticAV(SyntheticConfig(streams=3, seconds=4, seed=2)).records())
    records.sort(key=lambda r: r.t_end_ns + (NS if r.modality is Modality.TEXT else 0))

    async def run() -> tuple[int, int]:
        with open_runtime("onnxruntime", untrained_model) as runtime:
            config = dataclasses.replace(_config(runtime.manifest), provisional_without=frozenset({Modality.TEXT}))
            async with Pipeline(Runner(runtime), config) as pipeline:
                most = 0
                for i in range(0, len(records), 12):  # no pause: windows are always in flight, nothing is warmed
                    await pipeline.feed([(r, None) for r in records[i : i + 12]])
                    most = max(most, len(pipeline._frames_ahead))
                await pipeline.flush()
                await pipeline.drain()
                return most, pipeline.stats.predictions

    most, predictions = asyncio.run(run())
    assert 0 < most <= 6 and predictions > 20


def test_a_record_from_kafka_must_be_keyed_by_its_stream_id() -> None:
    from fusionstream.consumers.pipeline.core import DeadLetter, decode_records

    value = wire.encode(text_record("cam-07", 3, 10 * NS, 11 * NS, "seven"))
    keyed, other, unkeyed, embedded = decode_records(
        [(value, "a", b"cam-07"), (value, "b", b"cam-08"), (value, "c", None), (value, "d")]
    )
    assert not isinstance(keyed, DeadLetter) and keyed.stream_id == "cam-07"
    assert not isinstance(embedded, DeadLetter)  # no Kafka key to check
    for letter, shown in ((other, "key 'cam-08'"), (unkeyed, "no key")):
        assert isinstance(letter, DeadLetter) and letter.reason == "key-mismatch", letter
        assert letter.stream_id == "cam-07" and shown in letter.detail and "\n" not in letter.detail
    # A record that does not decode keeps its own reason, whatever its key.
    (broken,) = decode_records([(value[:-1], "e", b"cam-08")])
    assert isinstance(broken, DeadLetter) and broken.reason == "truncated"


def test_interim_transcripts_and_resent_records_change_no_prediction(untrained_model: Path) -> None:
    """An interim ASR result (is_final false) is replaced by its final, and a producer that restarts resends
    its last second: neither may change a window (an interim word was fused as text and moved the text's
    watermark; a resent word was in the transcript twice). Both are counted, in no window."""
    records = list(SyntheticAV(SyntheticConfig(streams=2, seconds=8, seed=5)).records())
    texts = [r for r in records if r.modality is Modality.TEXT]
    interims = [dataclasses.replace(r, meta={**r.meta, "is_final": False}, payload=r.payload[:3]) for r in texts]
    # A second of every modality: from a word after the third second (where words fall depends on the bank).
    since = next(r.t_start_ns for r in texts if r.t_start_ns - records[0].t_start_ns >= 3 * NS)
    resent = [r for r in records if since <= r.t_start_ns < since + NS]
    assert interims and {r.modality for r in resent} == set(Modality)
    noisy: list = []
    for record in records:
        noisy += [i for i in interims if i.t_start_ns == record.t_start_ns and i.stream_id == record.stream_id
                  and record.modality is Modality.TEXT]
        noisy.append(record)
        if record is resent[-1]:
            noisy += resent
    plain, _ = asyncio.run(_run(untrained_model, records))
    mixed, pipeline = asyncio.run(_run(untrained_model, noisy))
    assert mixed.dead_letters == []
    assert pipeline.stats.records_ignored == len(interims) + len(resent)
    assert pipeline.aligner.stats.duplicates == len(resent)
    by_window = {(p.stream_id, p.t_start_ns): p for p in plain.predictions}
    assert {(p.stream_id, p.t_start_ns) for p in mixed.predictions} == by_window.keys()
    for p in mixed.predictions:
        same = by_window[(p.stream_id, p.t_start_ns)]
        assert p.label == same.label and p.scores == pytest.approx(same.scores, abs=1e-6)
