"""A fusion head over pretrained encoders of any sizes: per-modality projections, then one of the seven heads.

The heads (``make_head``) take ``M`` embeddings of one width and a ``[B, M]`` mask. Pretrained
encoders give each declared modality its own width (MiniLM 384, a ResNet 2048, ...) and a model may
declare any subset of modalities, so :class:`ProjectedHead` builds the head for the declared
modalities only and puts in front of it, per declared modality, a standardisation with the training
set's per-dimension mean and scale (pretrained embeddings come at arbitrary scales: a wav2vec2 mean
state is not a unit vector) and a ``Linear`` to the common width.

Its ``forward(*embeddings, mask)`` takes the declared modalities' embeddings in declaration order
(``sizes``' order: the manifest's) and ``mask [B, declared]``: the format-2 fusion graph's signature
(docs/model-format.md). :func:`exportable` wraps it with a fixed-arity ``forward`` (``torch.export``
binds example inputs to named parameters, and a ``*args`` forward has none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fusionstream.engines.fusion import FusionHead, fixed_arity, make_head

#: The common width the projections map to (the heads' ``embed_dim``).
WIDTH = 64


class ProjectedHead(nn.Module):
    """Declared embeddings of any sizes + ``mask [B, M]`` → the head's output ``[B, outputs]``."""

    def __init__(self, method: str, sizes: Mapping[str, int], outputs: int, *, width: int = WIDTH,
                 **options: Any) -> None:
        super().__init__()
        if not sizes or any(int(s) < 1 for s in sizes.values()):
            raise ValueError(f"sizes must give each declared modality a width of at least 1, got {dict(sizes)}")
        self.method = method
        #: Declared modalities in declaration order (the mask's columns).
        self.modalities = tuple(sizes)
        self.sizes = {m: int(sizes[m]) for m in self.modalities}
        self.width = width
        self.outputs = outputs
        for m in self.modalities:
            self.register_buffer(f"mean_{m}", torch.zeros(self.sizes[m]))
            self.register_buffer(f"scale_{m}", torch.ones(self.sizes[m]))
        self.project = nn.ModuleDict({m: nn.Linear(self.sizes[m], width) for m in self.modalities})
        self.head: FusionHead = make_head(method, width, outputs, modalities=len(self.modalities), **options)

    def fit_normalizer(self, embeddings: Mapping[str, torch.Tensor], present: torch.Tensor) -> None:
        """Per-dimension mean and scale of each modality over the rows where it is present."""
        with torch.no_grad():
            for i, m in enumerate(self.modalities):
                rows = embeddings[m][present[:, i] > 0.5]
                if len(rows) < 2:
                    continue  # too few to estimate: keep the identity
                getattr(self, f"mean_{m}").copy_(rows.mean(dim=0))
                # a floor relative to the typical scale keeps constant dimensions from exploding
                std = rows.std(dim=0)
                getattr(self, f"scale_{m}").copy_(std.clamp_min(1e-3 * float(std.mean()) + 1e-8))

    def _inputs(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The head's inputs: each declared embedding standardised and projected to ``width``, then the mask."""
        *embeddings, mask = args
        if len(embeddings) != len(self.modalities):
            raise ValueError(f"expected {len(self.modalities)} embeddings ({', '.join(self.modalities)}) and a mask, "
                             f"got {len(args)} tensors")
        projected = [self.project[m]((e - getattr(self, f"mean_{m}")) / getattr(self, f"scale_{m}"))
                     for m, e in zip(self.modalities, embeddings, strict=True)]
        return [*projected, mask]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """``forward(*declared embeddings, mask)`` → ``[B, outputs]`` (logits, or the fused vector)."""
        return self.head(*self._inputs(args))

    def forward_train(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, auxiliary loss)`` as :meth:`FusionHead.forward_train`."""
        return self.head.forward_train(*self._inputs(args))


def exportable(head: ProjectedHead) -> nn.Module:
    """``head`` with a fixed-arity ``forward`` (one parameter per declared modality, then ``mask``) for
    ``torch.export``, which does not take ``*args``."""
    return fixed_arity(head, len(head.modalities))


__all__ = ["WIDTH", "ProjectedHead", "exportable"]
