"""Feature-level fusion: concatenate the (masked) embeddings and the mask, then an MLP."""

from __future__ import annotations

import torch

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, mlp, stack_masked


class ConcatHead(FusionHead):
    """``[e_1, …, e_M, mask]`` → MLP. Absent embeddings are zeroed; the mask columns tell the
    MLP which zeros mean "absent" rather than "a zero embedding"."""

    name = "concat"

    def __init__(self, embed_dim: int, n_classes: int, *, modalities: int = DEFAULT_MODALITIES,
                 hidden: int | None = None, dropout: float = 0.1) -> None:
        fused = modalities * embed_dim + modalities
        super().__init__(embed_dim, n_classes, fused, modalities)
        self.classifier = mlp(fused, hidden or 2 * embed_dim, n_classes, dropout)

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Concatenation of the zero-masked embeddings and the mask."""
        embeddings, mask = self.split(inputs)
        x, _ = stack_masked(embeddings, mask)
        return torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)
