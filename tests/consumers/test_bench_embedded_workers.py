"""`fusionstream bench --workers` without a broker: live trials through W pipeline processes.

Speed is not asserted; what is: the streams are shared out, a trial over several processes counts every
window of every process, its percentiles are the worst process's, and the report holds the per-count
figures the docs describe, with the host's load beside each trial."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from fusionstream.consumers.bench.embedded_workers import merge_trials, split_streams
from fusionstream.consumers.bench.host_load import HostLoad, nvml_device
from fusionstream.consumers.bench.realtime import Trial


def test_streams_are_shared_out_evenly() -> None:
    assert split_streams(10, 4) == [3, 3, 2, 2]
    assert split_streams(8, 2) == [4, 4]
    assert split_streams(3, 4) == [1, 1, 1, 0]
    for streams in range(1, 40):
        for workers in range(1, 9):
            shares = split_streams(streams, workers)
            assert sum(shares) == streams and max(shares) - min(shares) <= 1


def _trial(streams: int, p99: float, lag: float, *, predicted: int | None = None) -> Trial:
    expected = streams * 10
    return Trial(streams, expected, expected if predicted is None else predicted, 0,
                 {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}, {"p50": 1.0, "p95": 2.0, "p99": lag}, 100.0,
                 measured=expected - 4, end_to_first_ms={"p50": 50.0, "p95": 60.0, "p99": p99 + 40},
                 end_to_final_ms={"p50": 50.0, "p95": 60.0, "p99": p99 + 40},
                 counts={"final": expected, "late_total": 1})


def test_a_trial_over_processes_adds_counts_and_keeps_the_worst_percentiles() -> None:
    merged = merge_trials([_trial(4, 30.0, 5.0), _trial(3, 80.0, 2.0), _trial(3, 20.0, 9.0)])
    assert (merged.streams, merged.expected, merged.predicted) == (10, 100, 100)
    assert merged.latency_ms["p99"] == 80.0 and merged.intake_lag_ms["p99"] == 9.0
    assert merged.end_to_first_ms is not None and merged.end_to_first_ms["p99"] == 120.0
    assert merged.counts == {"final": 100, "late_total": 3}
    assert merged.sustained
    # One process over the bound, or one short of a window, fails the whole trial.
    assert not merge_trials([_trial(4, 30.0, 5.0), _trial(4, 130.0, 5.0)]).sustained
    assert not merge_trials([_trial(4, 30.0, 5.0), _trial(4, 30.0, 5.0, predicted=39)]).sustained


def test_host_load_sees_a_busy_core_over_the_span_asked() -> None:
    with HostLoad() as load:  # no NVML handle: no GPU figures
        started = time.time()
        until = time.thread_time() + 0.6
        while time.thread_time() < until:
            pass
        busy_until = time.time()
        time.sleep(0.5)
    figures = load.figures(started, busy_until)
    assert figures["cpu_busy_pct"] is not None and figures["cpu_busy_pct"] > 0
    assert figures["gpu_util_pct"] is None and figures["gpu_memory_mib"] is None
    assert load.figures()["cpu_busy_pct"] is not None  # the whole block


def test_a_gpu_nvml_cannot_find_says_why() -> None:
    handle, why = nvml_device("cuda:x")
    assert handle is None and why is not None and "cuda:x" in why


def test_live_trials_through_one_and_two_pipeline_processes() -> None:
    command = [
        sys.executable, "-m", "fusionstream", "bench", "--no-kafka", "--workers", "1,2", "--live-streams", "4",
        "--streams", "4", "--seconds", "8", "--trial-seconds", "6", "--rounds", "1", "--no-int8",
        "--batch-sizes", "8", "--naive-streams", "1", "--revisions", "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    scaling = report["workers"]
    assert scaling["through"] == "embedded" and scaling["counts"] == [1, 2] and not scaling["gpu"]
    assert scaling["realtime"]["revisions"] is True and scaling["realtime"]["trial_seconds"] == 6
    one, two = (scaling["by_workers"][w] for w in ("1", "2"))
    for figures in (one, two):
        (trial,) = figures["live_trials"]
        # Every window of the four streams got its final prediction, however they were shared out.
        assert trial["streams"] == 4 and trial["expected"] > 0 and trial["windows"] == trial["expected"]
        assert trial["dead_letters"] == 0
        assert trial["load"]["cpu_busy_pct"] is not None and trial["load"]["gpu_util_pct"] is None
        assert trial["load"]["workers_cpu_cores"] > 0
        assert trial["revisions"] and trial["counts"]["provisional"] > 0  # --revisions, honoured without a broker
        assert figures["threads_per_worker"] >= 1 and figures["ready_s"] > 0
    # Four streams of 6 s: about 11 windows each, whichever instant the trial starts at (hop grid).
    for figures in (one, two):
        assert 40 <= figures["live_trials"][0]["expected"] <= 60
    assert re.search(r"w1\s+4 live streams", done.stderr) and re.search(r"w2\s+4 live streams", done.stderr)
