"""The synthetic AV-digits source: reproducible, valid, time-consistent records with honest ground truth."""

from __future__ import annotations

import collections
import itertools
import time

import numpy as np
import pytest

from fusionstream.stream import wire
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Encoding, Frame, Modality, Record
from fusionstream.stream.sources import (
    ASR_CONFUSIONS,
    DIGIT_WORDS,
    Corruption,
    GroundTruth,
    Segment,
    SpeechBank,
    SyntheticAV,
    SyntheticConfig,
)
from fusionstream.stream.sources.speech import read_index
from fusionstream.units import NS

SHORT = SyntheticConfig(streams=2, seconds=12.0, seed=7)


def _by_stream(records: list[Record], modality: Modality) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        if r.modality is modality:
            out[r.stream_id].append(r)
    return out


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@pytest.fixture(scope="module")
def short_source() -> tuple[SyntheticAV, list[Record]]:
    source = SyntheticAV(SHORT)
    return source, list(source.records())


# -- reproducibility ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    _, records = short_source
    again = list(SyntheticAV(SHORT).records())
    assert [wire.encode(r) for r in records] == [wire.encode(r) for r in again]


def test_different_seeds_differ(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    source, records = short_source
    other = SyntheticAV(SyntheticConfig(streams=2, seconds=12.0, seed=8))
    assert other.truth.segments("cam-00") != source.truth.segments("cam-00")
    first = [r.payload for r in itertools.islice(other.records(), 50)]
    assert first != [r.payload for r in records[:50]]


def test_streams_differ_and_start_unaligned(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    source, _ = short_source
    assert source.stream_ids == ["cam-00", "cam-01"]
    a, b = (source.truth.segments(sid) for sid in source.stream_ids)
    assert [s.digit for s in a] != [s.digit for s in b]
    for sid in source.stream_ids:
        offset = source.truth.span(sid)[0] - SHORT.start_ns
        assert 0 <= offset < NS
    assert a[0].t_start_ns != b[0].t_start_ns


def test_corruption_rates_do_not_move_digits_or_times() -> None:
    clean = SyntheticAV(SyntheticConfig(streams=1, seconds=60.0, corruption=Corruption.none()))
    noisy = SyntheticAV(SyntheticConfig(streams=1, seconds=60.0))
    key = [(s.t_start_ns, s.t_end_ns, s.digit) for s in clean.truth.segments("cam-00")]
    assert key == [(s.t_start_ns, s.t_end_ns, s.digit) for s in noisy.truth.segments("cam-00")]
    assert {s.video_state for s in clean.truth.segments("cam-00")} == {"clean"}


# -- validity and order ------------------------------------------------------------------------


def test_records_ordered_valid_and_decodable(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    _, records = short_source
    keys = [(r.t_start_ns, r.stream_id, int(r.modality)) for r in records]
    assert keys == sorted(keys)
    assert {r.modality for r in records} == set(Modality)
    for r in records:
        assert wire.decode(wire.encode(r)) == r
        item = decode_media(r)
        if isinstance(item, Frame):
            assert item.image.shape == (96, 96, 3)
    assert records[0].encoding is Encoding.JPEG


def test_raw_video_and_other_sample_rate_are_valid() -> None:
    config = SyntheticConfig(
        streams=1,
        seconds=4.0,
        video_encoding=Encoding.RAW_RGB24,
        sample_rate=22_050,
        frame_size=(64, 48),
        corruption=Corruption.none(),
    )
    records = list(SyntheticAV(config).records())
    chunks = [r for r in records if r.modality is Modality.AUDIO]
    assert chunks
    for r in records:
        item = decode_media(wire.decode(wire.encode(r)))
        if isinstance(item, Frame):
            assert item.image.shape == (48, 64, 3)
    # 22.05 kHz does not divide a nanosecond grid: the chunks must still tile exactly.
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.t_start_ns == prev.t_end_ns


def test_records_are_generated_lazily() -> None:
    started = time.perf_counter()
    source = SyntheticAV(SyntheticConfig(streams=4, seconds=3600.0))
    first = list(itertools.islice(source.records(), 20))
    assert len(first) == 20
    assert time.perf_counter() - started < 2.0  # an hour of 4 streams would take far longer to render


# -- time consistency --------------------------------------------------------------------------


def test_audio_tiles_the_timeline_except_dropped_segments() -> None:
    drops = Corruption(audio_drop=0.3)
    source = SyntheticAV(SyntheticConfig(streams=2, seconds=40.0, fps=1.0, frame_size=(16, 16), corruption=drops))
    chunks = _by_stream(list(source.records()), Modality.AUDIO)
    for sid in source.stream_ids:
        segments = source.truth.segments(sid)
        assert any(s.audio_state == "drop" for s in segments), "the check needs some dropped audio"
        expected = _merge([(s.t_start_ns, s.t_end_ns) for s in segments if s.audio_state != "drop"])
        got = [(r.t_start_ns, r.t_end_ns) for r in chunks[sid]]
        for (_, prev_end), (start, _) in itertools.pairwise(got):
            assert start >= prev_end, "chunks overlap"
        assert _merge(got) == expected
        assert all(end - start == 40_000_000 for start, end in got)


def test_video_ticks_and_drops() -> None:
    source = SyntheticAV(SyntheticConfig(streams=1, seconds=60.0, seed=5, corruption=Corruption(video_drop=0.3)))
    frames = _by_stream(list(source.records()), Modality.VIDEO)["cam-00"]
    for prev, nxt in itertools.pairwise(frames):
        assert nxt.t_start_ns > prev.t_start_ns
        assert prev.t_end_ns - prev.t_start_ns == pytest.approx(NS / 15, abs=1)
    per_segment = collections.Counter(source.truth.segment_at("cam-00", f.t_start_ns) for f in frames)
    for segment in source.truth.segments("cam-00"):
        if segment.video_state == "drop":
            assert per_segment[segment] == 0
        else:
            assert per_segment[segment] == pytest.approx(segment.duration_ns * 15 / NS, abs=1)


def test_segments_follow_the_spec() -> None:
    source = SyntheticAV(SyntheticConfig(streams=3, seconds=120.0, seed=11))
    for sid in source.stream_ids:
        segments = source.truth.segments(sid)
        for seg in segments[:-1]:
            assert 1.5 * NS - 1 <= seg.duration_ns <= 3.0 * NS + 1
        for a, b in itertools.pairwise(segments):
            assert a.t_end_ns == b.t_start_ns
            assert a.digit != b.digit
        start, end = source.truth.span(sid)
        assert end - start == 120 * NS


def test_words_fall_inside_their_segments(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    source, records = short_source
    for sid, words in _by_stream(records, Modality.TEXT).items():
        assert words
        for w in words:
            seg = source.truth.segment_at(sid, w.t_start_ns)
            assert seg is not None and seg.text_state != "missing"
            assert seg.t_start_ns < w.t_start_ns < w.t_end_ns < seg.t_end_ns
            assert w.t_end_ns - w.t_start_ns > 150_000_000  # a spoken digit, not a blip
        assert [w.seq for w in words] == list(range(len(words)))


# -- ground truth ------------------------------------------------------------------------------


def test_window_labels() -> None:
    segments = [Segment(10 * NS, 12 * NS, 3), Segment(12 * NS, 14 * NS, 5)]
    truth = GroundTruth({"s": segments})
    inside = truth.label("s", 10 * NS + NS // 4, 11 * NS + NS // 4)
    assert (inside.digit, inside.share, inside.clear) == (3, 1.0, True)
    half = truth.label("s", 11 * NS + NS // 2, 12 * NS + NS // 2)
    assert half.share == 0.5 and not half.clear and half.digit in (3, 5)
    mostly = truth.label("s", 11 * NS + NS // 5, 12 * NS + NS // 5)  # 80 % digit 3
    assert (mostly.digit, mostly.clear) == (3, True) and mostly.share == pytest.approx(0.8)
    barely = truth.label("s", 11 * NS + 3 * NS // 10, 12 * NS + 3 * NS // 10)  # 70 %
    assert (barely.digit, barely.clear) == (3, False)
    before = truth.label("s", 9 * NS, 10 * NS)
    assert (before.digit, before.share, before.clear) == (None, 0.0, False)
    edge = truth.label("s", 13 * NS + NS // 2, 14 * NS + NS // 2)  # half of it after the stream
    assert (edge.digit, edge.share, edge.clear) == (5, 0.5, False)
    assert GroundTruth.from_dict(truth.to_dict()).segments("s") == segments
    with pytest.raises(ValueError):
        truth.label("s", 5, 5)


def test_truth_labels_real_segments(short_source: tuple[SyntheticAV, list[Record]]) -> None:
    source, _ = short_source
    a, b = source.truth.segments("cam-00")[1:3]
    inside = source.truth.label("cam-00", a.t_start_ns + 100_000_000, a.t_start_ns + 1_100_000_000)
    assert inside.digit == a.digit and inside.clear
    straddle = source.truth.label("cam-00", b.t_start_ns - NS // 2, b.t_start_ns + NS // 2)
    assert not straddle.clear and straddle.share == pytest.approx(0.5)


# -- corruption --------------------------------------------------------------------------------


def test_corruption_rates_over_many_segments() -> None:
    corruption = Corruption()
    source = SyntheticAV(SyntheticConfig(streams=4, seconds=1200.0, seed=1, corruption=corruption))
    segments = [s for sid in source.stream_ids for s in source.truth.segments(sid)]
    assert len(segments) > 2000
    n = len(segments)
    for attr, state, rate in [
        ("video_state", "blank", corruption.video_blank),
        ("video_state", "occlude", corruption.video_occlude),
        ("video_state", "drop", corruption.video_drop),
        ("audio_state", "silence", corruption.audio_silence),
        ("audio_state", "noise", corruption.audio_noise),
        ("audio_state", "drop", corruption.audio_drop),
        ("text_state", "missing", corruption.text_missing),
        ("text_state", "wrong", corruption.text_wrong),
    ]:
        observed = sum(getattr(s, attr) == state for s in segments) / n
        assert observed == pytest.approx(rate, abs=4 * np.sqrt(rate * (1 - rate) / n) + 1e-3), (attr, state)
    # Independent per modality: all three corrupted at once about as often as the product says.
    all_bad = sum(s.video_state != "clean" and s.audio_state != "clean" and s.text_state != "clean" for s in segments)
    assert all_bad / n < 0.05


def test_transcript_errors() -> None:
    corruption = Corruption(text_missing=0.2, text_wrong=0.2, asr_error=0.3)
    # Tiny video so that the test pays for words, not pixels.
    source = SyntheticAV(SyntheticConfig(streams=1, seconds=400.0, fps=0.5, frame_size=(16, 16), corruption=corruption))
    words = [r for r in source.records() if r.modality is Modality.TEXT]
    per_segment: dict[Segment, list[str]] = collections.defaultdict(list)
    for w in words:
        segment = source.truth.segment_at("cam-00", w.t_start_ns)
        assert segment is not None
        per_segment[segment].append(w.payload.decode())

    def digit_of(word: str) -> int:
        return next(d for d in range(10) if word == DIGIT_WORDS[d] or word in ASR_CONFUSIONS[d])

    confused = total = 0
    for segment in source.truth.segments("cam-00"):
        said = per_segment.get(segment, [])
        if segment.text_state == "missing":
            assert not said
        elif segment.text_state == "wrong" and said:
            digits = {digit_of(w) for w in said}
            assert len(digits) == 1 and segment.digit not in digits
        elif segment.text_state == "clean":
            assert {digit_of(w) for w in said} <= {segment.digit}
            confused += sum(w != DIGIT_WORDS[segment.digit] for w in said)
            total += len(said)
    # 30 % errors, a quarter of them dropped words: about 24 % of the words heard are confusions.
    assert total > 300
    assert confused / total == pytest.approx(0.3 * 0.75 / (1 - 0.3 * 0.25), abs=0.06)


def test_audio_states_sound_different() -> None:
    source = SyntheticAV(SyntheticConfig(streams=2, seconds=150.0, seed=2, fps=0.5, frame_size=(16, 16)))
    levels: dict[str, list[float]] = collections.defaultdict(list)
    for r in source.records():
        if r.modality is Modality.AUDIO:
            segment = source.truth.segment_at(r.stream_id, r.t_start_ns)
            assert segment is not None and segment.audio_state != "drop"
            samples = decode_media(r).samples  # type: ignore[union-attr]
            levels[segment.audio_state].append(float(np.sqrt(np.mean(samples**2))))
    silence, clean, noise = (np.median(levels[s]) for s in ("silence", "clean", "noise"))
    assert silence < clean < noise
    assert np.percentile(levels["silence"], 99) < 0.02  # faint: no speech in it


def test_clean_frames_show_the_digit() -> None:
    source = SyntheticAV(SyntheticConfig(streams=1, seconds=30.0, seed=4, corruption=Corruption.none()))
    frames: dict[Segment, list[np.ndarray]] = collections.defaultdict(list)
    for r in source.records():
        if r.modality is Modality.VIDEO:
            segment = source.truth.segment_at("cam-00", r.t_start_ns)
            assert segment is not None
            frames[segment].append(decode_media(r).image.astype(np.float32))  # type: ignore[union-attr]
    segments = list(frames)
    assert len({s.digit for s in segments}) > 3
    within = [np.abs(f[0] - f[-1]).mean() for f in frames.values()]
    across = [np.abs(frames[a][0] - frames[b][0]).mean() for a, b in itertools.pairwise(segments)]
    # Frames of one segment differ by jitter and noise only; consecutive segments are different digits.
    assert max(within) < min(across)


def test_corruption_validation() -> None:
    assert all(v == 0.0 for v in vars(Corruption.none()).values())
    with pytest.raises(ValueError):
        Corruption(video_blank=0.6, video_occlude=0.6)
    with pytest.raises(ValueError):
        Corruption(asr_error=1.5)
    with pytest.raises(ValueError):
        SyntheticConfig(streams=0)


# -- speech bank -------------------------------------------------------------------------------


def test_speech_bank_splits() -> None:
    index = read_index()
    train, test, everything = (SpeechBank.load(s) for s in ("train", "test", "all"))
    assert set(train.voices).isdisjoint(test.voices)
    assert set(train.voices) | set(test.voices) == set(everything.voices) == set(index["voices"])  # type: ignore[arg-type]
    assert len(test.voices) >= 5 and len(train.voices) >= 50
    # Held out entirely: no training voice shares a test voice's accent or its variant.
    def parts(voice: str) -> tuple[str, str]:
        accent, _, variant = voice.partition("+")
        return accent, variant
    train_accents = {parts(v)[0] for v in train.voices}
    train_variants = {parts(v)[1] for v in train.voices}
    for voice in test.voices:
        accent, variant = parts(voice)
        assert accent not in train_accents or (variant and variant not in train_variants), voice
        assert not variant or variant not in train_variants, voice
    # A voice spoken at its own speeds (speeds_by_voice) has exactly those clips.
    own = index.get("speeds_by_voice", {})
    assert own, "the bank gives most training voices one speed"
    for voice, speeds in list(own.items())[:5]:  # type: ignore[union-attr]
        alone = SpeechBank.load(f"voice:{voice}")
        assert sorted({c.speed_wpm for c in alone[0]}) == sorted(speeds)
    for bank in (train, test, everything):
        assert bank.sample_rate == 16_000
        for digit in range(10):
            clips = bank[digit]
            assert {c.voice for c in clips} == set(bank.voices)
            for clip in clips:
                assert clip.digit == digit and clip.sample_rate == 16_000
                assert 0.1 < clip.duration_s < 1.5
                assert 0.5 < np.abs(clip.samples).max() <= 1.0  # normalised to -3 dBFS
    with pytest.raises(ValueError):
        SpeechBank.load("dev")  # type: ignore[arg-type]


def test_test_voices_feed_the_source() -> None:
    records = list(SyntheticAV(SyntheticConfig(streams=1, seconds=5.0, voices="test")).records())
    assert any(r.modality is Modality.AUDIO for r in records)
