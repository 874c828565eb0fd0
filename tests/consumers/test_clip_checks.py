"""What ``train --data`` and the demo say about a labels file that cannot mean what it says (from an outside
user training on their own clips): overlapping spans named by their times and labels (it was an internal
nanosecond time), a span past the clip's end and a clip without sound warned of (they went through silently)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fusionstream.consumers.training.clips import Span, check_one_label_at_a_time, load_clips
from fusionstream.engines.spec import ModelSpec
from tests.mediafiles import write_digit_clip


def test_overlapping_spans_are_named_by_time_and_label() -> None:
    check_one_label_at_a_time("a.mp4", [Span(0, 2, "cat"), Span(2, 4, "dog")])  # touching is fine
    with pytest.raises(ValueError, match=r"labels\.csv: a\.mp4: the spans 1-3 s \(dog\) and 2.5-4 s \(cat\) "
                                         r"overlap: a single-label model learns one label per instant"):
        check_one_label_at_a_time("a.mp4", [Span(2.5, 4, "cat"), Span(1, 3, "dog")])


def test_a_span_past_the_clips_end_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_digit_clip(tmp_path / "a.mp4", [1, 2])  # 4 s
    (tmp_path / "labels.csv").write_text("file,start_s,end_s,label\na.mp4,0,2,one\na.mp4,2,4,two\na.mp4,60,62,two\n")
    spec = ModelSpec(version="t", fusion="concat", classes=["one", "two"])
    with caplog.at_level(logging.WARNING):
        windows = load_clips(tmp_path, spec)
    assert len(windows) > 0
    assert [r.getMessage() for r in caplog.records] == [
        "labels.csv: a.mp4: 1 span(s) end after the clip's 4.0 s (the first 60-62 s, two): what lies past the end "
        "labels nothing"]


def test_a_class_with_almost_no_clear_window_is_warned_of() -> None:
    import numpy as np
    from rich.console import Console

    from fusionstream.consumers.training.dataset import WindowSet
    from fusionstream.consumers.training.train import _warn_of_scarce_classes

    labels = np.array([0] * 20 + [1] * 3 + [2] * 8)
    windows = WindowSet(video=np.zeros((31, 1, 3, 1, 1), np.uint8), audio=np.zeros((31, 1), np.float16),
                        text=np.zeros((31, 1), np.int16), mask=np.ones((31, 3), bool), label=labels,
                        clear=labels != 2)  # the third class's windows are all across a change
    console = Console(record=True, width=300)
    _warn_of_scarce_classes(ModelSpec(version="t", fusion="concat", classes=["a", "b", "c"]), windows, console)
    assert "too few clear training windows for 'b' (3), 'c' (0)" in console.export_text()


def test_labels_for_an_embedding_model_say_it_has_no_classes() -> None:
    from fusionstream.consumers.demo import LabelsError, labels_truth

    with pytest.raises(LabelsError, match="an embedding model has no classes to score --labels against"):
        labels_truth([Span(0, 2, "cat")], "s", [], 0)
