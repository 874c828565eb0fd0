"""The synthetic source's frame renderers, by name: ``SyntheticConfig(renderer=...)``.

A renderer is a scene function and a camera, used the same way for every segment: the scene
(``segment_base(digit, kind, size, rng)``: the digit, a blank or the digit occluded, with the bbox
of its ink) is drawn once per segment, and the camera (``camera(rng)``, drawn once per segment)
makes each frame from it with ``frame(scene.image, rng)``. Both draw from the segment's video
generator only, so a renderer changes the video pixels and nothing else: not the plan (digits,
times, corruption states), the audio or the text.

- ``opencv`` (:mod:`.render`): OpenCV's Hershey fonts; every training stream and the default
  held-out set are drawn with it;
- ``pillow`` (:mod:`.render_alt`, :mod:`.camera_alt`): Pillow's font engine and typefaces, other
  backgrounds, clutter, occluders and camera noise; never used for training, so a held-out set
  drawn with it measures how far the video encoder generalises past the training renderer's look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fusionstream.stream.sources.render import Scene, SceneKind, Size

#: Every renderer's name; the first is the default.
RENDERERS: tuple[str, ...] = ("opencv", "pillow")
DEFAULT_RENDERER = RENDERERS[0]


class FrameCamera(Protocol):
    def frame(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Renderer:
    name: str
    segment_base: Callable[[int, SceneKind, Size, np.random.Generator], Scene]
    camera: Callable[[np.random.Generator], FrameCamera]


def check_renderer(name: str) -> None:
    """A ValueError, one line listing the choices, for a name that is not a renderer."""
    if name not in RENDERERS:
        raise ValueError(f"unknown renderer {name!r}: choose {' or '.join(RENDERERS)}")


def renderer(name: str) -> Renderer:
    """The renderer called ``name`` (imported when first asked for: Pillow only loads for ``pillow``)."""
    check_renderer(name)
    if name == "pillow":
        from fusionstream.stream.sources.camera_alt import AltCamera
        from fusionstream.stream.sources.render_alt import segment_base as pillow_scene

        return Renderer(name, pillow_scene, AltCamera.random)
    from fusionstream.stream.sources.render import Camera, segment_base

    return Renderer(name, segment_base, Camera.random)


__all__ = ["DEFAULT_RENDERER", "RENDERERS", "FrameCamera", "Renderer", "check_renderer", "renderer"]
