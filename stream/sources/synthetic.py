"""The synthetic AV-digits source: N streams of time-stamped records with ground truth.

Each stream is a sequence of 1.5-3 s segments, one digit per segment (never the same
digit twice in a row). The video shows the digit for the whole segment; the audio speaks
it repeatedly (real synthesized speech from :mod:`fusionstream.stream.sources.speech`, mixed with noise);
the transcript carries each spoken word with its times and ASR-like errors. Each modality
is corrupted per segment by its own random draws, so that no single modality is enough.

Reproducibility: the plan (segment times, digits, corruption states) comes from a
generator keyed by ``(seed, stream)`` and each segment's media from generators keyed by
``(seed, stream, segment, part)``. So the same seed gives the same bytes, streams
differ, and changing the corruption rates changes states but not digits or times.
The frames' renderer (``SyntheticConfig.renderer``, :mod:`.renderers`) draws from the segment's
video generator alone, so it changes the video pixels only: same plan, audio and text.

The records are exactly what the wire carries: the same objects feed Kafka producers,
the embedded demo and training.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np

from fusionstream.stream.media import audio_record, image_record, text_record
from fusionstream.stream.records import Encoding, Record
from fusionstream.stream.sources.augment import Augmentation, check_probabilities
from fusionstream.stream.sources.render import SceneKind, segment_base
from fusionstream.stream.sources.renderers import DEFAULT_RENDERER, check_renderer, renderer
from fusionstream.stream.sources.speech import DIGIT_WORDS, SpeechBank, Split
from fusionstream.stream.sources.truth import AudioState, GroundTruth, Segment, TextState, VideoState
from fusionstream.units import NS

_S = TypeVar("_S", bound=str)

#: ASR-like confusions that still refer to the same digit (homophones, numerals, near misses).
ASR_CONFUSIONS: dict[int, tuple[str, ...]] = {
    0: ("oh", "sero", "xero", "0", "Zero"),
    1: ("won", "wan", "1", "One"),
    2: ("to", "too", "tu", "2"),
    3: ("tree", "free", "thee", "3"),
    4: ("for", "fore", "far", "4"),
    5: ("fife", "hive", "fine", "5"),
    6: ("sicks", "sikhs", "sax", "6"),
    7: ("heaven", "sevin", "seven.", "7"),
    8: ("ate", "eat", "hate", "8"),
    9: ("nein", "mine", "night", "9"),
}
#: Of the ASR errors, the share that drops the word instead of confusing it.
ASR_DROP_SHARE = 0.25
#: Pause before each utterance, seconds: "repeatedly, with short random pauses".
PAUSE_S = (0.05, 0.35)
#: Speech stops this long before a segment's end, so no word crosses into the next digit.
END_MARGIN_S = 0.02
#: Per-utterance loudness jitter around the segment's level, dB.
GAIN_JITTER_DB = 3.0
#: Speech-to-noise ratio of ``audio_noise`` segments, dB ("around -10 dB").
HEAVY_NOISE_SNR_DB = (-13.0, -7.0)
#: RMS of each stream's microphone noise floor (what an ``audio_silence`` segment holds).
NOISE_FLOOR_RMS = (0.002, 0.01)


@dataclass(frozen=True)
class Corruption:
    """Per-segment, per-modality probabilities; a modality's states are exclusive, so each group sums to <= 1."""

    video_blank: float = 0.07
    video_occlude: float = 0.06
    video_drop: float = 0.05
    audio_silence: float = 0.07
    audio_noise: float = 0.07
    audio_drop: float = 0.06
    text_missing: float = 0.18
    text_wrong: float = 0.04
    asr_error: float = 0.1

    def __post_init__(self) -> None:
        check_probabilities(self)
        for name, total in (
            ("video", self.video_blank + self.video_occlude + self.video_drop),
            ("audio", self.audio_silence + self.audio_noise + self.audio_drop),
            ("text", self.text_missing + self.text_wrong),
        ):
            if total > 1.0 + 1e-9:
                raise ValueError(f"{name} corruption probabilities sum to {total} > 1")

    @classmethod
    def none(cls) -> Corruption:
        """No corruption at all: every modality clean in every segment, no ASR errors."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def video_states(self) -> tuple[tuple[VideoState, float], ...]:
        return (("drop", self.video_drop), ("blank", self.video_blank), ("occlude", self.video_occlude))

    def audio_states(self) -> tuple[tuple[AudioState, float], ...]:
        return (("drop", self.audio_drop), ("silence", self.audio_silence), ("noise", self.audio_noise))

    def text_states(self) -> tuple[tuple[TextState, float], ...]:
        return (("missing", self.text_missing), ("wrong", self.text_wrong))


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; every field has a demo-ready default."""

    streams: int = 2
    seconds: float = 30.0
    seed: int = 0
    fps: float = 15.0
    frame_size: tuple[int, int] = (96, 96)  # width, height
    sample_rate: int = 16_000
    chunk_ms: int = 40
    voices: Split | str = "train"  # speech bank voices: train | test | all | voice:NAME (one voice alone)
    video_encoding: Encoding = Encoding.JPEG
    jpeg_quality: int = 80
    audio_encoding: Encoding = Encoding.PCM_S16LE
    start_ns: int = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
    corruption: Corruption = field(default_factory=Corruption)
    snr_db: tuple[float, float] = (5.0, 20.0)  # speech over the noise floor, clean segments
    stream_prefix: str = "cam"
    segment_s: tuple[float, float] = (1.5, 3.0)
    #: Who draws the frames: opencv (training's renderer) | pillow (another look, for a held-out set).
    renderer: str = DEFAULT_RENDERER
    #: Render-time perturbation of words and scenes (training streams; off by default).
    augment: Augmentation = field(default_factory=Augmentation.none)

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be >= 1, got {self.streams}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.seconds > 0 or not self.fps > 0:
            raise ValueError("seconds and fps must be > 0")
        if min(self.frame_size) < 8:
            raise ValueError(f"frame_size {self.frame_size} is too small to draw a digit")
        if self.sample_rate < 1000 or self.chunk_samples < 1:
            raise ValueError(f"sample_rate {self.sample_rate} / chunk_ms {self.chunk_ms} give no usable chunks")
        if self.video_encoding not in (Encoding.JPEG, Encoding.RAW_RGB24):
            raise ValueError(f"{self.video_encoding.label} is not a video encoding")
        if self.audio_encoding not in (Encoding.PCM_S16LE, Encoding.PCM_F32LE):
            raise ValueError(f"{self.audio_encoding.label} is not an audio encoding")
        low, high = self.segment_s
        if not 0.3 <= low <= high:
            raise ValueError(f"segment_s {self.segment_s}: need 0.3 <= min <= max")
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db {self.snr_db}: min > max")
        check_renderer(self.renderer)
        for kind in ("typeface", "glyph_style"):
            if getattr(self.augment, kind) > 0 and self.renderer != DEFAULT_RENDERER:
                raise ValueError(f"{kind} augmentation draws with the {DEFAULT_RENDERER} renderer, not "
                                 f"{self.renderer!r} (a held-out renderer): set Augmentation.{kind} to 0")

    @property
    def chunk_samples(self) -> int:
        return round(self.sample_rate * self.chunk_ms / 1000)


@dataclass(frozen=True, slots=True)
class _StreamPlan:
    """What is decided up front for one stream: enough for the ground truth and to render any segment."""

    index: int
    stream_id: str
    start_ns: int
    segments: tuple[Segment, ...]
    #: Sample offsets ``[s0, s1)`` of each segment from the stream start (whole chunks).
    bounds: tuple[tuple[int, int], ...]
    noise_floor: float
    noise_kernel: np.ndarray


@dataclass(frozen=True, slots=True)
class _Utterance:
    start: int  # sample offset from the stream start
    samples: np.ndarray  # the clip at the source's sample rate
    rms: float
    voice: str


@dataclass(frozen=True, slots=True)
class Utterance:
    """One spoken digit word of a stream: when, which digit, and which voice of the speech bank said it."""

    t_start_ns: int
    t_end_ns: int
    digit: int
    voice: str


def _record_order(record: Record) -> tuple[int, str, int]:
    return record.t_start_ns, record.stream_id, int(record.modality)


class SyntheticAV:
    """N synthetic audio-visual digit streams; :meth:`records` yields them merged in event-time order."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config = config or SyntheticConfig()
        bank = SpeechBank.load(config.voices)
        # Clips at the source's rate, resampled once here rather than per utterance (with their voice).
        self._clips: tuple[tuple[tuple[np.ndarray, float, str], ...], ...] = tuple(
            tuple((*_at_rate(c.samples, c.sample_rate, config.sample_rate), c.voice) for c in bank[d])
            for d in range(len(DIGIT_WORDS))
        )
        self._renderer = renderer(config.renderer)
        self._plans = [self._plan(i) for i in range(config.streams)]
        self.stream_ids: list[str] = [p.stream_id for p in self._plans]
        self.truth = GroundTruth({p.stream_id: p.segments for p in self._plans})

    def records(self) -> Iterator[Record]:
        """All streams and modalities, merged by ``(t_start_ns, stream_id, modality)``; generated lazily."""
        return heapq.merge(*(self.stream_records(sid) for sid in self.stream_ids), key=_record_order)

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def stream_records(self, stream_id: str) -> Iterator[Record]:
        """One stream's records in event-time order, one segment rendered at a time."""
        plan = self._plans[self.stream_ids.index(stream_id)]
        word_seq = 0
        for k in range(len(plan.segments)):
            utterances = self._utterances(plan, k)
            batch = self._video(plan, k) + self._audio(plan, k, utterances)
            words = self._text(plan, k, utterances, word_seq)
            word_seq += len(words)
            batch += words
            # Everything of segment k starts before segment k+1 does, so sorting per segment suffices.
            batch.sort(key=lambda r: (r.t_start_ns, int(r.modality), r.seq))
            yield from batch

    def utterances(self, stream_id: str) -> Iterator[Utterance]:
        """Every word one stream speaks (dropped and silenced segments' too), without rendering any media."""
        plan = self._plans[self.stream_ids.index(stream_id)]
        for k, segment in enumerate(plan.segments):
            for utt in self._utterances(plan, k):
                yield Utterance(self._time(plan.start_ns, utt.start),
                                self._time(plan.start_ns, utt.start + len(utt.samples)), segment.digit, utt.voice)

    # -- planning ---------------------------------------------------------------------------

    def _rng(self, *keys: int) -> np.random.Generator:
        # spawn_key namespaces the generators: a plain entropy list would make [seed, i, 0] equal [seed, i].
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=keys))

    def _time(self, plan_start_ns: int, sample: int) -> int:
        return plan_start_ns + sample * NS // self.config.sample_rate

    def _plan(self, index: int) -> _StreamPlan:
        cfg = self.config
        rng = self._rng(index)
        start_ns = cfg.start_ns + int(rng.integers(0, NS))  # streams are not aligned to each other
        chunk = cfg.chunk_samples
        total = max(1, round(cfg.seconds * cfg.sample_rate) // chunk) * chunk
        shortest = max(1, math.ceil(cfg.segment_s[0] * cfg.sample_rate / chunk))
        longest = max(shortest, math.floor(cfg.segment_s[1] * cfg.sample_rate / chunk))
        segments: list[Segment] = []
        bounds: list[tuple[int, int]] = []
        cursor, prev = 0, -1
        while cursor < total:
            # The last segment is cut at the stream's end, so it may be shorter than segment_s.
            end = min(total, cursor + int(rng.integers(shortest, longest + 1)) * chunk)
            digit = int(rng.integers(10)) if prev < 0 else (prev + int(rng.integers(1, 10))) % 10
            # One uniform per modality whatever the rates, so rates never shift the other draws.
            video: VideoState = _draw(rng, cfg.corruption.video_states(), "clean")
            audio: AudioState = _draw(rng, cfg.corruption.audio_states(), "clean")
            text: TextState = _draw(rng, cfg.corruption.text_states(), "clean")
            segments.append(Segment(self._time(start_ns, cursor), self._time(start_ns, end), digit, video, audio, text))
            bounds.append((cursor, end))
            cursor, prev = end, digit
        # The microphone: a noise floor and a colour (low-pass box filter mixed with white) per stream.
        floor = float(rng.uniform(*NOISE_FLOOR_RMS))
        width = int(rng.choice([1, 2, 3, 5, 8]))
        lowpass = rng.uniform(0.0, 1.0)
        kernel = np.full(width, lowpass / width)
        kernel[0] += 1.0 - lowpass
        kernel = (kernel / np.sqrt(np.sum(kernel**2))).astype(np.float32)  # unit gain on white noise
        stream_id = f"{cfg.stream_prefix}-{index:02d}"
        return _StreamPlan(index, stream_id, start_ns, tuple(segments), tuple(bounds), floor, kernel)

    def _utterances(self, plan: _StreamPlan, k: int) -> list[_Utterance]:
        """The digit spoken back to back with short pauses; shared by the audio and the transcript."""
        rng = self._rng(plan.index, k, 0)
        sr = self.config.sample_rate
        s0, s1 = plan.bounds[k]
        clips = self._clips[plan.segments[k].digit]
        stop = s1 - round(END_MARGIN_S * sr)
        out: list[_Utterance] = []
        cursor = s0 + round(rng.uniform(*PAUSE_S) * sr)
        augment = self.config.augment if self.config.augment.active else None
        while True:
            samples, rms, voice = clips[int(rng.integers(len(clips)))]
            if augment is not None:  # its own generator per word: the plan's draws stay where they were
                samples = augment.word(samples, sr, self._rng(plan.index, k, 5, len(out)))
                rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) or rms
            if cursor + len(samples) > stop:
                return out
            out.append(_Utterance(cursor, samples, rms, voice))
            cursor += len(samples) + round(rng.uniform(*PAUSE_S) * sr)

    # -- rendering ----------------------------------------------------------------------------

    def _video(self, plan: _StreamPlan, k: int) -> list[Record]:
        cfg = self.config
        segment = plan.segments[k]
        if segment.video_state == "drop":
            return []
        rng = self._rng(plan.index, k, 1)
        kind = cast(SceneKind, segment.video_state)  # "drop" has returned above
        # Its own generator: the typeface draw leaves every other draw of the segment where it was.
        typeface = cfg.augment.pick_typeface(self._rng(plan.index, k, 6)) if cfg.augment.typeface > 0 else None
        style = cfg.augment.pick_glyph_style(self._rng(plan.index, k, 7)) if cfg.augment.glyph_style > 0 else None
        if typeface is None and style is None:
            scene = self._renderer.segment_base(segment.digit, kind, cfg.frame_size, rng)
        else:
            scene = segment_base(segment.digit, kind, cfg.frame_size, rng, typeface=typeface, style=style)
        camera = self._renderer.camera(rng)
        image, quality = scene.image, cfg.jpeg_quality
        if cfg.augment.active:
            jitter = self._rng(plan.index, k, 4)
            image, quality = cfg.augment.scene(image, jitter), cfg.augment.jpeg_quality(quality, jitter)
        out: list[Record] = []
        tick = self._first_tick(plan.start_ns, segment.t_start_ns)
        while (t := self._tick_time(plan.start_ns, tick)) < segment.t_end_ns:
            frame = camera.frame(image, rng)
            t_end = self._tick_time(plan.start_ns, tick + 1)
            out.append(
                image_record(plan.stream_id, tick, t, t_end, frame, encoding=cfg.video_encoding, quality=quality)
            )
            tick += 1
        return out

    def _tick_time(self, start_ns: int, tick: int) -> int:
        return start_ns + round(tick * NS / self.config.fps)

    def _first_tick(self, start_ns: int, t_ns: int) -> int:
        """The first frame tick at or after ``t_ns`` (float estimate, then corrected exactly)."""
        tick = max(0, math.ceil((t_ns - start_ns) * self.config.fps / NS) - 1)
        while self._tick_time(start_ns, tick) < t_ns:
            tick += 1
        return tick

    def _audio(self, plan: _StreamPlan, k: int, utterances: list[_Utterance]) -> list[Record]:
        cfg = self.config
        segment = plan.segments[k]
        if segment.audio_state == "drop":
            return []
        rng = self._rng(plan.index, k, 2)
        s0, s1 = plan.bounds[k]
        width = len(plan.noise_kernel)
        white = rng.standard_normal(s1 - s0 + width - 1, dtype=np.float32)
        buf = np.convolve(white, plan.noise_kernel, mode="valid") * np.float32(plan.noise_floor)
        if segment.audio_state != "silence" and utterances:
            snr_db = rng.uniform(*cfg.snr_db)
            level = plan.noise_floor * 10.0 ** (snr_db / 20.0)
            for utt in utterances:
                rms = level * 10.0 ** (rng.uniform(-GAIN_JITTER_DB, GAIN_JITTER_DB) / 20.0)
                at = utt.start - s0
                buf[at : at + len(utt.samples)] += utt.samples * np.float32(rms / utt.rms)
            if segment.audio_state == "noise":
                # Broadband noise burying the speech: a passing truck, wind on the microphone.
                heavy = level * 10.0 ** (-rng.uniform(*HEAVY_NOISE_SNR_DB) / 20.0)
                buf += rng.standard_normal(len(buf), dtype=np.float32) * np.float32(heavy)
        chunk = cfg.chunk_samples
        out: list[Record] = []
        for c in range(s0, s1, chunk):
            t0 = self._time(plan.start_ns, c)
            record = audio_record(
                plan.stream_id,
                c // chunk,
                t0,
                buf[c - s0 : c - s0 + chunk],
                cfg.sample_rate,
                encoding=cfg.audio_encoding,
            )
            # Rates that do not divide 1e9 round each chunk's end on its own; pin it to the next
            # chunk's start so chunks tile the timeline exactly (well inside the wire's tolerance).
            t1 = self._time(plan.start_ns, c + chunk)
            out.append(record if record.t_end_ns == t1 else dataclasses.replace(record, t_end_ns=t1))
        return out

    def _text(self, plan: _StreamPlan, k: int, utterances: list[_Utterance], seq: int) -> list[Record]:
        cfg = self.config
        segment = plan.segments[k]
        if segment.text_state == "missing":
            return []
        rng = self._rng(plan.index, k, 3)
        said = segment.digit
        if segment.text_state == "wrong":  # a captioner stuck on another digit for the whole segment
            said = (segment.digit + int(rng.integers(1, 10))) % 10
        out: list[Record] = []
        for utt in utterances:
            word = DIGIT_WORDS[said]
            if rng.random() < cfg.corruption.asr_error:
                if rng.random() < ASR_DROP_SHARE:
                    continue
                options = ASR_CONFUSIONS[said]
                word = options[int(rng.integers(len(options)))]
            t0 = self._time(plan.start_ns, utt.start)
            t1 = self._time(plan.start_ns, utt.start + len(utt.samples))
            out.append(text_record(plan.stream_id, seq + len(out), t0, t1, word))
        return out


def _draw(rng: np.random.Generator, states: tuple[tuple[_S, float], ...], default: _S) -> _S:
    """One uniform draw picks a state by its probability, else ``default``."""
    u = rng.random()
    for state, p in states:
        if u < p:
            return state
        u -= p
    return default


def _at_rate(samples: np.ndarray, rate: int, target: int) -> tuple[np.ndarray, float]:
    """``samples`` at ``target`` Hz (linear interpolation: fine for a source whose point is variety) and their RMS."""
    if rate != target:
        n = max(1, round(len(samples) * target / rate))
        samples = np.interp(np.arange(n) * (rate / target), np.arange(len(samples)), samples).astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return samples, rms


__all__ = ["ASR_CONFUSIONS", "Corruption", "SyntheticAV", "SyntheticConfig", "Utterance"]
