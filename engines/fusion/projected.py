"""A fusion head over pretrained encoders of any sizes: per-modality projections, then one of the seven heads.

The heads (``make_head``) take three embeddings of one width and a ``[B, 3]`` mask. Pretrained
encoders give each declared modality its own width (MiniLM 384, a ResNet 2048, ...) and a model may
declare any subset of modalities, so :class:`ProjectedHead` puts in front of the head:

- per declared modality, a standardisation with the training set's per-dimension mean and scale
  (pretrained embeddings come at arbitrary scales: a wav2vec2 mean state is not a unit vector) and a
  ``Linear`` to the common width;
- for each modality the model does not declare, a zero embedding and a 0 mask column, which every
  head already treats as "absent" (``base.py``).

Its ``forward(*embeddings, mask)`` takes the declared modalities' embeddings in ``MODALITIES`` order
and ``mask [B, declared]``: the format-2 fusion graph's signature (docs/model-format.md).
:func:`exportable` wraps it with a fixed-arity ``forward`` (``torch.export`` needs named inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fusionstream.engines.fusion import FusionHead, make_head
from fusionstream.engines.spec import MODALITIES as ALL_MODALITIES

#: The common width the projections map to (the heads' ``embed_dim``).
WIDTH = 64


class ProjectedHead(nn.Module):
    """Declared embeddings of any sizes + ``mask [B, M]`` → the head's output ``[B, outputs]``."""

    def __init__(self, method: str, sizes: Mapping[str, int], outputs: int, *, width: int = WIDTH,
                 **options: Any) -> None:
        super().__init__()
        unknown = [m for m in sizes if m not in ALL_MODALITIES]
        if unknown or not sizes:
            raise ValueError(f"sizes must name some of {', '.join(ALL_MODALITIES)}, got {list(sizes)}")
        self.method = method
        #: Declared modalities in ``MODALITIES`` order (the mask's columns).
        self.modalities = tuple(m for m in ALL_MODALITIES if m in sizes)
        self.sizes = {m: int(sizes[m]) for m in self.modalities}
        self.width = width
        self.outputs = outputs
        self.columns = tuple(ALL_MODALITIES.index(m) for m in self.modalities)
        for m in self.modalities:
            self.register_buffer(f"mean_{m}", torch.zeros(self.sizes[m]))
            self.register_buffer(f"scale_{m}", torch.ones(self.sizes[m]))
        self.project = nn.ModuleDict({m: nn.Linear(self.sizes[m], width) for m in self.modalities})
        self.head: FusionHead = make_head(method, width, outputs, **options)

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

    def _inputs(self, embeddings: Sequence[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The head's four inputs: three ``[B, width]`` embeddings (zeros when undeclared) and ``mask [B, 3]``."""
        if len(embeddings) != len(self.modalities):
            raise ValueError(f"expected {len(self.modalities)} embeddings ({', '.join(self.modalities)}), "
                             f"got {len(embeddings)}")
        batch = mask.shape[0]
        zeros = mask.new_zeros(batch, self.width)
        full: list[torch.Tensor] = [zeros, zeros, zeros]
        columns = [mask.new_zeros(batch)] * 3
        for i, (m, e) in enumerate(zip(self.modalities, embeddings, strict=True)):
            z = (e - getattr(self, f"mean_{m}")) / getattr(self, f"scale_{m}")
            full[self.columns[i]] = self.project[m](z)
            columns[self.columns[i]] = mask[:, i]
        return full[0], full[1], full[2], torch.stack(columns, dim=1)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """``forward(*declared embeddings, mask)`` → ``[B, outputs]`` (logits, or the fused vector)."""
        *embeddings, mask = args
        return self.head(*self._inputs(embeddings, mask))

    def forward_train(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, auxiliary loss)`` as :meth:`FusionHead.forward_train`."""
        *embeddings, mask = args
        return self.head.forward_train(*self._inputs(embeddings, mask))


class _One(nn.Module):
    def __init__(self, head: ProjectedHead) -> None:
        super().__init__()
        self.inner = head

    def forward(self, e0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner(e0, mask)


class _Two(_One):
    def forward(self, e0: torch.Tensor, e1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(e0, e1, mask)


class _Three(_One):
    def forward(  # type: ignore[override]
        self, e0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return self.inner(e0, e1, e2, mask)


def exportable(head: ProjectedHead) -> nn.Module:
    """``head`` with a fixed-arity ``forward`` for ``torch.export`` (which does not take ``*args``)."""
    return (_One, _Two, _Three)[len(head.modalities) - 1](head)


__all__ = ["WIDTH", "ProjectedHead", "exportable"]
