"""Speech recognition on the CPU with PocketSphinx: PCM chunks in, words stamped with event times out.

:class:`Recognizer` is synchronous and holds no clock: ``feed(samples, t_start_ns)`` takes the
stream's audio chunks in event-time order, at the stream's own sample rate, and returns what that
audio completed: :class:`Utterance` results (recognised words, each with its event-time start, end
and confidence) and :class:`Decoded` marks ("every word starting before T has been returned"),
which a producer turns into progress records (docs/wire-format.md#progress).

How it streams, and why its latency is bounded:

- the audio is resampled to 16 kHz, the rate CMU's US-English acoustic model was trained on,
  by a resampler that keeps its state across chunks (no clicks at chunk boundaries);
- PocketSphinx's endpointer (a WebRTC-style voice activity detector over ``pause_s`` of audio)
  opens an utterance when speech starts and closes it after ``pause_s`` of non-speech; the
  decoder searches while the audio comes, so closing costs only the final passes;
- speech longer than ``max_segment_s`` is cut there, so a talker who never pauses still gets a
  transcript every ``max_segment_s``. A word still going on at the cut is not returned half
  heard: its audio starts the next utterance.

So a word is returned at most ``max(pause_s, max_segment_s) + decoding time`` after it ends.
The default language model is the general US-English trigram model of the ``pocketsphinx``
wheel; ``grammar="digits"`` restricts the search to the ten digit words (and "oh").
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fusionstream.units import NS

#: The rate of the ``pocketsphinx`` wheel's en-us acoustic model.
ASR_SAMPLE_RATE = 16_000
#: The least rate worth recognising: speech's formants reach about 4 kHz (telephone audio is 8 kHz).
ASR_MIN_SAMPLE_RATE = 8_000
#: PocketSphinx computes 100 feature frames a second; word times come in frames.
FRAME_NS = 10_000_000
#: Chunks whose start is this far from where the previous chunk ended are a new timeline
#: (lost audio, a restarted microphone): the open utterance is finished first.
RESYNC_NS = 40_000_000
#: A word ending this close to a forced cut may have been cut off: it is decoded again with
#: the audio that follows, in the next utterance.
CUT_MARGIN_NS = 60_000_000

Grammar = Literal["general", "digits"]

#: The digits grammar: the ten digit words and "oh", any number of them (JSGF).
DIGITS_JSGF = (
    "#JSGF V1.0;\ngrammar digits;\n"
    "public <digits> = <digit>*;\n"
    "<digit> = zero | oh | one | two | three | four | five | six | seven | eight | nine;\n"
)

_ALTERNATE = re.compile(r"\(\d+\)$")  # CMUdict's alternate pronunciations: "two(2)"


class AsrError(ValueError):
    """A recogniser setting out of range, or audio it cannot take."""


@dataclass(frozen=True, slots=True)
class Word:
    """A recognised word and when it was spoken (event time, ns); ``confidence`` is its posterior probability."""

    text: str
    t_start_ns: int
    t_end_ns: int
    confidence: float


@dataclass(frozen=True, slots=True)
class Utterance:
    """The words of one stretch of speech, final (never revised).

    ``forced``: cut at ``max_segment_s`` rather than at a pause. ``decided_ns``: the event time of
    the audio that completed it (its end plus the pause that closed it, or the cut).
    """

    words: tuple[Word, ...]
    t_start_ns: int
    t_end_ns: int
    forced: bool
    decided_ns: int

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(frozen=True, slots=True)
class Decoded:
    """Decoding reached ``t_ns``: every word that starts before it has been returned."""

    t_ns: int


AsrEvent = Utterance | Decoded


@dataclass(frozen=True)
class AsrConfig:
    """What to recognise and how long a transcript may wait."""

    grammar: Grammar = "general"
    #: Speech is cut into utterances at most this long (bounded latency for talkers who never pause).
    #: A word leaves up to this + ``pause_s`` after it starts: at 2.5 s, 64 % of the words of the
    #: synthetic streams' continuous speech missed their windows under the service's default
    #: ``max_skew_ms``/``idle_timeout_ms`` of 2 s; at 1.5 s, 8 % (docs/asr.md).
    max_segment_s: float = 1.5
    #: Non-speech that ends an utterance; also how far speech detection looks back.
    pause_s: float = 0.3
    #: Voice activity detection aggressiveness, 0 (keeps most sound as speech) to 3; None: no
    #: detection, every sound is decoded and utterances are cut every ``max_segment_s``.
    vad_mode: int | None = 0
    #: Extra PocketSphinx settings (``pocketsphinx.Config`` names), e.g. ``{"lw": 6.5}``.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grammar not in ("general", "digits"):
            raise AsrError(f"asr grammar {self.grammar!r}: choose general or digits")
        if not 0.1 <= self.pause_s <= 2.0:
            raise AsrError(f"asr pause_s {self.pause_s}: must be within 0.1..2.0 s")
        if not 3 * self.pause_s <= self.max_segment_s <= 30.0:
            raise AsrError(f"asr max_segment_s {self.max_segment_s}: must be within {3 * self.pause_s:g}..30 s")
        if self.vad_mode not in (None, 0, 1, 2, 3):
            raise AsrError(f"asr vad_mode {self.vad_mode}: must be 0, 1, 2, 3 or none")


class Recognizer:
    """Streaming PocketSphinx recognition of one audio stream; see the module docstring.

    Not thread-safe: one thread feeds it. Loading the models takes about a second.
    """

    def __init__(self, sample_rate: int, config: AsrConfig | None = None) -> None:
        from pocketsphinx import Decoder, Endpointer

        if not 1000 <= sample_rate <= 384_000:
            raise AsrError(f"asr sample_rate {sample_rate}: must be within 1000..384000 Hz")
        self.sample_rate = sample_rate
        self.config = config = config or AsrConfig()
        options = dict(config.options)
        if config.grammar == "digits":
            # A grammar of short words and nothing else inserts digits into every breath and tail at
            # the default penalty (0.65); 1e-4 halved the speech bank's digits WER.
            options.setdefault("wip", 1e-4)
        self._decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL", **options)
        if config.grammar == "digits":
            self._decoder.add_jsgf_string("digits", DIGITS_JSGF)
            self._decoder.activate_search("digits")
        self._make_endpointer = lambda: Endpointer(window=config.pause_s, vad_mode=config.vad_mode or 0,
                                                   sample_rate=ASR_SAMPLE_RATE)
        self._endpointer = self._make_endpointer()
        self._frame = self._endpointer.frame_bytes // 2  # samples per endpointer frame
        self._resampler = _Resampler(sample_rate, ASR_SAMPLE_RATE)
        self._pending = np.empty(0, np.int16)  # resampled audio not yet a whole endpointer frame
        self._origin_ns: int | None = None  # event time of the endpointer's first sample
        self._fed = 0  # samples given to the endpointer since the origin
        self._next_ns: int | None = None  # where the next chunk should start
        self._utt_start_ns: int | None = None  # event time of the open utterance's first sample
        self._utt_audio: list[bytes] = []  # its audio, for the word a forced cut may carry over
        self._utt_bytes = 0
        self._decoded_ns = -(2**63)
        #: Processor seconds spent decoding, and seconds of audio decoded (real-time factor = ratio).
        self.cpu_s = 0.0
        self.audio_s = 0.0

    # -- feeding -----------------------------------------------------------------------------------

    def feed(self, samples: np.ndarray, t_start_ns: int) -> list[AsrEvent]:
        """Take one chunk (mono float in [-1, 1] or int16) starting at ``t_start_ns``; return what it completed."""
        started = time.process_time()
        if samples.ndim != 1:
            raise AsrError(f"asr audio must be mono (1-D), got shape {samples.shape}")
        out: list[AsrEvent] = []
        if self._next_ns is not None and abs(t_start_ns - self._next_ns) > RESYNC_NS:
            out += self._finish(end_ns=self._next_ns)  # a new timeline: nothing spans the gap
        if self._origin_ns is None:
            self._origin_ns, self._fed = t_start_ns, 0
            self._resampler = _Resampler(self.sample_rate, ASR_SAMPLE_RATE)
        self._next_ns = t_start_ns + len(samples) * NS // self.sample_rate
        self.audio_s += len(samples) / self.sample_rate
        floats = samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)
        pcm = _to_int16(self._resampler(floats))
        pending = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        whole = len(pending) - len(pending) % self._frame
        for at in range(0, whole, self._frame):
            out += self._process(pending[at : at + self._frame].tobytes())
        self._pending = pending[whole:]
        out += self._progress()
        self.cpu_s += time.process_time() - started
        return out

    def flush(self) -> list[AsrEvent]:
        """The end of the audio: finish the open utterance, and mark everything fed as decoded."""
        started = time.process_time()
        end = self._next_ns
        out = self._finish(end_ns=end) if end is not None else []
        self.cpu_s += time.process_time() - started
        return out

    @property
    def decoded_ns(self) -> int:
        """How far decoding got: every word starting before this event time has been returned."""
        return self._decoded_ns

    @property
    def real_time_factor(self) -> float:
        """Processor time spent per second of audio so far (below 1: faster than real time)."""
        return self.cpu_s / self.audio_s if self.audio_s else 0.0

    # -- internals ---------------------------------------------------------------------------------

    def _process(self, frame: bytes) -> list[AsrEvent]:
        ep = self._endpointer
        if self.config.vad_mode is None:  # everything is speech, cut at max_segment_s only
            if self._utt_start_ns is None:
                self._open(self._time_fed())
            speech: bytes | None = frame
            self._fed += self._frame
        else:
            was_in_speech = ep.in_speech
            speech = ep.process(frame)
            self._fed += self._frame
            if speech is None:
                return []
            if not was_in_speech:
                self._open(self._at(ep.speech_start))
        assert speech is not None
        self._decoder.process_raw(speech, False, False)
        self._utt_audio.append(speech)
        self._utt_bytes += len(speech)
        if self.config.vad_mode is not None and not ep.in_speech:
            return self._close(forced=False, decided_ns=self._time_fed())
        if self._utt_bytes >= self.config.max_segment_s * ASR_SAMPLE_RATE * 2:
            return self._close(forced=True, decided_ns=self._time_fed())
        return []

    def _open(self, start_ns: int, audio: bytes = b"") -> None:
        self._utt_start_ns = start_ns
        self._utt_audio = [audio] if audio else []
        self._utt_bytes = len(audio)
        self._decoder.start_utt()
        if audio:
            self._decoder.process_raw(audio, False, False)

    def _close(self, *, forced: bool, decided_ns: int) -> list[AsrEvent]:
        """End the open utterance; on a forced cut, a word that may be cut off opens the next one."""
        start = self._utt_start_ns
        assert start is not None
        self._decoder.end_utt()
        audio = b"".join(self._utt_audio)
        end = start + len(audio) // 2 * NS // ASR_SAMPLE_RATE
        words = self._words(start)
        self._utt_start_ns, self._utt_audio = None, []
        carry_from: int | None = None
        if forced and words and words[-1].t_end_ns >= end - CUT_MARGIN_NS:
            *kept, last = words
            if end - last.t_start_ns < self.config.max_segment_s * NS / 2:  # else it would be cut again
                words, carry_from = kept, last.t_start_ns
        out: list[AsrEvent] = []
        if words:
            out.append(Utterance(tuple(words), words[0].t_start_ns, words[-1].t_end_ns, forced, decided_ns))
        if forced:
            resume = carry_from if carry_from is not None else end
            offset = (resume - start) * ASR_SAMPLE_RATE // NS * 2
            self._open(resume, audio[offset:])
        return out

    def _words(self, start_ns: int) -> list[Word]:
        words = []
        for seg in self._decoder.seg() or ():  # None when nothing was decoded
            text = _ALTERNATE.sub("", seg.word)
            if text.startswith(("<", "[")):  # <s>, </s>, <sil>, [NOISE]: not words
                continue
            # pocketsphinx's Python segments carry the posterior already linear (it applies logmath.exp
            # itself): exponentiating again turned every confidence into 1.0.
            confidence = min(1.0, max(0.0, float(seg.prob)))
            words.append(Word(text, start_ns + seg.start_frame * FRAME_NS, start_ns + (seg.end_frame + 1) * FRAME_NS,
                              round(confidence, 4)))
        return words

    def _finish(self, *, end_ns: int) -> list[AsrEvent]:
        """Close the open utterance with the audio held back, and restart on a fresh timeline."""
        out: list[AsrEvent] = []
        ep = self._endpointer
        if self.config.vad_mode is not None and ep.in_speech:
            # end_stream refuses an empty buffer; a lone zero sample stands for "no more audio".
            tail = ep.end_stream(self._pending.tobytes() or b"\0\0")
            if tail:
                self._decoder.process_raw(tail, False, False)
                self._utt_audio.append(tail)
                self._utt_bytes += len(tail)
        if self._utt_start_ns is not None:
            out += self._close(forced=False, decided_ns=end_ns)
        self._endpointer = self._make_endpointer()
        self._pending = np.empty(0, np.int16)
        self._origin_ns = self._next_ns = None
        out += self._mark(end_ns)
        return out

    def _progress(self) -> list[AsrEvent]:
        if self._utt_start_ns is not None:  # the open utterance's words are still to come
            return self._mark(self._utt_start_ns)
        # The endpointer may still find that speech began up to pause_s (its window) ago.
        return self._mark(self._time_fed() - round(self.config.pause_s * NS) - FRAME_NS)

    def _mark(self, t_ns: int) -> list[AsrEvent]:
        if t_ns <= self._decoded_ns:
            return []
        self._decoded_ns = t_ns
        return [Decoded(t_ns)]

    def _at(self, seconds: float) -> int:
        assert self._origin_ns is not None
        return self._origin_ns + round(seconds * NS)

    def _time_fed(self) -> int:
        assert self._origin_ns is not None
        return self._origin_ns + self._fed * NS // ASR_SAMPLE_RATE


class _Resampler:
    """Streaming linear-interpolation resampler; a box filter first when going down, against aliasing.

    Keeps the samples it still needs between calls, so a stream cut into chunks resamples
    exactly as the whole stream would.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.step = rate_in / rate_out
        self.width = max(1, int(self.step)) if rate_in > rate_out else 1
        self._history = np.zeros(self.width - 1, np.float32)  # unfiltered input the box filter still needs
        self._buffer = np.empty(0, np.float32)  # filtered input from index self._base on
        self._base = 0
        self._next = 0  # index of the next output sample

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self.step == 1.0:
            return samples
        if self.width > 1:
            joined = np.concatenate((self._history, samples))
            filtered = np.convolve(joined, np.full(self.width, 1.0 / self.width, np.float32), mode="valid")
            self._history = joined[len(joined) - (self.width - 1) :]
        else:
            filtered = samples
        self._buffer = np.concatenate((self._buffer, filtered.astype(np.float32)))
        last = self._base + len(self._buffer) - 1  # the last input index we can interpolate at
        count = max(0, int(last / self.step) - self._next + 1)
        positions = (self._next + np.arange(count)) * self.step - self._base
        out = np.interp(positions, np.arange(len(self._buffer)), self._buffer).astype(np.float32)
        self._next += count
        # The next output may lie past this chunk's last sample: drop no sample not yet received.
        keep = min(int(self._next * self.step) - self._base, len(self._buffer))
        self._buffer, self._base = self._buffer[keep:], self._base + keep
        return out


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def word_error_rate(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference length): Levenshtein over words."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1], len(reference)


__all__ = [
    "ASR_MIN_SAMPLE_RATE",
    "ASR_SAMPLE_RATE",
    "DIGITS_JSGF",
    "AsrConfig",
    "AsrError",
    "AsrEvent",
    "Decoded",
    "Grammar",
    "Recognizer",
    "Utterance",
    "Word",
    "word_error_rate",
]
