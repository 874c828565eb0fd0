"""The aligner, exhaustively: it is pure, so every case is a few lines of records in, windows out."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fusionstream.stream.aligner import Aligner, last_instant
from fusionstream.stream.records import AudioChunk, Frame, TextSegment
from fusionstream.stream.windows import NS, WindowConfig
from fusionstream.units import MS

T0 = 1_767_225_600 * NS  # a hop-aligned epoch instant
RATE = 16_000


def frame(t_ms: float, stream: str = "s", value: int = 0, period_ms: float = 1000 / 15) -> Frame:
    t = T0 + round(t_ms * MS)
    return Frame(stream, t, t + round(period_ms * MS), np.full((4, 4, 3), value, dtype=np.uint8), ref=("v", t_ms))


def chunk(t_ms: float, ms: float = 40, stream: str = "s", value: float | None = None, rate: int = RATE) -> AudioChunk:
    n = round(ms * rate / 1000)
    t = T0 + round(t_ms * MS)
    samples = np.full(n, value, dtype=np.float32) if value is not None else np.arange(n, dtype=np.float32) / n
    return AudioChunk(stream, t, t + round(n * NS / rate), samples, rate, ref=("a", t_ms))


def segment(t0_ms: float, t1_ms: float, text: str, stream: str = "s") -> TextSegment:
    return TextSegment(stream, T0 + round(t0_ms * MS), T0 + round(t1_ms * MS), text, ref=("t", t0_ms))


def av(stream: str, t0_ms: float, t1_ms: float, *, video: bool = True, audio: bool = True, text: bool = True) -> list:
    """A stream's records over [t0, t1): 15 fps frames, 40 ms chunks, a word every 500 ms."""
    items: list = []
    if video:
        items += [frame(t, stream) for t in np.arange(t0_ms, t1_ms, 1000 / 15)]
    if audio:
        items += [chunk(t, stream=stream, value=0.25) for t in np.arange(t0_ms, t1_ms, 40)]
    if text:
        items += [segment(t, t + 300, "seven", stream) for t in np.arange(t0_ms, t1_ms, 500)]
    return items


def feed(aligner: Aligner, items: list, now_ns: int = 0) -> list:
    windows = []
    for item in items:
        assert not aligner.add(item, now_ns).late
        windows += aligner.poll(now_ns)
    return windows


def by_id(windows: list) -> dict:
    return {w.window_id: w for w in windows}


def test_in_order_stream_gives_full_hopping_windows() -> None:
    aligner = Aligner()
    windows = feed(aligner, sorted(av("s", 0, 3000), key=lambda i: i.t_start_ns)) + aligner.flush()
    starts = [(w.t_start_ns - T0) // MS for w in windows]
    assert starts == list(range(-500, 3000, 500))
    full = [w for w in windows if w.t_start_ns - T0 >= 0 and w.t_end_ns - T0 <= 3000 * MS]
    assert len(full) == 5
    for w in full:
        assert w.mask == (True, True, True)
        assert len(w.frames) == 8 and len(w.audio) == RATE
        assert w.coverage[1] == pytest.approx(1.0) and w.coverage[0] == pytest.approx(1.0)
        assert w.audio_gaps == ()
        assert w.closed_by in {"watermark", "flush"}


def test_video_coverage_counts_the_frame_still_showing_when_a_window_starts() -> None:
    """A frame joins a window at its start instant only, but the one before the window's first frame still
    shows until that frame: a continuous camera covers every window whole, whatever its phase or rate
    (it read 0.96-0.98 at 10 fps, and far less at 1-2 fps). A camera that starts late or stalls covers less."""
    for period_ms, phase_ms in ((100, 17), (100, 83), (500, 240), (1000 / 15, 5)):
        times = np.arange(583, 4000, period_ms)  # the camera starts 83 ms into the window at 500 ms
        items = [frame(t, period_ms=period_ms) for t in times + phase_ms - 17]
        windows = by_id([*feed(aligner := Aligner(), items), *aligner.flush()])
        inside = [w for w in windows.values() if w.t_start_ns >= T0 + 1000 * MS and w.t_end_ns <= T0 + 3000 * MS]
        assert inside and all(w.coverage[0] == pytest.approx(1.0) for w in inside), (period_ms, phase_ms)
    first = by_id([*feed(aligner := Aligner(), [frame(t, period_ms=100) for t in range(583, 4000, 100)]),
                   *aligner.flush()])
    assert first[("s", T0 + 500 * MS)].coverage[0] == pytest.approx(0.917)  # nothing before its first frame
    stalled = [frame(t, period_ms=100) for t in range(0, 4000, 100) if not 1200 <= t < 1500]
    windows = by_id([*feed(aligner := Aligner(), stalled), *aligner.flush()])
    assert windows[("s", T0 + 1000 * MS)].coverage[0] == pytest.approx(0.7)  # 300 ms without a frame


def test_watermark_waits_for_the_slowest_modality_then_closes() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    for item in av("s", 0, 2000, text=False):
        aligner.add(item, 0)
    # Video and audio are at 2 s, text has not started: within max_skew, so the window waits.
    aligner.add(segment(0, 300, "one"), 0)
    assert aligner.watermark("s", 0) == T0 + 300 * MS
    assert aligner.poll(0) == []
    aligner.add(segment(1200, 1500, "one"), 0)
    closed = aligner.poll(0)
    assert [(w.t_start_ns - T0) // MS for w in closed] == [-500, 0, 500]
    assert all(w.closed_by == "watermark" for w in closed)


def test_out_of_order_within_lateness_lands_in_the_right_windows() -> None:
    items = av("s", 0, 3000)
    ordered = feed(Aligner(), sorted(items, key=lambda i: i.t_start_ns))
    shuffled_items = items[:]
    # Shuffle only inside 150 ms buckets: disorder smaller than the 200 ms allowed lateness.
    random.Random(7).shuffle(shuffled_items)
    shuffled_items.sort(key=lambda i: (i.t_start_ns - T0) // (150 * MS))
    aligner = Aligner()
    shuffled = feed(aligner, shuffled_items)
    assert aligner.stats.late == 0
    a, b = by_id(ordered), by_id(shuffled)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].audio, b[key].audio)
        assert a[key].frame_times_ns == b[key].frame_times_ns
        assert a[key].transcript == b[key].transcript


def test_record_older_than_every_open_window_is_late() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    feed(aligner, sorted(av("s", 0, 4000), key=lambda i: i.t_start_ns))
    admission = aligner.add(frame(100), 0)
    assert admission.late and aligner.stats.late == 1
    # A chunk straddling the emitted edge still joins the windows that are open.
    edge = aligner._streams["s"].next_start_ns - T0
    partly = aligner.add(chunk(edge / MS - 20), 0)
    assert not partly.late and min(partly.window_starts) == edge + T0


def test_audio_is_stitched_across_chunk_boundaries_to_the_exact_sample_count() -> None:
    cfg = WindowConfig(window_ns=NS, hop_ns=NS)
    aligner = Aligner(cfg)
    # 37 ms chunks (not a divisor of the window), each a distinct ramp, so a misplaced sample shows.
    items = []
    for i, t in enumerate(np.arange(-100, 1200, 37)):
        n = round(37 * RATE / 1000)
        start = T0 + round(t * MS)
        items.append(AudioChunk("s", start, start + n * NS // RATE, np.arange(n, dtype=np.float32) + 1000 * i, RATE))
    window = by_id(feed(aligner, items) + aligner.flush())[("s", T0)]
    assert window.audio.shape == (RATE,) and window.audio.dtype == np.float32
    assert window.coverage[1] == 1.0 and window.audio_gaps == ()
    # Sample j of the window is sample (j - offset) of the chunk covering it.
    expected = np.empty(RATE, dtype=np.float32)
    for i, c in enumerate(items):
        off = round((c.t_start_ns - T0) * RATE / NS)
        lo, hi = max(off, 0), min(off + len(c.samples), RATE)
        if lo < hi:
            expected[lo:hi] = np.arange(lo - off, hi - off) + 1000 * i
    assert np.array_equal(window.audio, expected)


def test_a_gap_is_zero_filled_and_reported() -> None:
    aligner = Aligner(WindowConfig(hop_ns=NS))
    feed(aligner, [chunk(t, value=0.5) for t in range(0, 1000, 40) if not 400 <= t < 600])
    window = by_id(aligner.flush())[("s", T0)]
    assert window.coverage[1] == pytest.approx(0.8)
    assert window.audio_gaps == ((6400, 9600),)
    assert not window.audio[6400:9600].any() and (window.audio[:6400] == 0.5).all()
    assert window.mask == (False, True, False)


def test_a_modality_that_stops_is_masked_after_the_idle_timeout() -> None:
    cfg = WindowConfig(lateness_ns=0, idle_timeout_ns=2 * NS, max_skew_ns=60 * NS)
    aligner = Aligner(cfg)
    clock = 0
    windows = []
    # Audio dies after 1 s; video and text go on to 6 s, fed in real time.
    for item in sorted(av("s", 0, 6000, audio=False) + av("s", 0, 1000, video=False, text=False),
                       key=lambda i: i.t_start_ns):
        clock = item.t_start_ns - T0
        aligner.add(item, clock)
        windows += aligner.poll(clock)
    late_windows = [w for w in windows if w.t_start_ns >= T0 + 2000 * MS]
    assert late_windows, "windows after the audio died must still close"
    assert all(w.mask == (True, False, True) for w in late_windows)
    assert all(w.coverage[1] == 0.0 and not w.audio.any() for w in late_windows)


def test_a_silent_stream_closes_by_timeout_and_its_state_is_evicted() -> None:
    cfg = WindowConfig(idle_timeout_ns=2 * NS, evict_after_ns=10 * NS)
    aligner = Aligner(cfg)
    feed(aligner, av("s", 0, 1000), now_ns=0)
    closed = aligner.poll(2 * NS)
    assert closed and all(w.closed_by == "timeout" for w in closed)
    assert aligner.buffered_items() == 0 and aligner.stream_ids == ["s"]
    aligner.poll(10 * NS)
    assert aligner.stream_ids == [] and aligner.stats.evicted_streams == 1
    # The tombstone still rejects records of windows that were already published.
    assert aligner.add(frame(100), 11 * NS).late


def test_resume_keeps_published_windows_closed_when_their_records_are_replayed() -> None:
    items = sorted(av("s", 0, 3000), key=lambda i: i.t_start_ns)
    reference = Aligner()
    first_run = by_id(feed(reference, items) + reference.flush())
    aligner = Aligner()
    # Windows up to (not including) the one starting at 1.0 s were published; 0.9 s rounds up to 1.0 s.
    aligner.resume("s", T0 + 900 * MS)
    aligner.resume("s", T0 + 100 * MS)  # never backwards
    admissions = [aligner.add(item, 0) for item in items]
    windows = [*aligner.poll(0), *aligner.flush()]
    starts = [(w.t_start_ns - T0) // MS for w in windows]
    assert starts == list(range(1000, 3000, 500))
    # A replayed record that belongs only to published windows is late; one that straddles joins the rest.
    late = [item for item, a in zip(items, admissions, strict=True) if a.late]
    assert late == [item for item in items if last_instant(item) < T0 + 1000 * MS]
    assert all(min(a.window_starts) >= T0 + 1000 * MS for a in admissions if not a.late)
    # One that straddles missed only windows an earlier run published, with it: not partly late (the metric
    # rose by the records of one window on every restart); one that misses a window closed here is.
    assert not any(a.partly_late for a in admissions) and aligner.stats.partly_late == 0
    # The rebuilt windows equal the ones of an uninterrupted run.
    for w in windows:
        assert w.mask == first_run[w.window_id].mask and len(w.refs) == len(first_run[w.window_id].refs)
    # An open stream is moved forward too, and resume does not resurrect dropped state.
    aligner.resume("s", T0 + 10_000 * MS)
    assert aligner.add(frame(2900), 0).late
    aligner.drop(["s"])
    aligner.resume("t", T0)
    assert aligner.stream_ids == [] and not aligner.add(frame(0, "t"), 0).late


def test_after_a_resume_only_windows_closed_here_make_a_record_partly_late() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    aligner.resume("s", T0 + 1000 * MS)  # an earlier run published the windows before 1.0 s
    replayed = aligner.add(chunk(900, 200), 0)  # in windows 0.5 (published) and 1.0 s
    assert replayed.window_starts == (T0 + 1000 * MS,) and not replayed.partly_late
    for item in sorted(av("s", 1100, 3000), key=lambda i: i.t_start_ns):
        aligner.add(item, 0)
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(0)] == [1000, 1500]
    partly = aligner.add(chunk(1900, 200), 0)  # misses 1.0 and 1.5 s, closed here; joins 2.0 s
    assert partly.partly_late and partly.missed == 2 and aligner.stats.partly_late == 1


def test_overlapping_windows_share_records() -> None:
    aligner = Aligner(WindowConfig(window_ns=NS, hop_ns=250 * MS))
    admission = aligner.add(segment(600, 700, "four"), 0)
    assert [(s - T0) // MS for s in admission.window_starts] == [-250, 0, 250, 500]
    aligner.add(frame(620, value=9), 0)
    windows = aligner.flush()
    assert [(w.t_start_ns - T0) // MS for w in windows] == [-250, 0, 250, 500]
    for w in windows:
        assert w.transcript == "four"
        assert len(w.frames) == 8 and all(f[0, 0, 0] == 9 for f in w.frames)
        assert ("t", 600) in w.refs and ("v", 620) in w.refs


def test_frames_are_sampled_evenly_to_k() -> None:
    aligner = Aligner(WindowConfig(hop_ns=NS, frames_per_window=4))
    feed(aligner, [frame(t, value=int(t // 10)) for t in range(0, 1000, 10)])  # 100 fps
    window = by_id(aligner.flush())[("s", T0)]
    assert [(t - T0) // MS for t in window.frame_times_ns] == [120, 370, 620, 870]
    assert [int(f[0, 0, 0]) for f in window.frames] == [12, 37, 62, 87]


def test_many_interleaved_streams_stay_separate() -> None:
    aligner = Aligner()
    streams = [f"cam-{i:03d}" for i in range(50)]
    items = []
    for i, name in enumerate(streams):
        items += [chunk(t, stream=name, value=i / 100) for t in range(0, 2000, 40)]
        items += [segment(250, 750, name, name)]
    items.sort(key=lambda it: (it.t_start_ns, it.stream_id))
    windows = feed(aligner, items) + aligner.flush()
    assert {w.stream_id for w in windows} == set(streams)
    for w in windows:
        i = streams.index(w.stream_id)
        assert np.all(w.audio[w.audio != 0] == np.float32(i / 100))
        assert w.transcript in ("", w.stream_id)
    assert len(windows) == 50 * 5


def test_replay_in_another_order_gives_identical_windows() -> None:
    items = av("a", 0, 2500) + av("b", 300, 2000)
    first = Aligner()
    for item in items:
        first.add(item, 0)
    second = Aligner()
    for item in random.Random(3).sample(items, len(items)):
        second.add(item, 0)
    a, b = by_id(first.flush()), by_id(second.flush())
    assert list(a) == sorted(a, key=lambda k: (k[0] != "a", k[1])) and a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].audio, b[key].audio)
        assert a[key].frame_times_ns == b[key].frame_times_ns and a[key].mask == b[key].mask


def test_memory_stays_bounded_over_a_long_stream() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    peak = 0
    for second in range(60):
        for item in sorted(av("s", second * 1000, second * 1000 + 1000), key=lambda i: i.t_start_ns):
            aligner.add(item, second * NS)
        aligner.poll(second * NS)
        peak = max(peak, aligner.buffered_items())
    # About two windows' worth of records per modality, never the whole minute.
    assert peak < 2 * (15 + 25 + 2) + 20
    assert aligner.stats.windows >= 115


def test_audio_at_another_rate_is_resampled_to_the_model_rate() -> None:
    aligner = Aligner(WindowConfig(hop_ns=NS))
    feed(aligner, [chunk(t, rate=48_000, value=0.3) for t in range(0, 1000, 20)])
    window = by_id(aligner.flush())[("s", T0)]
    assert window.audio.shape == (RATE,) and window.coverage[1] == pytest.approx(1.0)
    assert np.allclose(window.audio[100:-100], 0.3, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"hop_ns": 2 * NS}, {"window_ns": NS + 1}, {"frames_per_window": 0}, {"evict_after_ns": 0}],
)
def test_nonsense_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WindowConfig(**kwargs)


def test_ready_offers_each_open_window_once_as_it_will_close() -> None:
    aligner = Aligner()  # 200 ms lateness: a window with all its media stays open that long
    items = sorted(av("s", 0, 3000), key=lambda i: i.t_start_ns)
    offered, closed = [], []
    for item in items:
        aligner.add(item, 0)
        offered += aligner.ready(0)
        closed += aligner.poll(0)
    closed += aligner.flush()
    assert all(w.closed_by == "ready" for w in offered)
    ids = [w.window_id for w in offered]
    assert len(ids) == len(set(ids)) and len(ids) >= 4  # once each
    done = by_id(closed)
    for window in offered:
        final = done[window.window_id]
        # Offered before it closed (while the lateness still held it open) ...
        assert final.closed_by in {"watermark", "flush"}
        # ... and with the frames and audio it closed with.
        assert window.frame_times_ns == final.frame_times_ns
        assert np.array_equal(window.audio, final.audio) and window.audio_gaps == final.audio_gaps


def test_a_record_arriving_after_the_offer_still_joins_the_window() -> None:
    aligner = Aligner()
    items = sorted(av("s", 0, 1500, text=False), key=lambda i: i.t_start_ns)
    missing = next(i for i in items if isinstance(i, AudioChunk) and i.t_start_ns == T0 + 520 * MS)
    for item in items:
        if item is not missing:
            aligner.add(item, 0)
    early = by_id(aligner.ready(0))
    assert (("s", T0)) in early and early[("s", T0)].audio_gaps  # offered with the hole
    assert not aligner.add(missing, 0).late  # the window is still open: the chunk is not late
    final = by_id(aligner.flush())[("s", T0)]
    assert final.audio_gaps == () and not np.array_equal(final.audio, early[("s", T0)].audio)
    assert aligner.ready(0) == []  # nothing left open to offer


def test_ready_does_not_wait_for_captions_and_skips_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    aligner = Aligner()
    items = [*av("s", 0, 1500, text=False), segment(0, 300, "seven")]
    for item in sorted(items, key=lambda i: i.t_start_ns):
        aligner.add(item, 0)
    # The caption ended at 0.3 s, within max_skew of the media: the watermark waits for the next one.
    assert aligner.poll(0) == []
    assert sorted((w.t_start_ns - T0) // MS for w in aligner.ready(0)) == [-500, 0, 500]
    # A minute of silence, then more media: ready jumps the gap instead of stepping through it.
    for item in sorted(av("s", 60_000, 61_500, text=False), key=lambda i: i.t_start_ns):
        aligner.add(item, 0)
    built: list[int] = []
    build = aligner._build
    monkeypatch.setattr(aligner, "_build", lambda *a, **k: built.append(a[2]) or build(*a, **k))
    starts = sorted((w.t_start_ns - T0) // MS for w in aligner.ready(0))
    assert starts == [1000, 1500, 59_500, 60_000, 60_500]  # 1500: the last chunk reaches 1.52 s
    assert len(built) <= len(starts) + 1  # one empty window looked at, not the 116 of the gap


def test_a_resent_record_is_taken_once() -> None:
    """A producer that restarts and sends its last second again: each copy joins no window a second time
    (a resent word was in the transcript twice), and is not late either."""
    items = sorted(av("s", 0, 3000), key=lambda i: i.t_start_ns)
    aligner = Aligner()
    plain = {w.window_id: w for w in [*feed(aligner, items), *aligner.flush()]}
    aligner = Aligner()
    copies = [i for i in items if 1000 * MS <= i.t_start_ns - T0 < 2000 * MS]
    assert {type(i).__name__ for i in copies} == {"Frame", "AudioChunk", "TextSegment"}
    windows = feed(aligner, [i for i in items if i.t_start_ns - T0 < 2000 * MS])
    for item in copies:  # resent, each a new object with the same span and content
        admission = aligner.add(type(item)(*(getattr(item, f) for f in item.__dataclass_fields__)), 0)
        assert admission.duplicate and not admission.late and admission.window_starts == ()
    windows += feed(aligner, [i for i in items if i.t_start_ns - T0 >= 2000 * MS]) + aligner.flush()
    assert aligner.stats.duplicates == len(copies)
    resent = {w.window_id: w for w in windows}
    assert resent.keys() == plain.keys()
    for key, window in resent.items():
        assert window.transcript == plain[key].transcript and window.frame_times_ns == plain[key].frame_times_ns
        assert window.coverage == plain[key].coverage and np.array_equal(window.audio, plain[key].audio)
    # The same span with other content is no copy: a corrected word joins the window beside the first.
    aligner = Aligner()
    feed(aligner, [segment(100, 300, "seven")])
    assert not aligner.add(segment(100, 300, "eleven"), 0).duplicate
