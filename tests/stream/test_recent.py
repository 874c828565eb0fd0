"""Polling only the streams a fetch moved: the others' windows wait for the next full poll, none is lost."""

from __future__ import annotations

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import Modality, Progress
from tests.stream.test_aligner import T0, av, feed


def test_take_recent_names_the_streams_that_took_items_or_progress_since_it_last_asked() -> None:
    aligner = Aligner()
    feed(aligner, sorted(av("a", 0, 1000) + av("b", 0, 1000), key=lambda item: item.t_start_ns))
    assert aligner.take_recent() == {"a", "b"}
    assert aligner.take_recent() == set()
    aligner.progress(Progress("b", Modality.TEXT, T0 + 900 * 10**6), 0)
    aligner.progress(Progress("unknown", Modality.TEXT, T0), 0)  # not open here: dropped, not recent
    assert aligner.take_recent() == {"b"}


def test_a_poll_of_some_streams_leaves_the_others_for_a_full_poll() -> None:
    aligner = Aligner()
    for item in sorted(av("a", 0, 3000) + av("b", 0, 3000), key=lambda item: item.t_start_ns):
        assert not aligner.add(item, 0).late
    only_a = aligner.poll(0, {"a", "gone"})
    assert only_a and {w.stream_id for w in only_a} == {"a"}
    rest = aligner.poll(0)
    assert rest and {w.stream_id for w in rest} == {"b"}
    # Each stream closed the same windows, whichever poll closed them.
    assert sorted(w.t_start_ns for w in only_a) == sorted(w.t_start_ns for w in rest)
