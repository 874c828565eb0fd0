"""`fusionstream demo`: the embedded pipeline end to end, on synthetic streams and on a real media file."""

from __future__ import annotations

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
    # Inside the clip every window has all three modalities (the edges may hold audio padding only).
    inside = [line for line in lines if 0.0 <= float(line.split()[1].rstrip("s")) <= 4.5]
    assert len(inside) == 10 and all("V A T" in line for line in inside), result.stdout
    # Windows fully inside a digit's 2 s are predicted as that digit.
    predicted = {round(float(line.split()[1].rstrip("s")), 1): line.split()[2] for line in lines}
    for i, digit in enumerate(digits):
        assert predicted[2.0 * i + 0.5] == str(digit), result.stdout
    json_run = fusionstream("demo", "--video", str(clip), "--captions", str(captions), "--fast", "--json")
    summary = json.loads(json_run.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] is None and summary["windows"] == len(lines)
