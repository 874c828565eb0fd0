"""Decision-level fusion: one classifier per modality, combined by averaging or voting."""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, mlp, present_of, stack_masked

#: Weight of the averaged probabilities added to the votes, so ties break towards the more confident class.
TIE_BREAK = 1e-3
#: Probability floor before the log, so a class no modality voted for still has a finite logit.
PROB_FLOOR = 1e-8


class DecisionHead(FusionHead):
    """Per-modality classifiers; the output is ``log`` of the combined class probabilities.

    ``combine="mean"`` averages the present modalities' probabilities. ``combine="vote"``
    gives each present modality one vote for its top class (ties broken by the averaged
    probabilities); voting has no gradient, so in training mode the head uses the mean and
    votes only at inference. Rows with nothing present get ``softmax(nothing_logits)``.
    Since the combined probabilities sum to one, ``softmax(logits)`` returns them unchanged.
    """

    name = "decision"

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        *,
        modalities: int = DEFAULT_MODALITIES,
        combine: str = "mean",
        hidden: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        if combine not in ("mean", "vote"):
            raise ValueError(f"combine must be 'mean' or 'vote', got {combine!r}")
        super().__init__(embed_dim, n_classes, n_classes, modalities)
        self.combine = combine
        self.classifiers = nn.ModuleList(
            mlp(embed_dim, hidden or 2 * embed_dim, n_classes, dropout) for _ in range(modalities)
        )

    def modality_probs(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Each modality's own class probabilities ``[B, M, C]`` (rows of absent modalities are meaningless)."""
        embeddings, mask = self.split(inputs)
        x, _ = stack_masked(embeddings, mask)
        return torch.stack([torch.softmax(head(x[:, i]), dim=-1) for i, head in enumerate(self.classifiers)], dim=1)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``forward(*embeddings, mask)`` → log of the combined probabilities ``[B, C]``."""
        _, mask = self.split(inputs)
        probs = self.modality_probs(*inputs)
        present = present_of(mask).unsqueeze(-1)  # [B, M, 1]
        count = present.to(probs.dtype).sum(dim=1).clamp_min(1.0)  # [B, 1]
        mean = torch.where(present, probs, torch.zeros_like(probs)).sum(dim=1) / count
        combined = mean
        if self.combine == "vote" and not self.training:
            top = (probs == probs.amax(dim=-1, keepdim=True)).to(probs.dtype)
            top = top / top.sum(dim=-1, keepdim=True)  # a modality with tied classes splits its vote
            votes = torch.where(present, top, torch.zeros_like(top)).sum(dim=1) / count
            combined = (votes + TIE_BREAK * mean) / (1.0 + TIE_BREAK)
        fallback = torch.softmax(self.nothing, dim=-1).to(combined.dtype).expand_as(combined)
        combined = torch.where(present.any(dim=1), combined, fallback)
        return torch.log(combined.clamp_min(PROB_FLOOR))
