"""Every backend available here (onnxruntime, torch on the CPU) on both model formats, through the one
modality-keyed runtime interface (``open_runtime``): the shipped format-1 model and format-2 stand-ins
(three modalities, video+audio, multi-label, embedding), held to the same assertions."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusionstream.consumers.settings import default_model_dir
from fusionstream.engines import BackendUnavailable, EngineError, InputError, ModelDirError, open_runtime
from fusionstream.engines.backends import BACKENDS, Runtime
from fusionstream.engines.bench import embed, measure_latency, random_inputs
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.spec import TORCH_WEIGHTS, ModelSpec
from tests.v2models import write_v2_model

SHIPPED = default_model_dir()
#: Format-2 stand-ins: the shipped encoders (per-frame video, audio, hashed text) with exported heads.
STANDINS = {
    "three": {"modalities": ("video", "audio", "text")},
    "video+audio": {"modalities": ("video", "audio")},
    "multi-label": {"modalities": ("audio", "text"), "activation": "sigmoid",
                    "task": {"kind": "multi_label", "classes": ["speech", "digit", "noise"], "thresholds": 0.5}},
    "embedding": {"modalities": ("video", "text"), "activation": "none", "task": {"kind": "embedding", "size": 8}},
}
MODELS = ["shipped", *STANDINS]
CPU_BACKENDS = ("onnxruntime", "torch")
ROWS = 6


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {"shipped": SHIPPED}
    for name, kwargs in STANDINS.items():
        dirs[name] = write_v2_model(tmp_path_factory.mktemp(name.replace("+", "-")) / "model", **kwargs)  # type: ignore[arg-type]
    return dirs


@pytest.fixture(scope="module")
def runtimes(model_dirs: dict[str, Path]) -> Iterator[dict[tuple[str, str], Runtime]]:
    opened = {(model, backend): open_runtime(backend, path, threads=1)
              for model, path in model_dirs.items() for backend in CPU_BACKENDS}
    for runtime in opened.values():
        runtime.activate()
    yield opened
    for runtime in opened.values():
        runtime.release()


def _mask(modalities: int, seed: int = 3) -> np.ndarray:
    """Every row has something present; the first rows cover each single modality."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((ROWS, modalities)) < 0.6).astype(np.float32)
    for row in range(min(ROWS, modalities)):
        mask[row] = np.eye(modalities, dtype=np.float32)[row]
    mask[mask.sum(axis=1) == 0, 0] = 1
    return mask


def _run(runtime: Runtime, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw encoder outputs and fused outputs of ROWS random windows, absent rows zeroed as callers do."""
    feeds = random_inputs(runtime, ROWS, seed)
    raw = {m: runtime.encode(m, feed) for m, feed in feeds.items()}
    windows = embed(runtime, feeds, ROWS)
    mask = _mask(len(runtime.modalities))
    for column, modality in enumerate(runtime.modalities):
        windows[modality][mask[:, column] == 0] = 0
    return raw, runtime.fuse(windows, mask)


@pytest.mark.parametrize("model", MODELS)
def test_torch_and_onnxruntime_agree_on_every_encoder_and_the_head(
    model: str, runtimes: dict[tuple[str, str], Runtime]
) -> None:
    (raw_ort, out_ort), (raw_pt, out_pt) = (_run(runtimes[model, b]) for b in CPU_BACKENDS)
    runtime = runtimes[model, "onnxruntime"]
    assert set(raw_ort) == set(raw_pt) == set(runtime.modalities)
    for modality in runtime.modalities:
        assert raw_ort[modality].dtype == np.float32 and raw_ort[modality].shape[1] == runtime.sizes[modality]
        assert np.abs(raw_ort[modality]).max() > 1e-3, modality  # not comparing zeros
        assert _relative(raw_pt[modality], raw_ort[modality]) <= 1e-4, modality
    assert out_ort.shape == (ROWS, runtime.task.outputs) and out_ort.dtype == np.float32
    assert _relative(out_pt, out_ort) <= 1e-4
    if runtime.task.kind == "single_label":
        np.testing.assert_allclose(out_ort.sum(axis=1), 1, rtol=1e-5)
    elif runtime.task.kind == "multi_label":
        assert ((out_ort > 0) & (out_ort < 1)).all()
    assert set(runtimes[model, "torch"].graph_seconds) == {*runtime.modalities, "fusion"}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_shipped_model_is_one_runtime_of_either_format(backend: str, runtimes: dict) -> None:
    runtime: Runtime = runtimes["shipped", backend]
    assert runtime.manifest.source_format == 1 and runtime.name == backend
    assert runtime.modalities == ("video", "audio", "text") and runtime.sizes == dict.fromkeys(runtime.modalities, 64)
    assert runtime.embeds_frames and runtime.frame_side == 64  # frame.onnx is the per-frame video encoder
    assert runtime.task.kind == "single_label" and runtime.task.classes == tuple(str(d) for d in range(10))
    assert runtime.fusion.activation == "none"  # format 1's fusion graph gives probabilities itself


def test_format_1_frame_embeddings_average_to_the_whole_window_graph(runtimes: dict) -> None:
    # What declaring frame.onnx as the video encoder relies on: video.onnx(window) == mean(frame.onnx(f)).
    runtime: Runtime = runtimes["shipped", "onnxruntime"]
    assert runtime.preprocess is not None and runtime.preprocess.video is not None
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3 * 4)]
    per_frame = runtime.encode_frames(runtime.preprocess.video_frames(frames)).reshape(3, 4, -1).mean(axis=1)
    windows = np.stack([runtime.preprocess.video.window(frames[i : i + 4]) for i in range(0, 12, 4)])
    whole = ort.InferenceSession(str(SHIPPED / "video.onnx"), providers=["CPUExecutionProvider"])
    reference = whole.run(["embedding"], {"video": windows})[0]
    np.testing.assert_allclose(per_frame, reference, rtol=0, atol=1e-5)
    assert np.abs(reference).max() > 0.1


def test_format_1_without_a_frame_graph_declares_the_whole_window_encoder(tmp_path: Path) -> None:
    model_dir = tmp_path / "old-export"
    shutil.copytree(SHIPPED, model_dir)
    doc = json.loads((model_dir / "model.json").read_text())
    doc["files"] = {k: v for k, v in doc["files"].items() if not k.startswith("frame")}
    (model_dir / "model.json").write_text(json.dumps(doc))
    video = load_manifest(model_dir).modalities["video"].encoder
    assert (video.file, video.per_frame, video.int8_file) == ("video.onnx", False, "video.int8.onnx")
    for backend in CPU_BACKENDS:
        with open_runtime(backend, model_dir, threads=1) as runtime:
            assert not runtime.embeds_frames
            feeds = random_inputs(runtime, 2)
            assert feeds["video"]["video"].shape == (2, 4, 3, 64, 64)
            assert runtime.encode("video", feeds["video"]).shape == (2, 64)
            with pytest.raises(EngineError, match="whole windows, not single frames"):
                runtime.encode_frames(np.zeros((1, 3, 64, 64), np.float32))


def test_torch_format_1_matches_the_multimodal_model_it_loads(runtimes: dict) -> None:
    runtime: Runtime = runtimes["shipped", "torch"]
    model = MultimodalModel(ModelSpec.load(SHIPPED))
    model.load_state_dict(torch.load(SHIPPED / TORCH_WEIGHTS, weights_only=True))
    model.eval()
    feeds = random_inputs(runtime, 2, 9)
    with torch.no_grad():
        audio = model.encoders["audio"](torch.from_numpy(feeds["audio"]["audio"])).numpy()
    np.testing.assert_allclose(runtime.encode("audio", feeds["audio"]), audio, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inputs_that_do_not_fit_the_encoder_are_refused_in_one_line(backend: str, runtimes: dict) -> None:
    runtime: Runtime = runtimes["shipped", backend]
    with pytest.raises(InputError, match="does not use smell"):
        runtime.encode("smell", {})
    with pytest.raises(InputError, match=r"text encoder takes inputs text, got \['ids'\]"):
        runtime.encode("text", {"ids": np.zeros((1, 256), np.int64)})
    with pytest.raises(InputError, match=r"text input 'text' must be int64 \[n, 256\]"):
        runtime.encode("text", {"text": np.zeros((1, 5), np.int64)})
    with pytest.raises(InputError, match=r"video input 'frame' must be float32 \[n, 3, 64, 64\]"):
        runtime.encode("video", {"frame": np.zeros((1, 4, 3, 64, 64), np.float32)})  # a window, not frames
    good = {m: np.zeros((2, 64), np.float32) for m in runtime.modalities}
    with pytest.raises(InputError, match=r"text embeddings must be float32 \[2, 64\]"):
        runtime.fuse(good | {"text": np.zeros((1, 64), np.float32)}, np.ones((2, 3), np.float32))
    with pytest.raises(InputError, match=r"mask must be float32 \[B, 3\]"):
        runtime.fuse(good, np.ones((2, 2), np.float32))
    assert runtime.encode("audio", {"audio": np.zeros((0, 16000), np.float32)}).shape == (0, 64)
    assert runtime.fuse({m: e[:0] for m, e in good.items()}, np.ones((0, 3), np.float32)).shape == (0, 10)


def test_the_engine_latency_is_measured_per_graph(runtimes: dict) -> None:
    latency = measure_latency(runtimes["video+audio", "onnxruntime"], 2, repeats=2, warmup=1)
    assert set(latency) == {"video", "audio", "fusion", "total", "per_window"}
    assert all(v > 0 for v in latency.values()) and latency["per_window"] == latency["total"] / 2


# -- refusals -------------------------------------------------------------------------------------


def test_an_encoders_only_directory_is_refused_by_every_backend(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(model_dirs["video+audio"], tmp_path / "enc")
    doc = json.loads((tmp_path / "enc" / "model.json").read_text())
    del doc["task"], doc["fusion"]
    (tmp_path / "enc" / "model.json").write_text(json.dumps(doc))
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(ModelDirError, match=r"encoders-only directory .* \(fusionstream train OUT --encoders "):
            open_runtime(backend, tmp_path / "enc")


def test_backend_option_and_file_errors_are_one_line(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend 'tpu'; choose one of onnxruntime, torch, tensorrt"):
        open_runtime("tpu", SHIPPED)
    with pytest.raises(EngineError, match="unknown option"):
        open_runtime("onnxruntime", SHIPPED, thread_count=2)
    with pytest.raises(EngineError, match="not both"):
        open_runtime("onnxruntime", SHIPPED, threads=2, intra_op_num_threads=2)
    for model in ("shipped", "three"):
        with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
            open_runtime("torch", model_dirs[model], fp16=True)
    with pytest.raises(ModelDirError, match="not a model directory"):
        open_runtime("onnxruntime", tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(SHIPPED, partial)
    (partial / "audio.onnx").unlink()
    missing = r"model\.json: modalities\.audio\.encoder\.file: \S*audio\.onnx does not exist; the {} backend needs it$"
    with pytest.raises(ModelDirError, match=missing.format("onnxruntime")):
        open_runtime("onnxruntime", partial)
    open_runtime("torch", partial)  # format 1 on torch reads model.pt only
    v2 = tmp_path / "v2"
    shutil.copytree(model_dirs["three"], v2)
    (v2 / "audio.onnx").unlink()
    with pytest.raises(ModelDirError, match=missing.format("torch")):
        open_runtime("torch", v2)
    with pytest.raises(BackendUnavailable, match="GPUExecutionProvider"), \
            open_runtime("onnxruntime", SHIPPED, providers=["GPUExecutionProvider"]):
        pass


def test_torch_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)
    doc = json.loads((other / "model.json").read_text())
    doc["fusion"] = "gmu"
    (other / "model.json").write_text(json.dumps(doc))
    with pytest.raises(EngineError, match=r"model\.pt does not match model\.json"), open_runtime("torch", other):
        pass


def test_torch_refuses_a_graph_onnx2torch_cannot_convert_naming_the_file_and_op(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # The shipped int8 audio graph (QDQ) as a format-2 audio encoder: ONNX Runtime runs it, onnx2torch cannot.
    model_dir = tmp_path / "qdq"
    shutil.copytree(model_dirs["video+audio"], model_dir)
    shutil.copy2(SHIPPED / "audio.int8.onnx", model_dir / "audio.onnx")
    with open_runtime("onnxruntime", model_dir) as runtime:
        assert runtime.encode("audio", random_inputs(runtime, 1)["audio"]).shape == (1, 64)
    runtime = open_runtime("torch", model_dir)
    with pytest.raises(EngineError, match=r"^torch backend: audio\.onnx: onnx2torch cannot convert op "
                                          r"(DequantizeLinear|QuantizeLinear) \(opset 17\); use backend onnxruntime$"):
        runtime.activate()
    assert not runtime.is_active


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
@pytest.mark.parametrize("model", ["shipped", "three"])
def test_tensorrt_is_unavailable_without_tensorrt(model: str, model_dirs: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match=r"tensorrt.*not installed.*onnxruntime"):
        open_runtime("tensorrt", model_dirs[model])


def test_every_registered_backend_has_the_runtime_interface() -> None:
    from fusionstream.engines.backends import backend_class

    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Runtime) and cls.name == name and "threads" in cls.defaults
