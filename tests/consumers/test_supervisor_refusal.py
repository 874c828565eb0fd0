"""`serve --workers N` refused a setup that no restart mends: one line, at once, as `serve` alone would say it.

A worker exits with ``REFUSED_STATUS`` on a refusal (missing topics with ``create_topics`` off, input topics
whose partition counts disagree, a refused login); before the host has served, the supervisor stops every
worker and prints the refusal once, instead of restarting them with backoff until it gives up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
from aiokafka.admin import NewTopic

from fusionstream.consumers.kafka import delete_topics, make_admin

DEADLINE_S = 120.0


def _serve_workers(bootstrap: str, prefix: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": bootstrap, "FUSIONSTREAM_WORKERS": "2",
        "FUSIONSTREAM_METRICS_PORT": "0", "FUSIONSTREAM_THREADS": "1", "FUSIONSTREAM_CREATE_TOPICS": "false",
        "FUSIONSTREAM_VIDEO_TOPIC": f"{prefix}.video", "FUSIONSTREAM_AUDIO_TOPIC": f"{prefix}.audio",
        "FUSIONSTREAM_TEXT_TOPIC": f"{prefix}.text", "FUSIONSTREAM_PREDICTIONS_TOPIC": f"{prefix}.predictions",
        "FUSIONSTREAM_DEADLETTER_TOPIC": f"{prefix}.deadletter", "FUSIONSTREAM_GROUP_ID": f"{prefix}.group",
    }
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fusionstream", "serve"], env=env, capture_output=True, text=True,
                          timeout=DEADLINE_S)
    return done, time.monotonic() - started


def _assert_refused_once(done: subprocess.CompletedProcess[str], took: float, says: str) -> None:
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, errors  # not one per worker and start, nor a "gave up" line after them
    assert errors[0].startswith("fusionstream: error: ") and says in errors[0], errors
    assert "[" not in errors[0].split("error: ", 1)[1][:1], "the host's line, not a worker's tagged one"
    assert "restarting" not in done.stdout, "a refusal is not retried (it was: 5 starts, 7.5 s of backoff)"
    print(f"refused in {took:.1f} s")


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_missing_topics_with_create_topics_off_stop_every_worker_with_one_line(kafka_bootstrap: str) -> None:
    done, took = _serve_workers(kafka_bootstrap, f"refused-{uuid.uuid4().hex[:8]}")
    _assert_refused_once(done, took, "do not exist and create_topics is off")


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_input_topics_of_different_partition_counts_stop_every_worker_with_one_line(
    kafka_bootstrap: str,
) -> None:
    prefix = f"refused-{uuid.uuid4().hex[:8]}"
    counts = {"video": 4, "audio": 2, "text": 4, "predictions": 4, "deadletter": 1}
    topics = [f"{prefix}.{name}" for name in counts]

    async def create() -> None:
        admin = make_admin(kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"{prefix}.{name}", n, 1) for name, n in counts.items()])
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        done, took = _serve_workers(kafka_bootstrap, prefix)
        _assert_refused_once(done, took, f"{prefix}.audio has 2")
    finally:
        asyncio.run(delete_topics(kafka_bootstrap, topics))
