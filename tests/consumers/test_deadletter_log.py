"""A broken device's dead letters are a line per stream and reason every 10 s, with a count, not a line each
(an outside tester's few broken devices made 6,500 WARNING lines in 25 minutes)."""

from __future__ import annotations

from fusionstream.consumers.pipeline.late import late_detail
from fusionstream.consumers.service.deadletter_log import MAX_PER_S, DeadLetterLog
from fusionstream.units import MS, NS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_stream_and_reason_every_interval_with_the_count() -> None:
    clock = Clock()
    log = DeadLetterLog(every_s=10.0, clock=clock)
    lines = []
    for i in range(300):  # 30 bad records a second for 10 s from one camera, a late word from another
        clock.now = 1000.0 + i / 30
        if log.due("cam", "bad-jpeg"):
            lines.append(("cam", log.since("cam", "bad-jpeg")))
        if i % 100 == 0 and log.due("mic", "late"):
            lines.append(("mic", log.since("mic", "late")))
    clock.now = 1010.5
    assert log.due("cam", "bad-jpeg")
    lines.append(("cam", log.since("cam", "bad-jpeg")))
    assert lines[:2] == [("cam", ""), ("mic", "")]
    assert [line for line in lines if line[0] == "mic"] == [("mic", "")]  # 3 of them, within 10 s: one line
    assert lines[-1] == ("cam", " (and 299 more like it in the last 10 s, not logged one by one)")
    assert len(lines) == 3


def test_many_streams_at_once_are_held_to_a_rate() -> None:
    clock = Clock()
    log = DeadLetterLog(clock=clock)
    logged = sum(log.due(f"cam-{i}", "late") for i in range(500))
    assert logged == MAX_PER_S
    clock.now += 1.0
    assert log.due("cam-499", "late")  # held back a second ago: its first line says so
    assert log.since("cam-499", "late") == " (and 1 more like it before it, not logged one by one)"


def test_a_late_detail_says_how_far_and_names_a_clock_that_went_back() -> None:
    start = 1_800_000_000 * NS
    assert late_detail(start - 460 * MS, start) == (
        "every window this record belongs to is closed: it ends 0.460 s before the stream's first open window")
    reset = late_detail(6 * NS, start)
    assert "57 years before the stream's first open window" in reset and "clock went back" in reset
    assert "clock" not in late_detail(start - 5 * NS, start)
    assert late_detail(start, None) == "every window this record belongs to is closed"


def test_a_burst_that_stopped_is_told_once_its_interval_is_over() -> None:
    """500 bad records in 2 s, then nothing: the log had the first line only, and the count never came
    (it rode on the next dead letter of the kind, which did not come)."""
    clock = Clock()
    log = DeadLetterLog(every_s=10.0, clock=clock)
    for i in range(500):
        clock.now = 1000.0 + i / 250
        log.due("cam", "bad-magic")
    assert log.due("mic", "late")  # one alone: logged at once, nothing pending for it
    clock.now = 1009.0
    assert log.overdue() == []  # not yet: within the interval the first line opened
    clock.now = 1010.0
    assert log.overdue() == [("cam", "bad-magic", 10.0, 499)]
    assert log.overdue() == []  # told once
    clock.now = 1011.0
    assert not log.due("cam", "bad-magic")  # the interval restarted when it was told
    clock.now = 1021.0
    assert log.overdue() == [("cam", "bad-magic", 11.0, 1)]
