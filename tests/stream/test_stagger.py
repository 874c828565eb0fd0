"""Staggered windows: each stream's grid is offset by a fixed amount from its id, so many streams' windows
close at different instants, and nothing about one stream's windows changes but where they start."""

from __future__ import annotations

import zlib

import numpy as np

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.windows import NS, WindowConfig, stream_offset_ns
from fusionstream.units import MS
from tests.stream.test_aligner import T0, av, feed


def timed(stream: str, t0_ms: float, t1_ms: float) -> list:
    """A stream's records over ``[t0, t1)`` in event-time order, as a live source delivers them."""
    return sorted(av(stream, t0_ms, t1_ms), key=lambda item: item.t_start_ns)

STAGGERED = WindowConfig(stagger=True)
HOP = STAGGERED.hop_ns


def test_offsets_are_whole_milliseconds_in_the_hop_fixed_by_the_id_and_spread() -> None:
    ids = [f"camera-{i}" for i in range(2000)]
    offsets = [STAGGERED.offset_ns(sid) for sid in ids]
    assert all(0 <= o < HOP and o % MS == 0 for o in offsets)
    # Fixed by the id alone (CRC-32 of its UTF-8, not Python's per-process salted hash).
    assert offsets[7] == zlib.crc32(b"camera-7") % 500 * MS == stream_offset_ns("camera-7", HOP)
    # Spread over the hop: every tenth of it gets about a tenth of the streams.
    tenths = np.bincount([o * 10 // HOP for o in offsets], minlength=10)
    assert tenths.min() > 150 and tenths.max() < 250, tenths
    assert WindowConfig().offset_ns("camera-7") == 0  # off: the shared grid


def test_a_staggered_stream_has_the_same_windows_shifted_onto_its_grid() -> None:
    stream = "cam-a"
    offset = STAGGERED.offset_ns(stream)
    assert offset % HOP  # this id's grid is not the shared one, or the test would show nothing
    shared_aligner = Aligner()
    shared = feed(shared_aligner, timed(stream, 0, 4000)) + shared_aligner.flush()
    staggered_aligner = Aligner(STAGGERED)
    staggered = feed(staggered_aligner, timed(stream, 0, 4000)) + staggered_aligner.flush()
    assert {(w.t_start_ns - offset) % HOP for w in staggered} == {0}
    assert all(w.t_end_ns - w.t_start_ns == NS for w in staggered)
    # Hopping windows over the same span, one more where the shifted grid straddles its start.
    assert len(staggered) == len(shared) + 1
    # A full window holds what the shared grid's would, shifted: every frame and sample of its second.
    middle = [w for w in staggered if T0 + NS <= w.t_start_ns <= T0 + 2 * NS]
    assert middle and all(w.mask == (True, True, True) and w.coverage[1] == 1.0 for w in middle)


def test_many_streams_close_their_windows_at_different_instants() -> None:
    """The burst that staggering removes: with one grid, all streams' windows pass the watermark in the
    same poll; staggered, each poll closes only the streams whose offset it has passed."""
    streams = [f"s{i}" for i in range(32)]

    def closes_per_poll(config: WindowConfig) -> list[int]:
        aligner = Aligner(config)
        counts = []
        # Feed every stream 20 ms at a time, in lock step, as live sources deliver.
        for step in range(0, 3000, 20):
            for sid in streams:
                for item in av(sid, step, step + 20, text=False):
                    aligner.add(item, 0)
            counts.append(len(aligner.poll(0)))
        return counts

    shared, staggered = closes_per_poll(WindowConfig()), closes_per_poll(STAGGERED)
    assert max(shared) == len(streams)  # every stream at once, each hop
    assert max(staggered) <= 6, staggered  # a few at a time: 32 streams over 25 polls a hop


def test_a_checkpoint_resumes_a_staggered_stream_at_its_next_window_exactly() -> None:
    """The checkpoint stores times on the shared grid (rounded down); resuming rounds up onto the stream's
    own grid: back to the same window, none skipped and none repeated."""
    stream = "cam-b"
    offset = STAGGERED.offset_ns(stream)
    first_run = Aligner(STAGGERED)
    published = feed(first_run, timed(stream, 0, 3000))
    until = published[-1].t_start_ns + HOP  # the start of the first window not published
    provisional_until = until + HOP
    stored = Checkpoint.decode(Checkpoint(5, {stream: until}, {stream: provisional_until}).encode(HOP))
    assert stored is not None and stored.streams[stream] <= until < stored.streams[stream] + HOP

    restarted = Aligner(STAGGERED)
    restarted.resume(stream, stored.streams[stream], stored.provisional[stream])
    again = []
    for item in timed(stream, 0, 5000):  # re-read from the start: records only in published windows are late
        restarted.add(item, 0)
        again += restarted.poll(0)
    again += restarted.flush()
    starts = [w.t_start_ns for w in again]
    assert starts[0] == until, (starts[0] - T0, until - T0, offset)
    assert starts == list(range(until, until + len(starts) * HOP, HOP))
    # Windows before ``provisional_until`` had their provisional prediction: their finals are revision 1.
    assert [w.revision for w in again] == [int(w.t_start_ns < provisional_until) for w in again]
