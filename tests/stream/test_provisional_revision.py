"""A final is revision 1 exactly when its window had a provisional prediction (docs/predictions.md#revisions).

Found by an outside subscriber: a late word-at-a-time transcript that starts before its camera and microphone.
The provisionals passed a window while it held nothing yet (its word still to come, late) and moved on; the
word came, the window closed with it, and its final said revision 1, a provisional that was never published."""

from __future__ import annotations

import itertools

from test_aligner import T0, av, segment

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import Window, WindowConfig
from fusionstream.units import MS

CONFIG = WindowConfig(lateness_ns=200 * MS, provisional_without=frozenset({Modality.TEXT}),
                      wait_ns=((Modality.TEXT, 700 * MS),))


def _run(camera_from_ms: int, first_word_at_ms: int) -> list[Window]:
    """A word a second, each delivered 0.3 s after it ends, from ``first_word_at_ms``; camera and microphone
    from ``camera_from_ms``, each record 20 ms after its end; the aligner polled every 50 ms."""
    arrivals = [(at, segment(at - 600, at - 300, "one")) for at in range(first_word_at_ms, 8000, 1000)]
    arrivals += [((item.t_end_ns - T0) // MS + 20, item) for item in av("s", camera_from_ms, camera_from_ms + 4000,
                                                                        text=False)]
    arrivals.sort(key=lambda a: a[0])
    aligner, out, pending = Aligner(CONFIG), [], iter(arrivals)
    upcoming = next(pending, None)
    for now_ms in range(0, camera_from_ms + 4500, 50):
        while upcoming is not None and upcoming[0] <= now_ms:
            aligner.add(upcoming[1], T0 + now_ms * MS)
            upcoming = next(pending, None)
        out += aligner.poll(T0 + now_ms * MS) + aligner.provisional(T0 + now_ms * MS)
    return out


def test_a_final_is_revision_1_exactly_when_a_provisional_came_before_it() -> None:
    finals = misnumbered = 0
    for camera_from_ms, first_word_at_ms in itertools.product(range(1500, 3200, 250), range(0, 1000, 100)):
        out = _run(camera_from_ms, first_word_at_ms)
        provisional = {w.t_start_ns for w in out if not w.final}
        for window in (w for w in out if w.final and w.closed_by != "amended"):
            finals += 1
            misnumbered += (window.revision == 1) != (window.t_start_ns in provisional)
    assert finals > 500 and misnumbered == 0, f"{misnumbered} of {finals} finals misnumbered"


def test_the_case_the_subscriber_saw() -> None:
    out = _run(2000, 300)
    starts = {(w.t_start_ns - T0) // MS: w for w in out if w.final}
    # Window 1000-2000: nothing in it when the provisionals passed (2.25 s), its word (1.7-2.0 s) came at 2.3 s.
    assert not any(not w.final and w.t_start_ns == T0 + 1000 * MS for w in out)
    assert starts[1000].revision == 0 and starts[1000].transcript == "one"
