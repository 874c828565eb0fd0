"""A media file cut short (a transfer that stopped) is published as far as it goes, with a WARNING naming how much
of what its header declares it held: an archive job published a third of a file and heard nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from fusionstream.consumers.producers.sources import audio_source
from fusionstream.units import NS

RATE = 16_000
SECONDS = 4


def _mkv(path: Path, keep: float) -> Path:
    """{SECONDS} s of PCM audio in Matroska (its header declares the duration), cut to ``keep`` of its bytes."""
    with av.open(str(path), "w") as out:
        track = out.add_stream("pcm_s16le", rate=RATE)
        track.layout = "mono"
        for i in range(SECONDS * 10):
            tone = (np.sin(np.arange(RATE // 10) * 0.05) * 8000).astype("<i2")[None, :]
            frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, i * RATE // 10
            for packet in track.encode(frame):
                out.mux(packet)
        for packet in track.encode(None):
            out.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: round(len(data) * keep)])
    return path


def _wav(path: Path, keep: float) -> Path:
    """{SECONDS} s of PCM in a WAV (its data chunk's size declares the duration), cut to ``keep`` of its bytes."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.sin(np.arange(SECONDS * RATE) * 0.05) * 8000).astype("<i2").tobytes())
    data = path.read_bytes()
    path.write_bytes(data[: round(len(data) * keep)])
    return path


@pytest.mark.parametrize("make", [_mkv, _wav], ids=["mkv", "wav"])
@pytest.mark.parametrize(("keep", "warned"), [(1 / 3, True), (1.0, False)])
def test_a_file_shorter_than_its_header_says_is_published_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keep: float, warned: bool, make: Callable[[Path, float], Path]
) -> None:
    """A WAV's duration came from FFmpeg, which counts the bytes the file holds: a WAV cut short looked whole."""
    path = make(tmp_path / f"cut.{make.__name__[1:]}", keep)
    with caplog.at_level(logging.WARNING):
        records = list(audio_source(str(path), "cut", realtime=False, start_ns=0))
    held_s = (records[-1].t_end_ns - records[0].t_start_ns) / NS
    assert (held_s < SECONDS / 2) == warned, held_s
    said = [r.getMessage() for r in caplog.records if "may be truncated" in r.getMessage()]
    assert said == ([f"{path} ended at {held_s:.1f} s of the 4.0 s its header declares: the file may be "
                     "truncated"] if warned else []), said


@pytest.mark.parametrize("declared", [0xFFFFFFFF, 0])
def test_a_wav_recorded_to_a_pipe_is_not_taken_for_a_truncated_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, declared: int
) -> None:
    """ffmpeg, sox and arecord writing to a pipe cannot go back to fill in the sizes: they declare 0 or
    0xFFFFFFFF, which reads as hours of audio that the file does not hold."""
    import struct

    pcm = (np.sin(np.arange(SECONDS * RATE) * 0.05) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, RATE, 2 * RATE, 2, 16)
    path = tmp_path / "piped.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", declared)
                     + pcm)
    with caplog.at_level(logging.WARNING):
        records = list(audio_source(str(path), "piped", realtime=False, start_ns=0))
    assert (records[-1].t_end_ns - records[0].t_start_ns) / NS == pytest.approx(SECONDS, abs=0.1)
    assert not [r for r in caplog.records if "may be truncated" in r.getMessage()]
