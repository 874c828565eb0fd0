"""The fusion-head interface and the masking helpers every head uses.

Contract (docs/architecture.md): ``forward(emb_video, emb_audio, emb_text, mask) -> logits [B, C]``
with embeddings ``[B, D]`` and ``mask [B, 3]`` (1 = present). An absent modality must not
influence the output at all, whatever its embedding holds (zeros from a skipped encoder,
junk, even NaN), and a row with nothing present must still give finite logits. Heads
therefore select with ``torch.where`` (``0 * nan`` is nan; ``where`` is not) and mask
softmax inputs with a finite large negative. Everything here is plain tensor algebra with
a static graph, so every head exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

#: Score for an absent entry before a softmax. Finite on purpose: a row with everything
#: masked then gives a uniform (and afterwards discarded) softmax instead of NaN, which
#: would poison gradients; exp(-1e4) underflows to exactly 0 in float32 and float16, so
#: absent entries get exactly zero weight whenever anything is present.
NEG = -1e4


def present_of(mask: torch.Tensor) -> torch.Tensor:
    """``mask [B, M]`` (floats) → bool ``[B, M]``, True where the modality is present."""
    return mask > 0.5


def stack_masked(
    emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack embeddings to ``[B, 3, D]`` with absent ones replaced by exact zeros; also return presence."""
    present = present_of(mask)
    x = torch.stack([emb_video, emb_audio, emb_text], dim=1)
    return torch.where(present.unsqueeze(-1), x, torch.zeros_like(x)), present


def masked_softmax(scores: torch.Tensor, present: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` restricted to present entries; absent (and all-absent) entries get 0."""
    weights = torch.softmax(torch.where(present, scores, torch.full_like(scores, NEG)), dim=dim)
    return torch.where(present, weights, torch.zeros_like(weights))


def masked_mean(x: torch.Tensor, present: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only present entries (``present`` broadcasts to ``x``)."""
    keep = present.to(x.dtype)
    total = torch.where(present, x, torch.zeros_like(x)).sum(dim=dim)
    return total / keep.sum(dim=dim).clamp_min(1.0)


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """The classifier used by the heads: Linear → ReLU → Dropout → Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class FusionHead(nn.Module):
    """Base class of the fusion heads: embeddings + presence mask → class logits.

    Subclasses implement :meth:`fuse` (→ a fused vector ``[B, F]``) and set ``self.classifier``;
    the base replaces the fused vector of rows with no modality by a learned ``nothing`` vector,
    so those rows get ``classifier(nothing)``. Heads whose output is not "classifier of a fused
    vector" (``decision``) override :meth:`forward` instead.

    Trainers call :meth:`forward_train`, which also returns an auxiliary loss to add to the
    classification loss (zero except for heads with a generative part, like ``vae``).
    """

    #: Registry name (``make_head(name, ...)``).
    name: ClassVar[str] = ""

    def __init__(self, embed_dim: int, n_classes: int, fused_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.n_classes = n_classes
        self.nothing = nn.Parameter(torch.zeros(fused_dim))
        self.classifier: nn.Module = nn.Identity()

    def fuse(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Fused representation ``[B, F]`` of the present modalities."""
        raise NotImplementedError

    def forward(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Class logits ``[B, n_classes]``."""
        fused = self.fuse(emb_video, emb_audio, emb_text, mask)
        return self.classifier(self.with_nothing(fused, mask))

    def forward_train(
        self, emb_video: torch.Tensor, emb_audio: torch.Tensor, emb_text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, auxiliary loss)``; the loss is a scalar to add to the task loss."""
        logits = self(emb_video, emb_audio, emb_text, mask)
        return logits, logits.new_zeros(())

    def with_nothing(self, fused: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the fused vector of rows where no modality is present by the learned ``nothing``."""
        anything = present_of(mask).any(dim=1, keepdim=True)
        return torch.where(anything, fused, self.nothing.to(fused.dtype).expand_as(fused))
