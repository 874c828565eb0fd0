"""``ModelSpec`` and ``model.json``: round trip, derived shapes, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tinymodels import tiny_spec

from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.spec import FUSION_HEADS, SPEC_FILE, ModelSpec


def test_defaults_and_derived_shapes() -> None:
    spec = ModelSpec(version="1", fusion="gmu")
    assert spec.classes == [str(d) for d in range(10)] and spec.n_classes == 10
    assert spec.samples_per_window == 16_000 and spec.audio_frames == 98
    assert spec.input_shapes == {"video": (4, 3, 64, 64), "audio": (16_000,), "text": (256,), "mask": (3,)}
    assert spec.files == {name: f"{name}.onnx" for name in ("video", "audio", "text", "fusion", "frame")}


def test_files_need_the_four_graphs_and_allow_only_known_optional_ones() -> None:
    four = {name: f"{name}.onnx" for name in ("video", "audio", "text", "fusion")}
    assert ModelSpec(version="1", fusion="gmu", files=four).has_graph("frame") is False
    assert ModelSpec(version="1", fusion="gmu", files=four | {"video_int8": "v8.onnx"}).has_graph("video_int8")
    with pytest.raises(ModelDirError, match="files must map"):
        ModelSpec(version="1", fusion="gmu", files={k: v for k, v in four.items() if k != "audio"})
    with pytest.raises(ModelDirError, match="files must map"):
        ModelSpec(version="1", fusion="gmu", files=four | {"extra": "x.onnx"})


def test_save_load_round_trip(tmp_path: Path) -> None:
    spec = tiny_spec("decision", fusion_options={"combine": "vote"}, metrics={"accuracy": 0.9})
    path = spec.save(tmp_path / "new" / "dir")
    assert path.name == SPEC_FILE
    assert ModelSpec.load(path.parent) == spec == ModelSpec.load(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and doc["inputs"]["video"] == [2, 3, 16, 16]
    assert spec.replace(metrics={"accuracy": 1.0}).metrics == {"accuracy": 1.0}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fusion": "late"}, "fusion 'late' is not one of"),
        ({"version": ""}, "version"),
        ({"classes": ["only"]}, "at least two"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"embed_dim": 0}, "embed_dim must be an integer >= 1"),
        ({"image_size": 8}, "image_size"),
        ({"frames_per_window": 2.0}, "frames_per_window"),
        ({"hop_ns": 2_000_000_000}, "longer than window_ns"),
        ({"sample_rate": 7}, "not a whole number of samples"),
        ({"window_ns": 10_000_000, "hop_ns": 5_000_000}, "shorter than the 400-sample FFT"),
        ({"text_ngrams": ()}, "text_ngrams"),
        ({"n_mels": 300}, "exceeds"),
        ({"audio_pooling": "attention"}, "audio_pooling 'attention' is not one of mean, mean\\+max"),
        ({"video_stem": "patchify"}, "video_stem 'patchify' is not one of pool, strided"),
        ({"files": {"video": "v.onnx"}}, "files must map"),
        ({"files": {"video": "../v.onnx", "audio": "a", "text": "t", "fusion": "f"}}, "plain file name"),
    ],
)
def test_invalid_specs_raise(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelDirError, match=message):
        tiny_spec(**changes)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not a model directory"):
        ModelSpec.load(tmp_path)
    path = tmp_path / SPEC_FILE
    path.write_text("{not json")
    with pytest.raises(ModelDirError, match="cannot read"):
        ModelSpec.load(tmp_path)
    doc = tiny_spec().to_dict()
    for change, message in [
        ({"colour": "red"}, "unknown field"),
        ({"format": 99}, "format 99"),
        ({"inputs": {"video": [1]}}, "disagree"),
    ]:
        path.write_text(json.dumps(doc | change))
        with pytest.raises(ModelDirError, match=message) as info:
            ModelSpec.load(tmp_path)
        assert str(path) in str(info.value)
    path.write_text(json.dumps({k: v for k, v in doc.items() if k not in ("fusion", "version")}))
    with pytest.raises(ModelDirError, match=r"model\.json: required field\(s\) missing: version, fusion$"):
        ModelSpec.load(tmp_path)  # (Python's own message named ModelSpec.__init__ and keyword-only arguments)
    with pytest.raises(ModelDirError, match="JSON-serialisable"):
        tiny_spec(metrics={"bad": object()}).save(tmp_path)


@pytest.mark.parametrize(("name", "older", "newer"), [("audio_pooling", "mean", "mean+max"),
                                                    ("video_stem", "pool", "strided")])
def test_an_architecture_field_defaults_to_what_older_model_json_meant(
    tmp_path: Path, name: str, older: str, newer: str
) -> None:
    doc = tiny_spec().to_dict()
    del doc[name]  # a model.json written before the field existed
    (tmp_path / SPEC_FILE).write_text(json.dumps(doc))
    assert getattr(ModelSpec.load(tmp_path), name) == older
    tiny_spec(**{name: newer}).save(tmp_path)
    assert getattr(ModelSpec.load(tmp_path), name) == newer


def test_every_head_name_is_a_valid_fusion() -> None:
    for name in FUSION_HEADS:
        assert tiny_spec(name).fusion == name


def test_import_engines_is_light() -> None:
    # The service imports engines in every process; torch/onnxruntime/cv2 load only when used.
    code = (
        "import sys, engines; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'cv2', 'tensorrt', 'stream', 'consumers', 'aiokafka') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
