"""``MultimodalModel``: the three encoders and a fusion head, as one trainable torch module.

This is what ``train`` fits and ``export`` splits into four ONNX graphs. Its forward pass
behaves like a backend's: each encoder runs only on the rows where its modality is present
(absent rows get zero embeddings), so training never feeds a zero-filled placeholder
through an encoder — which would also skew BatchNorm's running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionstream.engines.encoders import AudioEncoder, ImageEncoder, TextEncoder
from fusionstream.engines.fusion import FusionHead, make_head
from fusionstream.engines.spec import ModelSpec


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


class MultimodalModel(nn.Module):
    """Encoders for video, audio and text plus the fusion head named by ``spec.fusion``.

    Inputs follow :class:`fusionstream.engines.features.Batch` (as tensors): ``video [B, K, 3, S, S]``,
    ``audio [B, N]``, ``text int64 [B, L]``, ``mask [B, 3]``. :meth:`forward` returns logits;
    a trainer uses :meth:`forward_train`, which adds the head's auxiliary loss.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.video_encoder = ImageEncoder(d, spec.frames_per_window, spec.image_size)
        self.audio_encoder = AudioEncoder(d, spec.sample_rate, spec.n_mels)
        self.text_encoder = TextEncoder(spec.text_buckets, d)
        self.head: FusionHead = make_head(spec.fusion, d, spec.n_classes, **spec.fusion_options)

    @property
    def encoders(self) -> dict[str, nn.Module]:
        """Modality name → encoder, in ``MODALITIES`` order."""
        return {"video": self.video_encoder, "audio": self.audio_encoder, "text": self.text_encoder}

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, K, 3, S, S]`` → ``[B, D]`` (every row treated as present)."""
        return self.video_encoder(video)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` → ``[B, D]`` (every row treated as present)."""
        return self.audio_encoder(audio)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``int64 [B, L]`` → ``[B, D]`` (every row treated as present)."""
        return self.text_encoder(text)

    def embed(
        self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-modality embeddings ``[B, D]``; each encoder sees only its present rows, absent rows are 0."""
        out = []
        dtype = self.head.nothing.dtype
        for i, (encoder, x) in enumerate(zip(self.encoders.values(), (video, audio, text), strict=True)):
            rows = torch.nonzero(mask[:, i] > 0.5).squeeze(1)
            if rows.numel() == x.shape[0]:
                out.append(encoder(x))
                continue
            emb = torch.zeros(x.shape[0], self.spec.embed_dim, dtype=dtype, device=x.device)
            if rows.numel():
                # out-of-place index_copy keeps autograd through the encoded rows
                emb = emb.index_copy(0, rows, encoder(x.index_select(0, rows)).to(dtype))
            out.append(emb)
        return out[0], out[1], out[2]

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, n_classes]``."""
        return self.head(*self.embed(video, audio, text, mask), mask)

    def forward_train(
        self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, auxiliary loss)``: train on ``cross_entropy(logits, y) + aux``."""
        return self.head.forward_train(*self.embed(video, audio, text, mask), mask)

    def count_parameters(self) -> dict[str, int]:
        """Trainable parameters per part (``video``, ``audio``, ``text``, ``fusion``) and ``total``."""
        parts = self.encoders | {"fusion": self.head}
        counts = {name: sum(p.numel() for p in part.parameters() if p.requires_grad) for name, part in parts.items()}
        counts["total"] = sum(counts.values())
        return counts

    modality_dropout = staticmethod(modality_dropout)


__all__ = ["MultimodalModel", "modality_dropout"]
