"""A record from long before a stream began, arriving before the stream's first window closed (an outside
subscriber's finding: a 60 s old audio chunk, sent while the stream's transcript had not started, made two
windows from a minute before the stream existed, published out of order between its first windows)."""

from __future__ import annotations

from test_aligner import T0, chunk, frame

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS


def _young_stream(aligner: Aligner, until_ms: int) -> None:
    """Video and audio from 0 to ``until_ms``, each record as it ends; no text yet, so (the model uses text)
    the stream's first windows wait for it and none has closed."""
    items = [frame(t) for t in range(0, until_ms, 66)] + [chunk(t) for t in range(0, until_ms, 40)]
    for item in sorted(items, key=lambda i: i.t_end_ns):
        aligner.add(item, item.t_end_ns)
        assert not aligner.poll(item.t_end_ns)


def test_a_record_older_than_every_window_the_watermark_passed_is_late() -> None:
    aligner = Aligner(WindowConfig())
    _young_stream(aligner, 1_500)
    stale = chunk(-60_000)
    admission = aligner.add(stale, T0 + 1_500 * MS)
    assert admission.late and admission.missed == 2
    assert aligner.stats.late == 1
    windows = aligner.flush()
    assert windows and min(w.t_start_ns for w in windows) >= T0 - NS


def test_a_record_just_before_the_stream_began_still_opens_its_windows() -> None:
    # Out of order by less than the allowed lateness at the stream's start: not late, the windows reach back.
    aligner = Aligner(WindowConfig())
    _young_stream(aligner, 1_000)
    admission = aligner.add(chunk(-120), T0 + 1_000 * MS)
    assert not admission.late and admission.window_starts
    assert min(w.t_start_ns for w in aligner.flush()) == T0 - NS
