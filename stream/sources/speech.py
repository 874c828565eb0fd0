"""The speech bank: real synthesized clips of the ten digit words (espeak-ng, flite and festival voices), split into
train and test voices.

``scripts/make_speech_bank.sh`` writes the bank (16 kHz mono 16-bit WAV, silence trimmed,
peaks at -3 dBFS) and ``index.json``, which names the voices and which are held out for
testing. This module reads it with the stdlib :mod:`wave` module: no audio library needed.

Which voices a bank holds: a split (``train``, ``test``, ``all``), one voice, ``voice:NAME`` (any
voice of ``index.json``), so that accuracy can be measured voice by voice, or several,
``voice:NAME,NAME,...``.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fusionstream.stream.errors import FusionStreamError

#: Where the bank ships, inside the package (see ``[tool.setuptools.package-data]``).
BANK_DIR = Path(__file__).with_name("speech_bank")

#: The spoken word of each digit class, index = digit.
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

Split = Literal["train", "test", "all"]
#: ``voices="voice:NAME"`` selects that one voice of the bank instead of a split (``voice:A,B``: those voices).
VOICE_PREFIX = "voice:"


class UnknownVoice(FusionStreamError, ValueError):
    """A ``voice:NAME`` the bank does not hold (a ValueError too, like an unknown split)."""


@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """One utterance of one digit: float32 samples in [-1, 1] (read-only, shared by every user)."""

    digit: int
    voice: str
    speed_wpm: int
    samples: np.ndarray
    sample_rate: int
    #: Root mean square of the samples; the source sets speech level from it, per clip.
    rms: float

    @property
    def word(self) -> str:
        return DIGIT_WORDS[self.digit]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class SpeechBank:
    """Clips per digit for one split of the bank's voices."""

    split: str
    voices: tuple[str, ...]
    sample_rate: int
    #: ``clips[d]`` holds every clip of digit ``d`` (all voices and speeds of the split).
    clips: tuple[tuple[Clip, ...], ...]

    @classmethod
    def load(cls, split: Split | str = "train", directory: str | Path | None = None) -> SpeechBank:
        """Load the clips of ``split`` (``train``, ``test``, ``all`` or ``voice:NAME``); cached, so calling it
        again is free."""
        return _load(split, str(Path(directory) if directory is not None else BANK_DIR))

    def __getitem__(self, digit: int) -> tuple[Clip, ...]:
        return self.clips[digit]

    def __len__(self) -> int:
        return sum(len(c) for c in self.clips)


def read_index(directory: str | Path = BANK_DIR) -> dict[str, object]:
    """The bank's ``index.json`` (voices, speeds, split, sample rate).

    ``speeds_wpm`` lists the speeds every voice is spoken at, unless ``speeds_by_voice`` (optional)
    gives a voice its own.
    """
    with open(Path(directory) / "index.json", encoding="utf-8") as fh:
        index: dict[str, object] = json.load(fh)
    return index


def bank_fingerprint(directory: str | Path = BANK_DIR) -> str:
    """A digest of the bank's ``index.json``: caches of rendered windows key on it, so a regenerated
    bank (other voices, speeds or generator) never reuses windows spoken by the old one."""
    return hashlib.sha256((Path(directory) / "index.json").read_bytes()).hexdigest()[:16]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit samples, expected 16-bit PCM")
        channels, rate = wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples, rate


def voices_of(split: Split | str, directory: str | Path = BANK_DIR) -> tuple[str, ...]:
    """The voices ``split`` names (``train``, ``test``, ``all`` or ``voice:NAME``), in ``index.json``'s order."""
    index = read_index(directory)
    everyone: tuple[str, ...] = tuple(index["voices"])  # type: ignore[call-overload]
    groups: dict[str, Sequence[str]] = index["split"]  # type: ignore[assignment]
    if split == "all":
        return everyone
    if split in groups:
        return tuple(groups[split])
    if split.startswith(VOICE_PREFIX):
        names = tuple(dict.fromkeys(n.strip() for n in split[len(VOICE_PREFIX):].split(",") if n.strip()))
        for name in names or ("",):
            if name not in everyone:
                close = difflib.get_close_matches(name, everyone, n=3, cutoff=0.5)
                raise UnknownVoice(f"the speech bank has no voice {name!r}"
                                   + (f" (did you mean {', '.join(close)}?)" if close else "")
                                   + f": its test voices are {', '.join(groups.get('test', ()))}; all "
                                   f"{len(everyone)} are listed in {Path(directory) / 'index.json'}")
        return names
    raise ValueError(f"unknown speech bank split {split!r}: choose train, test, all or {VOICE_PREFIX}NAME")


@functools.lru_cache(maxsize=24)
def _load(split: str, directory: str) -> SpeechBank:
    # 24: the three splits plus one bank per voice (``evaluate --by voice`` loads each test voice alone).
    index = read_index(directory)
    voices = voices_of(split, directory)
    speeds: Sequence[int] = index["speeds_wpm"]  # type: ignore[assignment]
    # A voice may be spoken at other speeds than the bank's (most training voices at one).
    by_voice: dict[str, Sequence[int]] = index.get("speeds_by_voice", {})  # type: ignore[assignment]
    pattern = str(index["file_pattern"])
    sample_rate = int(index["sample_rate"])  # type: ignore[call-overload]
    clips: list[list[Clip]] = [[] for _ in DIGIT_WORDS]
    for voice in voices:
        for speed in by_voice.get(voice, speeds):
            for digit in range(len(DIGIT_WORDS)):
                path = Path(directory) / pattern.format(voice=voice, speed=speed, digit=digit)
                samples, rate = read_wav(path)
                if rate != sample_rate:
                    raise ValueError(f"{path}: {rate} Hz, index.json says {sample_rate} Hz")
                if samples.size == 0:
                    raise ValueError(f"{path}: empty clip")
                samples.setflags(write=False)  # shared by every caller through the cache
                rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
                clips[digit].append(Clip(digit, voice, int(speed), samples, rate, rms))
    return SpeechBank(split, voices, sample_rate, tuple(tuple(c) for c in clips))


__all__ = ["BANK_DIR", "DIGIT_WORDS", "VOICE_PREFIX", "Clip", "SpeechBank", "Split", "UnknownVoice", "bank_fingerprint",
           "read_index",
           "read_wav", "voices_of"]
