"""Encoders: shapes, the fixed-basis log-mel front end against torch.stft, the invariances they promise, and
``MultimodalModel``'s encoders by modality with model.pt's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tinymodels import HEAD_CONFIGS, HEAD_IDS, randomize, tiny_spec

from fusionstream.engines.encoders import AudioEncoder, ImageEncoder, LogMel, TextEncoder, mel_filterbank
from fusionstream.engines.encoders.image import FrameEncoder
from fusionstream.engines.export import export_graph
from fusionstream.engines.features import random_batch
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.spec import AUDIO_HOP, AUDIO_N_FFT, MODALITIES, TORCH_WEIGHTS, ModelSpec

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "models" / "default"


def test_dft_conv_matches_torch_stft() -> None:
    wave = torch.randn(3, 4000)
    frontend = LogMel(16_000, 40)
    spec = torch.nn.functional.conv1d(wave.unsqueeze(1), frontend.dft, stride=AUDIO_HOP)
    power = spec[:, : frontend.bins] ** 2 + spec[:, frontend.bins :] ** 2
    window = torch.hann_window(AUDIO_N_FFT)
    stft = torch.stft(wave, AUDIO_N_FFT, AUDIO_HOP, window=window, center=False, return_complex=True)
    torch.testing.assert_close(power, stft.abs() ** 2, rtol=1e-4, atol=1e-3)
    assert frontend(wave).shape == (3, 40, 1 + (4000 - AUDIO_N_FFT) // AUDIO_HOP)


def test_mel_filterbank_covers_the_spectrum_in_order() -> None:
    bank = mel_filterbank(40, AUDIO_N_FFT, 16_000)
    assert bank.shape == (40, AUDIO_N_FFT // 2 + 1) and bank.dtype == np.float32
    assert (bank.max(axis=1) > 0).all()  # no empty filter
    peaks = bank.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]


def test_audio_encoder_ignores_loudness() -> None:
    torch.manual_seed(0)
    encoder = randomize(AudioEncoder(16, 16_000, 40)).eval()
    wave = torch.randn(2, 16_000).clamp(-1, 1) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(encoder(wave * 0.05), encoder(wave), rtol=1e-3, atol=1e-3)
        assert torch.isfinite(encoder(torch.zeros(1, 16_000))).all()  # digital silence


@pytest.mark.parametrize("pooling", ["mean", "mean+max"])
def test_audio_encoder_pooling_keeps_loudness_out_and_exports(pooling: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoder = randomize(AudioEncoder(16, 16_000, 40, pooling=pooling)).eval()
    wave = torch.randn(3, 16_000).clamp(-1, 1) * 0.3
    with torch.no_grad():
        out = encoder(wave)
        torch.testing.assert_close(encoder(wave * 0.1), out, rtol=1e-3, atol=1e-3)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    # The max over time is a plain ReduceMax: the graph runs in ONNX Runtime like the mean's.
    import onnxruntime as ort

    path = export_graph(encoder, (wave,), tmp_path / "audio.onnx", input_names=["audio"], output_name="embedding")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"audio": wave.numpy()})[0]
    np.testing.assert_allclose(got, out.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="unknown pooling"):
        AudioEncoder(16, 16_000, 40, pooling="attention")


def test_image_encoder_pools_over_time() -> None:
    encoder = randomize(ImageEncoder(16, frames=4, image_size=32)).eval()
    video = torch.rand(3, 4, 3, 32, 32)
    with torch.no_grad():
        out = encoder(video)
        torch.testing.assert_close(encoder(video[:, [2, 0, 3, 1]]), out, rtol=1e-5, atol=1e-6)
    assert out.shape == (3, 16)


@pytest.mark.parametrize("stem", ["pool", "strided"])
def test_image_encoder_stems_read_the_frame_and_export(stem: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(2)
    encoder = randomize(ImageEncoder(16, frames=4, image_size=64, stem=stem)).eval()
    frames = torch.rand(5, 3, 64, 64)
    # A detail finer than 2x2 pixels: averaging the frame to 32x32 first erases it, a strided
    # convolution over the full frame need not.
    fine = frames.clone()
    fine[:, :, 20:44:2, 20:44] = 1.0
    fine[:, :, 21:44:2, 20:44] = 0.0
    coarse = frames.clone()
    coarse[:, :, 20:44, 20:44] = 0.5
    with torch.no_grad():
        out = encoder.embed_frames(frames)
        moved = (encoder.embed_frames(fine) - encoder.embed_frames(coarse)).abs().max().item()
    assert out.shape == (5, 16) and torch.isfinite(out).all()
    assert (moved > 1e-3) == (stem == "strided")
    path = export_graph(FrameEncoder(encoder).eval(), (frames,), tmp_path / "frame.onnx", input_names=["frame"],
                        output_name="embedding")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frame": frames.numpy()})[0]
    np.testing.assert_allclose(got, out.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="stem 'patchify'"):
        ImageEncoder(16, frames=4, image_size=64, stem="patchify")


def test_text_encoder_ignores_padding() -> None:
    encoder = TextEncoder(50, 8)
    ids = torch.tensor([[5, 7, 9, 0, 0, 0]])
    shifted = torch.tensor([[0, 5, 0, 7, 9, 0]])  # same ids, padding elsewhere
    torch.testing.assert_close(encoder(shifted), encoder(ids))
    assert torch.isfinite(encoder(torch.zeros(2, 6, dtype=torch.long))).all()


@pytest.mark.parametrize(("name", "options"), HEAD_CONFIGS, ids=HEAD_IDS)
def test_half_precision_model_stays_close(name: str, options: dict[str, Any]) -> None:
    # What the torch backend does for fp16 on CUDA (CPU half runs the same code path here).
    torch.manual_seed(0)
    spec = tiny_spec(name, fusion_options=options)
    model = randomize(MultimodalModel(spec)).eval()
    batch = random_batch(spec, 3, 0)
    inputs = [torch.from_numpy(getattr(batch, n)) for n in (*model.modalities, "mask")]
    with torch.no_grad():
        expected = torch.softmax(model(*inputs), dim=-1)
        model.half()
        model.encoders["audio"].frontend.float()
        got = torch.softmax(model(*(t.half() if t.is_floating_point() else t for t in inputs)).float(), dim=-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)


def test_the_shipped_model_pt_loads_strict_and_is_written_back_the_same() -> None:
    spec = ModelSpec.load(SHIPPED)
    stored = torch.load(SHIPPED / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
    names, versions = list(stored), dict(stored._metadata)
    model = MultimodalModel(spec)
    model.load_state_dict(stored, strict=True)
    assert tuple(model.encoders) == model.modalities == MODALITIES
    assert model.video_encoder is model.encoders["video"]  # the old attribute names still reach them
    saved = model.state_dict()
    assert list(saved) == names  # ``video_encoder.*`` etc. on disk, in the same order
    assert dict(saved._metadata) == versions
    assert all(torch.equal(saved[k], stored[k]) for k in names)
    assert set(model.count_parameters()) == {*MODALITIES, "fusion", "total"}


def test_the_shipped_head_matches_the_shipped_fusion_graph() -> None:
    # The head, generalised to M modalities, still computes what fusion.onnx (exported before) does.
    import onnxruntime as ort

    spec = ModelSpec.load(SHIPPED)
    model = MultimodalModel(spec).eval()
    model.load_state_dict(torch.load(SHIPPED / TORCH_WEIGHTS, map_location="cpu", weights_only=True))
    session = ort.InferenceSession(str(SHIPPED / spec.files["fusion"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    emb = [rng.standard_normal((8, spec.embed_dim), dtype=np.float32) for _ in MODALITIES]
    mask = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], np.float32)
    (got,) = session.run(None, dict(zip(MODALITIES, emb, strict=True)) | {"mask": mask})
    with torch.no_grad():
        expected = torch.softmax(model.head(*map(torch.from_numpy, (*emb, mask))), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_the_model_takes_one_input_per_modality_and_a_mask() -> None:
    model = MultimodalModel(tiny_spec("concat"))
    batch = random_batch(model.spec, 2, 0)
    with pytest.raises(ValueError, match="one input per modality \\(video, audio, text\\) and a mask, got 3"):
        model(*(torch.from_numpy(getattr(batch, n)) for n in ("video", "audio", "mask")))
