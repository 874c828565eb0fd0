"""Fusion heads: one interface (``forward(*embeddings, mask) -> logits``, any number of modalities), seven methods.

=============  ==============================================================================
``concat``     feature level: concatenated embeddings (+ mask) → MLP
``weighted``   learned per-modality weights α, softmax-renormalised over present modalities
``gmu``        gated multimodal unit (Arevalo et al.): tanh projections, softmax gates
``attention``  model level: [CLS] + modality tokens, transformer layers with key padding mask
``decision``   per-modality classifiers, probabilities averaged (or ``combine="vote"``)
``graph``      GATv2 message passing over the present modality nodes, masked-mean readout
``vae``        multimodal VAE: product-of-experts joint latent, classifier on its mean
=============  ==============================================================================
"""

from __future__ import annotations

from typing import Any

from fusionstream.engines.fusion.attention import AttentionHead
from fusionstream.engines.fusion.base import DEFAULT_MODALITIES, FusionHead, fixed_arity
from fusionstream.engines.fusion.concat import ConcatHead
from fusionstream.engines.fusion.decision import DecisionHead
from fusionstream.engines.fusion.gmu import GMUHead
from fusionstream.engines.fusion.graph import GraphHead
from fusionstream.engines.fusion.vae import VAEHead
from fusionstream.engines.fusion.weighted import WeightedHead

HEADS: dict[str, type[FusionHead]] = {
    cls.name: cls for cls in (ConcatHead, WeightedHead, GMUHead, AttentionHead, DecisionHead, GraphHead, VAEHead)
}


def make_head(name: str, embed_dim: int, n_classes: int, modalities: int = DEFAULT_MODALITIES,
              **options: Any) -> FusionHead:
    """Build the fusion head ``name`` (see the table above) for ``modalities`` embeddings of ``embed_dim``
    and a ``[B, modalities]`` mask; ``options`` go to its constructor."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown fusion head {name!r}; choose one of {', '.join(HEADS)}") from None
    return cls(embed_dim, n_classes, modalities=modalities, **options)


__all__ = [
    "DEFAULT_MODALITIES",
    "HEADS",
    "AttentionHead",
    "ConcatHead",
    "DecisionHead",
    "FusionHead",
    "GMUHead",
    "GraphHead",
    "VAEHead",
    "WeightedHead",
    "fixed_arity",
    "make_head",
]
