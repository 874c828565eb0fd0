"""Cross-modal attention: modality tokens plus a learned [CLS] query, pre-norm transformer layers."""

from __future__ import annotations

import math

import torch
from torch import nn

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, NEG, FusionHead, mlp, stack_masked


class _Block(nn.Module):
    """Pre-norm transformer layer with multi-head self-attention written as plain matmuls.

    ``nn.MultiheadAttention`` takes a fused fast path in eval mode whose export (and key
    padding mask handling) varies between torch versions; MatMul/Softmax/Where export the
    same everywhere and TensorRT fuses them anyway.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, key_present: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]``; ``key_present [B, T]`` bool — absent tokens are never attended to."""
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B, heads, T, T]
        allowed = key_present[:, None, None, :].expand_as(scores)
        attn = self.drop(torch.softmax(torch.where(allowed, scores, torch.full_like(scores, NEG)), dim=-1))
        x = x + self.drop(self.out(torch.matmul(attn, v).transpose(1, 2).flatten(2)))
        return x + self.drop(self.ffn(self.norm2(x)))


class AttentionHead(FusionHead):
    """Tokens ``[CLS, e_1, …, e_M]`` (each modality token = LayerNorm(e) + its type embedding)
    through ``layers`` transformer layers; the CLS output is classified.

    Absent modalities are removed from the keys (key padding mask), so nothing present ever
    attends to them; CLS is always a valid key, so no softmax row is ever fully masked.
    """

    name = "attention"

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        *,
        modalities: int = DEFAULT_MODALITIES,
        layers: int = 2,
        heads: int = 4,
        hidden: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(embed_dim, n_classes, embed_dim, modalities)
        self.cls = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.types = nn.Parameter(torch.randn(modalities, embed_dim) * 0.02)
        self.norm_in = nn.LayerNorm(embed_dim)
        self.blocks = nn.ModuleList(_Block(embed_dim, heads, dropout) for _ in range(layers))
        self.norm_out = nn.LayerNorm(embed_dim)
        self.classifier = mlp(embed_dim, hidden or 2 * embed_dim, n_classes, dropout)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The CLS token's output after attending over the present modality tokens."""
        embeddings, mask = self.split(inputs)
        x, present = stack_masked(embeddings, mask)
        # normalise first, then re-zero: LayerNorm of a zero row is its bias, not zero
        tokens = torch.where(present.unsqueeze(-1), self.norm_in(x), torch.zeros_like(x)) + self.types
        tokens = torch.cat([self.cls.expand(x.shape[0], 1, -1), tokens], dim=1)
        key_present = nn.functional.pad(present, (1, 0), value=True)
        for block in self.blocks:
            tokens = block(tokens, key_present)
        return self.norm_out(tokens[:, 0])
