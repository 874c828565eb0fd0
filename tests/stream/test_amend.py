"""Partly late records with revisions on (docs/predictions.md#revisions): a record that misses a window
already closed but joins an open one amends the closed window with a new revision, never silently."""

from __future__ import annotations

from test_aligner import T0, av, chunk, frame, segment

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import Modality, Progress
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS

REVISIONS = WindowConfig(lateness_ns=0, provisional_without=frozenset({Modality.TEXT}))


def closed_through(aligner: Aligner, ms: int) -> list:
    """Feed 0..ms of video and audio with the text complete to ``ms``; return what closed."""
    for item in av("s", 0, ms, text=False):
        aligner.add(item, 0)
    aligner.progress(Progress("s", Modality.TEXT, T0 + ms * MS), 0)
    return aligner.poll(0)


def audio_short_of_video(audio_until_ms: int) -> tuple[Aligner, list]:
    """Video to 2 s, audio to ``audio_until_ms``, both complete to 2 s (so windows close): the aligner and
    what closed."""
    aligner = Aligner(REVISIONS)
    for item in av("s", 0, 2000, audio=False, text=False):
        aligner.add(item, 0)
    for item in av("s", 0, audio_until_ms, video=False, text=False):
        aligner.add(item, 0)
    for modality in (Modality.TEXT, Modality.AUDIO):
        aligner.progress(Progress("s", modality, T0 + 2000 * MS), 0)
    return aligner, aligner.poll(0)


def test_a_word_that_misses_closed_windows_amends_them_with_its_own_record_only() -> None:
    aligner = Aligner(REVISIONS)
    closed = closed_through(aligner, 2000)
    assert closed and all(w.mask[2] is False for w in closed), "no text yet"
    first_open = aligner._streams["s"].next_start_ns - T0
    assert first_open == 1500 * MS
    word = segment(1400, 1600, "seven")  # spoken across the edge, delivered after both its windows closed
    admission = aligner.add(word, 0)
    # Windows 1000 and 500 closed without it: both kept, both amended; 1500 (open) takes it as usual.
    assert admission.partly_late and admission.missed == 2
    assert sorted((s - T0) // MS for s in admission.window_starts) == [500, 1000, 1500]
    amended = aligner.poll(0)
    assert [(w.t_start_ns - T0) // MS for w in amended] == [500, 1000]
    for window in amended:
        assert window.final and window.closed_by == "amended" and window.revision == 1
        assert window.transcript == "seven" and window.mask == (True, True, True)
        assert window.refs == (word.ref,), "the others were released with the window's first final"
    assert aligner.stats.amended == 2 and aligner.stats.partly_late == 1
    assert aligner.poll(0) == [], "handed out once"
    # A second word for the same window: the next revision.
    aligner.add(segment(1450, 1550, "eight"), 0)
    again = aligner.poll(0)
    assert [(w.revision, w.transcript) for w in again] == [(2, "seven eight"), (2, "seven eight")]


def test_a_window_that_had_a_provisional_prediction_is_amended_as_revision_2() -> None:
    aligner = Aligner(REVISIONS)
    for item in av("s", 0, 2000, text=False):
        aligner.add(item, 0)
    aligner.add(segment(100, 300, "one"), 0)
    early = aligner.provisional(0)
    assert early, "video and audio are complete: provisional predictions"
    aligner.progress(Progress("s", Modality.TEXT, T0 + 2000 * MS), 0)
    finals = aligner.poll(0)
    assert {w.revision for w in finals} == {1}
    aligner.add(segment(1400, 1600, "two"), 0)
    assert {(w.revision, w.final) for w in aligner.poll(0)} == {(2, True)}


def test_a_late_audio_chunk_across_the_edge_amends_the_window_it_fills() -> None:
    aligner, closed = audio_short_of_video(1400)
    assert [round(w.coverage[1], 2) for w in closed if w.t_start_ns - T0 == 1000 * MS] == [0.4]
    admission = aligner.add(chunk(1480, stream="s", value=0.5), 0)
    assert admission.partly_late
    amended = aligner.poll(0)
    assert [((w.t_start_ns - T0) // MS, round(w.coverage[1], 2)) for w in amended] == [(500, 0.92), (1000, 0.44)]


def test_a_late_frame_is_late_not_an_amendment() -> None:
    """A frame is an instant: it belongs to closed windows only, or to none closed."""
    aligner = Aligner(REVISIONS)
    closed_through(aligner, 2000)
    admission = aligner.add(frame(1450), 0)
    assert admission.late and aligner.poll(0) == [] and aligner.stats.amended == 0


def test_without_revisions_a_partly_late_record_is_counted_and_nothing_is_amended() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    closed_through(aligner, 2000)
    admission = aligner.add(segment(1400, 1600, "seven"), 0)
    assert admission.partly_late and len(admission.window_starts) == 1
    assert aligner.poll(0) == [] and aligner.stats.amended == 0 and aligner.stats.partly_late == 1


def test_only_the_last_window_length_is_kept_for_amendments() -> None:
    aligner = Aligner(REVISIONS)
    closed_through(aligner, 4000)
    state = aligner._streams["s"]
    assert state.retired is not None
    kept = [item for buffer in state.retired.values() for item in buffer.items]
    assert kept and min(i.t_end_ns for i in kept) >= state.next_start_ns - REVISIONS.window_ns
    # A caption from two seconds ago that reaches the open window amends only the windows still kept.
    admission = aligner.add(segment(1000, 3600, "long"), 0)
    assert sorted((s - T0) // MS for s in admission.window_starts) == [2500, 3000, 3500]
    assert admission.missed == 6


def test_late_records_taken_before_a_poll_make_one_revision_of_a_window() -> None:
    """A backlog (after a broker outage) brings many partly late chunks at once: each used to be a final of
    its own (33 revisions of one window in a second). Taken before one poll, they are one amendment that
    holds them all and releases all their records."""
    aligner, closed = audio_short_of_video(1000)
    assert [round(w.coverage[1], 2) for w in closed if w.t_start_ns - T0 == 1000 * MS] == [0.0]
    late = [chunk(t, stream="s", value=0.5) for t in range(1500, 1980, 40)]  # 12 chunks: windows 1000 and 1500
    for item in late:
        assert aligner.add(item, 0).partly_late
    amended = aligner.poll(0)
    assert [((w.t_start_ns - T0) // MS, w.revision) for w in amended] == [(1000, 1)]
    (window,) = amended
    assert round(window.coverage[1], 2) == 0.48 and set(window.refs) == {item.ref for item in late}
    assert aligner.stats.amended == 1
    aligner.add(chunk(1980, stream="s", value=0.5), 0)  # after the poll: the next revision
    assert [w.revision for w in aligner.poll(0)] == [2]
