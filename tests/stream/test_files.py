"""File sources against real media files written here with PyAV: H.264 + AAC in MP4, PCM in Matroska."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fusionstream.stream import wire
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import AudioChunk, Frame, Modality, Record, TextSegment
from fusionstream.stream.sources.files import (
    audio_track_records as audio_records,
)
from fusionstream.stream.sources.files import (
    fit_size,
    has_audio,
    media_file_records,
    paced,
    probe,
    record_order,
    restamp,
    video_frame_records,
)
from fusionstream.stream.sources.speech import SpeechBank
from fusionstream.units import MS, NS

START = 1_767_225_600_000_000_000
FPS = 15
SECONDS = 3.0
WIDTH, HEIGHT = 160, 120
RATE = 16_000
#: Background colour of each second of the test video (RGB), so a frame's content tells its time.
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
#: Where the test audio speaks: (onset seconds, digit).
SPEECH = ((0.5, 1), (1.8, 7))
SRT = """1
00:00:00,400 --> 00:00:01,000
one

2
00:00:01,700 --> 00:00:02,400
<i>seven</i>
"""


def frame_image(index: int) -> np.ndarray:
    """RGB frame ``index``: a per-second colour and a white square moving 2 px per frame."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = COLOURS[int(index / FPS) % len(COLOURS)]
    x = square_x(index)
    image[40:72, x : x + 16] = 255
    return image


def square_x(index: int) -> int:
    return 4 + 2 * index


def speech_track(seconds: float) -> np.ndarray:
    """Float mono PCM at RATE: silence with real espeak-ng digits at the SPEECH onsets."""
    bank = SpeechBank.load("all")
    pcm = np.zeros(round(seconds * RATE), np.float32)
    for onset, digit in SPEECH:
        clip = bank[digit][0].samples
        at = round(onset * RATE)
        pcm[at : at + len(clip)] = clip * 0.9
    return pcm


def speech_spans() -> list[tuple[float, float]]:
    bank = SpeechBank.load("all")
    return [(onset, onset + bank[digit][0].duration_s) for onset, digit in SPEECH]


def write_media(
    path: Path,
    *,
    video: bool = True,
    audio: np.ndarray | None = None,
    video_start_s: float = 0.0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    audio_rate: int = RATE,
    audio_gap: tuple[float, float] | None = None,
    block: int = 1024,
    fps: int = FPS,
) -> Path:
    """Encode the test video and/or ``audio`` (float, ``(channels, n)`` or ``(n,)``) into ``path``."""
    with av.open(str(path), "w") as out:
        if video:
            vstream = out.add_stream(video_codec, rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            vstream.time_base = Fraction(1, fps)
        if audio is not None:
            channels = 1 if audio.ndim == 1 else audio.shape[0]
            astream = out.add_stream(audio_codec, rate=audio_rate)
            astream.layout = "mono" if channels == 1 else "stereo"
        if video:
            first = round(video_start_s * fps)
            for i in range(round(SECONDS * fps)):
                frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
                frame.pts = first + i
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if audio is not None:
            planar = np.atleast_2d(audio).astype(np.float32)
            gap_at, gap_s = audio_gap or (math.inf, 0.0)
            for at in range(0, planar.shape[1], block):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(planar[:, at : at + block]), format="fltp", layout=astream.layout.name
                )
                frame.sample_rate = audio_rate
                # A gap in the pts (a dropped stretch of a recording) after gap_at seconds.
                frame.pts = at + (round(gap_s * audio_rate) if at / audio_rate >= gap_at else 0)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def mp4(media_dir: Path) -> Path:
    """3 s of H.264 video at 15 fps with an AAC track of real speech."""
    return write_media(media_dir / "av.mp4", audio=speech_track(SECONDS))


@pytest.fixture(scope="module")
def silent_mp4(media_dir: Path) -> Path:
    """Video only, MPEG-4 Part 2 (a second codec through the same path)."""
    return write_media(media_dir / "video-only.mp4", video_codec="mpeg4")


def roundtrip(records: Iterator[Record] | list[Record]) -> list[Record]:
    out = list(records)
    for record in out:
        assert wire.decode(wire.encode(record)) == record
    return out


def of(records: list[Record], modality: Modality) -> list[Record]:
    return [r for r in records if r.modality is modality]


# -- video --------------------------------------------------------------------------------------


def test_video_frames_count_times_and_content(mp4: Path) -> None:
    frames = roundtrip(video_frame_records(mp4, "cam", START))
    assert abs(len(frames) - SECONDS * FPS) <= 1
    assert [r.seq for r in frames] == list(range(len(frames)))
    assert frames[0].t_start_ns == START
    starts = [r.t_start_ns for r in frames]
    assert all(b > a for a, b in itertools.pairwise(starts))
    # Frames tile the timeline: each ends where the next starts, the last lasts one frame period.
    assert all(a.t_end_ns == b.t_start_ns for a, b in itertools.pairwise(frames))
    assert frames[-1].t_end_ns - frames[-1].t_start_ns == pytest.approx(NS / FPS, abs=MS)
    for record in frames:
        item = decode_media(record)
        assert isinstance(item, Frame)
        assert item.image.shape == (HEIGHT, WIDTH, 3)
        index = round((record.t_start_ns - START) * FPS / NS)
        assert (record.t_start_ns - START) == pytest.approx(index * NS / FPS, abs=MS)
        # The background shows this second's colour, in RGB order (a BGR mix-up swaps red and blue).
        background = item.image[90:, :].reshape(-1, 3).mean(axis=0)
        assert np.abs(background - COLOURS[index // FPS]).max() < 25, (index, background)
        # The square sits where frame `index` drew it: content and time agree frame by frame.
        bright = np.flatnonzero(item.image[48:64].min(axis=2).mean(axis=0) > 180)
        assert abs(bright.mean() - (square_x(index) + 7.5)) <= 1.5, (index, bright)


def test_video_decimation_and_resize(mp4: Path) -> None:
    frames = roundtrip(video_frame_records(mp4, "cam", START, max_fps=4, size=(80, 80), quality=70))
    assert len(frames) == round(SECONDS * 4)
    gaps = np.diff([r.t_start_ns for r in frames]) / NS
    # 15 fps into 4 fps slots: frames 4 or 3 source frames apart, averaging 1/4 s.
    assert set(np.round(gaps * FPS).astype(int)) <= {3, 4}
    assert all(a.t_end_ns == b.t_start_ns for a, b in itertools.pairwise(frames))
    for record in frames:
        item = decode_media(record)
        assert isinstance(item, Frame)
        assert item.image.shape == (60, 80, 3)  # 160x120 fitted inside 80x80 keeps 4:3
        assert record.meta == {"width": 80, "height": 60}
    assert fit_size(160, 120, 64) == (64, 48)
    assert fit_size(160, 120, (400, 120)) == (160, 120)
    assert fit_size(100, 50, (300, 300)) == (300, 150)


def test_decimation_is_even_with_millisecond_timestamps(media_dir: Path) -> None:
    # Matroska stores ms: 30 fps frames sit at 0, 33, 67, 100, 133 ms, a hair off the 15 fps grid.
    path = write_media(media_dir / "30fps.mkv", video_codec="mpeg4", fps=30)
    frames = list(video_frame_records(path, "cam", START, max_fps=15))
    assert len(frames) == round(SECONDS * 15)
    gaps_ms = np.diff([r.t_start_ns for r in frames]) / MS
    assert np.all(np.abs(gaps_ms - 1000 / 15) <= 1.0), gaps_ms


def test_video_stream_starting_late_keeps_its_offset(media_dir: Path) -> None:
    # OpenCV counts from the video stream's own start; the file's origin (the audio's start) is 0.6 s earlier.
    path = write_media(media_dir / "late-video.mp4", audio=speech_track(SECONDS), video_start_s=0.6)
    assert probe(path).video_offset_s == pytest.approx(0.6, abs=0.002)
    frames = list(video_frame_records(path, "cam", START))
    assert frames[0].t_start_ns - START == pytest.approx(0.6 * NS, abs=2 * MS)
    chunks = list(audio_records(path, "cam", START))
    assert chunks[0].t_start_ns == START


def test_a_still_held_longer_than_a_record_may_last_is_cut_not_fatal(tmp_path: Path) -> None:
    """A variable-rate slideshow: a frame shown 90 s would be a record the wire refuses (60 s at most),
    which used to stop a live `produce` mid-file. It is cut to the longest record instead."""
    path = tmp_path / "slides.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate((0, 90_000, 90_100)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 60 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    frames = [wire.decode(wire.encode(r)) for r in video_frame_records(path, "cam", START)]
    assert [((r.t_start_ns - START) // MS, (r.t_end_ns - START) // MS) for r in frames] == [
        (0, wire.MAX_DURATION_NS // MS), (90_000, 90_100), (90_100, 90_200),
    ]


# -- audio --------------------------------------------------------------------------------------


def _check_tiling(chunks: list[Record]) -> None:
    for a, b in itertools.pairwise(chunks):
        assert abs(b.t_start_ns - a.t_end_ns) <= MS
    assert [r.seq for r in chunks] == list(range(len(chunks)))


def _rms(record: Record) -> float:
    item = decode_media(record)
    assert isinstance(item, AudioChunk)
    return float(np.sqrt(np.mean(np.square(item.samples)))) if item.samples.size else 0.0


def test_audio_chunks_tile_and_carry_the_speech(mp4: Path) -> None:
    assert has_audio(mp4)
    chunks = roundtrip(audio_records(mp4, "mic", START, chunk_ms=40))
    _check_tiling(chunks)
    assert chunks[0].t_start_ns == START
    assert {r.meta["sample_rate"] for r in chunks} == {RATE}
    assert {len(r.payload) for r in chunks[:-1]} == {640 * 2}  # 40 ms of s16 mono
    assert (chunks[-1].t_end_ns - START) / NS == pytest.approx(SECONDS, abs=0.05)
    spans = speech_spans()
    loud = [(r.t_start_ns - START) / NS for r in chunks if _rms(r) > 0.02]
    assert loud, "no speech came through"
    for t in loud:  # loud chunks all overlap a spoken word...
        assert any(s - 0.04 <= t < e + 0.01 for s, e in spans), t
    for s, e in spans:  # ...every word is heard, starting where it was placed
        inside = [r for r in chunks if s <= (r.t_start_ns - START) / NS and (r.t_end_ns - START) / NS <= e]
        assert np.median([_rms(r) for r in inside]) > 0.03
        onset = min(t for t in loud if t >= s - 0.04)
        assert onset == pytest.approx(s, abs=0.045)
    quiet = [r for r in chunks if (r.t_end_ns - START) / NS < SPEECH[0][0] - 0.05]
    assert quiet and max(_rms(r) for r in quiet) < 0.005


def test_audio_resampled_to_mono_at_a_new_rate(media_dir: Path) -> None:
    # A stereo 44.1 kHz 440 Hz tone in Matroska (PCM: exact samples, ms timestamps).
    rate = 44_100
    t = np.arange(round(2.0 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    path = write_media(
        media_dir / "tone.mkv", video=False, audio=np.stack([tone, tone]), audio_codec="pcm_s16le", audio_rate=rate
    )
    info = probe(path)
    assert (info.has_video, info.has_audio) == (False, True)
    chunks = roundtrip(audio_records(path, "mic", START, chunk_ms=20, sample_rate=8000))
    _check_tiling(chunks)
    assert {r.meta["sample_rate"] for r in chunks} == {8000}
    assert {r.meta["channels"] for r in chunks} == {1}
    assert {len(r.payload) // 2 for r in chunks[:-1]} == {160}
    assert (chunks[-1].t_end_ns - START) / NS == pytest.approx(2.0, abs=0.01)
    samples = np.concatenate([decode_media(r).samples for r in chunks])  # type: ignore[union-attr]
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 8000)[spectrum.argmax()] == pytest.approx(440.0, abs=2.0)
    assert float(np.sqrt(np.mean(samples[800:-800] ** 2))) == pytest.approx(0.5 / math.sqrt(2), rel=0.05)
    merged = roundtrip(media_file_records(path, "mic", start_ns=START, sample_rate=8000, chunk_ms=20))
    assert merged == chunks  # an audio-only file: no video source at all


def test_audio_gap_in_the_track_restarts_the_timeline(media_dir: Path) -> None:
    tone = 0.3 * np.sin(2 * np.pi * 300.0 * np.arange(RATE * 2) / RATE)
    # 1 s of audio, then 0.5 s with no samples, then the second second.
    path = write_media(
        media_dir / "gap.mkv", video=False, audio=tone, audio_codec="pcm_s16le", audio_gap=(1.0, 0.5), block=800
    )
    chunks = roundtrip(audio_records(path, "mic", START, chunk_ms=40))
    jumps = [(a, b) for a, b in itertools.pairwise(chunks) if b.t_start_ns - a.t_end_ns > MS]
    assert len(jumps) == 1
    before, after = jumps[0]
    assert (before.t_end_ns - START) / NS == pytest.approx(1.0, abs=0.002)
    assert (after.t_start_ns - START) / NS == pytest.approx(1.5, abs=0.002)
    assert (chunks[-1].t_end_ns - START) / NS == pytest.approx(2.5, abs=0.002)
    assert all(b.t_start_ns >= a.t_end_ns for a, b in itertools.pairwise(chunks))


def test_file_without_audio(silent_mp4: Path) -> None:
    assert not has_audio(silent_mp4)
    assert list(audio_records(silent_mp4, "cam", START)) == []
    records = roundtrip(media_file_records(silent_mp4, "cam", start_ns=START))
    assert {r.modality for r in records} == {Modality.VIDEO}
    assert abs(len(records) - SECONDS * FPS) <= 1


# -- merged --------------------------------------------------------------------------------------


def test_media_file_records_merge_video_audio_and_captions(mp4: Path, media_dir: Path) -> None:
    srt = media_dir / "av.srt"
    srt.write_text(SRT, encoding="utf-8")
    records = roundtrip(media_file_records(mp4, "cam-1", start_ns=START, captions=srt, max_fps=10, size=96))
    assert [record_order(r) for r in records] == sorted(record_order(r) for r in records)
    assert {r.stream_id for r in records} == {"cam-1"}
    video, audio, text = (of(records, m) for m in (Modality.VIDEO, Modality.AUDIO, Modality.TEXT))
    assert len(video) == round(SECONDS * 10)
    assert decode_media(video[0]).image.shape == (72, 96, 3)  # type: ignore[union-attr]
    _check_tiling(audio)
    segments = [decode_media(r) for r in text]
    assert all(isinstance(s, TextSegment) for s in segments)
    assert [(s.text, s.t_start_ns - START, s.t_end_ns - START) for s in segments] == [  # type: ignore[union-attr]
        ("one", 400 * MS, 1000 * MS),
        ("seven", 1700 * MS, 2400 * MS),
    ]
    # Caption text can be given inline, too; the default start is "now".
    inline = list(media_file_records(mp4, "cam-1", captions=SRT))
    assert len(of(inline, Modality.TEXT)) == 2


def test_merge_is_lazy(mp4: Path) -> None:
    records = media_file_records(mp4, "cam", start_ns=START)
    first = [next(records) for _ in range(5)]
    assert [r.t_start_ns for r in first] == sorted(r.t_start_ns for r in first)
    records.close()  # type: ignore[attr-defined]


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        video_frame_records(tmp_path / "missing.mp4", "cam", START)
    with pytest.raises(FileNotFoundError):
        audio_records(tmp_path / "missing.mp4", "cam", START)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match=r"junk\.mp4"):
        media_file_records(junk, "cam")
    with pytest.raises(ValueError, match="max_fps"):
        video_frame_records(junk, "cam", START, max_fps=0)


# -- pacing -------------------------------------------------------------------------------------


class ManualClock:
    """A clock that only moves when the code under test sleeps (no real waiting in tests)."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * NS)


def _texts(*starts_ms: int) -> list[Record]:
    from fusionstream.stream.media import text_record

    return [text_record("s", i, START + t * MS, START + t * MS + MS, f"w{i}") for i, t in enumerate(starts_ms)]


def test_paced_releases_records_at_their_event_time() -> None:
    clock = ManualClock(5 * NS)
    released = []
    for record in paced(_texts(0, 100, 100, 350), clock=clock, sleep=clock.sleep):
        released.append((record.seq, clock.now - 5 * NS))
    assert released == [(0, 0), (1, 100 * MS), (2, 100 * MS), (3, 350 * MS)]
    clock = ManualClock(0)
    fast = [clock.now for _ in paced(_texts(0, 100, 350), speed=2.0, clock=clock, sleep=clock.sleep)]
    assert fast == [0, 50 * MS, 175 * MS]
    clock = ManualClock(0)
    assert len(list(paced(_texts(0, 500), speed=math.inf, clock=clock, sleep=clock.sleep))) == 2
    assert clock.sleeps == []
    with pytest.raises(ValueError):
        paced([], speed=0)


def test_restamp_shifts_everything_by_one_amount() -> None:
    shifted = list(restamp(_texts(0, 100, 350), 42))
    assert [(r.t_start_ns, r.t_end_ns) for r in shifted] == [
        (42, 42 + MS),
        (42 + 100 * MS, 42 + 101 * MS),
        (
            42 + 350 * MS,
            42 + 351 * MS,
        ),
    ]
