"""Backends against one tiny exported model (format 1): export parity, the same probabilities as the
torch model, the skip rule, validation, lifecycle, through the modality-keyed runtime interface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import randomize, tiny_spec

from fusionstream.engines import (
    Batch,
    EngineError,
    InputError,
    Runtime,
    check_parity,
    export_model,
    load_backend,
    open_runtime,
    random_batch,
)
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.spec import MODALITIES, SPEC_FILE, TORCH_WEIGHTS, ModelSpec

#: Every presence pattern (all-absent and all-present included), then random rows.
PATTERNS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultimodalModel, Path]:
    """A randomised (untrained) attention model and its model directory, exported once for the module."""
    torch.manual_seed(0)
    spec = tiny_spec("attention")
    model = randomize(MultimodalModel(spec)).train()  # export must not depend on (or change) the mode
    model_dir = tmp_path_factory.mktemp("model")
    written = export_model(model, spec, model_dir)
    assert model.training
    assert sorted(p.name for p in written) == sorted([*spec.files.values(), TORCH_WEIGHTS, SPEC_FILE])
    return model.eval(), model_dir


@pytest.fixture(scope="module")
def backends(exported: tuple[MultimodalModel, Path]) -> Iterator[dict[str, Runtime]]:
    _, model_dir = exported
    with open_runtime("torch", model_dir) as pt, load_backend("onnxruntime", model_dir, threads=1) as ort:
        yield {"torch": pt, "onnxruntime": ort}


def mixed_batch(spec: ModelSpec, seed: int = 0) -> Batch:
    batch = random_batch(spec, 8 + 8, seed)
    mask = np.concatenate([PATTERNS, batch.mask[8:]])
    return Batch(batch.video, batch.audio, batch.text, mask)


def feed(runtime: Runtime, modality: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Format-1 model inputs as the encoder's feed (single frames for the per-frame video encoder)."""
    if modality == "video" and runtime.embeds_frames:
        x = x.reshape(-1, *x.shape[2:])
    (tensor,) = runtime.encoder(modality).inputs.values()
    return {tensor.name: x}


def embeddings(runtime: Runtime, batch: Batch) -> dict[str, np.ndarray]:
    """What a caller does: encode each modality's present rows only, zeros elsewhere."""
    out = {}
    for column, modality in enumerate(MODALITIES):
        rows = np.flatnonzero(batch.mask[:, column])
        emb = np.zeros((len(batch), runtime.sizes[modality]), np.float32)
        got = runtime.encode(modality, feed(runtime, modality, getattr(batch, modality)[rows]))
        per_frame = modality == "video" and runtime.embeds_frames
        emb[rows] = got.reshape(len(rows), -1, got.shape[1]).mean(axis=1) if per_frame else got
        out[modality] = emb
    return out


def test_export_parity_errors_are_small(exported: tuple[MultimodalModel, Path]) -> None:
    model, model_dir = exported
    errors = check_parity(model, model_dir, batch_sizes=(1, 3))
    assert set(errors) == {*MODALITIES, "fusion"}  # video: the per-frame graph the runtime serves
    assert max(errors.values()) <= 1e-4


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_frame_embeddings_average_to_the_video_embedding(
    name: str, exported: tuple[MultimodalModel, Path], backends: dict[str, Runtime]
) -> None:
    # The identity the per-frame video encoder relies on: video(window) == mean(frame(f) for its K frames).
    model, _ = exported
    backend = backends[name]
    video = random_batch(model.spec, 3, 7, p_present=1.0).video
    with torch.no_grad():
        whole = model.encoders["video"](torch.from_numpy(video)).numpy()
    frames = backend.encode_frames(video.reshape(-1, *video.shape[2:]))
    assert backend.embeds_frames and frames.shape == (3 * model.spec.frames_per_window, model.spec.embed_dim)
    np.testing.assert_allclose(frames.reshape(3, -1, frames.shape[1]).mean(axis=1), whole, rtol=0, atol=1e-5)
    assert np.abs(whole).max() > 0.1
    with pytest.raises(InputError, match=r"video input 'frame' must be float32 \[n, 3, 16, 16\]"):
        backend.encode_frames(video)  # whole windows, not single frames


def test_onnx_interfaces(exported: tuple[MultimodalModel, Path]) -> None:
    # The contract other runtimes (TensorRT profiles, Triton configs) are written against.
    import onnx

    model, model_dir = exported
    spec = model.spec
    expected_inputs = {name: [("batch", *spec.input_shapes[name])] for name in MODALITIES}
    expected_inputs["fusion"] = [("batch", spec.embed_dim)] * 3 + [("batch", 3)]
    for name, shapes in expected_inputs.items():
        graph = onnx.load(str(model_dir / spec.files[name])).graph
        dims = [tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim) for i in graph.input]
        assert dims == shapes, name
        assert [i.name for i in graph.input] == ([name] if name != "fusion" else [*MODALITIES, "mask"])
        output = graph.output[0]
        assert [o.name for o in graph.output] == ["probs" if name == "fusion" else "embedding"]
        width = spec.n_classes if name == "fusion" else spec.embed_dim
        assert tuple(d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim) == ("batch", width)


def test_check_parity_catches_a_mismatch(exported: tuple[MultimodalModel, Path]) -> None:
    model, model_dir = exported
    other = MultimodalModel(model.spec)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.audio_encoder.proj.bias.add_(1.0)
    with pytest.raises(EngineError, match=r"audio\.onnx: max relative error"):
        check_parity(other, model_dir)


def test_backends_agree_with_each_other_and_with_torch(
    exported: tuple[MultimodalModel, Path], backends: dict[str, Runtime]
) -> None:
    model, _ = exported
    batch = mixed_batch(model.spec)
    probs = {name: backend.fuse(embeddings(backend, batch), batch.mask) for name, backend in backends.items()}
    with torch.no_grad():
        tensors = (torch.from_numpy(getattr(batch, name)) for name in (*MODALITIES, "mask"))
        expected = torch.softmax(model(*tensors), dim=-1).numpy()
    for name, got in probs.items():
        assert got.dtype == np.float32 and got.shape == (len(batch), model.spec.n_classes), name
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4, err_msg=name)
    assert np.abs(probs["torch"] - probs["onnxruntime"]).max() <= 1e-4
    assert expected.max() > 0.5  # the comparison is not between near-uniform outputs


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_absent_rows_cost_nothing(
    name: str, exported: tuple[MultimodalModel, Path], backends: dict[str, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = exported
    backend = backends[name]
    batch = mixed_batch(model.spec)
    calls: list[tuple[str, int]] = []
    encode = backend._encode_impl
    monkeypatch.setattr(backend, "_encode_impl", lambda m, f: calls.append((m, len(next(iter(f.values())))))
                        or encode(m, f))
    only_video = Batch(batch.video, batch.audio, batch.text, np.tile(np.float32([1, 0, 0]), (len(batch), 1)))
    out = backend.fuse(embeddings(backend, only_video), only_video.mask)
    frames = model.spec.frames_per_window
    assert calls == [("video", len(batch) * frames)]  # absent from the whole batch: no encoder call at all
    with torch.no_grad():
        junk = torch.from_numpy(batch.audio) * 1e4  # what absent rows hold does not matter
        tensors = [torch.from_numpy(batch.video), junk, torch.from_numpy(batch.text), torch.from_numpy(only_video.mask)]
        np.testing.assert_allclose(out, torch.softmax(model(*tensors), dim=-1).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("modality", "spoil", "message"),
    [
        pytest.param("video", lambda x: x[:, :1], r"video input 'frame' must be float32 \[n, 3, 16, 16\]", id="rank"),
        pytest.param("video", lambda x: np.ascontiguousarray(x[..., :8, :8]), "frame", id="image-size"),
        pytest.param("audio", lambda x: x[:, :-1], r"audio input 'audio' must be float32 \[n, 3200\]", id="length"),
        pytest.param("audio", lambda x: x.astype(np.float64), "float32", id="dtype"),
        pytest.param("text", lambda x: x[:, :5], r"\[n, 24\]", id="text-length"),
        pytest.param("text", lambda x: x + 1000, r"text ids must be in \[0, 97\)", id="text-id-range"),
        pytest.param("text", lambda x: x - 1, r"text ids must be in \[0, 97\), got \[-1", id="negative-text-id"),
    ],
)
@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_inputs_that_do_not_fit_the_model_raise(
    name: str, modality: str, spoil: object, message: str, exported: tuple[MultimodalModel, Path],
    backends: dict[str, Runtime]
) -> None:
    model, _ = exported
    backend = backends[name]
    x = getattr(random_batch(model.spec, 3, 0), modality)
    x = x[:, 0] if modality == "video" else x  # single frames for the per-frame encoder
    (tensor,) = backend.encoder(modality).inputs.values()
    with pytest.raises(InputError, match=message):
        backend.encode(modality, {tensor.name: spoil(x)})  # type: ignore[operator]


def test_step_apis_validate(exported: tuple[MultimodalModel, Path], backends: dict[str, Runtime]) -> None:
    model, _ = exported
    backend = backends["onnxruntime"]
    d = model.spec.embed_dim
    good = np.zeros((2, d), np.float32)
    mask = np.ones((2, 3), np.float32)
    with pytest.raises(InputError, match="does not use smell"):
        backend.encode("smell", {"smell": good})
    with pytest.raises(InputError, match="audio input"):
        backend.encode("audio", {"audio": np.zeros((2, 5), np.float32)})
    with pytest.raises(InputError, match="text embeddings"):
        backend.fuse({"video": good, "audio": good, "text": good[:1]}, mask)
    with pytest.raises(InputError, match="video embeddings"):
        backend.fuse({"video": good.astype(np.float64), "audio": good, "text": good}, mask)
    with pytest.raises(InputError, match="mask must hold only 0"):
        backend.fuse({"video": good, "audio": good, "text": good}, mask * 2)
    assert backend.encode("text", {"text": np.zeros((0, 24), np.int64)}).shape == (0, d)


def test_lifecycle(exported: tuple[MultimodalModel, Path]) -> None:
    _, model_dir = exported
    backend = load_backend("onnxruntime", model_dir)  # the former name of open_runtime
    assert load_backend is open_runtime
    probe = {"audio": np.zeros((2, 3200), np.float32)}
    with pytest.raises(EngineError, match="not active"):
        backend.encode("audio", probe)
    assert backend.preprocess is None
    with backend:
        assert backend.is_active and backend.preprocess is not None
        assert backend.encode("audio", probe).shape == (2, 16)
        with pytest.raises(EngineError, match="already active"):
            backend.activate()
    assert not backend.is_active
    backend.release()  # twice is fine
    with pytest.raises(EngineError, match="not active"):
        backend.encode("audio", probe)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fp16_is_close_to_cpu(exported: tuple[MultimodalModel, Path], backends: dict[str, Runtime]) -> None:
    model, model_dir = exported
    batch = mixed_batch(model.spec)
    with open_runtime("torch", model_dir, device="cuda", fp16=True) as gpu:
        np.testing.assert_allclose(gpu.fuse(embeddings(gpu, batch), batch.mask),
                                   backends["torch"].fuse(embeddings(backends["torch"], batch), batch.mask), atol=2e-2)
