"""The frames a stream's open windows will sample, known before the windows close.

A window samples the frame nearest to each of its K instants (``assemble.sample_frames``). Once a
frame at or past an instant has arrived, that instant's pick is known (frames of one stream arrive in
order; one that comes out of order only changes the pick, and the window encodes it at close), so
its embedding can be computed while the window still waits for the rest of its media: at close only
the frames near its end and its audio are left. With revisions on, the first prediction is made the
moment a window's video and audio are complete, and encoding every one of its new frames then was
about a quarter of that prediction's engine call (docs/performance.md).
"""

from __future__ import annotations

from fusionstream.stream.assemble import nearest, sample_instant
from fusionstream.stream.buffers import StreamState
from fusionstream.stream.records import Frame, Modality
from fusionstream.stream.windows import WindowConfig


def frames_due(config: WindowConfig, state: StreamState, first_start_ns: int, limit: int) -> list[Frame]:
    """The frames picked for the instants of the windows from ``first_start_ns`` that the video
    has passed and were not given out before (``state.frames_due_until_ns``, ``last_frame_due_ns``), each
    once, at most ``limit``; moves those marks.

    Only instants after the mark are considered, so with a hop that is no multiple of the instants'
    spacing an instant of a later window that falls before an earlier window's last one is skipped:
    that window then encodes it at close, as without this module.
    """
    video = state.buffers.get(Modality.VIDEO)
    if video is None or not video.starts:
        return []
    times = video.starts
    newest = times[-1]
    window = config.window_ns
    mark, last = state.frames_due_until_ns, state.last_frame_due_ns
    due: list[Frame] = []
    start = first_start_ns
    while sample_instant(config, start, 0) <= newest and len(due) < limit:
        for slot in range(config.frames_per_window):
            instant = sample_instant(config, start, slot)
            if instant <= mark:
                continue
            if instant > newest or len(due) >= limit:
                break
            i = nearest(times, instant)  # the pick ``assemble.sample_frames`` makes
            # The window samples among the frames overlapping it; one outside it is never its pick.
            if times[i] < start + window and video.lasts[i] >= start and times[i] != last:
                due.append(video.items[i])  # type: ignore[arg-type]
                last = times[i]
            mark = instant
        start += config.hop_ns
    state.frames_due_until_ns, state.last_frame_due_ns = mark, last
    return due


__all__ = ["frames_due"]
