"""`fusionstream quantize`: int8 encoders for a model directory of either format.

Format 1 is calibrated on rendered windows (static quantization); format 2 has no calibration set
of its own and is quantized dynamically (``engines/quantize.py`` says why and what).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from fusionstream.engines.errors import EngineError
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.quantize import DYNAMIC_OPS, quantize_manifest, quantize_model

#: Windows per calibration batch, and the most calibration windows used.
CALIBRATION_BATCH = 32
CALIBRATION_WINDOWS = 512


def quantize_command(model_dir: Path, *, seconds: float, seed: int, data: Path | None = None) -> list[Path]:
    console = Console()
    try:
        manifest = load_manifest(model_dir)
    except EngineError as exc:
        raise SystemExit(f"fusionstream: error: {exc}") from None
    if manifest.source_format == 2:
        return _quantize_v2(model_dir, console)
    from fusionstream.consumers.training.generate import generate, progress_bar, synthetic_configs
    from fusionstream.engines.spec import ModelSpec

    spec = ModelSpec.load(model_dir)
    with progress_bar(console) as progress:
        if data is not None:  # a model trained on clips: calibrated on frames and sounds like its own
            from fusionstream.consumers.training.clips import load_clips

            try:
                windows = load_clips(data, spec, progress=progress)
            except (OSError, ValueError) as exc:
                raise SystemExit(f"fusionstream: error: {exc}") from None
        else:
            if list(spec.classes) != [str(d) for d in range(10)]:
                console.print("[yellow]warning:[/] this model's classes are not the synthetic streams' digits: "
                              "calibrate it on your clips with --data DIR")
            # Training voices and a seed of its own: calibration never sees the held-out test data.
            windows = generate(spec, synthetic_configs(seconds, seed, "train"), "calibration streams", 2, progress)
    rows = np.flatnonzero(windows.mask.all(axis=1))[:CALIBRATION_WINDOWS]
    if len(rows) == 0:
        raise SystemExit("no calibration window has every modality: give more --seconds")
    batches = [windows.batch(rows[i : i + CALIBRATION_BATCH]) for i in range(0, len(rows), CALIBRATION_BATCH)]
    with console.status(f"quantizing, calibrated on {len(rows)} windows"):
        written = quantize_model(model_dir, batches, progress=lambda graph: console.print(f"  {graph} encoder"))
    for path in written:
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", soft_wrap=True)
    # Not wrapped at a narrow terminal: a path broken mid-name cannot be copied back as a command.
    console.print(f"next: fusionstream evaluate {model_dir} --int8" + (f" --data {data}" if data is not None else ""),
                  soft_wrap=True)
    return written


def _quantize_v2(model_dir: Path, console: Console) -> list[Path]:
    with console.status(f"quantizing {', '.join(DYNAMIC_OPS)} weights (dynamic int8)"):
        try:
            written = quantize_manifest(model_dir, progress=lambda name: console.print(f"  {name} encoder"))
        except EngineError as exc:
            raise SystemExit(f"fusionstream: error: {exc}") from None
    for name, path in written.items():
        if path is None:
            console.print(f"{name}: no {' or '.join(DYNAMIC_OPS)} to quantize, stays float32")
        else:
            console.print(f"{name}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB), model.json int8_file")
    paths = [p for p in written.values() if p is not None]
    if not paths:
        raise SystemExit(f"fusionstream: error: {model_dir}: no encoder has weights to quantize")
    console.print("next: serve or bench with FUSIONSTREAM_PRECISION=int8 (onnxruntime backend)")
    return paths
