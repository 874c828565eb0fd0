"""Caption sources: SRT and WebVTT parsing, caption records, and live lines stamped at arrival."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fusionstream.stream import wire
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Encoding, Modality, Record, TextSegment
from fusionstream.stream.sources.captions import (
    Cue,
    caption_records,
    clean_text,
    load_cues,
    parse_captions,
    read_captions,
    stdin_caption_records,
)
from fusionstream.units import MS, NS

START = 1_767_225_600_000_000_000

SRT = """\ufeff1
00:00:01,000 --> 00:00:02,500
Hello there,
<i>General</i> Kenobi!

2
00:00:03,250 --> 00:00:04,000 X1:10 X2:100 Y1:10 Y2:50
{\\an8}<font color="#ffff00">Top</font> line &amp; more

3
01:02:03,004 --> 01:02:04,5
late
"""

VTT = """WEBVTT - a test file
Kind: captions
Language: en

STYLE
::cue { color: yellow }

NOTE this is a comment
that spans lines

intro
00:01.000 --> 00:02.000 align:start position:10%
<v Roger Bingham>We are in New York City</v>

00:00:02.500 --> 00:00:03.000 line:0
<c.yellow>one</c> <00:00:02.750><c>two</c> &lt;three&gt;

NOTE trailing note

3
00:00:03.000 --> 00:00:05.000
<b>bold</b> <u>under</u> <ruby>漢<rt>kan</rt></ruby>
"""


def text_of(record: Record) -> str:
    segment = decode_media(record)
    assert isinstance(segment, TextSegment)
    return segment.text


def roundtrip(records: list[Record]) -> list[Record]:
    for record in records:
        assert wire.decode(wire.encode(record)) == record
    return records


def test_srt_cues_text_and_times() -> None:
    cues = parse_captions(SRT.replace("\n", "\r\n"))
    assert cues == [
        Cue(1.0, 2.5, "Hello there, General Kenobi!"),
        Cue(3.25, 4.0, "Top line & more"),
        Cue(3723.004, 3724.5, "late"),
    ]
    assert cues[0].duration_s == 1.5
    assert parse_captions(SRT.replace("\n", "\r")) == cues  # old Mac line ends


def test_webvtt_skips_header_note_style_and_strips_markup() -> None:
    cues = parse_captions(VTT)
    assert cues == [
        Cue(1.0, 2.0, "We are in New York City"),
        Cue(2.5, 3.0, "one two <three>"),
        Cue(3.0, 5.0, "bold under 漢kan"),
    ]


def test_cues_come_out_sorted_and_empty_ones_are_dropped() -> None:
    text = "2\n00:00:05,000 --> 00:00:06,000\nsecond\n\n1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n"
    text += "3\n00:00:07,000 --> 00:00:08,000\n<i></i>\n"
    assert [c.text for c in parse_captions(text)] == ["first", "second"]
    assert parse_captions("") == []
    assert parse_captions("WEBVTT\n") == []


def test_clean_text() -> None:
    assert clean_text("  <i>a</i>\n  b  ") == "a b"
    assert clean_text("&lt;b&gt; stays &amp; &quot;quoted&quot;") == '<b> stays & "quoted"'
    assert clean_text("{\\i1}x{\\i0}") == "x"


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("1\n00:00:01,000 -> 00:00:02,000\nhi\n", 1, "expected a cue timing line"),
        ("1\n00:00:01,000 --> 00:00:0x,000\nhi\n", 2, "malformed cue timing"),
        ("1\n00:00:03,000 --> 00:00:02,000\nhi\n", 2, "ends .* before it starts"),
        ("1\n00:00:01,000 --> 00:00:02,000\nhi\n\njust text\n", 5, "expected a cue timing line"),
        ("one\n00:00:01,000 --> 00:00:02,000\nhi\n", 1, "cue number must be an integer"),
        ("1\n00:00:01,000 --> 00:00:02,000\nhi\n2\n00:00:03,000 --> 00:00:04,000\nyo\n", 5, "missing blank line"),
        ("1\n00:61:01,000 --> 00:62:02,000\nhi\n", 2, "below 60"),
        ("WEBVTT\n00:01.000 --> 00:02.000\nhi\n", 2, "inside the WebVTT header"),
        ("WEBVTTX\n\n00:01.000 --> 00:02.000\nhi\n", 1, "signature"),
        ("\ufeffWEBVTT\n\nNOTE ok\n\n00:01.000 --> 00:02.000\nhi\n\nstray block\n", 8, "timing line"),
    ],
)
def test_errors_name_the_source_and_line(text: str, line: int, match: str) -> None:
    with pytest.raises(ValueError, match=rf"^subs\.srt:{line}: .*{match}"):
        parse_captions(text, "subs.srt")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.srt"
    bad.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 --> 00:00:04,000\n" + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad\.srt:7: not valid utf-8-sig"):
        read_captions(bad)
    assert read_captions(bad, encoding="cp1252")[1].text == "café"
    broken = tmp_path / "broken.vtt"
    broken.write_text("WEBVTT\n\n00:01.000 --> 00:00.500\nhi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.vtt:3: cue ends"):
        caption_records(broken, "cam", START)  # raises at the call, not at the first next()
    with pytest.raises(FileNotFoundError):
        load_cues(tmp_path / "missing.srt")


def test_a_cue_longer_than_a_record_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """A 90 s music cue: parsing alone accepts it, but a text record spans at most 60 s, so the
    records of the file are refused at once naming the cue's line (a live replay used to stop there)."""
    path = tmp_path / "music.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n00:00:03,000 --> 00:01:33,000\n[music]\n")
    assert [c.duration_s for c in read_captions(path)] == [1.0, 90.0]
    with pytest.raises(ValueError, match=r"music\.srt:6: cue lasts 90\.000 s; a text record spans at most 60 s"):
        caption_records(path, "cam", START)
    for start, end in (("00:00:03,000", "00:01:03,000"), ("00:00:04,004", "00:01:04,004")):  # exactly the longest
        path.write_text(f"1\n{start} --> {end}\n[music]\n")  # (64.004 - 4.004 is 60.00000000000001 in floats)
        assert [r.t_end_ns - r.t_start_ns for r in caption_records(path, "cam", START)] == [60 * NS]
    path.write_text("1\n00:00:03,000 --> 00:01:33,000\n[music]\n")  # clips for training never go over the wire
    assert [r.t_end_ns - r.t_start_ns for r in caption_records(path, "cam", START, max_cue_s=None)] == [90 * NS]


def test_caption_records_from_file_and_text(tmp_path: Path) -> None:
    path = tmp_path / "subs.vtt"
    path.write_text(VTT, encoding="utf-8")
    records = roundtrip(list(caption_records(path, "cam-1", START, language="de")))
    assert records == roundtrip(list(caption_records(str(path), "cam-1", START, language="de")))
    assert records == roundtrip(list(caption_records(VTT, "cam-1", START, language="de")))
    assert [r.seq for r in records] == [0, 1, 2]
    assert all(r.modality is Modality.TEXT and r.encoding is Encoding.UTF8 for r in records)
    assert [(r.t_start_ns - START, r.t_end_ns - START) for r in records] == [
        (1000 * MS, 2000 * MS),
        (2500 * MS, 3000 * MS),
        (3000 * MS, 5000 * MS),
    ]
    segment = decode_media(records[0])
    assert isinstance(segment, TextSegment)
    assert (segment.text, segment.language, segment.is_final) == ("We are in New York City", "de", True)


class StepClock:
    """Returns the given instants in turn: when each line 'arrives'."""

    def __init__(self, *instants_s: float) -> None:
        self._instants = iter(instants_s)

    def __call__(self) -> int:
        return START + round(next(self._instants) * NS)


def test_stdin_lines_are_stamped_at_arrival() -> None:
    lines = [
        "hello world\n",
        "   \n",
        "one two three four five six seven eight nine ten eleven twelve thirteen\r\n",
        "ok\n",
    ]
    clock = StepClock(10.0, 20.0, 20.1)
    records = roundtrip(list(stdin_caption_records(lines, "cam", clock)))
    got = [(text_of(r), (r.t_start_ns - START) / NS, (r.t_end_ns - START) / NS) for r in records]
    assert got == [
        ("hello world", pytest.approx(9.2), 10.0),  # 2 words x 0.4 s
        ("one two three four five six seven eight nine ten eleven twelve thirteen", 15.0, 20.0),  # capped at 5 s
        ("ok", 20.0, pytest.approx(20.1)),  # would start at 19.7, inside the previous line: starts at its end
    ]
    assert [r.seq for r in records] == [0, 1, 2]
    assert all(r.meta["is_final"] for r in records)


def test_stdin_times_never_go_back_when_the_clock_does() -> None:
    records = list(stdin_caption_records(["a b", "c", "d"], "cam", StepClock(10.0, 9.0, 12.0)))
    spans = [(r.t_start_ns, r.t_end_ns) for r in records]
    assert all(s <= e for s, e in spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_stdin_is_lazy() -> None:
    endless = (str(i) for i in itertools.count())
    records = stdin_caption_records(endless, "cam", StepClock(*range(100)))
    assert [text_of(next(records)) for _ in range(3)] == ["0", "1", "2"]
