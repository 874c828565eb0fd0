"""int8 encoders: what `fusionstream quantize` writes for either format, and the onnxruntime backend
running it (``precision="int8"``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinymodels import randomize, tiny_spec

from fusionstream.consumers.settings import default_model_dir
from fusionstream.consumers.training.quantize_cli import quantize_command
from fusionstream.engines import EngineError, ModelDirError, export_model, open_runtime, random_batch
from fusionstream.engines.bench import embed, random_inputs
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.manifest_check import check_model_dir
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.quantize import quantize_manifest, quantize_model
from fusionstream.engines.spec import ModelSpec
from tests.v2models import write_v2_model

# -- format 1: static, calibrated -----------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    spec = tiny_spec("concat")
    out = tmp_path_factory.mktemp("int8-model")
    export_model(randomize(MultimodalModel(spec)).eval(), spec, out)
    calibration = [random_batch(spec, 16, seed, p_present=1.0) for seed in range(4)]
    quantize_model(out, calibration)
    return out


def test_quantize_writes_int8_graphs_beside_the_originals(quantized: Path) -> None:
    spec = ModelSpec.load(quantized)
    assert {spec.files[f"{g}_int8"] for g in ("video", "audio", "frame")} == {
        "video.int8.onnx", "audio.int8.onnx", "frame.int8.onnx"
    }
    assert "text_int8" not in spec.files and spec.files["video"] == "video.onnx"  # fp32 graphs stay
    audio = onnx.load(str(quantized / "audio.int8.onnx")).graph
    ops = [n.op_type for n in audio.node]
    assert ops.count("QuantizeLinear") >= 4  # the CNN body runs in int8
    first_conv = next(n for n in audio.node if n.op_type == "Conv")
    # The log-mel front end (a DFT as the first convolution) keeps float32 weights.
    assert all(not i.endswith("_DequantizeLinear_Output") for i in first_conv.input[1:])
    # the manifest view: the per-frame video encoder and audio have int8 graphs, text none
    encoders = {m: s.encoder for m, s in load_manifest(quantized).modalities.items()}
    assert {m: e.int8_file for m, e in encoders.items()} == {
        "video": "frame.int8.onnx", "audio": "audio.int8.onnx", "text": None
    }


def test_int8_backend_stays_close_to_fp32(quantized: Path) -> None:
    with open_runtime("onnxruntime", quantized) as fp32, open_runtime("onnxruntime", quantized, precision="int8") as q:
        assert q.graph_files()["video"] == "frame.int8.onnx" and q.graph_files()["text"] == "text.onnx"
        feeds = random_inputs(fp32, 24, 9)
        for name in ("video", "audio"):
            a, b = fp32.encode(name, feeds[name]), q.encode(name, feeds[name])
            assert not np.allclose(a, b, atol=1e-6)  # really another graph
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98, name
        np.testing.assert_array_equal(fp32.encode("text", feeds["text"]), q.encode("text", feeds["text"]))


def test_int8_needs_quantized_graphs(quantized: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(quantized, plain)
    spec = ModelSpec.load(plain)
    spec.replace(files={k: v for k, v in spec.files.items() if not k.endswith("_int8")}).save(plain)
    with pytest.raises(ModelDirError, match="fusionstream quantize"):
        open_runtime("onnxruntime", plain, precision="int8")


# -- format 2: dynamic ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path | None]]:
    model_dir = write_v2_model(tmp_path_factory.mktemp("v2-int8") / "model", ("video", "audio", "text"))
    return model_dir, quantize_manifest(model_dir)


def test_format_2_quantize_records_each_int8_graph_in_the_manifest(
    v2_quantized: tuple[Path, dict[str, Path | None]]
) -> None:
    model_dir, written = v2_quantized
    assert written == {m: model_dir / f"{f}.int8.onnx" for m, f in (("video", "frame"), ("audio", "audio"),
                                                                     ("text", "text"))}
    doc = json.loads((model_dir / "model.json").read_text())
    assert {m: e["encoder"]["int8_file"] for m, e in doc["modalities"].items()} == {
        "video": "frame.int8.onnx", "audio": "audio.int8.onnx", "text": "text.int8.onnx"
    }
    assert all(e["encoder"]["file"] == f"{e['encoder']['file'].split('.')[0]}.onnx" for e in doc["modalities"].values())
    ops = {n.op_type for n in onnx.load(str(model_dir / "text.int8.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}  # the weights really are int8
    _, reports = check_model_dir(model_dir)  # `model check` checks the int8 graphs too
    assert [r.graph for r in reports] == ["video", "video (int8)", "audio", "audio (int8)", "text", "text (int8)",
                                          "fusion"]


def test_format_2_int8_outputs_stay_close_to_fp32(v2_quantized: tuple[Path, dict[str, Path | None]]) -> None:
    model_dir, _ = v2_quantized
    with open_runtime("onnxruntime", model_dir) as fp32, open_runtime("onnxruntime", model_dir, precision="int8") as q:
        assert set(q.graph_files().values()) == {"frame.int8.onnx", "audio.int8.onnx", "text.int8.onnx", "fusion.onnx"}
        feeds = random_inputs(fp32, 16, 4)
        a, b = embed(fp32, feeds, 16), embed(q, feeds, 16)
        for name in a:
            error = np.abs(a[name] - b[name]).max() / np.abs(a[name]).max()
            assert 0 < error < 0.05, name  # measured: video 0.010, audio 0.007, text 0.004
        mask = np.ones((16, 3), np.float32)
        assert np.abs(fp32.fuse(a, mask) - q.fuse(b, mask)).max() < 0.02  # probabilities; measured 0.0004


def test_format_2_quantize_leaves_an_encoder_without_matmul_alone(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from tests.onnxgraphs import write_model

    write_model(tmp_path, audio={}, video={"frames": 2}, sizes={"video": 3})
    # a video encoder that only pools (no MatMul or Gemm): [N, 3, 8, 10] -> [N, 3]
    pool = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["embedding"])],
        "pool", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 10])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(pool, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "video.onnx"))
    doc = json.loads((tmp_path / "model.json").read_text())
    written = quantize_manifest(tmp_path)
    assert written == {"video": None, "audio": tmp_path / "audio.int8.onnx"}
    assert not (tmp_path / "video.int8.onnx").exists()
    after = json.loads((tmp_path / "model.json").read_text())
    assert "int8_file" not in after["modalities"]["video"]["encoder"]
    assert after["window"] == doc["window"] and after["task"] == doc["task"]  # the rest of the manifest kept
    with open_runtime("onnxruntime", tmp_path, precision="int8") as runtime:  # int8 audio, fp32 video
        assert runtime.graph_files() == {"video": "video.onnx", "audio": "audio.int8.onnx", "fusion": "fusion.onnx"}
    with pytest.raises(EngineError, match="is format 1: quantize it with quantize_model"):
        quantize_manifest(default_model_dir())


def test_the_quantize_command_on_format_2(tmp_path: Path) -> None:
    model_dir = write_v2_model(tmp_path / "model", ("audio", "text"))
    paths = quantize_command(model_dir, seconds=10, seed=0)
    assert sorted(p.name for p in paths) == ["audio.int8.onnx", "text.int8.onnx"]
    with open_runtime("onnxruntime", model_dir, precision="int8") as runtime:
        assert runtime.graph_files()["audio"] == "audio.int8.onnx"
