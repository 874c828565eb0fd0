"""int8 encoders: what `fusionstream quantize` writes, and the onnxruntime backend running it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinymodels import randomize, tiny_spec

from fusionstream.engines import ModelDirError, export_model, load_backend, random_batch
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.quantize import quantize_model
from fusionstream.engines.spec import ModelSpec


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


def test_int8_backend_stays_close_to_fp32(quantized: Path) -> None:
    batch = random_batch(ModelSpec.load(quantized), 24, 9, p_present=1.0)
    with load_backend("onnxruntime", quantized) as fp32, load_backend("onnxruntime", quantized, precision="int8") as q:
        for name in ("video", "audio"):
            a, b = fp32.encode(name, getattr(batch, name)), q.encode(name, getattr(batch, name))
            assert not np.allclose(a, b, atol=1e-6)  # really another graph
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98, name
        np.testing.assert_array_equal(fp32.encode("text", batch.text), q.encode("text", batch.text))


def test_int8_needs_quantized_graphs(quantized: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(quantized, plain)
    spec = ModelSpec.load(plain)
    spec.replace(files={k: v for k, v in spec.files.items() if not k.endswith("_int8")}).save(plain)
    with pytest.raises(ModelDirError, match="fusionstream quantize"):
        load_backend("onnxruntime", plain, precision="int8")
