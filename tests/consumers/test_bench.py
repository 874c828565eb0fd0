"""`fusionstream bench`: every stage runs on the same workload and the report holds what the README
quotes. Speed itself is never asserted here (a benchmark measures it, a test cannot)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusionstream.consumers.bench.realtime import Trial, search_max_streams
from fusionstream.consumers.report import percentiles


def _trial(limit: int):
    def run(streams: int) -> Trial:
        ok = streams <= limit
        latency = {"p50": 10.0, "p95": 20.0, "p99": 50.0 if ok else 500.0}
        return Trial(streams, 100, 100, 0, latency, {"p50": 0.0, "p95": 1.0, "p99": 2.0}, 100.0, 90)

    return run


@pytest.mark.parametrize("limit", [0, 1, 5, 8, 13, 40, 100, 600])
def test_search_finds_the_largest_sustained_count_within_an_eighth(limit: int) -> None:
    seen: list[int] = []
    best, trials = search_max_streams(_trial(limit), start=8, limit=512, progress=lambda t: seen.append(t.streams))
    assert best <= limit and all(t.sustained == (t.streams <= limit) for t in trials)
    assert best >= min(limit, 512) - max(1, min(limit, 512) // 8)
    assert seen == [t.streams for t in trials] and len(trials) <= 12


def test_a_count_that_fails_once_is_tried_again_and_one_that_always_fails_is_not_sustained() -> None:
    stalled: set[int] = set()
    sustainable = _trial(40)

    def once_stalled(streams: int) -> Trial:
        # Every count's first trial meets a stall of the machine; only loads up to 40 pass a second one.
        if streams not in stalled:
            stalled.add(streams)
            return _trial(0)(streams)
        return sustainable(streams)

    best, trials = search_max_streams(once_stalled, start=8, limit=512, progress=lambda t: None, attempts=2)
    assert 35 <= best <= 40
    retried = [t.streams for t in trials]
    assert all(retried.count(n) == 2 for n in set(retried))  # every count was tried twice: each first try failed
    stalled.clear()
    assert search_max_streams(once_stalled, start=8, limit=512, progress=lambda t: None, attempts=1)[0] == 0
    with pytest.raises(ValueError):
        search_max_streams(sustainable, progress=lambda t: None, attempts=0)


def test_a_trial_fails_on_lag_loss_dead_letters_or_nothing_measured_not_only_latency() -> None:
    good = Trial(4, 10, 10, 0, {"p50": 1.0, "p95": 2.0, "p99": 3.0}, {"p50": 1.0, "p95": 2.0, "p99": 3.0}, 100.0, 8)
    assert good.sustained
    lagging = dataclasses.replace(good, intake_lag_ms={"p50": 1.0, "p95": 2.0, "p99": 300.0})
    lost = dataclasses.replace(good, predicted=9)
    dead = dataclasses.replace(good, dead_letters=2)
    # Every window inside the warm-up: the percentiles of nothing are zeros, which prove nothing.
    unmeasured = dataclasses.replace(good, latency_ms=percentiles([]), intake_lag_ms=percentiles([]), measured=0)
    assert not (lagging.sustained or lost.sustained or dead.sustained or unmeasured.sustained)


def test_trials_longer_than_the_workload_are_refused_before_anything_runs() -> None:
    command = [sys.executable, "-m", "fusionstream", "bench", "--streams", "2", "--seconds", "6",
               "--trial-seconds", "10"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--trial-seconds" in done.stderr and "--seconds" in done.stderr


def test_a_camera_resolution_workload_runs_every_in_process_stage() -> None:
    command = [
        sys.executable, "-m", "fusionstream", "bench", "--streams", "2", "--seconds", "6", "--frame-size", "320x240",
        "--no-kafka", "--no-realtime", "--rounds", "1", "--naive-streams", "1", "--batch-sizes", "8", "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    stages = report["stages"]
    assert report["workload"]["frame_size"] == "320x240"
    assert stages["pipeline"]["windows"] == stages["intake"]["windows"] == stages["engine"]["windows"] > 10
    assert stages["pipeline"]["dead_letters"] == stages["intake"]["dead_letters"] == 0


def test_a_camera_resolution_workload_carries_frames_of_that_size_decoded_as_the_pipeline_does() -> None:
    from fusionstream.consumers.bench.workload import Workload
    from fusionstream.stream.media import decode_image
    from fusionstream.stream.windows import WindowConfig

    workload = Workload.synthetic(1, 5.0, frame_size=(320, 240))
    frames = [r for r in workload.records if r.modality.name == "VIDEO"]
    assert frames and {decode_image(r).shape for r in frames[:5]} == {(240, 320, 3)}
    # For a 64x64 input, 1/4 (60 high) would be too small: the engine gets half-size frames.
    windows = workload.windows(WindowConfig(frames_per_window=4), min_side=64)
    assert {f.shape for w in windows for f in w.frames} == {(120, 160, 3)}


@pytest.mark.parametrize("size", ["96", "0x0", "big", "8000x8000"])
def test_a_frame_size_that_is_not_width_x_height_in_range_is_refused(size: str) -> None:
    command = [sys.executable, "-m", "fusionstream", "bench", "--frame-size", size, "--no-kafka", "--no-realtime"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--frame-size" in done.stderr


@pytest.mark.kafka
def test_bench_runs_every_stage_on_the_same_windows(kafka_bootstrap: str, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "fusionstream", "bench", "--streams", "2", "--seconds", "8", "--batch-sizes", "8,16",
        "--naive-streams", "1", "--trial-seconds", "7", "--rounds", "1", "--start-streams", "2", "--max-streams", "4",
        "--bootstrap", kafka_bootstrap, "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=None)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    stages = report["stages"]
    assert set(report["windows_per_s"]) >= {"engine", "engine_no_reuse", "intake", "pipeline", "kafka", "naive",
                                            "engine_int8"}
    assert report["skipped"] == {} and report["model"]["format"] == 1
    # Each graph's share of the engine's time, by modality: every graph the shipped model runs (its video
    # encoder is the per-frame graph), adding up to the whole.
    share = stages["engine"]["graph_share"]
    assert set(share) == {"video", "audio", "text", "fusion", "other"} and abs(sum(share.values()) - 1) < 0.01
    assert share["video"] > share["fusion"] and share["audio"] > share["text"]
    # The intake stage took in the same windows, on one thread: its CPU time is at most its wall time.
    intake = stages["intake"]
    assert intake["windows"] == stages["engine"]["windows"] and intake["dead_letters"] == 0
    assert 0 < intake["cpu_ms_per_window"] * intake["windows"] <= 1.1e3 * intake["seconds"] + 5
    assert report["ratios"]["intake/engine"] == round(intake["windows_per_s"] / stages["engine"]["windows_per_s"], 3)
    # The pipeline predicted every window the engine stage ran on, with nothing dead-lettered.
    assert stages["pipeline"]["windows"] == stages["engine"]["windows"] > 20
    assert stages["pipeline"]["dead_letters"] == 0 and 0.4 < stages["pipeline"]["frames_saved"] < 0.6
    # The kafka stage timed the steady part of the same input (the streams' last seconds are left out).
    assert stages["kafka"]["windows"] + stages["kafka"]["windows_left_out_at_the_end"] == stages["engine"]["windows"]
    for name in ("pipeline/engine", "kafka/engine", "pipeline/naive"):
        assert report["ratios"][name] > 0
    assert report["max_realtime_streams"] >= 1
    trials = report["realtime"]["trials"]
    assert report["realtime"]["through"] == "kafka" and [t["streams"] for t in trials][:1] == [2]
    assert any(t["sustained"] and t["streams"] == report["max_realtime_streams"] for t in trials)
    assert all(t["windows"] == t["expected"] > 0 and t["intake_lag_ms"]["p99"] > 0 for t in trials if t["sustained"])
    half = report["half_load"]
    assert half["streams"] == report["max_realtime_streams"] // 2 and half["close_to_ack_ms"]["p99"] > 0
    assert report["machine"]["cores"] >= 1 and report["model"]["fusion"]


def test_the_machine_line_counts_the_cores_the_bench_may_run_on() -> None:
    """Pinned to one core (taskset, a container's cpuset) the bench measured one core and said the host's count:
    an edge integrator could not tell it measured what `serve --workers auto` would get."""
    import os

    code = ("import os, json; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from fusionstream.consumers.bench.common import machine; m = machine(); "
            "print(json.dumps([m['cores'], m['host_cores']]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    cores, host_cores = json.loads(done.stdout.strip().splitlines()[-1])
    assert cores == 1 and host_cores == os.cpu_count()
