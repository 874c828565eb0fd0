"""`fusionstream demo`: the embedded pipeline end to end, on synthetic streams and on a real media file."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mediafiles import srt_for, write_digit_clip


def fusionstream(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusionstream", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_demo_fast_json_summary(shipped_model: Path) -> None:
    result = fusionstream("demo", "--fast", "--seconds", "20", "--streams", "2", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"windows", "accuracy", "accuracy_all", "latency_ms", "windows_per_s"}
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["missing_windows"] == 0 and summary["duplicate_windows"] == 0
    assert summary["windows"] >= 2 * 20 * 2 - 2
    assert summary["accuracy"] >= 0.9, summary
    assert summary["windows_per_s"] > 0


def test_demo_quiet_prints_the_summary_and_no_line_per_window(shipped_model: Path) -> None:
    result = fusionstream("demo", "--fast", "--seconds", "6", "--streams", "1", "-q")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the console wraps at the terminal's width
    assert " windows in " in text and "over clear windows" in text, result.stdout
    assert "cam-00" not in text and "latency" in text, "the summary, and no line per window"


@pytest.mark.slow
def test_demo_runs_on_a_real_mp4_with_captions(tmp_path: Path, shipped_model: Path) -> None:
    digits = [3, 7, 1]
    clip = tmp_path / "clip.mp4"
    write_digit_clip(clip, digits)
    captions = tmp_path / "clip.srt"
    captions.write_text(srt_for(digits))
    result = fusionstream("demo", "--video", str(clip), "--captions", str(captions), "--fast")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("clip ")]
    assert len(lines) >= 10, result.stdout
    # Windows start every 0.5 s (offset from the clip's start: staggered by default), 1 s long.
    starts = [float(line.split()[1].rstrip("s")) for line in lines]
    assert all(abs(b - a - 0.5) < 0.01 for a, b in itertools.pairwise(starts)), result.stdout
    # Inside the 6 s clip every window has all three modalities (the edges may hold audio padding only).
    inside = [line for line, start in zip(lines, starts, strict=True) if start >= 0.0 and start + 1.0 <= 6.0]
    assert len(inside) >= 9 and all("V A T" in line for line in inside), result.stdout
    # Windows fully inside a digit's 2 s are predicted as that digit (two or three of them per digit).
    for i, digit in enumerate(digits):
        within = [line.split()[2] for line, start in zip(lines, starts, strict=True)
                  if 2.0 * i <= start and start + 1.0 <= 2.0 * i + 2.0]
        assert len(within) >= 2 and set(within) == {str(digit)}, result.stdout
    json_run = fusionstream("demo", "--video", str(clip), "--captions", str(captions), "--fast", "--json")
    summary = json.loads(json_run.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] is None and summary["windows"] == len(lines)


#: The fields of docs/predictions.md's prediction record, and of its latency_ms object.
PREDICTION_FIELDS = {"window_id", "stream_id", "t_start_ns", "t_end_ns", "label", "score", "scores", "modalities",
                     "coverage", "model_version", "closed_by", "latency_ms", "batch_size", "revision", "final"}
LATENCY_FIELDS = {"capture_to_publish", "queue", "inference", "close_to_prediction"}


def read_predictions(path: Path) -> list[dict]:
    """Each line of a --out file, checked against the schema as a subscriber reads it."""
    from fusionstream.consumers.subscribers.api import parse_prediction

    lines = path.read_text().splitlines()
    values = [json.loads(line) for line in lines]
    for value in values:
        assert set(value) == PREDICTION_FIELDS and set(value["latency_ms"]) == LATENCY_FIELDS, value
        parse_prediction(value)  # types, ranges and the window id, as subscribers check them
    assert len({v["window_id"] for v in values}) == len(values)
    return values


@pytest.mark.slow
def test_demo_out_writes_every_prediction_whatever_json_does(tmp_path: Path, shipped_model: Path) -> None:
    out = tmp_path / "predictions.jsonl"
    result = fusionstream("demo", "--fast", "--seconds", "5", "--streams", "2", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    written = read_predictions(out)
    assert len(written) == summary["windows"] >= 2 * 5 * 2 - 2
    assert len({v["stream_id"] for v in written}) == 2
    # The streams start at the summary's start_ns: the first window of each covers it (a window of the grid may
    # begin up to a window's length before).
    start = summary["start_ns"]
    assert start % 1_000_000_000 == 0
    firsts = {}
    for v in written:
        firsts[v["stream_id"]] = min(firsts.get(v["stream_id"], v["t_start_ns"]), v["t_start_ns"])
    assert all(start - 1_000_000_000 < first <= start for first in firsts.values()), (start, firsts)
    # Replayed as fast as possible: event times are not the wall clock, so no capture→publish figure.
    assert all(v["latency_ms"]["capture_to_publish"] is None for v in written)

    plain = fusionstream("demo", "--fast", "--seconds", "5", "--streams", "1", "--out", str(out))  # no --json
    assert plain.returncode == 0, plain.stderr
    lines = [line for line in plain.stdout.splitlines() if line.startswith("cam")]
    assert len(read_predictions(out)) == len(lines) > 0  # overwritten, one line per window shown


@pytest.mark.slow
def test_demo_scores_a_video_against_its_labels(tmp_path: Path, shipped_model: Path) -> None:
    digits, each = [3, 7, 1], 3.0
    # 3 s a digit: most clear windows lie inside one digit, not on the ≥ 75 % edge of a change,
    # where one window may go either way (a score, not a coin, is what this checks).
    clip = tmp_path / "clip.mp4"
    write_digit_clip(clip, digits, seconds_each=each)
    captions = tmp_path / "clip.srt"
    captions.write_text(srt_for(digits, seconds_each=each))
    labels = tmp_path / "labels.csv"
    # The training format (docs/training.md); rows of another file are ignored.
    labels.write_text("file,start_s,end_s,label\nother.mp4,0,2,5\n"
                      + "".join(f"clip.mp4,{each * i},{each * (i + 1)},{d}\n" for i, d in enumerate(digits)))
    out = tmp_path / "clip.jsonl"
    result = fusionstream("demo", "--video", str(clip), "--captions", str(captions), "--labels", str(labels),
                          "--fast", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(summary["accuracy"], float) and summary["accuracy"] >= 0.9, summary
    assert isinstance(summary["accuracy_all"], float) and summary["clear_windows"] >= 12
    assert len(read_predictions(out)) == summary["windows"]

    shown = fusionstream("demo", "--video", str(clip), "--labels", str(labels), "--fast")
    assert shown.returncode == 0, shown.stderr
    assert "accuracy " in shown.stdout and " ✓ " in shown.stdout  # each line shows the true label

    labels.write_text("file,start_s,end_s,label\nother.mp4,0,2,5\n")
    nothing = fusionstream("demo", "--video", str(clip), "--labels", str(labels), "--fast")
    assert nothing.returncode == 1 and nothing.stderr.splitlines() == [
        f"fusionstream: error: {labels} has no rows for clip.mp4 (its file column names other.mp4)"
    ]
