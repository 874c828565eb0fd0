"""Learned per-modality weights: a convex combination of the present modalities' embeddings."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import FusionHead, masked_softmax, mlp, stack_masked


class WeightedHead(FusionHead):
    """``Σ_m softmax(α)_m · e_m`` over present modalities, then an MLP.

    The weights are one learned scalar per modality (not per sample); the softmax is taken
    over the present modalities only, so the weights still sum to one when one is missing.
    """

    name = "weighted"

    def __init__(self, embed_dim: int, n_classes: int, *, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(embed_dim, n_classes, embed_dim)
        self.alpha = nn.Parameter(torch.zeros(3))
        self.classifier = mlp(embed_dim, hidden or 2 * embed_dim, n_classes, dropout)

    def modality_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """The per-row weights ``[B, 3]`` actually applied (0 for absent modalities)."""
        present = mask > 0.5
        return masked_softmax(self.alpha.to(mask.dtype).expand_as(mask), present, dim=1)

    def fuse(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Weighted sum of the present embeddings."""
        x, _ = stack_masked(emb_video, emb_audio, emb_text, mask)
        return (self.modality_weights(mask.to(x.dtype)).unsqueeze(-1) * x).sum(dim=1)
