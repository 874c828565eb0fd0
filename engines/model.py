"""``MultimodalModel``: an encoder per modality and a fusion head, as one trainable torch module.

This is what ``train`` fits and ``export`` splits into ONNX graphs (one per encoder, one for the
head). Its forward pass behaves like a backend's: each encoder runs only on the rows where its
modality is present (absent rows get zero embeddings), so training never feeds a zero-filled
placeholder through an encoder — which would also skew BatchNorm's running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fusionstream.engines.encoders import AudioEncoder, ImageEncoder, TextEncoder
from fusionstream.engines.fusion import FusionHead, make_head
from fusionstream.engines.spec import MODALITIES, ModelSpec

#: How each format-1 modality's encoder is built from the spec (``MODALITIES`` order is the build
#: order, so a seed gives the same initial weights as before).
ENCODERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "video": lambda spec: ImageEncoder(spec.embed_dim, spec.frames_per_window, spec.image_size, stem=spec.video_stem),
    "audio": lambda spec: AudioEncoder(spec.embed_dim, spec.sample_rate, spec.n_mels, pooling=spec.audio_pooling),
    "text": lambda spec: TextEncoder(spec.text_buckets, spec.embed_dim),
}


def modality_dropout(
    mask: torch.Tensor, p: float, *, keep_one: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training augmentation: mark each present modality absent with probability ``p``.

    Teaches the head to cope with any subset of modalities. With ``keep_one`` a row that would
    lose everything keeps one of its present modalities (chosen at random), so dropout never
    turns a labelled example into an all-absent one. Returns a new float mask.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    present = mask > 0.5
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    kept = present & (noise >= p)
    if keep_one:
        emptied = present.any(dim=1) & ~kept.any(dim=1)
        # the present modality with the largest noise survives in rows dropout emptied
        survivor = nn.functional.one_hot(torch.where(present, noise, -1.0).argmax(dim=1), mask.shape[1]).bool()
        kept = kept | (emptied.unsqueeze(1) & survivor)
    return kept.to(mask.dtype)


# -- state-dict names --------------------------------------------------------------------------------
# In memory the encoders live in ``encoders`` (a ModuleDict keyed by modality); in model.pt an
# encoder's weights have always been ``<modality>_encoder.*``. The two hooks below translate, so
# every model.pt written before and after loads with ``strict=True`` and is written the same way.


def _disk_name(modality: str) -> str:
    return f"{modality}_encoder"


def _renamed(key: str, renames: Mapping[str, str]) -> str:
    """``key`` with a leading module path ``old`` (the whole key, or followed by ``.``) replaced by ``new``."""
    for old, new in renames.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _save_disk_names(module: MultimodalModel, state: dict[str, Any], prefix: str, _local: Any) -> None:
    renames = {f"{prefix}encoders.{m}": prefix + _disk_name(m) for m in module.modalities}
    items = list(state.items())  # rebuilt in place, keeping the order
    state.clear()
    state.update((_renamed(k, renames), v) for k, v in items)
    metadata = getattr(state, "_metadata", None)  # per-module versions, keyed by module path
    if metadata is not None:
        entries = list(metadata.items())
        metadata.clear()
        metadata.update((_renamed(k, renames), v) for k, v in entries if k != f"{prefix}encoders")


def _load_disk_names(module: MultimodalModel, state: dict[str, Any], prefix: str, *_: Any) -> None:
    renames = {prefix + _disk_name(m): f"{prefix}encoders.{m}" for m in module.modalities}
    for key in [k for k in state if _renamed(k, renames) != k]:
        state[_renamed(key, renames)] = state.pop(key)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # load_state_dict looks a submodule's version up by its in-memory path
        for key in [k for k in metadata if _renamed(k, renames) != k]:
            metadata.setdefault(_renamed(key, renames), metadata[key])


class MultimodalModel(nn.Module):
    """An encoder per modality of ``MODALITIES`` plus the fusion head named by ``spec.fusion``.

    Inputs follow :class:`fusionstream.engines.features.Batch` (as tensors), one per modality in
    ``modalities`` order and then the mask: ``video [B, K, 3, S, S]``, ``audio [B, N]``,
    ``text int64 [B, L]``, ``mask [B, M]``. :meth:`forward` returns logits; a trainer uses
    :meth:`forward_train`, which adds the head's auxiliary loss.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        #: The modalities, in the order of the inputs, the embeddings and the mask's columns.
        self.modalities: tuple[str, ...] = MODALITIES
        self.encoders = nn.ModuleDict({m: ENCODERS[m](spec) for m in self.modalities})
        self.head: FusionHead = make_head(spec.fusion, spec.embed_dim, spec.n_classes,
                                          modalities=len(self.modalities), **spec.fusion_options)
        self.register_state_dict_post_hook(_save_disk_names)
        self.register_load_state_dict_pre_hook(_load_disk_names)

    # The format-1 encoders by their old attribute names (the torch backend and export reach into them).
    @property
    def video_encoder(self) -> ImageEncoder:
        return self.encoders["video"]  # type: ignore[return-value]

    @property
    def audio_encoder(self) -> AudioEncoder:
        return self.encoders["audio"]  # type: ignore[return-value]

    @property
    def text_encoder(self) -> TextEncoder:
        return self.encoders["text"]  # type: ignore[return-value]

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """One modality's inputs → ``[B, D]`` (every row treated as present)."""
        return self.encoders[modality](x)

    def _split(self, args: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if len(args) != len(self.modalities) + 1:
            raise ValueError(f"expected one input per modality ({', '.join(self.modalities)}) and a mask, "
                             f"got {len(args)} tensors")
        return args[:-1], args[-1]

    def embed(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``embed(*inputs, mask)`` → per-modality embeddings ``[B, D]``; each encoder sees only its present
        rows, absent rows are 0."""
        inputs, mask = self._split(args)
        out = []
        dtype = self.head.nothing.dtype
        for i, (encoder, x) in enumerate(zip(self.encoders.values(), inputs, strict=True)):
            rows = torch.nonzero(mask[:, i] > 0.5).squeeze(1)
            if rows.numel() == x.shape[0]:
                out.append(encoder(x))
                continue
            emb = torch.zeros(x.shape[0], self.spec.embed_dim, dtype=dtype, device=x.device)
            if rows.numel():
                # out-of-place index_copy keeps autograd through the encoded rows
                emb = emb.index_copy(0, rows, encoder(x.index_select(0, rows)).to(dtype))
            out.append(emb)
        return tuple(out)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """``forward(*inputs, mask)`` → class logits ``[B, n_classes]``."""
        return self.head(*self.embed(*args), args[-1])

    def forward_train(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, auxiliary loss)``: train on ``cross_entropy(logits, y) + aux``."""
        return self.head.forward_train(*self.embed(*args), args[-1])

    def count_parameters(self) -> dict[str, int]:
        """Trainable parameters per part (each modality, ``fusion``) and ``total``."""
        parts = {**self.encoders, "fusion": self.head}
        counts = {name: sum(p.numel() for p in part.parameters() if p.requires_grad) for name, part in parts.items()}
        counts["total"] = sum(counts.values())
        return counts

    modality_dropout = staticmethod(modality_dropout)


__all__ = ["ENCODERS", "MultimodalModel", "modality_dropout"]
