"""A restart onto another window grid (another hop, staggering switched) resumes every stream alike.

A checkpoint stores a stream's first unpublished window start rounded down to its hop; on the same grid the
aligner rounds it back up to the same start. On another grid a staggered stream's rounded-down time came
out up to a hop early, so some streams (not others) resumed with a window overlapping one they had
published, and the outside day-2 test counted one window fewer on the new grid in 2 of 4 streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover
from fusionstream.stream.windows import WindowConfig, stream_offset_ns

MS = 1_000_000
OLD_HOP, NEW_HOP = 1000 * MS, 500 * MS
STREAMS = [f"cam-{i}" for i in range(40)]
V0 = TopicPartition("fs.video", 0)


@dataclass
class Resumed:
    times: dict[str, int] = field(default_factory=dict)
    provisional: dict[str, int] = field(default_factory=dict)

    def resume(self, stream_id: str, emitted_until_ns: int, provisional_until_ns: int | None = None) -> None:
        self.times[stream_id] = emitted_until_ns
        if provisional_until_ns is not None:
            self.provisional[stream_id] = provisional_until_ns

    def drop(self, stream_ids: list[str]) -> None:
        pass


@dataclass
class Stored:
    offset: int
    metadata: str


def _first_unpublished(hop_ns: int) -> dict[str, int]:
    """Each stream's first unpublished window start on a staggered grid of ``hop_ns``, about 100 s in."""
    return {sid: (100 + i % 7) * hop_ns + stream_offset_ns(sid, hop_ns) for i, sid in enumerate(STREAMS)}


def _resume(metadata: str, hop_ns: int, staggered: bool) -> Resumed:
    aligner = Resumed()
    handover = Handover(hop_ns, staggered=staggered)
    handover.bind(aligner)
    handover.assign({V0: Stored(10, metadata)})
    return aligner


def test_a_new_hop_resumes_each_staggered_stream_at_its_first_window_from_where_it_stopped() -> None:
    until = _first_unpublished(OLD_HOP)
    metadata = Checkpoint(replay_mark=9, streams=until, provisional=until).encode(OLD_HOP, staggered=True)
    resumed = _resume(metadata, NEW_HOP, staggered=True)
    new_grid = WindowConfig(window_ns=1000 * MS, hop_ns=NEW_HOP, stagger=True)
    early = []
    for sid in STREAMS:
        first = new_grid.first_start_from(resumed.times[sid], new_grid.offset_ns(sid))
        # The new grid's first window starting at or after the old grid's first unpublished one: no window
        # of the new grid starts where published ones still cover and none is skipped after it.
        assert until[sid] <= first < until[sid] + NEW_HOP, (sid, until[sid], first)
        early += [sid] if resumed.times[sid] < until[sid] else []
        assert resumed.provisional[sid] == resumed.times[sid]
    assert not early


def test_staggering_switched_off_resumes_after_the_published_windows() -> None:
    until = _first_unpublished(OLD_HOP)
    resumed = _resume(Checkpoint(streams=until).encode(OLD_HOP, staggered=True), OLD_HOP, staggered=False)
    plain = WindowConfig(window_ns=1000 * MS, hop_ns=OLD_HOP, stagger=False)
    for sid in STREAMS:
        first = plain.first_start_from(resumed.times[sid], 0)
        assert until[sid] <= first < until[sid] + OLD_HOP


def test_the_same_grid_resumes_exactly_where_it_stopped() -> None:
    until = _first_unpublished(NEW_HOP)
    for staggered in (True, False):
        times = until if staggered else {sid: t - stream_offset_ns(sid, NEW_HOP) for sid, t in until.items()}
        resumed = _resume(Checkpoint(streams=times).encode(NEW_HOP, staggered=staggered), NEW_HOP, staggered)
        grid = WindowConfig(window_ns=1000 * MS, hop_ns=NEW_HOP, stagger=staggered)
        assert {sid: grid.first_start_from(t, grid.offset_ns(sid)) for sid, t in resumed.times.items()} == times


def test_a_checkpoint_from_before_the_grid_was_recorded_is_taken_as_the_current_staggering() -> None:
    until = _first_unpublished(OLD_HOP)
    legacy = Checkpoint(streams=until).encode(OLD_HOP)  # no "g", as every build before it wrote
    assert '"g"' not in legacy
    resumed = _resume(legacy, NEW_HOP, staggered=True)
    assert resumed.times == until, "taken as staggered like the service reading it"
