"""Frames given out to be encoded ahead are the frames the windows then sample, each once."""

from __future__ import annotations

import numpy as np
import pytest
from test_aligner import av, chunk, frame

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.windows import WindowConfig


def _live(config: WindowConfig, items: list, step: int = 10) -> tuple[list, list]:
    """Feed ``items`` in time order a few at a time, asking for due frames after each; return the windows
    closed and the ``(stream, frame time)`` given out, in order."""
    aligner = Aligner(config)
    items = sorted(items, key=lambda item: item.t_start_ns)
    windows, given = [], []
    for i in range(0, len(items), step):
        for item in items[i : i + step]:
            assert not aligner.add(item, 0).late
        recent = aligner.take_recent()
        windows += aligner.poll(0, recent)
        given += [(stream, f.t_start_ns) for stream, f in aligner.frames_due(recent, limit=1000)]
    return windows + aligner.flush(), given


@pytest.mark.parametrize("stagger", [False, True])
def test_every_sampled_frame_is_given_out_once_before_its_window_closes(stagger: bool) -> None:
    config = WindowConfig(frames_per_window=8, stagger=stagger)
    items = av("a", 0, 4000, text=False) + av("b", 0, 4000, text=False)
    windows, given = _live(config, items)
    assert len(given) == len(set(given)), "a frame was given out twice"
    sampled = {(w.stream_id, t) for w in windows for t in w.frame_times_ns}
    assert len(windows) >= 14 and len(sampled) > 50
    # Every frame a window sampled was known ahead (the last window's last instants may need a later frame).
    missing = sampled - set(given)
    assert len(missing) <= 2 * 2, missing
    # And nothing else was given out: a frame no window samples would be encoded for nothing.
    assert set(given) <= sampled


def test_due_frames_wait_for_the_video_to_pass_their_instant_and_respect_the_limit() -> None:
    config = WindowConfig(frames_per_window=4)  # instants at 125, 375, 625, 875 ms of each window
    aligner = Aligner(config)
    # Frames at 0..300 ms. The first window is [-500, 500) ms: its instants -375 and -125 pick the frame at 0
    # (given once), 125 the frame at 100, and 375 is not passed yet.
    for t in range(0, 400, 100):
        aligner.add(frame(t, period_ms=100), 0)
    assert [f.t_start_ns - frame(0).t_start_ns for _, f in aligner.frames_due({"s"}, 10)] == [0, 100_000_000]
    assert aligner.frames_due({"s"}, 10) == []  # given out once
    for t in range(400, 1000, 100):
        aligner.add(frame(t, period_ms=100), 0)
    first = aligner.frames_due({"s"}, 1)
    assert len(first) == 1, "at most the limit"
    rest = aligner.frames_due({"s"}, 10)
    times = [(f.t_start_ns - frame(0).t_start_ns) // 1_000_000 for _, f in first + rest]
    # 375 -> the frame at 400 (nearer than 300), 625 -> 600, 875 -> 900 (the next window's 625 and 875 are given
    # out already, and its 1125 is not passed).
    assert times == [400, 600, 900]
    assert aligner.frames_due({"s", "unknown"}, 10) == []


def test_a_stream_without_video_has_no_frames_due() -> None:
    aligner = Aligner(WindowConfig())
    for t in np.arange(0, 2000, 40):
        aligner.add(chunk(t), 0)
    assert aligner.frames_due({"s"}, 10) == []
