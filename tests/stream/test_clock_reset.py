"""A device whose clock goes back (a reboot to 1970 or to its boot time, an NTP step): every record after it is
late. An outside tester's device kept sending, and its last windows from before the reset waited for the idle
timeout as long as it did (74 s live): late records kept the stream alive."""

from __future__ import annotations

from test_aligner import av

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import Window, WindowConfig
from fusionstream.units import MS


def _feed(aligner: Aligner, items: list, now_offset_ns: int) -> list[tuple[int, Window]]:
    """Each item as it ends on the device's clock, arriving ``now_offset_ns`` later on the service's; the
    windows closed, each with the service's time it closed at."""
    closed = []
    for item in sorted(items, key=lambda i: i.t_end_ns):
        now = item.t_end_ns + now_offset_ns
        aligner.add(item, now)
        closed += [(now, window) for window in aligner.poll(now)]
    return closed


def test_late_records_do_not_keep_a_stream_alive() -> None:
    config = WindowConfig()
    aligner = Aligner(config)
    live = av("cam", 0, 10_000)
    _feed(aligner, live, 0)
    last_admitted = max(item.t_end_ns for item in live)  # the service's clock when the last record came
    # The device reboots at once and goes on from an hour back for 30 s: everything it sends is late.
    rebooted = av("cam", -3_600_000, -3_570_000)
    after = _feed(aligner, rebooted, last_admitted - min(item.t_start_ns for item in rebooted))
    assert aligner.stats.late == len(rebooted)
    # Its last windows before the reset closed once nothing had joined a window for the idle timeout, not when
    # the late records stopped (they waited 30 s here).
    assert after and {w.closed_by for _, w in after} == {"timeout"}
    assert max(now for now, _ in after) - last_admitted <= config.idle_timeout_ns + 100 * MS
    assert max(w.t_end_ns for _, w in after) >= last_admitted and aligner.flush() == []


def test_a_late_transcript_still_counts_as_its_source_alive() -> None:
    # What the late record's liveness was for: a transcript behind the video is not "silent" (not waited for).
    aligner = Aligner(WindowConfig())
    _feed(aligner, av("cam", 0, 4_000, text=False), 0)
    state = aligner._streams["cam"]
    word = av("cam", 0, 600, video=False, audio=False)[0]  # a word from 0 s, arriving at 4 s: late
    now = state.last_arrival_ns + 100 * MS
    assert aligner.add(word, now).late
    assert state.buffers[Modality.TEXT].last_arrival_ns == now
    assert state.last_arrival_ns == now - 100 * MS
