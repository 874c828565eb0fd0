"""The sampled JPEG frames of closed windows, decoded on a decode thread; damaged frames said per stream.

A frame whose entropy-coded data is damaged (a packet lost mid-scan) decodes with its missing part grey, as
libjpeg decodes it (docs/wire-format.md): it is used, not refused. libjpeg's own warning went to stderr once
per sampled frame, without the camera's name; here it is one WARNING per stream at most every
:data:`DAMAGE_LOG_INTERVAL_S`, naming the stream and counting the frames since the last one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from fusionstream.stream.jpeg import LazyJpeg
from fusionstream.stream.printable import printable
from fusionstream.stream.windows import Window

log = logging.getLogger(__name__)

DAMAGE_LOG_INTERVAL_S = 60.0
_damage_lock = threading.Lock()
#: Per stream: when its damaged frames were last logged, and how many came since.
_damage_seen: dict[str, tuple[float, int]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """What decoding some frames found: how many did not decode (shown black), how many were damaged (used,
    with a grey part), and libjpeg's word on the last damaged one."""

    failed: int = 0
    damaged: int = 0
    damage: str | None = None


def decode_sampled_frames(windows: list[Window], min_side: int = 0) -> list[tuple[Window, Window, Decoded]]:
    """``(window, the window with its sampled JPEG frames decoded, what decoding them found)`` for each window.

    Runs on a decode thread; a frame two windows share is decoded once (``LazyJpeg`` keeps it).
    ``min_side`` is the model's input side: larger frames are decoded no larger than needed for it
    (``fusionstream.stream.jpeg.decode_jpeg``). Damaged frames are logged per stream (module doc).
    """
    out = []
    for window in windows:
        frames, found = decode_frames(window.frames, min_side)
        if found.damaged:
            note_damage(window.stream_id, found)
        out.append((window, dataclasses.replace(window, frames=tuple(frames)), found))
    return out


def decode_frames(images: Sequence[Any], min_side: int = 0) -> tuple[list[Any], Decoded]:
    """Pixels of these frames (JPEGs decoded no smaller than ``min_side``), and how many of them failed to
    decode or were damaged (each counted by the call that decoded it)."""
    pixels, failed, damaged, damage = [], 0, 0, None
    for image in images:
        if isinstance(image, LazyJpeg):
            already = image.decoded
            pixels.append(image.decode(min_side))
            if not already:
                failed += image.failed
                if image.damage is not None:
                    damaged, damage = damaged + 1, image.damage
        else:
            pixels.append(image)
    return pixels, Decoded(failed, damaged, damage)


def note_damage(stream_id: str, found: Decoded) -> None:
    """Count ``found``'s damaged frames for the stream; log them when its interval has passed."""
    now = time.monotonic()
    with _damage_lock:
        logged_at, since = _damage_seen.get(stream_id, (-DAMAGE_LOG_INTERVAL_S, 0))
        since += found.damaged
        due = now - logged_at >= DAMAGE_LOG_INTERVAL_S
        _damage_seen[stream_id] = (now, 0) if due else (logged_at, since)
        if len(_damage_seen) > 4096:  # streams come and go: forget the quietest
            del _damage_seen[min(_damage_seen, key=lambda s: _damage_seen[s][0])]
    if due:
        log.warning("stream %s: %d sampled JPEG frame(s) damaged (%s), decoded with the missing part grey; its "
                    "camera or network is losing data (next report in %g s at most)", printable(stream_id), since,
                    found.damage, DAMAGE_LOG_INTERVAL_S)
