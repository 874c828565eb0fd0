"""The ASR recogniser (stream/sources/asr.py) on real espeak-ng speech from the speech bank: words with
event times, chunking and sample rates that do not change the result, bounded latency, progress."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from fusionstream.stream.resample import resample
from fusionstream.stream.sources.asr import (
    AsrConfig,
    AsrError,
    Decoded,
    Recognizer,
    Utterance,
    Word,
    word_error_rate,
)
from fusionstream.stream.sources.speech import SpeechBank
from fusionstream.units import MS, NS

RATE = 16_000
T0 = 1_767_225_600_000_000_000
VOICE = "en-us"
DIGITS = AsrConfig(grammar="digits")


def spoken(digits: list[int], pause_s: float, rate: int = RATE) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The digits spoken by one voice with pauses over a faint noise floor; and each clip's span (ns from 0)."""
    bank = SpeechBank.load("all")
    rng = np.random.default_rng(1)
    parts, spans, at = [], [], 0
    for digit in digits:
        clip = next(c for c in bank[digit] if c.voice == VOICE and c.speed_wpm == 140)
        gap = np.zeros(round(pause_s * RATE), np.float32)
        speech = clip.samples * np.float32(0.1 / clip.rms)
        parts += [gap, speech]
        spans.append(((at + len(gap)) * NS // RATE, (at + len(gap) + len(speech)) * NS // RATE))
        at += len(gap) + len(speech)
    parts.append(np.zeros(round(pause_s * RATE), np.float32))
    audio = np.concatenate(parts)
    audio += rng.standard_normal(len(audio)).astype(np.float32) * np.float32(0.002)
    return (audio if rate == RATE else resample(audio, RATE, rate)), spans


def run(recogniser: Recognizer, audio: np.ndarray, chunk_ms: float = 40, t0: int = T0) -> list[Decoded | Utterance]:
    chunk = round(recogniser.sample_rate * chunk_ms / 1000)
    events: list[Decoded | Utterance] = []
    for at in range(0, len(audio), chunk):
        events += recogniser.feed(audio[at : at + chunk], t0 + at * NS // recogniser.sample_rate)
    return events + recogniser.flush()


def words_of(events: list[Decoded | Utterance]) -> list[Word]:
    return [w for e in events if isinstance(e, Utterance) for w in e.words]


def test_digits_with_pauses_are_words_stamped_where_they_were_spoken() -> None:
    digits = [1, 2, 3, 5, 7]
    audio, spans = spoken(digits, pause_s=0.7)
    events = run(Recognizer(RATE, DIGITS), audio)
    utterances = [e for e in events if isinstance(e, Utterance)]
    # One utterance per spoken digit: the pauses end them, not the segment limit.
    assert len(utterances) == len(digits)
    assert not any(u.forced for u in utterances)
    for utterance, (start, end) in zip(utterances, spans, strict=True):
        assert abs(utterance.t_start_ns - (T0 + start)) < 150 * MS
        assert -150 * MS < utterance.t_end_ns - (T0 + end) < 300 * MS  # a trailing breath may join it
        # Decided after the pause that closed it, and not long after.
        assert 0 < utterance.decided_ns - utterance.t_end_ns < 600 * MS
        assert all(0.0 <= w.confidence <= 1.0 and w.t_start_ns < w.t_end_ns for w in utterance.words)
    # The posterior says something: not the same value for every word (it was 1.0 for all of them).
    confidences = [w.confidence for u in utterances for w in u.words]
    assert len(set(confidences)) > 1 and min(confidences) < 0.99, confidences
    heard = [w.text for w in words_of(events)]
    errors, n = word_error_rate(["one", "two", "three", "five", "seven"], heard)
    assert errors / n <= 0.4, heard


def test_chunking_and_sample_rate_do_not_change_the_words() -> None:
    audio, _ = spoken([4, 8, 6], pause_s=0.5, rate=44_100)
    a = words_of(run(Recognizer(44_100, DIGITS), audio, chunk_ms=40))
    b = words_of(run(Recognizer(44_100, DIGITS), audio, chunk_ms=97))
    assert a and a == b  # the resampler and the frame buffer carry state across chunks exactly
    native, _ = spoken([4, 8, 6], pause_s=0.5)
    c = words_of(run(Recognizer(RATE, DIGITS), native))
    # 44.1 kHz resampled to 16 kHz lands on the same times (the recognition of a word may differ).
    matched = [(x, y) for x in a for y in c if abs(x.t_start_ns - y.t_start_ns) <= 30 * MS]
    assert len(matched) >= 2, (a, c)
    assert all(abs(x.t_end_ns - y.t_end_ns) <= 30 * MS for x, y in matched)


def test_speech_without_pauses_is_cut_at_max_segment_and_progress_holds() -> None:
    config = AsrConfig(grammar="digits", max_segment_s=1.5)
    audio, spans = spoken([1, 9, 3, 6, 2, 5, 4, 7], pause_s=0.0)
    events = run(Recognizer(RATE, config), audio)
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert sum(u.forced for u in utterances) >= 2
    for u in utterances:  # bounded latency: a word is out at most max_segment + pause after its end
        assert all(u.decided_ns - w.t_end_ns <= (config.max_segment_s + config.pause_s) * NS for w in u.words)
    # Progress is monotonic, and no word arrives that starts before a progress already reported.
    decoded = -(2**63)
    for event in events:
        if isinstance(event, Decoded):
            assert event.t_ns > decoded
            decoded = event.t_ns
        else:
            assert all(w.t_start_ns >= decoded for w in event.words)
    assert decoded >= T0 + len(audio) * NS // RATE - 10 * MS  # the end of the audio, after flush
    words = words_of(events)
    assert all(a.t_end_ns <= b.t_start_ns for a, b in itertools.pairwise(words))  # no word twice across a cut
    assert words[0].t_start_ns >= T0 + spans[0][0] - 150 * MS


def test_a_gap_in_the_chunks_starts_a_new_timeline() -> None:
    audio, _ = spoken([2, 9], pause_s=0.6)
    half = len(audio) // 2 - len(audio) // 2 % 640
    recogniser = Recognizer(RATE, DIGITS)
    first = run(recogniser, audio[:half])
    later = T0 + 3600 * NS  # an hour later, as a restarted microphone would stamp it
    second = run(recogniser, audio[half:], t0=later)
    assert words_of(first) and words_of(second)
    assert all(w.t_end_ns < later for w in words_of(first))
    assert all(w.t_start_ns >= later for w in words_of(second))


def test_the_default_is_the_general_language_model() -> None:
    assert AsrConfig().grammar == "general"
    audio, _ = spoken([7], pause_s=0.4)
    recogniser = Recognizer(RATE)
    events = run(recogniser, audio)
    assert words_of(events)  # it hears something in real speech ...
    assert 0 < recogniser.real_time_factor < 1.5  # ... on the CPU, about real time or faster
    silence = Recognizer(RATE)
    assert not words_of(run(silence, np.zeros(RATE, np.float32)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("grammar", "klingon", "asr grammar"), ("max_segment_s", 0.2, "asr max_segment_s"), ("vad_mode", 7, "vad_mode")],
)
def test_bad_settings_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(AsrError, match=message):
        dataclasses.replace(AsrConfig(), **{field: value})
    with pytest.raises(AsrError, match="sample_rate"):
        Recognizer(10)


def test_word_error_rate() -> None:
    assert word_error_rate(["one", "two", "three"], ["one", "two", "three"]) == (0, 3)
    assert word_error_rate(["one", "two", "three"], ["one", "too", "three", "four"]) == (2, 3)
    assert word_error_rate(["one", "two"], []) == (2, 2)
