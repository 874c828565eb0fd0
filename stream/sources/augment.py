"""Render-time data augmentation for the synthetic source's training streams.

Each spoken word and each segment's scene can be perturbed as it is rendered, with draws from
the source's own keyed generators (so a seed still gives the same bytes): the audio through
`audiomentations` (pitch, tempo) and a synthetic room, the frames through OpenCV. Perturbing at
render time rather than per batch costs a few milliseconds per word once, where a training step
would pay it every epoch; the encoders' batch-time augmentations (speed perturbation,
SpecAugment masks) live with training.

Rates are probabilities per word (audio) or per segment (video); ``Augmentation.none()`` turns
everything off. docs/training.md#augmentation lists each kind with its rate and measured effect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fusionstream.stream.sources.glyph_styles import GlyphStyle
from fusionstream.stream.sources.typefaces import TYPEFACE_POOLS, require_typefaces

#: Pitch shift range, semitones (either way): a lower or higher voice of the same accent.
PITCH_SEMITONES = 3.0
#: Tempo factors (above 1 is faster): a quicker or slower speaker than the bank's speeds.
TEMPO = (0.8, 1.25)
#: Reverberation time RT60 of the synthetic rooms, seconds: a small office to a hall.
RT60_S = (0.15, 0.7)
#: Direct-to-reverberant energy ratio, dB: close-talking to across the room.
DRR_DB = (-3.0, 12.0)
#: Affine jitter of a scene: rotation (degrees), scale, shift (share of the frame), shear.
ROTATE_DEG, SCALE, SHIFT, SHEAR = 15.0, (0.75, 1.15), 0.12, 0.3
#: JPEG quality of a segment re-encoded "cheaply" (the wire's JPEG is then this quality).
LOW_JPEG_QUALITY = (12, 45)


#: The kinds that perturb the audio; every other field of :class:`Augmentation` perturbs the frames.
AUDIO_KINDS = ("pitch", "tempo", "reverb", "gain_db")


def check_probabilities(rates: Any, skip: tuple[str, ...] = ()) -> None:
    """A one-line ValueError naming the first field of the dataclass ``rates`` outside [0, 1]."""
    for f in dataclasses.fields(rates):
        value = getattr(rates, f.name)
        if f.name not in skip and not 0.0 <= value <= 1.0:
            raise ValueError(f"{type(rates).__name__}.{f.name} = {value} is not a probability")


@dataclass(frozen=True)
class Augmentation:
    """What to perturb and how often (probabilities per word for audio, per segment for video)."""

    pitch: float = 0.5
    tempo: float = 0.5
    reverb: float = 0.35
    #: Loudness of each word, +/- dB (on top of the source's own jitter).
    gain_db: float = 6.0
    # The scene kinds run at half the rates first tried (affine 0.6, colour 0.6, …): at those, clean
    # video alone lost three points on the training renderer and gained none on the second one.
    # Beside the typefaces, half rates are kept for what the ablation does not measure (camera
    # angles, focus, compression): their effect there is within its seeds' noise (docs/training.md).
    affine: float = 0.3
    colour: float = 0.3
    blur: float = 0.15
    low_jpeg: float = 0.15
    occlusion: float = 0.075
    #: Elastic distortion (Simard et al., 2003): a smooth random warp, as between typefaces and hands.
    elastic: float = 0.175
    #: Thicker or thinner strokes: a grey-level dilation or erosion of the scene.
    stroke: float = 0.15
    #: A low-resolution camera: the scene down-sampled to a third to two thirds, then back up.
    low_res: float = 0.125
    #: The digit drawn in a TrueType typeface (:mod:`.typefaces`) instead of a Hershey font: other
    #: shapes of every digit, not only other placements of the same strokes.
    typeface: float = 0.5
    #: The digit's ink outlined in a second colour, hollow, shadowed or blocky (:mod:`.glyph_styles`):
    #: how captions, titles and pixel displays draw text, where the renderer fills it flat. Off in the
    #: shipped recipe: at 30 % it helped the small ablation but not the full recipe (docs/training.md).
    glyph_style: float = 0.0
    #: Which typefaces: ``"all"`` (matplotlib's and the font packages'), or ``"matplotlib"`` alone
    #: (the recipe of v2026.12.05.2, for the ablation). Not a rate.
    typeface_pool: str = "all"

    def __post_init__(self) -> None:
        check_probabilities(self, skip=("gain_db", "typeface_pool"))
        if self.gain_db < 0:
            raise ValueError(f"Augmentation.gain_db = {self.gain_db} must be >= 0")
        if self.typeface_pool not in TYPEFACE_POOLS:
            raise ValueError(f"Augmentation.typeface_pool = {self.typeface_pool!r}: choose "
                             f"{' or '.join(map(repr, TYPEFACE_POOLS))}")

    @classmethod
    def none(cls) -> Augmentation:
        return cls(**{name: 0.0 for name in cls.rates()})

    @classmethod
    def rates(cls) -> tuple[str, ...]:
        """The fields that are rates (every one but the typeface pool)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "typeface_pool")

    def only(self, modality: str) -> Augmentation:
        """These rates for one modality's kinds (``"audio"`` or ``"video"``), every other kind off."""
        if modality not in ("audio", "video"):
            raise ValueError(f"Augmentation.only({modality!r}): choose 'audio' or 'video'")
        keep = AUDIO_KINDS if modality == "audio" else tuple(
            name for name in self.rates() if name not in AUDIO_KINDS)
        return dataclasses.replace(Augmentation.none(), typeface_pool=self.typeface_pool,
                                   **{name: getattr(self, name) for name in keep})

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in self.rates())

    # -- audio: one spoken word ---------------------------------------------------------------

    def word(self, samples: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
        """A perturbed copy of one word's samples (its length may change with the tempo)."""
        draws = rng.random(3)
        pitch, tempo = rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES), rng.uniform(*TEMPO)
        out = samples
        if draws[0] < self.pitch:
            out = _apply(_transforms()["pitch"], {"num_semitones": pitch}, out, rate)
        if draws[1] < self.tempo:
            out = _apply(_transforms()["tempo"], {"rate": tempo}, out, rate)
        if draws[2] < self.reverb:
            out = reverberate(out, rate, rng)
        if self.gain_db > 0:
            out = out * np.float32(10.0 ** (rng.uniform(-self.gain_db, self.gain_db) / 20.0))
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

    # -- video: one segment's scene ------------------------------------------------------------

    def scene(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The segment's still scene moved, recoloured, blurred or partly covered (HxWx3 uint8)."""
        height, width = image.shape[:2]
        draws = rng.random(7)
        out = image
        if draws[4] < self.elastic:
            out = _elastic(out, rng)
        if draws[5] < self.stroke:
            kernel = np.ones((2, 2) if rng.random() < 0.7 else (3, 3), np.uint8)
            out = cv2.dilate(out, kernel) if rng.random() < 0.5 else cv2.erode(out, kernel)
        if draws[0] < self.affine:
            matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), rng.uniform(-ROTATE_DEG, ROTATE_DEG),
                                             rng.uniform(*SCALE))
            shear = rng.uniform(-SHEAR, SHEAR)  # an italic, or a camera not square to the screen
            matrix[:, :2] = matrix[:, :2] @ np.array([[1.0, shear], [0.0, 1.0]])
            matrix[0, 2] -= shear * height / 2.0
            matrix[:, 2] += rng.uniform(-SHIFT, SHIFT, 2) * (width, height)
            out = cv2.warpAffine(out, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if draws[6] < self.low_res:
            factor = rng.uniform(1 / 3, 2 / 3)
            small = cv2.resize(out, (max(8, round(width * factor)), max(8, round(height * factor))),
                               interpolation=cv2.INTER_AREA)
            up = cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_LINEAR
            out = cv2.resize(small, (width, height), interpolation=up)
        if draws[1] < self.colour:
            # Per-channel gain (white balance), contrast about the mean, brightness.
            gains = rng.uniform(0.75, 1.25, 3).astype(np.float32)
            contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-35.0, 35.0)
            f = out.astype(np.float32) * gains
            f = (f - f.mean()) * np.float32(contrast) + f.mean() + np.float32(brightness)
            out = np.clip(f, 0, 255).astype(np.uint8)
        if draws[2] < self.blur:
            out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.6))
        if draws[3] < self.occlusion:
            # A patch over a part of the frame (a hand, a sticker): at most a fifth, so the digit stays.
            area = rng.uniform(0.05, 0.2) * width * height
            w = int(np.clip(np.sqrt(area * rng.uniform(0.5, 2.0)), 2, width - 1))
            h = int(np.clip(area / w, 2, height - 1))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            out = out.copy()
            out[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        return out

    def require(self) -> None:
        """Raise a one-line ImportError now, not in a rendering worker, for a training-only library
        that one of the active kinds needs (``pip install 'fusionstream[train]'`` brings them all)."""
        if self.pitch or self.tempo:
            _transforms()
        if self.reverb:
            try:
                import scipy.signal  # noqa: F401
            except ImportError as exc:
                raise ImportError("room reverberation needs scipy: pip install 'fusionstream[train]'") from exc
        if self.typeface:
            require_typefaces(self.typeface_pool)

    def pick_typeface(self, rng: np.random.Generator) -> str | None:
        """The TrueType typeface a segment's digit is drawn in, or None for a Hershey font."""
        if rng.random() >= self.typeface:
            return None
        pool = TYPEFACE_POOLS[self.typeface_pool]
        return pool[int(rng.integers(len(pool)))]

    def pick_glyph_style(self, rng: np.random.Generator) -> GlyphStyle | None:
        """How a segment's digit is drawn, or None for a flat fill."""
        if rng.random() >= self.glyph_style:
            return None
        return GlyphStyle.random(rng)

    def jpeg_quality(self, default: int, rng: np.random.Generator) -> int:
        """The quality a segment's frames are encoded at: now and then a cheap camera's."""
        low = int(rng.integers(LOW_JPEG_QUALITY[0], LOW_JPEG_QUALITY[1] + 1))
        return low if rng.random() < self.low_jpeg else default


def _elastic(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field (Gaussian-filtered noise, σ about a tenth of the frame,
    up to ~4 % of it) applied with ``cv2.remap``."""
    height, width = image.shape[:2]
    sigma = 0.1 * min(height, width)
    alpha = rng.uniform(0.02, 0.045) * min(height, width)
    fields = []
    for _ in range(2):
        noise = cv2.GaussianBlur(rng.uniform(-1.0, 1.0, (height, width)).astype(np.float32), (0, 0), sigma)
        fields.append(noise * np.float32(alpha / (np.abs(noise).max() + 1e-6)))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(image, xs + fields[0], ys + fields[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def reverberate(samples: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` in a synthetic room: an exponentially decaying noise tail (the statistical model
    of late reverberation) after the direct sound, at a drawn RT60 and direct-to-reverberant ratio.
    The word keeps its length (the tail past its end is cut, as the next word's pause masks it)."""
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(*RT60_S)
    n = int(rate * rt60)
    t = np.arange(n, dtype=np.float32) / rate
    tail = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9078 * t / rt60).astype(np.float32)  # -60 dB
    tail[: int(0.002 * rate)] = 0.0  # the first reflections arrive a couple of ms after the direct sound
    drr = 10.0 ** (rng.uniform(*DRR_DB) / 10.0)
    tail *= np.float32(1.0 / np.sqrt(drr * np.sum(tail**2) + 1e-12))
    tail[0] = 1.0
    wet = fftconvolve(samples, tail)[: len(samples)]
    peak = np.abs(wet).max()
    scale = np.abs(samples).max() / peak if peak > 0 else 1.0
    return (wet * scale).astype(np.float32)


_TRANSFORMS: dict[str, Any] = {}


def _transforms() -> dict[str, Any]:
    """audiomentations' transforms, imported and built once per process (only training needs them)."""
    if not _TRANSFORMS:
        try:
            from audiomentations import PitchShift, TimeStretch
        except ImportError as exc:  # a training-only dependency: say how to get it
            raise ImportError("audio augmentation needs audiomentations: pip install 'fusionstream[train]'") from exc
        _TRANSFORMS["pitch"] = PitchShift(min_semitones=-PITCH_SEMITONES, max_semitones=PITCH_SEMITONES, p=1.0)
        _TRANSFORMS["tempo"] = TimeStretch(min_rate=TEMPO[0], max_rate=TEMPO[1], p=1.0,
                                           leave_length_unchanged=False)
    return _TRANSFORMS


def _apply(transform: Any, parameters: dict[str, float], samples: np.ndarray, rate: int) -> np.ndarray:
    # The parameters are drawn from the source's generator, not audiomentations' global `random`,
    # so a seed keeps giving the same bytes in every process. A writable copy: the bank's clips are
    # read-only, which the stretcher's binding refuses.
    transform.parameters = {"should_apply": True, **parameters}
    return np.asarray(transform.apply(np.array(samples, dtype=np.float32), rate), dtype=np.float32)


__all__ = ["AUDIO_KINDS", "Augmentation", "check_probabilities", "reverberate"]
