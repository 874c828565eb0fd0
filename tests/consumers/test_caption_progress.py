"""What `produce captions FILE` promises about its text: the complete flag only where no later cue starts
inside a cue, and progress records between cues (docs/wire-format.md#progress), checked through a real
aligner in the order the producer sends."""

from __future__ import annotations

from pathlib import Path

from fusionstream.consumers.producers.progress import EVERY_NS, ProgressAnnouncer
from fusionstream.consumers.producers.sources import captions_source
from fusionstream.stream import wire
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.media import decode_wire
from fusionstream.stream.records import FLAG_COMPLETE, Modality, Progress
from fusionstream.stream.sources.captions import caption_records, clip_overlapping, load_cues
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS

T0 = 1_767_225_600_000_000_000
# Two speakers: "six" sits inside "five", as sound-effect lines and cross-talk do; then a 3 s pause.
NESTED = """1
00:00:00,000 --> 00:00:01,000
one

2
00:00:05,000 --> 00:00:08,000
five

3
00:00:06,000 --> 00:00:07,000
six

4
00:00:08,000 --> 00:00:09,000
seven

5
00:00:12,000 --> 00:00:13,000
nine
"""


def _sent(tmp_path: Path) -> list:
    srt = tmp_path / "nested.srt"
    srt.write_text(NESTED)
    return list(ProgressAnnouncer()(captions_source(str(srt), "desk", realtime=False, start_ns=T0)))


def test_a_cue_another_starts_inside_is_not_flagged_complete() -> None:
    """Beside a file's frames (which hold the stream's event time) cues go as they are: the flag only where
    no later cue starts inside."""
    cues = {r.payload.decode(): r for r in caption_records(NESTED, "desk", T0)}
    flagged = {text: bool(r.flags & FLAG_COMPLETE) for text, r in cues.items()}
    assert flagged == {"one": True, "five": False, "six": True, "seven": True, "nine": True}


def test_a_transcript_on_its_own_is_sent_without_overlaps(tmp_path: Path) -> None:
    cues = [r for r in _sent(tmp_path) if not r.is_progress]
    spans = [(r.payload.decode(), (r.t_start_ns - T0) / NS, (r.t_end_ns - T0) / NS) for r in cues]
    assert spans == [("one", 0, 1), ("five", 5, 6), ("six", 6, 7), ("seven", 8, 9), ("nine", 12, 13)]
    assert all(r.flags & FLAG_COMPLETE for r in cues)
    together = "1\n00:00:01,000 --> 00:00:02,000\nleft\n\n2\n00:00:01,000 --> 00:00:03,000\nright\n"
    assert [(c.start_s, c.end_s, c.text) for c in clip_overlapping(load_cues(together))] == [(1, 3, "left right")]


def test_progress_steps_through_each_pause_and_never_past_the_next_cue(tmp_path: Path) -> None:
    sent = _sent(tmp_path)
    starts = [r.t_start_ns for r in sent if not r.is_progress]
    progress = [r for r in sent if r.is_progress and not r.meta.get("ended")]
    assert progress, "no progress between cues"
    for record in progress:
        later = [s for s in starts if s >= record.t_end_ns]
        before = [r for r in sent[: sent.index(record)] if not r.is_progress]
        # Every cue starting before T has been sent: none still to come starts before it.
        assert all(r.t_start_ns < record.t_end_ns for r in before)
        assert later, "no progress past the last cue but its `ended`"
    in_pause = [(r.t_end_ns - T0) / NS for r in progress if 9 * NS < r.t_end_ns - T0 < 12 * NS]
    assert len(in_pause) >= (3 * NS - EVERY_NS) // EVERY_NS, in_pause
    assert [r.seq for r in sent] == list(range(len(sent))), "cues and progress share the text seq"


def test_no_cue_is_late_and_windows_in_a_pause_close_before_the_next_cue(tmp_path: Path) -> None:
    aligner = Aligner(WindowConfig(lateness_ns=200 * MS), [Modality.TEXT])
    closed: list[int] = []
    closed_before_nine = 0
    for record in _sent(tmp_path):
        item = decode_wire(wire.encode(record))
        if isinstance(item, Progress):
            aligner.progress(item, 0)
        else:
            if item.text == "nine":
                closed_before_nine = max(closed)
            admission = aligner.add(item, 0)
            assert not admission.late and not admission.partly_late, (item.text, admission)
        closed += [w.t_end_ns for w in aligner.poll(0)]
    assert aligner.stats.late == 0 and aligner.stats.partly_late == 0
    # "seven" (8-9 s) is complete to 9 s; its last window, [8.5, 9.5), closes only on the progress in the
    # pause, not 3 s later when "nine" comes.
    assert closed_before_nine - T0 == 9.5 * NS, (closed_before_nine - T0) / NS
