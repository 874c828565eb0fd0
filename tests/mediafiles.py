"""Real media files for tests: MP4s written with PyAV (H.264 video, AAC audio of real espeak-ng speech)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from fusionstream.stream.sources.speech import DIGIT_WORDS, SpeechBank


def write_digit_clip(path: Path, digits: list[int], seconds_each: float = 2.0) -> None:
    """A real MP4: H.264 frames showing each digit, an AAC track speaking it (espeak-ng clips)."""
    fps, rate = 15, 16_000
    bank = SpeechBank.load("test")
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 128, 128, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        n = round(seconds_each * fps)
        for i, digit in enumerate(digits):
            for k in range(n):
                image = np.full((128, 128, 3), 30, np.uint8)
                cv2.putText(image, str(digit), (34, 100), cv2.FONT_HERSHEY_SIMPLEX, 3.2, (240, 240, 240), 6)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i * n + k
                frame.time_base = Fraction(1, fps)
                container.mux(video.encode(frame))
        track = np.zeros(round(seconds_each * len(digits) * rate), np.float32)
        for i, digit in enumerate(digits):
            clip = bank[digit][0].samples
            for start in np.arange(0.1, seconds_each - 0.8, 0.8):
                at = round((i * seconds_each + start) * rate)
                track[at : at + len(clip)] += clip[: len(track) - at]
        pcm = (np.clip(track, -1, 1) * 32767).astype(np.int16)
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in audio.encode(frame):
                container.mux(packet)
        container.mux(video.encode())
        container.mux(audio.encode())


def srt_for(digits: list[int], seconds_each: float = 2.0) -> str:
    """Captions saying each digit twice inside its span."""
    cues = []
    for i, d in enumerate(digits):
        start, end = i * seconds_each + 0.1, i * seconds_each + seconds_each - 0.2
        cues.append(f"{i + 1}\n{_ts(start)} --> {_ts(end)}\n{DIGIT_WORDS[d]} {DIGIT_WORDS[d]}\n")
    return "\n".join(cues)


def _ts(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
