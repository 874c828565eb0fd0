"""GPU backends: the TensorRT engine cache (its key is checked everywhere), and on a machine with an
NVIDIA GPU: TensorRT parity with ONNX Runtime on both model formats, cache reuse and rebuild, torch
CUDA graphs (both formats).

``scripts/gpu_check.sh`` runs the GPU half with ``-m gpu``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import randomize, tiny_spec

from fusionstream.engines import Runtime, export_model, open_runtime
from fusionstream.engines.backends.tensorrt import EngineKey, default_cache_dir
from fusionstream.engines.bench import embed, random_inputs
from fusionstream.engines.model import MultimodalModel
from tests.v2models import write_v2_model

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none here)")
needs_tensorrt = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TENSORRT), reason="needs an NVIDIA GPU and the tensorrt package ([gpu] extra)"
)


def test_engine_key_covers_everything_a_plan_depends_on(tmp_path: Path) -> None:
    onnx = tmp_path / "video.onnx"
    onnx.write_bytes(b"graph one")
    base = dict(gpu="NVIDIA H200", compute_capability="9.0", tensorrt="10.13.0", fp16=True, opt_batch=32,
                max_batch=64)
    key = EngineKey.for_file(onnx, **base)
    assert EngineKey.for_file(onnx, **base).digest == key.digest  # stable: the cache is found again
    changed = [
        EngineKey.for_file(onnx, **(base | {field: value}))
        for field, value in [("gpu", "NVIDIA L4"), ("compute_capability", "8.9"), ("tensorrt", "10.14.1"),
                             ("fp16", False), ("opt_batch", 16), ("max_batch", 128)]
    ]
    onnx.write_bytes(b"graph two")
    changed.append(EngineKey.for_file(onnx, **base))
    changed.append(dataclasses.replace(key, builder=key.builder + 1))
    digests = {k.digest for k in changed}
    assert key.digest not in digests and len(digests) == len(changed)
    assert key.plan_path(tmp_path, "video").name == f"video-{key.digest}.plan"


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUSIONSTREAM_ENGINE_CACHE", str(tmp_path / "plans"))
    assert default_cache_dir() == tmp_path / "plans"
    monkeypatch.delenv("FUSIONSTREAM_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fusionstream" / "tensorrt"


@pytest.fixture(scope="module", params=["format-1", "format-2"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-model")
    if request.param == "format-2":  # the shipped encoders with an exported head
        return write_v2_model(out / "model", ("video", "audio", "text"))
    torch.manual_seed(0)
    spec = tiny_spec("gmu")
    export_model(randomize(MultimodalModel(spec)).eval(), spec, out)
    return out


def _outputs(runtime: Runtime, rows: int, seed: int) -> np.ndarray:
    feeds = random_inputs(runtime, rows, seed)
    mask = (np.random.default_rng(seed).random((rows, len(runtime.modalities))) < 0.7).astype(np.float32)
    windows = embed(runtime, feeds, rows)
    for column, modality in enumerate(runtime.modalities):
        windows[modality][mask[:, column] == 0] = 0
    return runtime.fuse(windows, mask)


def _agree(backend: Runtime, reference: Runtime, atol: float, rows: int = 12) -> None:
    np.testing.assert_allclose(_outputs(backend, rows, 3), _outputs(reference, rows, 3), atol=atol)
    if reference.embeds_frames:
        frames = random_inputs(reference, 3, 5)["video"]
        np.testing.assert_allclose(backend.encode_frames(next(iter(frames.values()))),
                                   reference.encode_frames(next(iter(frames.values()))), atol=atol * 10)


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime_and_reuses_its_cache(model_dir: Path, tmp_path: Path, fp16: bool) -> None:
    cache = tmp_path / "plans"
    with open_runtime("onnxruntime", model_dir) as reference:
        with open_runtime("tensorrt", model_dir, fp16=fp16, cache_dir=cache, max_batch=16, opt_batch=8) as trt:
            assert sorted(trt.built) == sorted(trt.graphs())  # an empty cache: every engine built
            assert set(trt.graphs()) == {*trt.modalities, "fusion"}
            _agree(trt, reference, atol=2e-2 if fp16 else 1e-3)
            _agree(trt, reference, atol=2e-2 if fp16 else 1e-3, rows=40)  # beyond max_batch: run in slices
        with open_runtime("tensorrt", model_dir, fp16=fp16, cache_dir=cache, max_batch=16, opt_batch=8) as again:
            assert again.built == []  # every plan came from the cache


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_rebuilds_when_the_onnx_file_changes(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    cache = tmp_path / "plans"
    with open_runtime("tensorrt", copy, cache_dir=cache, max_batch=8, opt_batch=4) as first:
        fusion = copy / first.graph_files()["fusion"]
    import onnx

    graph = onnx.load(str(fusion))
    onnx.helper.set_model_props(graph, {"note": "same graph, another file"})
    onnx.save(graph, str(fusion))
    with open_runtime("tensorrt", copy, cache_dir=cache, max_batch=8, opt_batch=4) as rebuilt:
        assert rebuilt.built == ["fusion"]  # only the changed graph


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_torch_cuda_graphs_match_eager(model_dir: Path, fp16: bool) -> None:
    with (
        open_runtime("torch", model_dir) as cpu,
        open_runtime("torch", model_dir, device="cuda", fp16=fp16, cuda_graphs=True, max_batch=16) as graphed,
    ):
        for size in (1, 5, 16, 37):  # buckets 1, 8, 16, and slices beyond max_batch
            np.testing.assert_allclose(_outputs(graphed, size, size), _outputs(cpu, size, size),
                                       atol=2e-2 if fp16 else 1e-4)
        assert {key[1] for key in graphed._graphs} <= {1, 2, 4, 8, 16}
