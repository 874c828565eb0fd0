"""The fusion-head interface and the masking helpers every head uses.

Contract: a head is built for ``M`` modalities (``make_head(..., modalities=M)``; the shipped
format-1 models have the three of ``MODALITIES``) and called as ``forward(*embeddings, mask) ->
logits [B, C]`` with ``M`` embeddings ``[B, D]`` and ``mask [B, M]`` (1 = present), column ``i``
being embedding ``i``. Which modality is which is the caller's business: a head only knows how
many there are, so a fourth modality needs no new head. An absent modality must not influence the
output at all, whatever its embedding holds (zeros from a skipped encoder, junk, even NaN), and a
row with nothing present must still give finite logits. Heads therefore select with
``torch.where`` (``0 * nan`` is nan; ``where`` is not) and mask softmax inputs with a finite large
negative. Everything here is plain tensor algebra with a static graph, so every head exports to
ONNX with a dynamic batch axis.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from fusionstream.engines.spec import MODALITIES

#: A head's modality count unless told otherwise: format 1's video, audio and text (the shipped model).
DEFAULT_MODALITIES = len(MODALITIES)

#: Score for an absent entry before a softmax. Finite on purpose: a row with everything
#: masked then gives a uniform (and afterwards discarded) softmax instead of NaN, which
#: would poison gradients; exp(-1e4) underflows to exactly 0 in float32 and float16, so
#: absent entries get exactly zero weight whenever anything is present.
NEG = -1e4


def present_of(mask: torch.Tensor) -> torch.Tensor:
    """``mask [B, M]`` (floats) → bool ``[B, M]``, True where the modality is present."""
    return mask > 0.5


def stack_masked(embeddings: Sequence[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``M`` embeddings to ``[B, M, D]`` with absent ones replaced by exact zeros; also return presence."""
    present = present_of(mask)
    x = torch.stack(list(embeddings), dim=1)
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
    """Base class of the fusion heads: ``M`` embeddings + presence mask → class logits.

    Every method that reads inputs takes them as ``forward`` does, ``(*embeddings, mask)``, and
    :meth:`split` checks there are ``n_modalities`` embeddings. Subclasses implement :meth:`fuse`
    (→ a fused vector ``[B, F]``) and set ``self.classifier``; the base replaces the fused vector
    of rows with no modality by a learned ``nothing`` vector, so those rows get
    ``classifier(nothing)``. Heads whose output is not "classifier of a fused vector"
    (``decision``) override :meth:`forward` instead.

    Trainers call :meth:`forward_train`, which also returns an auxiliary loss to add to the
    classification loss (zero except for heads with a generative part, like ``vae``).
    """

    #: Registry name (``make_head(name, ...)``).
    name: ClassVar[str] = ""

    def __init__(self, embed_dim: int, n_classes: int, fused_dim: int, modalities: int) -> None:
        super().__init__()
        if modalities < 1:
            raise ValueError(f"{self.name} head: modalities must be at least 1, got {modalities}")
        self.embed_dim = embed_dim
        self.n_classes = n_classes
        #: How many embeddings (and mask columns) the head takes.
        self.n_modalities = modalities
        self.nothing = nn.Parameter(torch.zeros(fused_dim))
        self.classifier: nn.Module = nn.Identity()

    def split(self, inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(*embeddings, mask)`` → ``(embeddings, mask)``, checking the head was built for that many."""
        if len(inputs) != self.n_modalities + 1:
            raise ValueError(f"{self.name} head built for {self.n_modalities} modalities: expected "
                             f"{self.n_modalities} embeddings and a mask, got {len(inputs)} tensors")
        *embeddings, mask = inputs
        return embeddings, mask

    def fuse(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Fused representation ``[B, F]`` of the present modalities."""
        raise NotImplementedError

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``forward(*embeddings, mask)`` → class logits ``[B, n_classes]``."""
        _, mask = self.split(inputs)
        return self.classifier(self.with_nothing(self.fuse(*inputs), mask))

    def forward_train(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, auxiliary loss)``; the loss is a scalar to add to the task loss."""
        logits = self(*inputs)
        return logits, logits.new_zeros(())

    def with_nothing(self, fused: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the fused vector of rows where no modality is present by the learned ``nothing``."""
        anything = present_of(mask).any(dim=1, keepdim=True)
        return torch.where(anything, fused, self.nothing.to(fused.dtype).expand_as(fused))


class _FixedArity(nn.Module):
    """Calls ``inner(*args)``; the subclasses :func:`fixed_arity` makes declare how many args."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.inner(*args)


@functools.cache
def _arity_class(embeddings: int) -> type[_FixedArity]:
    param = inspect.Parameter
    names = [*(f"e{i}" for i in range(embeddings)), "mask"]
    signature = inspect.Signature(
        [param("self", param.POSITIONAL_ONLY),
         *(param(n, param.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor) for n in names)],
        return_annotation=torch.Tensor,
    )

    def forward(self: _FixedArity, *args: torch.Tensor) -> torch.Tensor:
        return self.inner(*args)

    forward.__signature__ = signature  # type: ignore[attr-defined]
    return type(f"_Arity{embeddings}", (_FixedArity,), {"forward": forward, "__module__": __name__})


def fixed_arity(module: nn.Module, embeddings: int) -> nn.Module:
    """``module`` (called as ``module(*embeddings, mask)``) behind a ``forward(e0, …, e{embeddings-1}, mask)``.

    For ``torch.export`` (and so ONNX export), which binds example inputs to a forward's named
    parameters and cannot with ``*args``. The body stays ``*args``: export reads the parameters
    from the signature (``inspect`` takes it from ``__signature__``) and traces the call through.
    """
    return _arity_class(embeddings)(module)
