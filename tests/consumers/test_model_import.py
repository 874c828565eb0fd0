"""`fusionstream model import`: a sentence-transformers folder and the shipped model's encoders into one
encoders directory, the summary table, and one-line errors for what cannot be imported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fusionstream.consumers.cli import app
from fusionstream.consumers.cli_errors import run_app
from fusionstream.engines.manifest_check import check_model_dir
from tests.importkit import SENTENCES, bert_reference, tiny_bert


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_app(app, ["model", "import", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(code: int, err: str, status: int = 1) -> str:
    assert code == status, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusionstream: error: "), err
    return lines[0]


@pytest.mark.slow
def test_text_then_own_encoders_make_a_three_modality_encoders_directory(
    tmp_path: Path, shipped_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the summary table's cells are read below, whatever the CI terminal
    source = tiny_bert(tmp_path / "st-bert", pooling="cls", normalize=True)
    out = tmp_path / "encoders"
    code, stdout, err = _run(capsys, str(out), "--text", str(source), "--version", "mine-1")
    assert code == 0, err
    assert "✓ text from" in stdout and "pooling: cls, normalized" in stdout
    assert "text.onnx" in stdout and "input_ids" in stdout and "modality" in stdout  # the table
    text = json.loads((out / "model.json").read_text())["modalities"]["text"]
    assert text["preprocess"] == {"tokenizer": "tokenizer.json", "max_tokens": 48}  # sentence_bert_config.json's
    assert text["encoder"]["output"] == {"name": "sentence_embedding", "size": 32}
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    feeds, ref = bert_reference(source, SENTENCES, pooling="cls", normalize=True, max_tokens=48)
    got = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)

    code, stdout, err = _run(capsys, str(out), "--from-model", str(shipped_model), "--modalities", "video,audio")
    assert code == 0, err
    doc = json.loads((out / "model.json").read_text())
    assert set(doc) == {"format", "version", "window", "modalities"}  # an encoders directory: no task, no fusion
    assert doc["format"] == 2 and doc["version"] == "mine-1" and doc["window"] == {"length_ms": 1000, "hop_ms": 500}
    assert list(doc["modalities"]) == ["video", "audio", "text"] and doc["modalities"]["text"] == text
    assert doc["modalities"]["video"]["encoder"]["per_frame"] is True
    assert sorted(p.name for p in out.iterdir()) == ["audio.onnx", "model.json", "text.onnx", "tokenizer.json",
                                                     "video.onnx"]
    assert "video, audio, text" in stdout
    manifest, reports = check_model_dir(out)  # the manifest parser and the checker accept it
    assert manifest.fusion is None and [r.output_size for r in reports] == [64, 64, 32]


def test_what_cannot_be_imported_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    (hf_dir / "model.safetensors").write_bytes(b"")
    out = str(tmp_path / "out")
    line = _error_line(*_run(capsys, out, "--text", str(hf_dir))[::2])
    assert f"{hf_dir / 'tokenizer.json'}: missing" in line

    line = _error_line(*_run(capsys, out, "--video", "no_such_module_here:build_model")[::2])
    assert "--video no_such_module_here:build_model: cannot import no_such_module_here" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error_line(*_run(capsys, out, "--audio", str(empty))[::2])
    assert f"{empty / 'config.json'}: missing" in line

    line = _error_line(*_run(capsys, out, "--video-features")[::2], status=2)
    assert "--video-features" in line and "goes with --video" in line
    line = _error_line(*_run(capsys, out)[::2])
    assert "nothing to import" in line
    assert not Path(out).exists()
