"""`view --no-sync` drew every label faded: the newest prediction is always of a window before the newest frame,
and faded meant "not this frame's window". Now, unsynced, a label is faded only once its prediction is further
behind than predictions recently were (the service stopped or fell behind)."""

from __future__ import annotations

from test_viewer import frame, prediction

from fusionstream.consumers.viewer.state import NO_SYNC_SLACK_NS, ViewerState
from fusionstream.units import NS

T0 = 1_800_000_000 * NS
HOP = NS // 2


def _fed(sync: bool, frames_until_s: float) -> dict:
    state = ViewerState(sync=sync)
    # Frames every 100 ms; each window's prediction (W = 1 s) comes 1.5 s after its end, up to t0 + 6 s.
    for i in range(round(frames_until_s * 10) + 1):
        state.on_record(frame("cam", T0 + i * NS // 10), now=0)
        if i % 5 == 0 and 25 <= i <= 60:
            state.on_prediction(prediction("cam", T0 + (i // 5 - 5) * HOP), now=0)
    return (state.snapshot("cam", now=0) or {})["prediction"]


def test_unsynced_labels_are_current_while_predictions_keep_their_usual_lag() -> None:
    live = _fed(sync=False, frames_until_s=6.0)
    assert not live["on_frame"] and live["current"]


def test_unsynced_labels_fade_once_predictions_stop() -> None:
    stopped = _fed(sync=False, frames_until_s=6.0 + (NO_SYNC_SLACK_NS + 2 * HOP) / NS)
    assert not stopped["current"]


def test_synced_labels_are_current_on_their_own_window() -> None:
    synced = _fed(sync=True, frames_until_s=6.0)
    assert synced["on_frame"] and synced["current"]
