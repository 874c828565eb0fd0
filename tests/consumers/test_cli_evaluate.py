"""`fusionstream evaluate` without a model directory: the shipped model, and one line saying so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_evaluate_without_a_directory_uses_the_shipped_model(shipped_model: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fusionstream", "evaluate", "--seconds", "6", "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "MODEL_DIR" in line]
    assert said == [f"fusionstream: no MODEL_DIR given: evaluating the model shipped in the package, {shipped_model}"]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["windows"] > 0 and 0.0 <= result["fused"] <= 1.0
    assert result["backend"] == "onnxruntime"
