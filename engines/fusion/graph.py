"""Graph fusion: attention-based message passing (GATv2) over the modality nodes."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import (
    DEFAULT_MODALITIES,
    FusionHead,
    masked_mean,
    masked_softmax,
    mlp,
    stack_masked,
)


class _GATv2Layer(nn.Module):
    """One round of GATv2 (Brody et al., 2022) on a fully connected graph with self-loops.

    ``e_ij = aᵀ LeakyReLU(W_l h_i + W_r h_j)``, softmax over present neighbours j, message
    ``Σ_j α_ij W_r h_j``; residual + LayerNorm keep two rounds stable.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.left = nn.Linear(dim, dim)
        self.right = nn.Linear(dim, dim)
        self.attn = nn.Linear(dim, 1, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``h [B, N, D]`` node states; ``present [B, N]`` — absent nodes send and keep nothing."""
        left, right = self.left(h), self.right(h)
        pair = nn.functional.leaky_relu(left.unsqueeze(2) + right.unsqueeze(1), 0.2)  # [B, N(i), N(j), D]
        scores = self.attn(pair).squeeze(-1)  # [B, N, N]
        alpha = masked_softmax(scores, present.unsqueeze(1).expand_as(scores), dim=-1)
        h = self.norm(h + nn.functional.elu(torch.matmul(alpha, right)))
        return torch.where(present.unsqueeze(-1), h, torch.zeros_like(h))


class GraphHead(FusionHead):
    """Modality nodes (embedding + a node-type embedding), ``rounds`` GATv2 updates over the
    graph of present nodes, then a masked-mean readout into an MLP."""

    name = "graph"

    def __init__(self, embed_dim: int, n_classes: int, *, modalities: int = DEFAULT_MODALITIES, rounds: int = 2,
                 hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(embed_dim, n_classes, embed_dim, modalities)
        self.types = nn.Parameter(torch.randn(modalities, embed_dim) * 0.02)
        self.layers = nn.ModuleList(_GATv2Layer(embed_dim) for _ in range(rounds))
        self.classifier = mlp(embed_dim, hidden or 2 * embed_dim, n_classes, dropout)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Masked mean of the node states after message passing."""
        embeddings, mask = self.split(inputs)
        x, present = stack_masked(embeddings, mask)
        h = torch.where(present.unsqueeze(-1), x + self.types, torch.zeros_like(x))
        for layer in self.layers:
            h = layer(h, present)
        return masked_mean(h, present.unsqueeze(-1), dim=1)
