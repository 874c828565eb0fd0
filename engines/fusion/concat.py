"""Feature-level fusion: concatenate the (masked) embeddings and the mask, then an MLP."""

from __future__ import annotations

import torch

from fusionstream.engines.fusion.base import FusionHead, mlp, stack_masked


class ConcatHead(FusionHead):
    """``[e_video, e_audio, e_text, mask]`` → MLP. Absent embeddings are zeroed; the mask
    columns tell the MLP which zeros mean "absent" rather than "a zero embedding"."""

    name = "concat"

    def __init__(self, embed_dim: int, n_classes: int, *, hidden: int | None = None, dropout: float = 0.1) -> None:
        fused = 3 * embed_dim + 3
        super().__init__(embed_dim, n_classes, fused)
        self.classifier = mlp(fused, hidden or 2 * embed_dim, n_classes, dropout)

    def fuse(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Concatenation of the zero-masked embeddings and the mask."""
        x, _ = stack_masked(emb_video, emb_audio, emb_text, mask)
        return torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)
