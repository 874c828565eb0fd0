"""Tiny model geometry shared by the engines tests (after Polygraphy's ``tests/models/meta.py``).

Small enough that building, exporting and running a model takes milliseconds to seconds,
and still exercising every layer: several frames, several STFT frames, padding in text.
"""

from __future__ import annotations

from typing import Any

import torch

from fusionstream.engines.spec import ModelSpec

#: 2 frames of 16×16, 0.2 s of 16 kHz audio (3200 samples → 18 STFT frames, enough for four 2× pools),
#: 24 text ids, 16-d embeddings.
TINY: dict[str, Any] = {
    "classes": ["a", "b", "c", "d", "e"],
    "embed_dim": 16,
    "frames_per_window": 2,
    "image_size": 16,
    "sample_rate": 16_000,
    "window_ns": 200_000_000,
    "hop_ns": 100_000_000,
    "text_buckets": 97,
    "text_max_len": 24,
    "n_mels": 16,
}

#: Every head, plus the decision head's voting variant: (fusion, fusion_options).
HEAD_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("concat", {}),
    ("weighted", {}),
    ("gmu", {}),
    ("attention", {}),
    ("decision", {}),
    ("decision", {"combine": "vote"}),
    ("graph", {}),
    ("vae", {}),
]
HEAD_IDS = [name + "".join(f"-{v}" for v in options.values()) for name, options in HEAD_CONFIGS]


def tiny_spec(fusion: str = "attention", **changes: Any) -> ModelSpec:
    """A valid spec with the tiny geometry; ``changes`` override any field."""
    return ModelSpec(**({"version": "test", "fusion": fusion} | TINY | changes))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give an untrained model trained-looking state, so comparisons are not between near-uniform outputs.

    BatchNorm's initial running statistics (mean 0, var 1) make it an identity in eval mode;
    random statistics and affine terms exercise it, and a larger spread of weights gives
    confident, varied probabilities.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            elif isinstance(module, torch.nn.Linear):
                module.weight.mul_(2.0)
    return model
