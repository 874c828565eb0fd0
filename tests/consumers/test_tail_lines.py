"""`fusionstream tail`'s line says which prediction of its window each is: provisional, final, amended."""

from __future__ import annotations

import dataclasses
import json
import time

from test_subscribe import make_prediction

from fusionstream.consumers.subscribers.api import parse_prediction
from fusionstream.consumers.subscribers.tail import format_line


def test_provisional_final_and_amended_lines_differ() -> None:
    base = make_prediction("cam", 0, time.time_ns())
    first = dataclasses.replace(base, closed_by="watermark", revision=0, final=True)
    provisional = dataclasses.replace(base, closed_by="provisional", revision=0, final=False)
    final = dataclasses.replace(base, closed_by="watermark", revision=1, final=True)
    amended_alone = dataclasses.replace(base, closed_by="amended", revision=1, final=True)
    amended_after_both = dataclasses.replace(base, closed_by="amended", revision=2, final=True)

    def line(p: object) -> str:
        return format_line(parse_prediction(json.loads(p.to_json(capture_to_publish_ms=40.0)))).plain  # type: ignore[attr-defined]

    assert not line(first).rstrip().endswith(")") and "provisional" not in line(first)
    assert line(provisional).endswith("provisional")
    assert line(final).endswith("final (revision 1)")
    # An amended final is told apart from the final after a provisional, whatever its revision.
    assert line(amended_alone).endswith("amended (revision 1)")
    assert line(amended_after_both).endswith("amended (revision 2)")


def test_a_window_not_from_today_shows_its_date() -> None:
    # A device on 1970 time, or hours behind, printed a plausible time of day (an outside tester's finding).
    def line(t_ns: int) -> str:
        p = make_prediction("cam", 0, t_ns)
        return format_line(parse_prediction(json.loads(p.to_json(capture_to_publish_ms=40.0)))).plain

    today = line(time.time_ns()).split()[1]
    assert ":" in today and "-" not in today
    assert line(6_392_000_000).split()[1] in ("1970-01-01", "1969-12-31")  # the reader's time zone decides


HOSTILE = "cam\x1b[2J\x1b]0;pwned\x07\n09:99:99.000  late  other-cam \u202eevil"


def test_escape_sequences_in_a_producers_text_never_reach_the_terminal() -> None:
    """A stream id with ESC, BEL, a newline and a bidi override cleared an operator's screen, retitled the window
    and forged a `tail` line blaming another stream (an outside tester's finding). Each is shown escaped."""
    from fusionstream.consumers.subscribers.deadletters import DeadLetterRecord, format_dead_letter
    from fusionstream.stream.printable import printable

    p = make_prediction(HOSTILE, 0, time.time_ns())
    line = format_line(parse_prediction(json.loads(p.to_json(capture_to_publish_ms=40.0)))).plain
    letter = DeadLetterRecord(reason="bad-utf8", detail=f"text of {HOSTILE}", topic="fs.text", partition=2,
                              offset=7, timestamp_ms=0, stream_id=HOSTILE, value_bytes=3, dead_lettered_ms=0,
                              headers={})
    for shown in (line, format_dead_letter(letter).plain):
        assert not any(ch in shown for ch in "\x1b\x07\n\u202e"), repr(shown)
        assert "cam\\x1b[2J\\x1b]0;pwned\\x07\\n09:99:99.000" in shown and "\\u202eevil" in shown
    # Every script and emoji is text, not a control: left as it is (and the same object when nothing is escaped).
    plain = "kamera-東京-😀-ñ"
    assert printable(plain) is plain


def test_columns_stay_in_line_with_wide_stream_ids() -> None:
    """A CJK character or an emoji takes two terminal cells: padded by characters, a `tail` column after such an
    id moved right of the others' (an outside tester's finding). Padded by cells, the time starts in one column."""
    from rich.cells import cell_len

    from fusionstream.consumers.subscribers.deadletters import DeadLetterRecord, format_dead_letter

    ids = ("cam-1", "東京カメラ", "😀😀-cam", "é-cafe\u0301")
    now = time.time_ns()
    lines = [format_line(parse_prediction(json.loads(make_prediction(i, 0, now).to_json(capture_to_publish_ms=4.0))))
             .plain for i in ids]
    letters = [format_dead_letter(DeadLetterRecord(
        reason="late", detail="d", topic="fs.text", partition=0, offset=1, timestamp_ms=0, stream_id=i,
        value_bytes=3, dead_lettered_ms=0, headers={})).plain for i in ids]
    for shown, after in ((lines, ":"), (letters, " d")):
        columns = {cell_len(line[: line.index(i) + len(i)]) + cell_len(line[line.index(i) + len(i):].split(after)[0])
                   for line, i in zip(shown, ids, strict=True)}
        assert len(columns) == 1, shown
