"""Text encoder: an embedding bag over hashed character n-grams (fastText-style)."""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """``text int64 [B, L]`` n-gram ids (0 = padding) → ``[B, embed_dim]``.

    ``nn.EmbeddingBag`` would do the same, but its ONNX export is poor; an ``nn.Embedding``
    plus a masked mean over the non-padding ids exports to Gather/ReduceSum everywhere.
    """

    def __init__(self, buckets: int, embed_dim: int) -> None:
        super().__init__()
        self.ngrams = nn.Embedding(buckets, embed_dim, padding_idx=0)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Embed a batch of id sequences; an all-padding row gives ``relu(bias)``, not NaN."""
        # The padding row is zero already; masking anyway keeps the mean right if weights are edited.
        keep = (text != 0).unsqueeze(-1).to(self.ngrams.weight.dtype)
        total = (self.ngrams(text) * keep).sum(dim=1)
        count = keep.sum(dim=1).clamp_min(1.0)
        return torch.relu(self.proj(total / count))
