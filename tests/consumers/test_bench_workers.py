"""`fusionstream bench --workers`: the Kafka stage through several `serve --workers` processes in one group.

Speed is not asserted (a test cannot); what is: every worker count publishes every window of the same
input exactly once, the partitions are shared out between the workers, and the report holds the figures
and ratios the docs describe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fusionstream.consumers.bench.workers import parse_workers


def test_worker_counts_are_a_range_a_list_or_auto() -> None:
    assert parse_workers("3") == (1, 2, 3)
    assert parse_workers("4,1, 2,2") == (1, 2, 4)
    assert parse_workers(" AUTO ") == "auto"
    for bad in ("0", "1,0", "two", "", "1,x"):
        with pytest.raises(ValueError):
            parse_workers(bad)


def test_a_bad_worker_count_is_refused_before_anything_runs() -> None:
    command = [sys.executable, "-m", "fusionstream", "bench", "--workers", "0,2", "--no-kafka", "--no-realtime"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--workers" in done.stderr


@pytest.mark.kafka
def test_one_and_two_workers_publish_every_window_exactly_once(kafka_bootstrap: str) -> None:
    command = [
        sys.executable, "-m", "fusionstream", "bench", "--workers", "1,2", "--no-realtime", "--streams", "4",
        "--seconds", "8", "--rounds", "1", "--no-int8", "--batch-sizes", "16", "--naive-streams", "1",
        "--bootstrap", kafka_bootstrap, "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])  # the workers' logs stayed off stdout
    scaling = report["workers"]
    assert scaling["counts"] == [1, 2] and scaling["best"] in (1, 2)
    one, two = scaling["by_workers"]["1"], scaling["by_workers"]["2"]
    # The same steady windows as the single-process kafka stage, each published once by each worker count.
    windows = report["stages"]["kafka"]["windows"]
    assert windows > 10
    for figures in (one, two):
        assert figures["windows"] == windows and figures["finals"] == windows
        assert figures["missing"] == 0 and figures["duplicated"] == 0
        assert sum(figures["windows_by_worker"]) == windows
        assert figures["windows_per_s"] > 0 and figures["cpu_ms_per_window"] > 0
    # Two workers held disjoint partitions covering all of them (how many windows each published depends on
    # how the streams' keys hash to partitions).
    held = two["partitions_by_worker"]
    assert all(held) and sorted(held[0] + held[1]) == list(range(scaling["partitions"]))
    for workers, figures in (("1", one), ("2", two)):
        expected = round(figures["windows_per_s"] / report["windows_per_s"]["engine"], 3)
        assert report["ratios"][f"kafka_w{workers}/engine"] == expected
