"""Learned per-modality weights: a convex combination of the present modalities' embeddings."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, masked_softmax, mlp, stack_masked


class WeightedHead(FusionHead):
    """``Σ_m softmax(α)_m · e_m`` over present modalities, then an MLP.

    The weights are one learned scalar per modality (not per sample); the softmax is taken
    over the present modalities only, so the weights still sum to one when one is missing.
    """

    name = "weighted"

    def __init__(self, embed_dim: int, n_classes: int, *, modalities: int = DEFAULT_MODALITIES,
                 hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(embed_dim, n_classes, embed_dim, modalities)
        self.alpha = nn.Parameter(torch.zeros(modalities))
        self.classifier = mlp(embed_dim, hidden or 2 * embed_dim, n_classes, dropout)

    def modality_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """The per-row weights ``[B, M]`` actually applied (0 for absent modalities)."""
        present = mask > 0.5
        return masked_softmax(self.alpha.to(mask.dtype).expand_as(mask), present, dim=1)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the present embeddings."""
        embeddings, mask = self.split(inputs)
        x, _ = stack_masked(embeddings, mask)
        return (self.modality_weights(mask.to(x.dtype)).unsqueeze(-1) * x).sum(dim=1)
