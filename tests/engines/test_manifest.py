"""The format-2 manifest (docs/model-format.md) and `model check`: what loads, and what is refused
at load with the file and the field named."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fusionstream.consumers.settings import default_model_dir
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.manifest_check import check_model_dir
from tests.v2models import encoders_manifest, write_v2_model


@pytest.fixture(scope="module")
def av_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_v2_model(tmp_path_factory.mktemp("av") / "model")


def test_the_shipped_format_1_model_reads_as_its_format_2_equivalent() -> None:
    manifest, reports = check_model_dir(default_model_dir())
    assert manifest.source_format == 1 and list(manifest.modalities) == ["video", "audio", "text"]
    assert manifest.task is not None and manifest.task.kind == "single_label" and len(manifest.task.classes) == 10
    assert (manifest.window_ns, manifest.hop_ns) == (1_000_000_000, 500_000_000)
    assert [(r.graph, r.file, r.output_size) for r in reports] == [
        ("video", "frame.onnx", 64), ("video (int8)", "frame.int8.onnx", 64),  # per frame; its int8 graph too
        ("audio", "audio.onnx", 64), ("audio (int8)", "audio.int8.onnx", 64), ("text", "text.onnx", 64),
        ("fusion", "fusion.onnx", 10)]


def test_a_video_and_audio_model_checks_with_its_own_sizes(av_model: Path) -> None:
    manifest, reports = check_model_dir(av_model)
    assert manifest.source_format == 2 and list(manifest.modalities) == ["video", "audio"]
    assert manifest.modalities["video"].encoder.per_frame
    assert [r.graph for r in reports] == ["video", "audio", "fusion"]
    assert all(r.cpu_ms >= 0 for r in reports) and reports[-1].output_size == 10


def test_an_encoders_directory_loads_without_task_or_fusion(tmp_path: Path) -> None:
    doc = {"format": 2, "version": "enc", "window": {"length_ms": 1000, "hop_ms": 500},
           "modalities": encoders_manifest(tmp_path, ["audio", "text"])}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    manifest, reports = check_model_dir(tmp_path)
    assert not manifest.servable and [r.graph for r in reports] == ["audio", "text"]


BAD: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "wrong embedding size": (
        lambda d: d["modalities"]["audio"]["encoder"]["output"].update(size=32),
        "modalities.audio.encoder.output.size: 32 declared, audio.onnx gives [64]",
    ),
    "input shape against the preprocessing": (
        lambda d: d["modalities"]["video"]["preprocess"].update(height=32, width=32),
        "modalities.video.preprocess: makes [3, 32, 32] per row, frame.onnx input 'frame' expects [3, 64, 64]",
    ),
    "samples against the window": (
        lambda d: d["modalities"]["audio"]["preprocess"].update(samples=8000),
        "modalities.audio.preprocess.samples: 8000 samples disagree with the window: 1000 ms at 16000 Hz is 16000",
    ),
    "missing tokenizer": (
        lambda d: d["modalities"].update(text={
            "encoder": {"file": "audio.onnx", "inputs": {"input_ids": {"name": "input_ids"}},
                        "output": {"name": "embedding", "size": 64}},
            "preprocess": {"tokenizer": "tokenizer.json"}}),
        "modalities.text.preprocess.tokenizer: ",
    ),
    "input name the graph lacks": (
        lambda d: d["modalities"]["video"]["encoder"]["inputs"]["pixels"].update(name="pixel_values"),
        "modalities.video.encoder.inputs.pixels.name: frame.onnx has no input 'pixel_values' (it has frame)",
    ),
    "classes the head does not give": (
        lambda d: d["task"].update(classes=["a", "b", "c"]),
        "fusion.output: the task has 3 classes, fusion.onnx gives [1, 10] for a batch of 1",
    ),
    "threshold out of range": (
        lambda d: d.update(task={"kind": "multi_label", "classes": [str(i) for i in range(10)], "thresholds": 1.5}),
        "task.thresholds: every threshold must be in (0, 1)",
    ),
    "unknown field": (
        lambda d: d["modalities"]["video"]["preprocess"].update(colour_space="rgb"),
        "modalities.video.preprocess: unknown field(s) colour_space",
    ),
    "task without fusion": (lambda d: d.pop("fusion"), "task and fusion go together"),
    "no modality": (lambda d: d.update(modalities={}), "modalities: declare at least one of video, audio, text"),
    "hop longer than the window": (
        lambda d: d["window"].update(hop_ms=2000), "window.hop_ms: hop 2000 ms is longer than the window 1000 ms"
    ),
    "unknown format": (lambda d: d.update(format=3), "format: 3 is not supported"),
    "empty version": (lambda d: d.update(version=""), "version: must be a non-empty name"),
    "blank version": (lambda d: d.update(version=" 2 "), "version: must be a non-empty name without surrounding"),
    "format as a string": (lambda d: d.update(format="2"), "format: '2' is a string; write the number"),
    "softmax on a multi-label task": (
        lambda d: d.update(task={"kind": "multi_label", "classes": [str(i) for i in range(10)]})
        or d["fusion"]["output"].update(activation="softmax"),
        "fusion.output.activation: softmax makes a multi_label model's classes compete",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_model_is_refused_at_load_naming_the_file_and_field(av_model: Path, tmp_path: Path, case: str) -> None:
    edit, message = BAD[case]
    broken = tmp_path / "model"
    broken.mkdir()
    for file in av_model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    doc = json.loads((broken / "model.json").read_text())
    edit(doc)
    (broken / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError) as caught:
        check_model_dir(broken)
    text = str(caught.value)
    assert text.startswith(str(broken / "model.json")) and message in text, text
    assert "\n" not in text


def test_a_version_is_shown_with_a_v_only_when_it_is_a_number(av_model: Path) -> None:
    from fusionstream.consumers.engine import model_title

    manifest = load_manifest(av_model)
    method = manifest.fusion.method if manifest.fusion is not None else "no head"
    assert model_title(dataclasses.replace(manifest, version="2026.12.06")) == f"{method} v2026.12.06"
    assert model_title(dataclasses.replace(manifest, version="vt-emb-1")) == f"{method} vt-emb-1"


def test_a_graph_file_that_is_not_onnx_is_refused_naming_it(av_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for file in av_model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "audio.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelDirError, match=r"modalities\.audio\.encoder\.file: audio\.onnx is not a loadable ONNX"):
        check_model_dir(broken)


def test_a_graph_input_without_a_shape_is_refused_saying_so(av_model: Path, tmp_path: Path) -> None:
    """An input with no shape at all was reported as 'has shape []', which reads as a scalar."""
    import onnx

    broken = tmp_path / "model"
    broken.mkdir()
    for file in av_model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    graph = onnx.load(str(broken / "audio.onnx"))
    graph.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(graph, str(broken / "audio.onnx"))
    with pytest.raises(ModelDirError, match=r"modalities\.audio\.encoder\.inputs\.\w+: audio\.onnx input '\w+' "
                                            r"declares no shape \(its rank is unknown\)"):
        check_model_dir(broken)


def test_the_manifest_keeps_the_declared_preprocessing(av_model: Path) -> None:
    manifest = load_manifest(av_model)
    video = manifest.modalities["video"].preprocess
    assert (video.frames, video.height, video.width, video.layout) == (4, 64, 64, "nchw")  # type: ignore[union-attr]
    assert manifest.fusion is not None and manifest.fusion.inputs == {"video": "emb_video", "audio": "emb_audio"}


def test_a_model_json_nested_too_deep_or_too_large_is_refused_in_one_line(tmp_path: Path) -> None:
    """JSON nested 100,000 deep gave a 62-line RecursionError traceback; a 200 MB file was read whole first."""
    from fusionstream.engines.spec import MAX_MODEL_JSON_BYTES

    (tmp_path / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelDirError, match="JSON nested too deep"):
        load_manifest(tmp_path)
    with (tmp_path / "model.json").open("wb") as big:
        big.truncate(MAX_MODEL_JSON_BYTES + 1)  # sparse: its size alone refuses it, nothing is read
    with pytest.raises(ModelDirError, match=r"not a model\.json"):
        load_manifest(tmp_path)
