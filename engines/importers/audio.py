"""Audio encoders: a Hugging Face raw-waveform encoder directory (wav2vec2, HuBERT, WavLM, ...) → ``audio.onnx``.

The graph takes ``input_values [batch, samples]`` (one window's samples at the model's rate,
normalised by the runtime when the feature extractor does it) and gives ``embedding [batch, hidden]``:
the mean of ``last_hidden_state`` over time. The rate and the normalisation come from
``preprocessor_config.json`` (``sampling_rate``, ``do_normalize``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionstream.engines.importers import hf
from fusionstream.engines.importers.common import (
    GRAPH_FILES,
    TRACE_BATCH,
    Imported,
    ImportSourceError,
    Job,
    Step,
    Window,
    check_error,
    describe_inputs,
    export_onnx,
    metadata,
    relative_error,
    session,
)  # fmt: skip

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

INPUT = "input_values"
OUTPUT = "embedding"
PREPROCESSOR = "preprocessor_config.json"
DEFAULT_RATE = 16_000


@dataclass(frozen=True)
class AudioSource:
    """A checked audio encoder directory and its feature extractor's settings."""

    path: Path
    config: dict[str, Any]
    sample_rate: int
    normalize: bool
    note: str


def plan(path: Path, option: str = "--audio") -> Job:
    """Check ``path`` and return the job importing it."""
    path = Path(path)
    config = hf.check_dir(path, option)
    preprocessor = path / PREPROCESSOR
    note = ""
    if preprocessor.is_file():
        doc = hf.read_json(preprocessor)
        rate, normalize = doc.get("sampling_rate", DEFAULT_RATE), doc.get("do_normalize", True)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise ImportSourceError(f"{preprocessor}: sampling_rate: expected a positive integer, got {rate!r}")
        if not isinstance(normalize, bool):
            raise ImportSourceError(f"{preprocessor}: do_normalize: expected true or false, got {normalize!r}")
        if "input_features" in doc.get("model_input_names", []):
            raise ImportSourceError(f"{preprocessor}: model_input_names: this model takes spectrogram features, "
                                    "not raw samples (input_values)")
    else:
        rate, normalize = DEFAULT_RATE, False
        note = f"no {PREPROCESSOR}: assumed {DEFAULT_RATE} Hz, not normalized"
    source = AudioSource(path, config, rate, normalize, note)
    return Job(f"audio from {path}", ("audio",), functools.partial(_run, source))


def pooled_encoder(model: nn.Module) -> nn.Module:
    """``model`` with the mean over time on top: ``[B, samples]`` → ``[B, hidden]``."""
    import torch
    from torch import nn

    class PooledAudio(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_values: torch.Tensor) -> torch.Tensor:
            return self.model(input_values=input_values).last_hidden_state.mean(dim=1)

    return PooledAudio().eval()


def _inputs(batch: int, samples: int, rate: int, normalize: bool, seed: int) -> np.ndarray:
    """Noise and a tone, normalised per row when the model expects it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, samples)).astype(np.float32) * 0.1
    x[0] += 0.5 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate).astype(np.float32)
    if normalize:
        x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)
    return x.astype(np.float32)


def _run(source: AudioSource, staging: Path, window: Window, step: Step) -> list[Imported]:
    import torch

    samples = window.samples(source.sample_rate, f"{source.path}")
    step("loading the model")
    model = hf.load_model(source.path)
    if not hf.accepts(model, INPUT):
        raise ImportSourceError(f"{source.path / hf.CONFIG}: model_type {source.config['model_type']!r} does not take "
                                "raw samples (input_values): import wav2vec2, HuBERT, WavLM or data2vec-audio encoders")
    encoder = pooled_encoder(model)
    example = torch.from_numpy(_inputs(TRACE_BATCH, samples, source.sample_rate, source.normalize, 0))
    with torch.no_grad():
        try:
            encoder(example)
        except Exception as exc:
            raise ImportSourceError(f"{source.path}: the model fails on a {window.length_ms} ms window "
                                    f"({samples} samples): {type(exc).__name__}: {exc}") from None
    step("exporting to ONNX")
    graph = staging / GRAPH_FILES["audio"]
    export_onnx(encoder, (example,), graph, input_names=[INPUT], output_name=OUTPUT, axes=[{0: "batch"}],
                metadata=metadata("audio", str(source.path)))
    step("checking parity")
    runner = session(graph)
    error, width = 0.0, 0
    with torch.no_grad():
        for seed, batch in enumerate((1, 3), start=1):
            x = _inputs(batch, samples, source.sample_rate, source.normalize, seed)
            ref = encoder(torch.from_numpy(x)).numpy()
            error = max(error, relative_error(runner.run([OUTPUT], {INPUT: x})[0], ref))
            width = ref.shape[1]
    check_error(error, graph.name)
    entry = {
        "encoder": {
            "file": graph.name,
            "inputs": {"samples": {"name": INPUT, "dtype": "float32"}},
            "output": {"name": OUTPUT, "size": int(width)},
        },
        "preprocess": {"sample_rate": source.sample_rate, "samples": samples, "normalize": source.normalize},
    }
    return [Imported("audio", str(source.path), entry, (graph.name,), error, describe_inputs(graph), source.note)]
