"""`fusionstream quantize`: int8 encoders for a model directory, calibrated on rendered windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from fusionstream.consumers.training.generate import generate, progress_bar, synthetic_configs
from fusionstream.engines.quantize import quantize_model
from fusionstream.engines.spec import ModelSpec

#: Windows per calibration batch, and the most calibration windows used.
CALIBRATION_BATCH = 32
CALIBRATION_WINDOWS = 512


def quantize_command(model_dir: Path, *, seconds: float, seed: int) -> list[Path]:
    console = Console()
    spec = ModelSpec.load(model_dir)
    with progress_bar(console) as progress:
        # Training voices and a seed of its own: calibration never sees the held-out test data.
        windows = generate(spec, synthetic_configs(seconds, seed, "train"), "calibration streams", 2, progress)
    rows = np.flatnonzero(windows.mask.all(axis=1))[:CALIBRATION_WINDOWS]
    if len(rows) == 0:
        raise SystemExit("no calibration window has every modality: give more --seconds")
    batches = [windows.batch(rows[i : i + CALIBRATION_BATCH]) for i in range(0, len(rows), CALIBRATION_BATCH)]
    with console.status(f"quantizing, calibrated on {len(rows)} windows"):
        written = quantize_model(model_dir, batches, progress=lambda graph: console.print(f"  {graph} encoder"))
    for path in written:
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    console.print(f"next: fusionstream evaluate {model_dir} --int8")
    return written
