"""`fusionstream model check`: a directory's graphs against its manifest, from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fusionstream.consumers.settings import default_model_dir
from tests.v2models import write_v2_model

CHECK = [sys.executable, "-m", "fusionstream", "model", "check"]


def test_check_reports_every_graph_of_a_three_and_a_two_modality_model(tmp_path: Path) -> None:
    shipped = subprocess.run([*CHECK, str(default_model_dir()), "--json"], capture_output=True, text=True,
                             timeout=120, check=False)
    assert shipped.returncode == 0, shipped.stderr
    report = json.loads(shipped.stdout)
    assert report["modalities"] == ["video", "audio", "text"] and report["task"] == "single_label"
    assert [(g["graph"], g["output_size"]) for g in report["graphs"]] == [
        ("video", 64), ("video (int8)", 64), ("audio", 64), ("audio (int8)", 64), ("text", 64), ("fusion", 10)]
    two = write_v2_model(tmp_path / "av", ("video", "audio"), activation="softmax")
    # The table's cells are read below, whatever the width of the terminal the tests run in.
    printed = subprocess.run([*CHECK, str(two)], capture_output=True, text=True, timeout=120, check=False,
                             env={**os.environ, "COLUMNS": "200"})
    assert printed.returncode == 0, printed.stderr
    assert "format 2" in printed.stdout and "video + audio" in printed.stdout and "frame.onnx" in printed.stdout


def test_a_bad_model_is_one_line_naming_the_file_and_field(tmp_path: Path) -> None:
    model = write_v2_model(tmp_path / "bad", ("audio",))
    doc = json.loads((model / "model.json").read_text())
    doc["modalities"]["audio"]["encoder"]["output"]["size"] = 32
    (model / "model.json").write_text(json.dumps(doc))
    done = subprocess.run([*CHECK, str(model)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.json: modalities.audio.encoder.output.size: 32 declared" in lines[0], done.stderr


def test_logits_declared_as_probabilities_are_warned_of(tmp_path: Path) -> None:
    # The head outputs logits; `activation: none` would publish them raw as a window's scores.
    raw = write_v2_model(tmp_path / "raw", ("audio",), activation="none")
    report = subprocess.run([*CHECK, str(raw), "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    (fusion,) = [g for g in json.loads(report.stdout)["graphs"] if g["graph"] == "fusion"]
    (warning,) = fusion["warnings"]
    assert "activation is none" in warning and '"activation": "softmax"' in warning, warning
    printed = subprocess.run([*CHECK, str(raw)], capture_output=True, text=True, timeout=120, check=False,
                             env={**os.environ, "COLUMNS": "60"})
    assert printed.returncode == 0 and "warning:" in printed.stdout and "not probabilities" in printed.stdout
    multi = write_v2_model(tmp_path / "multi", ("audio",), activation="none",
                           task={"kind": "multi_label", "classes": ["x", "y", "z"]})
    report = subprocess.run([*CHECK, str(multi), "--json"], capture_output=True, text=True, timeout=120, check=False)
    (fusion,) = [g for g in json.loads(report.stdout)["graphs"] if g["graph"] == "fusion"]
    assert len(fusion["warnings"]) == 1 and '"sigmoid"' in fusion["warnings"][0]
    for activation, task in (("softmax", None), ("sigmoid", {"kind": "multi_label", "classes": ["x", "y"]})):
        fine = write_v2_model(tmp_path / activation, ("audio",), activation=activation, task=task)
        report = subprocess.run([*CHECK, str(fine), "--json"], capture_output=True, text=True, timeout=120,
                                check=False)
        assert all(not g["warnings"] for g in json.loads(report.stdout)["graphs"]), report.stdout
