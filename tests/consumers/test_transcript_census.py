"""What the demo's summary says the transcript carried (``consumers/report.TranscriptCensus``)."""

from __future__ import annotations

from fusionstream.consumers.report import TranscriptCensus
from fusionstream.stream.media import text_record
from fusionstream.units import NS


def test_heard_keeps_the_words_of_a_cue_in_their_order() -> None:
    # An outside user's captions "zero one / two three / four five six" were summarised as
    # "one zero three two five four six": the words of one cue share a time, and were sorted by spelling.
    cues = [(0, 2, "zero one"), (2, 4, "two three"), (4, 6, "four five six")]
    records = [text_record("cam", seq, start * NS, end * NS, text) for seq, (start, end, text) in enumerate(cues)]
    census = TranscriptCensus()
    assert list(census.watch(reversed(records))) == records[::-1]  # passed through; arrival order differs
    summary = census.summary()
    assert summary["heard"] == "zero one two three four five six"
    assert summary["words"] == 7 and summary["digit_words"] == 7
