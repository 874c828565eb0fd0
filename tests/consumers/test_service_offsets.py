"""The service's bookkeeping without a broker: offset tracking, commit checkpoints, event-time intake."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fusionstream.consumers.service.checkpoint import MAX_CHARS, Checkpoint
from fusionstream.consumers.service.feeder import Feeder
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.intake import IntakeClock, PartitionMerger
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.offsets import OffsetTracker
from fusionstream.consumers.service.options import ServiceOptions
from fusionstream.stream.windows import WindowConfig

V, A, T = ("fs.video", 0), ("fs.audio", 0), ("fs.text", 0)
HOP = 500_000_000


def ref(tp: tuple[str, int], offset: int) -> tuple[str, int, int]:
    return (tp[0], tp[1], offset)


def fetch(tracker: OffsetTracker, tp: tuple[str, int], offsets: range) -> None:
    for offset in offsets:
        assert tracker.fetched(ref(tp, offset))


# -- OffsetTracker ------------------------------------------------------------------------------


def test_commit_position_is_the_lowest_offset_still_held_whatever_order_windows_are_acked_in() -> None:
    tracker = OffsetTracker()
    fetch(tracker, V, range(10, 16))
    assert tracker.position(V) == 10 and tracker.held == 6
    # Records 10..13 join window w1 (and 12, 13 also w2); 14, 15 join w2 only.
    for offset in (10, 11):
        tracker.admitted(ref(V, offset), 1)
    for offset in (12, 13):
        tracker.admitted(ref(V, offset), 2)
    for offset in (14, 15):
        tracker.admitted(ref(V, offset), 1)
    w1 = [ref(V, o) for o in (10, 11, 12, 13)]
    w2 = [ref(V, o) for o in (12, 13, 14, 15)]
    tracker.published(w2)  # acknowledged before w1
    assert tracker.position(V) == 10 and tracker.held == 4
    tracker.published(w1)
    assert tracker.position(V) == 16 and tracker.held == 0
    # A record still waiting for admission holds the partition.
    fetch(tracker, V, range(16, 18))
    tracker.admitted(ref(V, 17), 1)
    tracker.published([ref(V, 17)])
    assert tracker.position(V) == 16


def test_a_dead_letter_holds_its_offset_until_the_dead_letter_topic_acknowledges_it() -> None:
    tracker = OffsetTracker()
    fetch(tracker, A, range(3))
    tracker.dead_lettered(ref(A, 0))
    tracker.admitted(ref(A, 1), 1)
    tracker.admitted(ref(A, 2), 1)
    tracker.published([ref(A, 1), ref(A, 2)])
    assert tracker.position(A) == 0
    assert tracker.replay_mark(A) == 0, "the unacknowledged dead letter must be sent again after a crash"
    tracker.settled(ref(A, 0))
    assert tracker.position(A) == 3 and tracker.replay_mark(A) == 3


def test_the_replay_mark_stays_below_records_not_yet_settled_but_passes_open_windows() -> None:
    tracker = OffsetTracker()
    fetch(tracker, T, range(5))
    tracker.admitted(ref(T, 0), 2)  # in an open window: held, but its handling is settled
    assert tracker.replay_mark(T) == 1  # 1..4 are not decoded yet
    for offset in range(1, 5):
        tracker.admitted(ref(T, offset), 1)
    assert tracker.position(T) == 0 and tracker.replay_mark(T) == 5


def test_commits_only_move_forward_and_refetched_offsets_are_refused() -> None:
    tracker = OffsetTracker()
    tracker.resume(V, committed=100, replay_mark=120)
    assert tracker.position(V) == 100, "nothing fetched yet: the committed offset"
    fetch(tracker, V, range(100, 105))
    assert not tracker.fetched(ref(V, 103)), "an offset fetched twice is processed once"
    tracker.mark_committed(V, 104)
    assert tracker.position(V) == 104, "never below the last commit"
    tracker.mark_committed(V, 90)
    assert tracker.committed(V) == 104
    # Records below the checkpoint's replay mark were handled by the earlier run.
    assert tracker.is_replay(ref(V, 119)) and not tracker.is_replay(ref(V, 120))
    assert tracker.replay_mark(V) == 120, "the earlier run's mark is kept while re-reading below it"


def test_forgetting_revoked_partitions_drops_their_holds_and_ignores_late_acks() -> None:
    tracker = OffsetTracker()
    fetch(tracker, V, range(4))
    fetch(tracker, A, range(4))
    for offset in range(4):
        tracker.admitted(ref(V, offset), 1)
        tracker.admitted(ref(A, offset), 1)
    tracker.forget([V])
    assert tracker.held == 4 and tracker.position(V) is None and tracker.partitions() == [A]
    tracker.published([ref(V, 0), ref(A, 0)])  # a prediction spanning both, acked after the revoke
    assert tracker.held == 3 and tracker.position(A) == 1


def test_a_record_admitted_to_no_window_is_released_at_once() -> None:
    tracker = OffsetTracker()
    fetch(tracker, V, range(2))
    tracker.admitted(ref(V, 0), 0)
    tracker.settled(ref(V, 1))
    assert tracker.held == 0 and tracker.position(V) == 2


# -- Checkpoint ---------------------------------------------------------------------------------


def test_checkpoint_round_trips_times_to_the_window_start_the_aligner_resumes_at() -> None:
    """Times are stored rounded down to the hop; ``Aligner.resume`` rounds them up onto the stream's own grid
    (the shared one, or a staggered stream's), so it resumes at exactly the window it was stored for."""
    t0 = 1_767_225_600_000_000_000
    staggered = WindowConfig(stagger=True)
    offset = staggered.offset_ns("cam-03")
    assert 0 < offset < HOP
    streams = {"cam-01": t0 + 3 * HOP, "cam-02": t0 + HOP + 1, "cam-03": t0 + 5 * HOP + offset}
    text = Checkpoint(replay_mark=42, streams=streams).encode(HOP)
    assert json.loads(text)["v"] == 1 and text.isascii()
    back = Checkpoint.decode(text)
    assert back == Checkpoint(replay_mark=42, streams={"cam-01": t0 + 3 * HOP, "cam-02": t0 + HOP,
                                                       "cam-03": t0 + 5 * HOP}, hop_ns=HOP)
    assert staggered.first_start_from(back.streams["cam-03"], offset) == streams["cam-03"]
    shared = WindowConfig()
    assert shared.first_start_from(back.streams["cam-01"], 0) == streams["cam-01"]


@pytest.mark.parametrize("text", [None, "", "hello", "{}", '{"v":2}', '{"v":1,"h":"x"}', "[1,2]", '{"v":1,"h":0,"b":0,'
                                  '"r":0,"s":{}}'])
def test_foreign_or_damaged_metadata_is_ignored(text: str | None) -> None:
    assert Checkpoint.decode(text) is None


def test_checkpoint_fits_the_broker_limit_by_dropping_the_streams_furthest_behind() -> None:
    t0 = 1_767_225_600_000_000_000
    streams = {f"camera-with-a-long-name-{i:05d}": t0 + i * HOP for i in range(1000)}
    text = Checkpoint(7, streams).encode(HOP)
    assert len(text) <= MAX_CHARS
    kept = Checkpoint.decode(text)
    assert kept is not None and 50 < len(kept.streams) < 1000
    assert min(kept.streams.values()) > t0 + (1000 - len(kept.streams) - 1) * HOP, "the newest streams are kept"
    assert all(streams[sid] == until for sid, until in kept.streams.items())


def test_checkpoints_of_one_partitions_topics_merge_to_the_latest_time() -> None:
    a = Checkpoint(1, {"s": 10 * HOP, "t": 4 * HOP})
    b = Checkpoint(2, {"s": 12 * HOP})
    assert Checkpoint.merge([a, None, b]) == {"s": 12 * HOP, "t": 4 * HOP}


# -- PartitionMerger ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    timestamp: int
    name: str


def lane(prefix: str, times: range) -> list[Rec]:
    return [Rec(t, f"{prefix}{t}") for t in times]


def log_ends(at: float, *tps: tuple[str, int]) -> Callable[[tuple[str, int]], float | None]:
    """These topic-partitions' positions reached the log ends a fetch at ``at`` reported; the others' did not."""
    return lambda tp: at if tp in tps else None


def test_a_partitions_topics_are_released_merged_by_time_up_to_the_slowest_topics_frontier() -> None:
    merger: PartitionMerger[Rec] = PartitionMerger(max_idle_ms=1000)
    owned = [V, A, T]
    merger.add(A, lane("a", range(0, 1000, 20)), now_ms=0, fetched_ms=0)  # 1 s of audio arrived first
    merger.add(V, lane("v", range(0, 300, 66)), now_ms=0, fetched_ms=0)  # video only up to 264 ms so far
    merger.add(T, lane("t", range(0, 1000, 500)), now_ms=0, fetched_ms=0)
    out = merger.release(owned, log_ends(0), now_ms=10)
    times = [r.timestamp for _, r in out]
    assert times == sorted(times) and max(times) <= 264
    assert {r.name for _, r in out} >= {"v264", "a260", "t0"} and merger.buffered(A) > 0
    # The rest of the video arrives and the text topic has nothing more: the frontier moves on.
    merger.add(V, lane("v", range(330, 1000, 66)), now_ms=20, fetched_ms=20)
    out = merger.release(owned, log_ends(20, T), now_ms=20)
    assert [r.timestamp for _, r in out] == sorted(r.timestamp for _, r in out)
    assert merger.buffered(A) == merger.buffered(T) == 0
    assert merger.buffered(V) == 1, "990 ms waits for audio beyond 980 ms"
    assert [r.name for _, r in merger.release(owned, log_ends(30, A, T), now_ms=30)] == ["v990"]


def test_caught_up_or_idle_topics_do_not_hold_a_partition_back_and_partitions_are_independent() -> None:
    merger: PartitionMerger[Rec] = PartitionMerger(max_idle_ms=500)
    v1, a1 = ("fs.video", 1), ("fs.audio", 1)
    merger.add(A, lane("a", range(0, 200, 20)), now_ms=0, fetched_ms=0)
    merger.add(a1, lane("x", range(0, 100, 20)), now_ms=0, fetched_ms=0)
    owned = [V, A, v1, a1]
    # Video of partition 0 has nothing to fetch: audio flows; partition 1's video is behind: it waits.
    out = merger.release(owned, log_ends(0, V), now_ms=0)
    assert {tp for tp, _ in out} == {A} and merger.buffered(a1) == 5
    # After max_idle_ms without anything from partition 1's video, its audio goes on alone.
    assert merger.release(owned, log_ends(0), now_ms=400) == []
    out = merger.release(owned, log_ends(0), now_ms=600)
    assert [r.name for _, r in out] == [f"x{t}" for t in range(0, 100, 20)]
    merger.forget([A])
    assert merger.buffered(A) == 0 and merger.total() == 0


def test_a_log_end_reported_before_a_record_was_fetched_does_not_let_the_record_pass() -> None:
    # Issue #15, as traced in the fuzz test: a fetch at 2.1 s brought audio up to 7.48 s of event time and
    # reported audio's log end; those records waited in the client's buffer (which keeps audio from
    # being fetched again) while video was fetched again at 2.7 s, up to 10.8 s. When the service took
    # the audio, its position was at that log end: "caught up", on a report 0.6 s older than the video.
    # The audio the source had written up to 10.8 s was in the broker already; the video released 3.3 s
    # ahead of it (beyond max_skew) moved the watermark past it, and the aligner dead-lettered it as late.
    merger: PartitionMerger[Rec] = PartitionMerger(max_idle_ms=1000)
    owned = [V, A]
    merger.add(A, lane("a", range(7000, 7500, 40)), now_ms=0, fetched_ms=2_100)
    merger.add(V, lane("v", range(7000, 10_800, 66)), now_ms=0, fetched_ms=2_700)
    out = merger.release(owned, {A: 2_100.0, V: 2_700.0}.get, now_ms=10)
    assert max(r.timestamp for _, r in out) <= 7480, "no video past the audio fetched so far"
    assert merger.buffered(A) == 0 and merger.buffered(V) > 0
    # The next fetch (2.8 s) brings the audio that was in the broker: both go on, merged in event time.
    merger.add(A, lane("a", range(7520, 10_800, 40)), now_ms=20, fetched_ms=2_800)
    out += merger.release(owned, log_ends(2_800, A, V), now_ms=20)
    times = [r.timestamp for _, r in out]
    assert times == sorted(times) and merger.total() == 0
    # A log end reported after the records were fetched, with nothing new: nothing older is coming.
    merger.add(V, lane("v", range(10_800, 11_000, 66)), now_ms=30, fetched_ms=2_900)
    assert merger.release(owned, log_ends(2_800, A, V), now_ms=30) == []
    assert [r.name for _, r in merger.release(owned, log_ends(2_900, A, V), now_ms=30)] == ["v10800", "v10866",
                                                                                          "v10932", "v10998"]
    # A topic whose log end is not reported again holds the others back for max_idle_ms, no longer.
    merger.add(V, lane("v", range(11_064, 11_200, 66)), now_ms=40, fetched_ms=3_000)
    assert merger.release(owned, log_ends(2_900, A, V), now_ms=1_010) == []
    assert len(merger.release(owned, log_ends(2_900, A, V), now_ms=1_020)) == 3
    with pytest.raises(TypeError, match="not a bool"):  # a caught-up flag would say nothing about when
        merger.release(owned, lambda tp: True, now_ms=1_030)


@dataclass
class FetchedConsumer:
    """What the feeder asks of the consumer about fetches: each topic-partition's log end and when it was reported."""

    highwaters: dict[tuple[str, int], int]
    polled_ms: dict[tuple[str, int], int]

    def highwater(self, tp: tuple[str, int]) -> int:
        return self.highwaters[tp]

    def last_poll_timestamp(self, tp: tuple[str, int]) -> int:
        return self.polled_ms[tp]


def test_the_feeder_tells_the_merger_when_each_log_end_was_reported_and_when_records_were_fetched() -> None:
    handover = Handover(HOP)
    handover.assign({V: None, A: None})
    fetch(handover.tracker, A, range(0, 232))
    fetch(handover.tracker, V, range(0, 100))
    feeder = Feeder(handover, ServiceMetrics(), ServiceOptions(), lock=asyncio.Lock(), max_backlog=10)
    consumer = FetchedConsumer({A: 232, V: 214}, {A: 2_100, V: 2_700})
    feeder.attach(consumer, None, None)  # type: ignore[arg-type]  # only the consumer is asked
    assert feeder._log_end(A) == 2_100, "caught up with the log end a fetch at 2.1 s reported"
    assert feeder._log_end(V) is None, "114 records left to fetch"
    assert feeder._fetched_ms(V) == 2_700


@dataclass
class PausingConsumer(FetchedConsumer):
    paused_tps: frozenset[tuple[str, int]] = frozenset()

    def paused(self) -> frozenset[tuple[str, int]]:
        return self.paused_tps


def test_a_partition_paused_for_backpressure_is_unread_not_caught_up() -> None:
    """Paused, a partition is not fetched, so the log end it last reported is as old as the pause while live
    input goes on arriving. Counted as caught up, it let the clock run and the skew rule close its modality's
    windows without those records: an overloaded service dead-lettered 12 % of on-time input as late."""
    from types import SimpleNamespace

    from fusionstream.stream.records import Modality

    handover = Handover(HOP)
    handover.assign({V: None, A: None})
    fetch(handover.tracker, V, range(0, 100))
    fetch(handover.tracker, A, range(0, 250))
    feeder = Feeder(handover, ServiceMetrics(), ServiceOptions(), lock=asyncio.Lock(), max_backlog=10,
                    modalities_of_topic={V[0]: frozenset({Modality.VIDEO}), A[0]: frozenset({Modality.AUDIO})})
    now_ms = int(time.time() * 1000)
    consumer = PausingConsumer({V: 100, A: 250}, {V: now_ms, A: now_ms})  # both at the log end they were told
    pipeline = SimpleNamespace(backlog=lambda: 0, aligner=SimpleNamespace(behind=frozenset()))
    feeder.attach(consumer, pipeline, None)  # type: ignore[arg-type]  # the consumer's fetch state and the backlog
    feeder._observe_input()
    assert pipeline.aligner.behind == frozenset() and not feeder.clock._behind, "caught up: the clock runs"
    consumer.paused_tps = frozenset({A})  # the service stopped fetching audio: what came since is unread
    feeder._observe_input()
    assert pipeline.aligner.behind == frozenset({Modality.AUDIO}), "audio's lag is the service's, not its source's"
    assert feeder.clock._behind, "no window closes by timeout while input waits unread"


def test_a_topic_paused_by_the_service_is_never_idle_and_an_idle_one_counts_as_caught_up() -> None:
    merger: PartitionMerger[Rec] = PartitionMerger(max_idle_ms=500)
    merger.add(V, lane("v", range(0, 100, 20)), now_ms=0, fetched_ms=0)
    merger.release([V], log_ends(0), now_ms=0)
    assert not merger.idle(V, 400) and merger.idle(V, 500)
    merger.touch([V], now_ms=450)  # paused meanwhile: its timer restarts
    assert not merger.idle(V, 900) and merger.idle(V, 950)
    merger.add(V, lane("v", range(100, 120, 20)), now_ms=1000, fetched_ms=1000)
    assert not merger.idle(V, 5000), "records waiting to be released: not idle"


def test_the_intake_clock_stands_still_while_the_service_is_behind() -> None:
    wall = [1_000]
    clock = IntakeClock(lambda: wall[0])
    wall[0] = 1_500
    assert clock() == 1_500, "caught up: wall-clock time"
    clock.observe(False)
    wall[0] = 2_000
    clock.observe(True)  # behind from some time in (1 500, 2 000]: the whole interval is discounted
    wall[0] = 5_000
    assert clock() == 1_500
    clock.observe(True)
    wall[0] = 6_000
    clock.observe(False)  # caught up again: the interval that ended behind is discounted too
    assert clock() == 1_500
    wall[0] = 6_400
    assert clock() == 1_900
    clock.observe(True)
    assert clock() == 1_900, "never backwards, even when an interval turns out to be discounted"


def test_a_stalled_service_does_not_age_its_streams_by_the_whole_stall() -> None:
    # The event loop starved for 3 s between two observations: the records that arrived meanwhile
    # wait unread in the fetch buffers; a 2 s idle timeout must not close their windows.
    wall = [0]
    clock = IntakeClock(lambda: wall[0], max_step_ns=500)
    clock.observe(False)
    wall[0] = 3_000
    assert clock() == 500, "at most one step past the last observation"
    clock.observe(False)
    assert clock() == 500
    wall[0] = 3_200
    clock.observe(False)
    assert clock() == 700, "ordinary gaps between observations count in full"



def test_a_topic_with_records_left_to_fetch_holds_its_partition_back_past_the_idle_bound() -> None:
    """Over a slow link a topic-partition's next fetch takes seconds: idle after 1 s, it let the other topics'
    backlog run ahead, and the aligner dead-lettered its records as late (an outside trial: a 30 kB/s link).
    Known to have records left, it is waited for up to ``backlog_idle_ms``; a topic with none left, or whose
    log end is unknown, still stops holding the others back after ``max_idle_ms``."""
    merger: PartitionMerger[Rec] = PartitionMerger(max_idle_ms=1000, backlog_idle_ms=30_000)
    owned = [A, V]
    merger.add(A, lane("a", range(0, 10_000, 20)), now_ms=0, fetched_ms=0)  # ten seconds of audio
    merger.add(V, lane("v", range(0, 2000, 66)), now_ms=0, fetched_ms=0)  # two of video so far: a slow link
    merger.release(owned, log_ends(0), now_ms=0, left=lambda tp: tp == V)
    assert merger.buffered(V) == 0 and merger.buffered(A) > 0
    assert merger.release(owned, log_ends(0), now_ms=5_000, left=lambda tp: tp == V) == [], "video still to come"
    out = merger.release(owned, log_ends(0), now_ms=31_000, left=lambda tp: tp == V)
    assert out and merger.buffered(A) == 0, "a topic that delivers nothing for backlog_idle_ms is let go"

    merger = PartitionMerger(max_idle_ms=1000, backlog_idle_ms=30_000)
    merger.add(A, lane("a", range(0, 10_000, 20)), now_ms=0, fetched_ms=0)
    merger.add(V, lane("v", range(0, 2000, 66)), now_ms=0, fetched_ms=0)
    merger.release(owned, log_ends(0), now_ms=0, left=lambda tp: False)
    assert merger.release(owned, log_ends(0), now_ms=1_500, left=lambda tp: False), "nothing known left: 1 s"
