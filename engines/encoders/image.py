"""Image encoder: a small strided CNN per frame, averaged over the window's K frames."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 stride-2 convolution + BatchNorm + ReLU (bias-free: BatchNorm supplies the shift)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ImageEncoder(nn.Module):
    """``video float32 [B, K, 3, S, S]`` (pixels in [0, 1]) → ``[B, embed_dim]``.

    Frames are folded into the batch so one CNN pass covers the whole window; the mean over
    time makes the embedding independent of frame order. Four stride-2 blocks (16/32/64/64
    channels) keep a window of 4 64×64 frames at a few million multiply-adds.
    """

    def __init__(
        self,
        embed_dim: int,
        frames: int,
        image_size: int,
        channels: tuple[int, ...] = (16, 32, 64, 64),
    ) -> None:
        super().__init__()
        self.frames = frames
        self.image_size = image_size
        widths = (3, *channels)
        self.features = nn.Sequential(*(conv_block(a, b) for a, b in itertools.pairwise(widths)))
        self.proj = nn.Linear(channels[-1], embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Embed a batch of windows' frames."""
        s = self.image_size
        # reshape with -1 (not video.shape[0]) so the exported graph keeps a symbolic batch axis
        x = self.features(video.reshape(-1, 3, s, s)).mean(dim=(2, 3))
        x = x.reshape(-1, self.frames, x.shape[-1]).mean(dim=1)
        return self.proj(x)
