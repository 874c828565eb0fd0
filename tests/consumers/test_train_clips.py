"""`fusionstream train --data` on real labelled clips (MP4 with audio + SRT) that the test writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusionstream.engines.spec import ModelSpec
from tests.mediafiles import srt_for, write_digit_clip


@pytest.mark.slow
def test_train_and_evaluate_on_labelled_clips(tmp_path: Path) -> None:
    data = tmp_path / "clips"
    data.mkdir()
    rows = ["file,start_s,end_s,label"]
    for n, digits in enumerate([[1, 4, 1], [4, 1, 4], [1, 1, 4]]):
        name = f"clip{n}.mp4"
        write_digit_clip(data / name, digits)
        (data / f"clip{n}.srt").write_text(srt_for(digits))
        rows += [f"{name},{2 * i},{2 * i + 2},{'one' if d == 1 else 'four'}" for i, d in enumerate(digits)]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")

    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "fusionstream"]
    trained = subprocess.run([*cmd, "train", str(out), "--data", str(data), "--fusion", "concat", "--epochs", "3"],
                             capture_output=True, text=True, timeout=600, check=False)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    spec = ModelSpec.load(out)
    assert spec.classes == ["four", "one"] and spec.fusion == "concat"
    assert all((out / name).is_file() for name in spec.files.values())

    evaluated = subprocess.run([*cmd, "evaluate", str(out), "--data", str(data), "--json"],
                               capture_output=True, text=True, timeout=600, check=False)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["windows"] >= 10 and set(result["single"]) == {"video", "audio", "text"}
    assert 0.0 <= result["fused"] <= 1.0
    assert result["backend"] == "onnxruntime"

    # The backend and its device come from the settings, as for `serve`: torch on the CPU gives the
    # same windows the same answers (the exported graphs match the weights).
    env = {**os.environ, "FUSIONSTREAM_BACKEND": "torch", "FUSIONSTREAM_DEVICE": "cpu"}
    on_torch = subprocess.run([*cmd, "evaluate", str(out), "--data", str(data), "--json"],
                              capture_output=True, text=True, timeout=600, check=False, env=env)
    assert on_torch.returncode == 0, on_torch.stderr
    torch_result = json.loads(on_torch.stdout.strip().splitlines()[-1])
    assert torch_result["backend"] == "torch" and torch_result["backend_options"]["device"] == "cpu"
    assert torch_result["windows"] == result["windows"] and torch_result["fused"] == pytest.approx(result["fused"])

    # int8 calibrated on the clips themselves (it was calibrated on synthetic digit streams, whatever the
    # model had learnt from), then scored on them as the hint it prints says.
    quantized = subprocess.run([*cmd, "quantize", str(out), "--data", str(data)],
                               capture_output=True, text=True, timeout=600, check=False)
    assert quantized.returncode == 0, quantized.stderr + quantized.stdout
    assert "windowing clips" in quantized.stdout + quantized.stderr and "warning" not in quantized.stdout
    hint = " ".join(quantized.stdout.split())
    assert f"next: fusionstream evaluate {out} --int8 --data {data}" in hint, hint
    on_int8 = subprocess.run([*cmd, "evaluate", str(out), "--int8", "--data", str(data), "--json"],
                             capture_output=True, text=True, timeout=600, check=False)
    assert on_int8.returncode == 0, on_int8.stderr
    assert json.loads(on_int8.stdout.strip().splitlines()[-1])["windows"] == result["windows"]

    # Clips without captions: no window has text, and "text alone" is no figure (it scored an empty input).
    uncaptioned = tmp_path / "uncaptioned"
    shutil.copytree(data, uncaptioned, ignore=shutil.ignore_patterns("*.srt"))
    silent_text = subprocess.run([*cmd, "evaluate", str(out), "--data", str(uncaptioned)],
                                 capture_output=True, text=True, timeout=600, check=False)
    assert silent_text.returncode == 0, silent_text.stderr
    assert "text alone" in silent_text.stdout and "no window has text" in silent_text.stdout, silent_text.stdout
    as_json = subprocess.run([*cmd, "evaluate", str(out), "--data", str(uncaptioned), "--json"],
                             capture_output=True, text=True, timeout=600, check=False)
    scores = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert scores["single"]["text"] is None and scores["single"]["audio"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_evaluate_on_a_missing_gpu_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "FUSIONSTREAM_BACKEND": "torch", "FUSIONSTREAM_DEVICE": "cuda"}
    model = Path(__file__).resolve().parents[2] / "engines" / "models" / "default"
    # The held-out windows render first (5 s of them); the error comes when the backend loads.
    run = subprocess.run([sys.executable, "-m", "fusionstream", "evaluate", str(model), "--seconds", "5"],
                         capture_output=True, text=True, timeout=600, check=False, env=env)
    assert run.returncode == 1
    assert "error: torch backend: device cuda requested but CUDA is not available" in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr


def test_bad_labels_file_names_the_line(tmp_path: Path) -> None:
    from fusionstream.consumers.training.clips import read_labels

    (tmp_path / "labels.csv").write_text("file,start_s,end_s,label\nmissing.mp4,0,1,one\n")
    with pytest.raises(FileNotFoundError, match=r"labels\.csv:2"):
        read_labels(tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("file,start_s,end_s,label\na.mp4,2,1,one\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2"):
        read_labels(tmp_path)
    # No header row: the first span is not taken for one.
    (tmp_path / "labels.csv").write_text("a.mp4,0,1,one\na.mp4,1,2,two\n")
    with pytest.raises(ValueError, match=r"the header must be file,start_s,end_s,label"):
        read_labels(tmp_path)
    # One label only: refused before any work (a classifier needs two).
    (tmp_path / "labels.csv").write_text("file,start_s,end_s,label\na.mp4,0,1,cat\na.mp4,1,2,cat\n")
    with pytest.raises(ValueError, match=r"one label \(cat\)"):
        read_labels(tmp_path)
