"""Gated Multimodal Unit (Arevalo et al., 2017), generalised to any number of modalities."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, masked_softmax, mlp, stack_masked


class GMUHead(FusionHead):
    """``h_m = tanh(W_m e_m)``; gates ``z = softmax_m(W_z [e_1, …, e_M])`` per hidden unit; ``h = Σ z_m ⊙ h_m``.

    With two modalities the paper's sigmoid gate is this softmax over two; with more, the
    softmax over modalities (per hidden unit) is the paper's multi-modal form. The softmax
    runs over present modalities only, so an absent one has a gate of exactly zero.
    """

    name = "gmu"

    def __init__(self, embed_dim: int, n_classes: int, *, modalities: int = DEFAULT_MODALITIES,
                 hidden: int | None = None, dropout: float = 0.1) -> None:
        width = hidden or 2 * embed_dim
        super().__init__(embed_dim, n_classes, width, modalities)
        self.width = width
        self.proj = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(modalities))
        self.gate = nn.Linear(modalities * embed_dim, modalities * width)
        self.classifier = mlp(width, width, n_classes, dropout)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Gate-weighted sum of the per-modality tanh projections."""
        embeddings, mask = self.split(inputs)
        x, present = stack_masked(embeddings, mask)
        h = torch.stack([torch.tanh(proj(x[:, i])) for i, proj in enumerate(self.proj)], dim=1)  # [B, M, H]
        scores = self.gate(x.flatten(1)).unflatten(1, (self.n_modalities, self.width))  # [B, M, H]
        z = masked_softmax(scores, present.unsqueeze(-1).expand_as(scores), dim=1)
        return (z * h).sum(dim=1)
