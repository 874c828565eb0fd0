"""Format-2 model directories (docs/model-format.md) served by `serve`, the embedded pipeline, `demo` and `bench`:
only the declared modalities are aligned and masked, every window is predicted once, and what is
published for single-label, multi-label and embedding models is what the graphs give, recomputed
here with ONNX Runtime directly from each window's inputs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest
from servicekit import PARTITIONS, REPO_ROOT, Reader, Running, all_topics, covers, produce, service_settings, synthetic

from fusionstream.consumers.engine import load_model, open_engine
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.report import WindowCensus
from fusionstream.consumers.settings import ModelWindowMismatch, Settings, default_model_dir
from fusionstream.consumers.subscribers.api import parse_prediction
from fusionstream.consumers.subscribers.tail import format_line
from fusionstream.consumers.training.dataset import windows_of
from fusionstream.engines.errors import EngineError, ModelDirError
from fusionstream.engines.features import frames_to_array, text_to_ids
from fusionstream.engines.manifest import Manifest, load_manifest
from fusionstream.engines.spec import MODALITIES, ModelSpec
from fusionstream.stream.records import Record
from fusionstream.stream.windows import Window
from tests.onnxgraphs import fusion_head
from tests.v2models import encoders_manifest, write_v2_model


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


MULTI = {"kind": "multi_label", "classes": ["always", "never", "maybe", "often", "rarely"],
         "thresholds": [0.001, 0.999, 0.5, 0.3, 0.7]}


class _Models(dict):
    """Format-2 directories on the shipped encoders, each with its own subset of modalities and task; each
    built the first time a test asks for it."""

    RECIPES: ClassVar[dict[str, tuple[tuple[str, ...], dict[str, Any] | None, str]]] = {
        "av": (("video", "audio"), None, "softmax"),
        "multi": (("video", "audio", "text"), MULTI, "sigmoid"),
        "embedding": (("video", "text"), {"kind": "embedding", "size": 12}, "none"),
    }

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        modalities, task, activation = self.RECIPES[name]
        out = self.root / name
        if name == "av":  # a head exported from torch, as a user's would be
            self[name] = write_v2_model(out, modalities, task, activation=activation)
            return out
        # The others: a masked linear head written with onnx.helper (milliseconds, not a torch export).
        assert task is not None
        entries = encoders_manifest(out, modalities)
        outputs = task["size"] if task["kind"] == "embedding" else len(task["classes"])
        fusion_head(out / "fusion.onnx", {m: entries[m]["encoder"]["output"]["size"] for m in modalities}, outputs)
        doc = {"format": 2, "version": f"test-{name}", "window": {"length_ms": 1000, "hop_ms": 500}, "task": task,
               "modalities": entries,
               "fusion": {"file": "fusion.onnx", "method": "concat",
                          "inputs": {**{m: f"emb_{m}" for m in modalities}, "mask": "mask"},
                          "output": {"name": "scores", "activation": activation}}}
        (out / "model.json").write_text(json.dumps(doc))
        self[name] = out
        return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _Models(tmp_path_factory.mktemp("v2"))


def declared(records: Sequence[Record], manifest: Manifest) -> list[Record]:
    return [r for r in records if r.modality.label in manifest.modalities]


def direct(model_dir: Path, windows: Sequence[Window]) -> np.ndarray:
    """The fusion graph's output for these windows, every graph run here with ONNX Runtime on inputs made
    the format-1 way (the shipped encoders' own featurisation), before the activation."""
    manifest = load_manifest(model_dir)
    spec = ModelSpec.load(default_model_dir())
    sessions = {name: ort.InferenceSession(str(model_dir / file), providers=["CPUExecutionProvider"])
                for name, file in manifest.graph_files().items()}

    def embed(name: str, window: Window) -> np.ndarray:
        session = sessions[name]
        if name == "video":
            return session.run(None, {"frame": frames_to_array(window.frames, spec)})[0].mean(axis=0)
        if name == "audio":
            return session.run(None, {"audio": window.audio[None]})[0][0]
        return session.run(None, {"text": text_to_ids(window.transcript, spec)[None]})[0][0]

    feed: dict[str, np.ndarray] = {}
    columns = [MODALITIES.index(m) for m in manifest.modalities]
    for name, column in zip(manifest.modalities, columns, strict=True):
        size = manifest.modalities[name].encoder.size
        feed[f"emb_{name}"] = np.stack([embed(name, w) if w.mask[column] else np.zeros(size, np.float32)
                                        for w in windows]).astype(np.float32)
    feed["mask"] = np.array([[w.mask[c] for c in columns] for w in windows], np.float32)
    return sessions["fusion"].run(None, feed)[0]


def reference(model_dir: Path, records: Sequence[Record]) -> dict[tuple[str, int], np.ndarray]:
    """Window id → the model's output (activation applied) for the windows these records make."""
    manifest = load_manifest(model_dir)
    config = Settings(model_dir=model_dir).model_window_config(manifest)
    windows = list(windows_of(declared(records, manifest), config))
    out = direct(model_dir, windows)
    assert manifest.fusion is not None
    activation = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}[manifest.fusion.activation]
    return {w.window_id: row for w, row in zip(windows, activation(out), strict=True)}


# -- through the broker ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["av", "embedding"])
def test_kafka_serves_a_format_2_model_every_window_once_ignoring_undeclared_modalities(
    kafka_bootstrap: str, topic_prefix: str, models: dict[str, Path], which: str
) -> None:
    model_dir = models[which]
    manifest = load_manifest(model_dir)
    settings = service_settings(kafka_bootstrap, topic_prefix, model_dir)
    records = synthetic(streams=2, seconds=6, seed=77).records()
    census = WindowCensus(settings.model_window_config(manifest), manifest.modalities)
    records = list(census.watch(records))
    undeclared = [r for r in records if r.modality.label not in manifest.modalities]
    assert undeclared, "the workload has records the model does not use"
    masks: list[tuple[int, ...]] = []

    async def scenario() -> tuple[Reader, int]:
        from fusionstream.consumers.kafka import delete_topics, ensure_topics

        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, records)
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader:
                async with Running(settings) as service:
                    runtime = service._runner.runtime
                    fuse = runtime.fuse

                    def spy(embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
                        masks.append(mask.shape)
                        return fuse(embeddings, mask)

                    runtime.fuse = spy
                    await reader.until(covers(census.expected))
                    await asyncio.sleep(0.3)
                await reader.to_end()
                assert service._pipeline is not None
                return reader, service._pipeline.stats.records_ignored
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, ignored = asyncio.run(scenario())
    windows = reader.windows()
    assert not [w for w, n in Counter(windows).items() if n > 1], "a window predicted twice"
    assert set(windows) == census.expected
    assert ignored == len(undeclared)
    assert masks and all(shape[1] == len(manifest.modalities) for shape in masks)
    expected = reference(model_dir, records)
    for value in reader.values():
        p = parse_prediction(value)
        assert p.model_version == manifest.version
        for name in MODALITIES:
            if name not in manifest.modalities:
                assert p.modalities[name] is False and p.coverage[name] == 0.0
        want = expected[(p.stream_id, p.t_start_ns)]
        if which == "embedding":
            assert p.label == "" and p.score == 0.0 and not p.scores and p.labels is None
            assert p.embedding is not None and len(p.embedding) == 12
            np.testing.assert_allclose(p.embedding, want, rtol=0, atol=1e-5)
            assert "embedding[12]" in format_line(p).plain
        else:
            assert p.embedding is None and p.labels is None and "embedding" not in value and "labels" not in value
            assert p.label == str(int(np.argmax(want)))
            np.testing.assert_allclose([p.scores[str(d)] for d in range(10)], want, rtol=0, atol=1e-5)


# -- the embedded pipeline ------------------------------------------------------------------------


def _embedded(settings: Settings, records: Sequence[Record], **options: Any) -> tuple[list[Prediction], Pipeline]:
    async def go() -> tuple[list[Prediction], Pipeline]:
        from fusionstream.consumers.embedded import run_embedded

        with open_engine(settings) as (runner, spec):
            async with Pipeline(runner, settings.model_window_config(spec), **options) as pipeline:
                result = await run_embedded(pipeline, records, realtime=False)
            return result.predictions, pipeline

    return asyncio.run(go())


def test_a_multi_label_model_publishes_every_class_at_or_above_its_threshold(models: dict[str, Path]) -> None:
    model_dir = models["multi"]
    settings = Settings(model_dir=model_dir, max_batch=8)
    records = list(synthetic(streams=2, seconds=5, seed=5).records())
    predictions, pipeline = _embedded(settings, records)
    expected = reference(model_dir, records)
    assert len(predictions) == len(expected) and pipeline.stats.records_ignored == 0
    assert {p.window_id for p in predictions} == {f"{s}@{t}" for s, t in expected}
    seen: Counter[str] = Counter()
    for p in predictions:
        probs = expected[(p.stream_id, p.t_start_ns)]
        want = {c: float(s) for c, s, t in zip(MULTI["classes"], probs, MULTI["thresholds"], strict=True) if s >= t}
        assert p.labels is not None and list(p.labels) == sorted(want, key=lambda c: -want[c])
        np.testing.assert_allclose([p.labels[c] for c in want], list(want.values()), rtol=0, atol=1e-5)
        assert p.label == MULTI["classes"][int(np.argmax(probs))] and p.score == pytest.approx(probs.max(), abs=1e-5)
        assert list(p.scores) == MULTI["classes"]
        value = json.loads(p.to_json())
        parsed = parse_prediction(value)
        assert dict(parsed.labels or {}) == value["labels"] and "embedding" not in value
        assert "always" in format_line(parsed).plain.split("labels: ")[1]
        seen.update(list(p.labels))
    assert seen["always"] == len(predictions) and seen["never"] == 0
    assert pipeline.runner.embed.stats.frames_saved > 0.3  # overlapping windows share their frames' embeddings


def test_records_of_an_undeclared_modality_are_counted_and_never_aligned(models: dict[str, Path]) -> None:
    """A video+text model: audio records are not fed to the aligner (no window waits for them, none holds
    them), the windows are those of the video and text alone, and the published mask says no audio."""
    model_dir = models["embedding"]
    records = list(synthetic(streams=1, seconds=4, seed=9).records())
    audio = sum(r.modality.label == "audio" for r in records)
    predictions, pipeline = _embedded(Settings(model_dir=model_dir), records, speculate=False)
    assert pipeline.stats.records_ignored == audio > 0
    assert pipeline.aligner.stats.items == len(records) - audio
    assert pipeline.runner.modalities == ("video", "text")
    assert all(not p.mask[1] and p.coverage[1] == 0.0 for p in predictions)
    assert {p.window_id for p in predictions} == {f"{s}@{t}" for s, t in reference(model_dir, records)}


def test_reused_warmed_and_unreused_embeddings_agree(models: dict[str, Path]) -> None:
    """Frames and transcripts embedded once for overlapping windows, and windows encoded ahead of their
    close, give what encoding every window whole gives."""
    from fusionstream.consumers.pipeline.reuse import Embedder

    model_dir = models["multi"]
    manifest = load_manifest(model_dir)
    config = Settings(model_dir=model_dir).model_window_config(manifest)
    windows = list(windows_of(synthetic(streams=2, seconds=4, seed=3).records(), config))
    with open_engine(Settings(model_dir=model_dir)) as (runner, _):
        cold, mask = Embedder(runner.runtime, reuse=False)(windows)
        reused = Embedder(runner.runtime)
        reused.warm(windows[: len(windows) // 2])
        warm, warm_mask = reused(windows)
    assert mask.shape == (len(windows), 3) and np.array_equal(mask, warm_mask)
    assert reused.audio_warm_hits == sum(w.mask[1] for w in windows[: len(windows) // 2]) > 0
    assert 0 < reused.stats.frames_encoded < reused.stats.frames_needed
    for name in manifest.modalities:
        np.testing.assert_allclose(warm[name], cold[name], rtol=0, atol=1e-5)


def test_parse_prediction_takes_labels_and_embedding_and_checks_them() -> None:
    from fusionstream.consumers.subscribers.errors import BadPrediction

    base = {"window_id": "cam@0", "stream_id": "cam", "t_start_ns": 0, "t_end_ns": 1, "label": "7", "score": 0.9}
    single = parse_prediction(base)
    assert single.labels is None and single.embedding is None and set(single.to_dict()) == {
        "window_id", "stream_id", "t_start_ns", "t_end_ns", "label", "score", "scores", "modalities", "coverage",
        "model_version", "closed_by", "latency_ms", "batch_size", "revision", "final"}
    multi = parse_prediction(base | {"labels": {"7": 0.9, "1": 0.6}})
    assert dict(multi.labels or {}) == {"7": 0.9, "1": 0.6} and multi.to_dict()["labels"] == {"7": 0.9, "1": 0.6}
    assert not multi.extra
    vector = parse_prediction(base | {"label": "", "score": 0, "embedding": [0.5, -1, 2.25], "labels": None})
    assert vector.embedding == (0.5, -1.0, 2.25) and vector.labels is None and vector.to_dict()["embedding"] == [
        0.5, -1.0, 2.25]
    for bad in ({"labels": ["7"]}, {"labels": {"7": "high"}}, {"embedding": {"0": 1.0}}, {"embedding": [1, True]}):
        with pytest.raises(BadPrediction, match="bad-field"):
            parse_prediction(base | bad)


# -- refused at start, in one line ----------------------------------------------------------------


def test_windows_that_disagree_with_a_format_2_model_are_refused(models: dict[str, Path]) -> None:
    manifest = load_model(models["av"])
    assert isinstance(manifest, Manifest)
    config = Settings(model_dir=models["av"]).model_window_config(manifest)
    assert (config.window_ns, config.hop_ns, config.frames_per_window, config.sample_rate) == (10**9, 5 * 10**8, 4,
                                                                                                16_000)
    with pytest.raises(ModelWindowMismatch, match=r"window_ms=2000 disagrees with the model's window of 1000 ms "
                                                  r"\(window\.length_ms\)"):
        Settings(model_dir=models["av"], window_ms=2000).model_window_config(manifest)
    with pytest.raises(ModelWindowMismatch, match=r"hop_ms=250 .*\(window\.hop_ms\)"):
        Settings(model_dir=models["av"], hop_ms=250).check_model_windows(manifest)


def _serve(model_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FUSIONSTREAM_MODEL_DIR": str(model_dir), "FUSIONSTREAM_BOOTSTRAP_SERVERS":
                   "127.0.0.1:1", "FUSIONSTREAM_BROKER_WAIT_S": "0", "FUSIONSTREAM_METRICS_PORT": "0",
                   **{f"FUSIONSTREAM_{k.upper()}": v for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "fusionstream", "serve"], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["window", "embedding size", "precision"])
def test_serve_refuses_a_bad_format_2_setup_at_start_in_one_line(
    models: dict[str, Path], tmp_path: Path, case: str
) -> None:
    model_dir, env = models["av"], {}
    if case == "window":
        env, wanted = {"window_ms": "2000"}, "window_ms=2000 disagrees with the model's window of 1000 ms"
    elif case == "precision":  # int8 needs the int8 graphs of `fusionstream quantize`, which this directory lacks
        env, wanted = {"precision": "int8"}, "int8"
    else:
        import shutil

        model_dir = tmp_path / "bad"
        shutil.copytree(models["av"], model_dir)
        doc = json.loads((model_dir / "model.json").read_text())
        doc["modalities"]["audio"]["encoder"]["output"]["size"] = 32
        (model_dir / "model.json").write_text(json.dumps(doc))
        wanted = "model.json: modalities.audio.encoder.output.size: 32 declared, audio.onnx gives [64]"
    done = _serve(model_dir, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and wanted in lines[0] and "Traceback" not in done.stdout + done.stderr, done.stderr


def test_open_engine_refuses_an_encoders_only_directory(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "encoders"
    shutil.copytree(models["av"], model_dir)
    doc = json.loads((model_dir / "model.json").read_text())
    del doc["task"], doc["fusion"]
    (model_dir / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError, match=r"train a head on it first \(fusionstream train OUT --encoders"), \
            open_engine(Settings(model_dir=model_dir)):
        pass
    with pytest.raises(EngineError, match="int8"), open_engine(Settings(model_dir=models["av"], precision="int8")):
        pass


# -- demo -----------------------------------------------------------------------------------------


def test_demo_runs_a_format_2_model(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "predictions.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "fusionstream", "demo", "--model", str(models["multi"]), "--fast", "--seconds", "4",
         "--streams", "1", "--json", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["windows"] >= 7 and summary["missing_windows"] == 0 and summary["duplicate_windows"] == 0
    values = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(values) == summary["windows"] and all("labels" in v and v["labels"] is not None for v in values)
    # A multi-label model is not scored against the synthetic digits (it would read 0.000).
    assert summary["accuracy"] is None and summary["accuracy_all"] is None


def test_bench_runs_every_stage_on_a_format_2_model(models: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fusionstream", "bench", "--model", str(models["embedding"]), "--streams", "2",
         "--seconds", "6", "--no-kafka", "--no-realtime", "--rounds", "1", "--batch-sizes", "8", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"]["format"] == 2 and report["model"]["modalities"] == ["video", "text"]
    # The same stages as for format 1; int8 needs `fusionstream quantize`'s graphs, which this model lacks,
    # and naive needs the torch backend to run the model's graphs (left out, with the reason, where it cannot).
    assert set(report["stages"]) >= {"engine", "engine_no_reuse", "intake", "pipeline"}
    assert set(report["stages"]) | set(report["skipped"]) == {"engine", "engine_no_reuse", "intake", "pipeline",
                                                               "naive", "engine_int8"}
    assert "engine_int8" in report["skipped"] and all(report["skipped"].values())
    assert report["stages"]["engine_no_reuse"]["windows"] == report["stages"]["engine"]["windows"] > 0
    assert report["stages"]["pipeline"]["windows"] == report["stages"]["intake"]["windows"] > 0
    assert report["stages"]["pipeline"]["dead_letters"] == 0 and report["ratios"]["pipeline/engine"] > 0
    share = report["stages"]["engine"]["graph_share"]
    assert set(share) == {"video", "text", "fusion", "other"} and abs(sum(share.values()) - 1) < 0.01
