"""Image encoder: a small max-pooling CNN per frame on contrast-normalised grey, averaged over the K frames."""

from __future__ import annotations

import itertools

import torch
from torch import nn

#: Side of the grey image the CNN sees; larger inputs are average-pooled down to it first.
CNN_SIDE = 32


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 stride-2 convolution + BatchNorm + ReLU (bias-free: BatchNorm supplies the shift)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def pool_block(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution + BatchNorm + ReLU, then 2×2 max-pooling (a part detector that tolerates shifts)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def strided_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """A first block that reads the full-resolution frame: a (2·stride+1)² convolution at ``stride``,
    then what :func:`pool_block` does, in place of average-pooling the frame down first."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=2 * stride + 1, stride=stride, padding=stride, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def standardize(x: torch.Tensor, dims: tuple[int, ...], floor: float) -> torch.Tensor:
    """Zero mean, unit spread over ``dims`` (mean of squares, not ``std``: it exports everywhere)."""
    centred = x - x.mean(dim=dims, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(dim=dims, keepdim=True) + floor)


class ImageEncoder(nn.Module):
    """``video float32 [B, K, 3, S, S]`` (pixels in [0, 1]) → ``[B, embed_dim]``.

    Colour carries no class information here (digits come in any colour on any background),
    so each frame is turned grey and contrast-normalised before the CNN: the network then
    learns shapes, not palettes, and learns them in a few hundred steps instead of never.
    Max-pooling blocks and a flattened 2×2 map keep where strokes are, which a global
    average would lose. Frames are folded into the batch; the mean over time makes the
    embedding independent of frame order. ``stem="pool"`` averages a frame larger than
    ``cnn_side`` down to it before the first block (models before 2026-12-06); ``"strided"``
    lets the first block's convolution stride over the full frame instead, so detail finer
    than the averaging (a thin stroke, a small digit's counters) reaches the network.
    """

    def __init__(
        self,
        embed_dim: int,
        frames: int,
        image_size: int,
        channels: tuple[int, ...] = (32, 64, 96, 128),
        cnn_side: int = CNN_SIDE,
        stem: str = "pool",
    ) -> None:
        super().__init__()
        self.frames = frames
        self.image_size = image_size
        self.pool = max(1, image_size // cnn_side)
        side = image_size // self.pool
        widths = (1, *channels)
        if stem not in ("pool", "strided"):
            raise ValueError(f"stem {stem!r}: choose 'pool' or 'strided'")
        blocks = [pool_block(a, b) for a, b in itertools.pairwise(widths)]
        if stem == "strided" and self.pool > 1:
            blocks[0] = strided_block(1, channels[0], self.pool)
            self.pool = 1
        self.features = nn.Sequential(*blocks)
        side //= 2 ** len(channels)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} pooling blocks")
        self.proj = nn.Linear(channels[-1] * side * side, embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Embed a batch of windows' frames."""
        s = self.image_size
        # reshape with -1 (not video.shape[0]) so the exported graph keeps a symbolic batch axis
        x = self.embed_frames(video.reshape(-1, 3, s, s))
        return x.reshape(-1, self.frames, x.shape[-1]).mean(dim=1)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` single frames → ``[N, embed_dim]``: a window's embedding is the mean of its
        K frames', so a frame shared by overlapping windows needs embedding only once."""
        x = frames.mean(dim=1, keepdim=True)
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        x = standardize(x, (2, 3), 4e-4)
        return self.proj(self.features(x).flatten(1))


class FrameEncoder(nn.Module):
    """The per-frame half of an :class:`ImageEncoder`, as its own module for export."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` → ``[N, embed_dim]``."""
        return self.encoder.embed_frames(frame)
