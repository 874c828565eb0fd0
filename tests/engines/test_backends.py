"""Backends against one tiny exported model: same probabilities, the skip rule, validation, lifecycle."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import randomize, tiny_spec

from fusionstream.engines import (
    Backend,
    BackendUnavailable,
    Batch,
    EngineError,
    InputError,
    ModelDirError,
    check_parity,
    export_model,
    load_backend,
    random_batch,
)
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.spec import FRAME_GRAPH, MODALITIES, SPEC_FILE, TORCH_WEIGHTS, ModelSpec

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
def backends(exported: tuple[MultimodalModel, Path]) -> Iterator[dict[str, Backend]]:
    _, model_dir = exported
    with load_backend("torch", model_dir) as pt, load_backend("onnxruntime", model_dir, threads=1) as ort:
        yield {"torch": pt, "onnxruntime": ort}


def mixed_batch(spec: ModelSpec, seed: int = 0) -> Batch:
    batch = random_batch(spec, 8 + 8, seed)
    mask = np.concatenate([PATTERNS, batch.mask[8:]])
    return Batch(batch.video, batch.audio, batch.text, mask)


def with_junk(batch: Batch, seed: int = 1) -> Batch:
    """The same batch with huge random values in every absent modality's rows."""
    rng = np.random.default_rng(seed)
    arrays = {name: getattr(batch, name).copy() for name in MODALITIES}
    for column, name in enumerate(MODALITIES):
        absent = batch.mask[:, column] == 0
        if name == "text":
            arrays[name][absent] = rng.integers(1, 97, arrays[name][absent].shape)
        else:
            arrays[name][absent] = rng.normal(0, 1e4, arrays[name][absent].shape)
    return Batch(arrays["video"], arrays["audio"], arrays["text"], batch.mask)


def test_export_parity_errors_are_small(exported: tuple[MultimodalModel, Path]) -> None:
    model, model_dir = exported
    errors = check_parity(model, model_dir, batch_sizes=(1, 3))
    assert set(errors) == {*MODALITIES, "fusion", FRAME_GRAPH}
    assert max(errors.values()) <= 1e-4


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_frame_embeddings_average_to_the_video_embedding(
    name: str, exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]
) -> None:
    # The identity the pipeline's frame cache relies on: video(window) == mean(frame(f) for its K frames).
    model, _ = exported
    backend = backends[name]
    video = random_batch(model.spec, 3, 7, p_present=1.0).video
    whole = backend.encode("video", video)
    frames = backend.encode_frames(video.reshape(-1, *video.shape[2:]))
    assert backend.embeds_frames and frames.shape == (3 * model.spec.frames_per_window, model.spec.embed_dim)
    np.testing.assert_allclose(frames.reshape(3, -1, frames.shape[1]).mean(axis=1), whole, rtol=0, atol=1e-5)
    assert np.abs(whole).max() > 0.1
    with pytest.raises(InputError, match="frames must be float32"):
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
    exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]
) -> None:
    model, _ = exported
    batch = mixed_batch(model.spec)
    probs = {name: backend.infer(batch) for name, backend in backends.items()}
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
def test_absent_modality_skips_its_encoder(
    name: str, exported: tuple[MultimodalModel, Path], backends: dict[str, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = exported
    backend = backends[name]
    batch = mixed_batch(model.spec)
    calls: list[tuple[str, int]] = []
    encode = backend._encode_impl
    monkeypatch.setattr(backend, "_encode_impl", lambda m, x: calls.append((m, len(x))) or encode(m, x))
    clean = backend.infer(batch)
    assert calls == [(m, int(batch.mask[:, i].sum())) for i, m in enumerate(MODALITIES)]  # present rows only
    np.testing.assert_array_equal(backend.infer(with_junk(batch)), clean)

    calls.clear()
    only_video = Batch(batch.video, batch.audio, batch.text, np.tile(np.float32([1, 0, 0]), (len(batch), 1)))
    backend.infer(only_video)
    assert calls == [("video", len(batch))]  # absent from the whole batch: no encoder call at all


def test_embeddings_then_fuse_equals_infer(
    exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]
) -> None:
    model, _ = exported
    batch = mixed_batch(model.spec)
    for backend in backends.values():
        video, audio, text = backend.infer_embeddings(batch)
        for column, emb in enumerate((video, audio, text)):
            assert emb.shape == (len(batch), model.spec.embed_dim)
            assert not emb[batch.mask[:, column] == 0].any()
        np.testing.assert_allclose(backend.fuse(video, audio, text, batch.mask), backend.infer(batch), atol=1e-6)
        present = batch.mask[:, 0] == 1
        np.testing.assert_allclose(backend.encode("video", batch.video[present]), video[present], atol=1e-5)
        assert backend.encode("text", batch.text[:0]).shape == (0, model.spec.embed_dim)


def _replace(batch: Batch, **arrays: np.ndarray) -> Batch:
    fields = {name: getattr(batch, name) for name in (*MODALITIES, "mask")} | arrays
    return Batch(**fields)


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda b: _replace(b, video=b.video[:, :1]), id="frames"),
        pytest.param(lambda b: _replace(b, video=np.ascontiguousarray(b.video[..., :8, :8])), id="image-size"),
        pytest.param(lambda b: _replace(b, audio=b.audio[:, :-1]), id="audio-length"),
        pytest.param(lambda b: _replace(b, text=b.text[:, :5]), id="text-length"),
        pytest.param(lambda b: _replace(b, text=b.text + 1000), id="text-id-range"),
        pytest.param(lambda b: _replace(b, text=b.text - 1), id="negative-text-id"),
    ],
)
@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_batches_that_do_not_fit_the_model_raise(
    name: str, spoil: object, exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]
) -> None:
    model, _ = exported
    bad = spoil(random_batch(model.spec, 3, 0))  # type: ignore[operator]
    with pytest.raises(InputError):
        backends[name].infer(bad)


def test_step_apis_validate(exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]) -> None:
    model, _ = exported
    backend = backends["onnxruntime"]
    d = model.spec.embed_dim
    good = np.zeros((2, d), np.float32)
    mask = np.ones((2, 3), np.float32)
    with pytest.raises(InputError, match="unknown modality"):
        backend.encode("smell", good)
    with pytest.raises(InputError, match="audio inputs"):
        backend.encode("audio", np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="text embeddings"):
        backend.fuse(good, good, good[:1], mask)
    with pytest.raises(InputError, match="video embeddings"):
        backend.fuse(good.astype(np.float64), good, good, mask)
    with pytest.raises(InputError, match="Batch"):
        backend.infer((good, good, good, mask))  # type: ignore[arg-type]


def test_lifecycle(exported: tuple[MultimodalModel, Path]) -> None:
    _, model_dir = exported
    backend = load_backend("onnxruntime", model_dir)
    batch = random_batch(backend.spec, 2, 0)
    with pytest.raises(EngineError, match="not active"):
        backend.infer(batch)
    with backend:
        assert backend.is_active
        assert backend.infer(batch).shape == (2, 5)
        with pytest.raises(EngineError, match="already active"):
            backend.activate()
    assert not backend.is_active
    backend.release()  # twice is fine
    with pytest.raises(EngineError, match="not active"):
        backend.infer(batch)


def test_load_backend_errors(exported: tuple[MultimodalModel, Path], tmp_path: Path) -> None:
    _, model_dir = exported
    with pytest.raises(EngineError, match="unknown backend"):
        load_backend("tpu", model_dir)
    with pytest.raises(EngineError, match="unknown option"):
        load_backend("onnxruntime", model_dir, thread_count=2)
    with pytest.raises(EngineError, match="not both"):
        load_backend("onnxruntime", model_dir, threads=2, intra_op_num_threads=2)
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        load_backend("torch", model_dir, fp16=True)
    with pytest.raises(ModelDirError, match="not a model directory"):
        load_backend("onnxruntime", tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    (partial / "audio.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"lacks audio\.onnx"):
        load_backend("onnxruntime", partial)
    load_backend("torch", partial)  # the torch backend reads model.pt only
    with (
        pytest.raises(BackendUnavailable, match="GPUExecutionProvider"),
        load_backend("onnxruntime", model_dir, providers=["GPUExecutionProvider"]),
    ):
        pass


def test_torch_backend_rejects_weights_of_another_architecture(
    exported: tuple[MultimodalModel, Path], tmp_path: Path
) -> None:
    _, model_dir = exported
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    doc = json.loads((other / SPEC_FILE).read_text())
    doc["fusion"] = "gmu"
    (other / SPEC_FILE).write_text(json.dumps(doc))
    with pytest.raises(EngineError, match=r"model\.pt does not match"), load_backend("torch", other):
        pass


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_is_unavailable_without_tensorrt(exported: tuple[MultimodalModel, Path]) -> None:
    _, model_dir = exported
    with pytest.raises(BackendUnavailable, match=r"tensorrt.*not installed.*onnxruntime"):
        load_backend("tensorrt", model_dir)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fp16_is_close_to_cpu(exported: tuple[MultimodalModel, Path], backends: dict[str, Backend]) -> None:
    model, model_dir = exported
    batch = mixed_batch(model.spec)
    with load_backend("torch", model_dir, device="cuda", fp16=True) as gpu:
        np.testing.assert_allclose(gpu.infer(batch), backends["torch"].infer(batch), atol=2e-2)
