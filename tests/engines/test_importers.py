"""`model import`'s importers (engines/importers): tiny Hugging Face and torchvision models with random
weights, built here, imported into encoders directories and compared with torch/transformers directly.

The tests that export (text, audio, image) are `slow`: the torch.export-based exporter takes seconds
even for these tiny models; the plumbing and refusal tests are not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fusionstream.engines.importers import ImportSourceError, Job, audio, image, import_encoders, own, text
from fusionstream.engines.manifest_check import check_model_dir
from fusionstream.engines.spec import ModelSpec
from tests.importkit import SENTENCES, bert_reference, tiny_bert, tiny_wav2vec2

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "engines" / "models" / "default"
IMAGENET = image.PRESETS["imagenet"]


def _manifest(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoders directory with the torchvision ResNet-18 imported as features."""
    out = tmp_path_factory.mktemp("resnet")
    prep = image.VideoPreprocess(size=224, mean=IMAGENET[0], std=IMAGENET[1])
    import_encoders(out, [image.factory_plan("tests.importkit:resnet18", prep, features=True)])
    return out


@pytest.mark.slow
def test_text_import_matches_transformers_and_copies_the_tokenizer(bert: Path, tmp_path: Path) -> None:
    steps: list[str] = []
    path, (done,) = import_encoders(tmp_path, [text.plan(bert, max_tokens=16)], version="t1",
                                    on_step=lambda job, step: steps.append(step))
    assert steps == ["loading the model", "exporting to ONNX", "checking parity"]
    doc = _manifest(tmp_path)
    assert path == tmp_path / "model.json"
    assert doc == {
        "format": 2, "version": "t1", "window": {"length_ms": 1000, "hop_ms": 500},
        "modalities": {"text": {
            "encoder": {
                "file": "text.onnx",
                "inputs": {name: {"name": name, "dtype": "int64"}
                           for name in ("input_ids", "attention_mask", "token_type_ids")},
                "output": {"name": "sentence_embedding", "size": 32},
            },
            "preprocess": {"tokenizer": "tokenizer.json", "max_tokens": 16},
        }},
    }  # fmt: skip
    assert (tmp_path / "tokenizer.json").read_bytes() == (bert / "tokenizer.json").read_bytes()
    assert done.parity is not None and done.parity <= 1e-4 and done.note == "pooling: mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "text.onnx", "tokenizer.json"]  # no staging
    runner = ort.InferenceSession(str(tmp_path / "text.onnx"), providers=["CPUExecutionProvider"])
    assert (runner.get_inputs()[0].name, runner.get_inputs()[0].shape) == ("input_ids", ["batch", "sequence"])
    for batch in (SENTENCES, SENTENCES[:1], SENTENCES[2:3]):  # different lengths, padded and not
        feeds, ref = bert_reference(bert, batch, max_tokens=16)
        assert _relative(runner.run(["sentence_embedding"], feeds)[0], ref) <= 1e-4


@pytest.mark.slow
def test_audio_import_matches_transformers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    source = tiny_wav2vec2(tmp_path / "w2v", normalize=True)
    out = tmp_path / "out"
    _, (done,) = import_encoders(out, [audio.plan(source)], window_ms=500, hop_ms=250)
    doc = _manifest(out)
    assert doc["window"] == {"length_ms": 500, "hop_ms": 250}
    assert doc["modalities"]["audio"] == {
        "encoder": {"file": "audio.onnx", "inputs": {"samples": {"name": "input_values", "dtype": "float32"}},
                    "output": {"name": "embedding", "size": 32}},
        "preprocess": {"sample_rate": 16000, "samples": 8000, "normalize": True},
    }
    assert done.parity is not None and done.parity <= 1e-4
    x = np.random.default_rng(3).standard_normal((3, 8000)).astype(np.float32)
    with torch.no_grad():
        ref = AutoModel.from_pretrained(source, local_files_only=True).eval()(torch.from_numpy(x))
    runner = ort.InferenceSession(str(out / "audio.onnx"), providers=["CPUExecutionProvider"])
    got = runner.run(None, {"input_values": x})
    assert _relative(got[0], ref.last_hidden_state.mean(dim=1).numpy()) <= 1e-4
    check_model_dir(out)


@pytest.mark.slow
def test_torchvision_factory_exports_per_frame_features(resnet_dir: Path) -> None:
    import torch

    from tests.importkit import resnet18

    entry = _manifest(resnet_dir)["modalities"]["video"]
    assert entry["encoder"] == {
        "file": "video.onnx", "inputs": {"pixels": {"name": "pixel_values", "dtype": "float32"}},
        "output": {"name": "embedding", "size": 512}, "per_frame": True,
    }  # fmt: skip
    assert entry["preprocess"] == {
        "frames": 4, "height": 224, "width": 224, "resize": "stretch", "colour": "rgb", "scale": 1 / 255,
        "mean": list(IMAGENET[0]), "std": list(IMAGENET[1]), "layout": "nchw",
    }  # fmt: skip
    model = resnet18()
    model.fc = torch.nn.Identity()
    frames = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(frames)).numpy()
    runner = ort.InferenceSession(str(resnet_dir / "video.onnx"), providers=["CPUExecutionProvider"])
    assert _relative(runner.run(["embedding"], {"pixel_values": frames})[0], ref) <= 1e-4


@pytest.mark.slow
def test_an_onnx_image_encoder_is_read_from_its_graph(resnet_dir: Path, tmp_path: Path) -> None:
    prep = image.VideoPreprocess(mean=image.parse_channels("clip", "--video-mean"), std=(0.5,) * 3, colour="bgr",
                                 resize="center_crop", scale=image.parse_scale("1/255"))
    _, (done,) = import_encoders(tmp_path, [image.onnx_plan(resnet_dir / "video.onnx", prep)])
    entry = _manifest(tmp_path)["modalities"]["video"]
    assert entry["encoder"]["inputs"] == {"pixels": {"name": "pixel_values", "dtype": "float32"}}
    assert entry["encoder"]["output"] == {"name": "embedding", "size": 512} and entry["encoder"]["per_frame"]
    prep_written = entry["preprocess"]
    assert (prep_written["height"], prep_written["width"], prep_written["layout"]) == (224, 224, "nchw")
    assert entry["preprocess"]["mean"] == list(image.PRESETS["clip"][0]) and entry["preprocess"]["colour"] == "bgr"
    assert done.parity is None
    assert (tmp_path / "video.onnx").read_bytes() == (resnet_dir / "video.onnx").read_bytes()
    with pytest.raises(ImportSourceError, match=r"--video-size 160: .* takes 224×224 frames"):
        image.onnx_plan(resnet_dir / "video.onnx", image.VideoPreprocess(size=160))
    with pytest.raises(ImportSourceError, match="has no input of that name"):
        image.onnx_plan(resnet_dir / "video.onnx", prep, input_name="pixels")


def test_own_encoders_are_copied_as_format_2_entries(tmp_path: Path) -> None:
    spec = ModelSpec.load(SHIPPED)
    _, results = import_encoders(tmp_path, [own.plan(SHIPPED, ["audio", "video"])])
    doc = _manifest(tmp_path)
    assert doc["window"] == {"length_ms": spec.window_ns // 1_000_000, "hop_ms": spec.hop_ns // 1_000_000}
    assert list(doc["modalities"]) == ["video", "audio"]
    video, audio_entry = doc["modalities"]["video"], doc["modalities"]["audio"]
    assert video["encoder"] == {"file": "video.onnx", "inputs": {"pixels": {"name": "frame", "dtype": "float32"}},
                                "output": {"name": "embedding", "size": spec.embed_dim}, "per_frame": True}
    assert video["preprocess"] == {
        "frames": spec.frames_per_window, "height": spec.image_size, "width": spec.image_size, "resize": "stretch",
        "colour": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "nchw",
    }  # fmt: skip
    assert audio_entry == {
        "encoder": {"file": "audio.onnx", "inputs": {"samples": {"name": "audio", "dtype": "float32"}},
                    "output": {"name": "embedding", "size": spec.embed_dim}},
        "preprocess": {"sample_rate": spec.sample_rate, "samples": spec.samples_per_window, "normalize": False},
    }
    assert (tmp_path / "video.onnx").read_bytes() == (SHIPPED / "frame.onnx").read_bytes()
    assert results[0].parity is not None and results[0].parity <= 1e-4  # frame.onnx's mean = video.onnx

    # Adding text keeps the others; format 1's hashed n-grams come along.
    import_encoders(tmp_path, [own.plan(SHIPPED, ["text"])])
    doc = _manifest(tmp_path)
    assert list(doc["modalities"]) == ["video", "audio", "text"]
    assert doc["modalities"]["text"]["encoder"]["inputs"] == {"ids": {"name": "text", "dtype": "int64"}}
    assert doc["modalities"]["text"]["preprocess"] == {
        "hashed_ngrams": {"buckets": spec.text_buckets, "ngrams": list(spec.text_ngrams), "max_len": spec.text_max_len}
    }
    manifest, _ = check_model_dir(tmp_path)  # the manifest parser and the checker accept it
    assert list(manifest.modalities) == ["video", "audio", "text"] and manifest.task is None
    with pytest.raises(ImportSourceError, match=r"--window-ms 2000: the audio graph of .* takes 1000 ms windows"):
        import_encoders(tmp_path / "other", [own.plan(SHIPPED, ["audio"])], window_ms=2000)


def test_a_failed_import_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    import_encoders(tmp_path, [own.plan(SHIPPED, ["audio"])], version="before")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(staging: Path, window: object, step: object) -> list:
        (staging / "text.onnx").write_bytes(b"half")
        raise ImportSourceError("broken source")

    jobs = [own.plan(SHIPPED, ["video"]), Job("text from nowhere", ("text",), broken)]
    with pytest.raises(ImportSourceError, match="broken source"):
        import_encoders(tmp_path, jobs, version="after")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ImportSourceError, match="video is given twice"):
        import_encoders(tmp_path, [own.plan(SHIPPED, ["video"]), own.plan(SHIPPED, ["video", "text"])])
    with pytest.raises(ImportSourceError, match="format: 1: model import adds encoders to a format-2"):
        import_encoders(SHIPPED, [own.plan(SHIPPED, ["video"])])


def test_sources_are_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    (no_tokenizer / "model.safetensors").write_bytes(b"")
    cases = [
        (lambda: text.plan(no_tokenizer), f"{no_tokenizer / 'tokenizer.json'}: missing"),
        (lambda: text.plan(tmp_path), f"{tmp_path / 'config.json'}: missing"),
        (lambda: audio.plan(tmp_path), f"{tmp_path / 'config.json'}: missing"),
        (lambda: image.resolve_factory("no_such_module_here:build"), "cannot import no_such_module_here"),
        (lambda: image.resolve_factory("tests.importkit:nope"), "tests.importkit has no 'nope'"),
        (lambda: image.resolve_factory("resnet18"), "expected module:function or FILE.onnx"),
        (lambda: image.parse_channels("0.1,0.2", "--video-mean"), "expected 3 numbers (one per colour channel)"),
        (lambda: own.plan(tmp_path, ["video"]), "no model.json"),
    ]
    for call, expected in cases:
        with pytest.raises(ImportSourceError) as caught:
            call()
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    job = image.factory_plan("tests.importkit:not_a_module", image.VideoPreprocess())
    with pytest.raises(ImportSourceError, match=r"returned a str, not a torch nn\.Module"):
        import_encoders(tmp_path / "out", [job])
    assert not (tmp_path / "out").exists()  # a failed import leaves no directory it made
    encoder_decoder = tmp_path / "t5"
    encoder_decoder.mkdir()
    (encoder_decoder / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    (encoder_decoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ImportSourceError, match=r"model_type 't5' is an encoder-decoder model; --text takes an "
                                                r"encoder-only model"):
        text.plan(encoder_decoder)
    # A speech or image model given as text (with a tokenizer.json, as a CTC speech model has) said its tokenizer
    # was larger than config.json's vocab_size: true, and beside the point.
    for kind, processor, expected in (
        ("wav2vec2", {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000}, "--audio"),
        ("vit", {"image_processor_type": "ViTImageProcessor", "image_mean": [0.5] * 3}, "--video"),
    ):
        other = tmp_path / kind
        other.mkdir()
        (other / "config.json").write_text(json.dumps({"model_type": kind, "vocab_size": 32}))
        (other / "model.safetensors").write_bytes(b"")
        (other / "preprocessor_config.json").write_text(json.dumps(processor))
        (other / "tokenizer.json").write_text("{}")
        with pytest.raises(ImportSourceError, match=f"model_type '{kind}' takes .*{expected}, not --text"):
            text.plan(other)


@pytest.mark.slow
def test_weights_that_cannot_be_read_are_one_line_naming_the_directory(bert: Path, tmp_path: Path) -> None:
    # safetensors and pickle raise their own types, which went through as a hundred-line traceback.
    for name, garbage in (("model.safetensors", b"\xff" * 64), ("pytorch_model.bin", b"not a pickle at all")):
        source = tmp_path / name.replace(".", "-")
        shutil.copytree(bert, source)
        for weights in ("model.safetensors", "pytorch_model.bin"):
            (source / weights).unlink(missing_ok=True)
        (source / name).write_bytes(garbage)
        with pytest.raises(ImportSourceError) as caught:
            import_encoders(tmp_path / f"out-{name}", [text.plan(source)])
        message = str(caught.value)
        assert message.startswith(f"{source}: transformers cannot load it: ") and "\n" not in message, message
        assert not (tmp_path / f"out-{name}").exists()


def test_importing_the_importers_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, fusionstream.engines.importers as i, fusionstream.consumers.model_cli\n"
        "from fusionstream.engines.importers import audio, image, manifest_io, own, text\n"
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_a_tokenizer_with_a_fixed_padding_shorter_than_max_tokens_still_gives_even_batches(
    bert: Path, tmp_path: Path
) -> None:
    # all-MiniLM-L6-v2's tokenizer.json pads to a fixed 128 while its max_seq_length is 256: a longer
    # sentence came out longer than the rest, and the import failed on a ragged batch.
    from tokenizers import Tokenizer

    fixed = Tokenizer.from_file(str(bert / "tokenizer.json"))
    fixed.enable_padding(length=4, pad_id=0, pad_token="[PAD]")
    path = tmp_path / "tokenizer.json"
    fixed.save(str(path))
    long = " ".join(["seven"] * 30)
    arrays = text._encode(path, ("one", long), 16, 0, ["input_ids", "attention_mask"])
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (2, 16)
    assert arrays["attention_mask"][0].sum() < 16 == arrays["attention_mask"][1].sum()
