"""Gated Multimodal Unit (Arevalo et al., 2017), generalised to three modalities."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import FusionHead, masked_softmax, mlp, stack_masked


class GMUHead(FusionHead):
    """``h_m = tanh(W_m e_m)``; gates ``z = softmax_m(W_z [e_v, e_a, e_t])`` per hidden unit; ``h = Σ z_m ⊙ h_m``.

    With two modalities the paper's sigmoid gate is this softmax over two; with three, the
    softmax over modalities (per hidden unit) is the paper's multi-modal form. The softmax
    runs over present modalities only, so an absent one has a gate of exactly zero.
    """

    name = "gmu"

    def __init__(self, embed_dim: int, n_classes: int, *, hidden: int | None = None, dropout: float = 0.1) -> None:
        width = hidden or 2 * embed_dim
        super().__init__(embed_dim, n_classes, width)
        self.width = width
        self.proj = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(3))
        self.gate = nn.Linear(3 * embed_dim, 3 * width)
        self.classifier = mlp(width, width, n_classes, dropout)

    def fuse(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Gate-weighted sum of the per-modality tanh projections."""
        x, present = stack_masked(emb_video, emb_audio, emb_text, mask)
        h = torch.stack([torch.tanh(proj(x[:, i])) for i, proj in enumerate(self.proj)], dim=1)  # [B, 3, H]
        scores = self.gate(x.flatten(1)).unflatten(1, (3, self.width))  # [B, 3, H]
        z = masked_softmax(scores, present.unsqueeze(-1).expand_as(scores), dim=1)
        return (z * h).sum(dim=1)
