"""SIGTERM stops `fusionstream produce` as Ctrl-C does, whatever the SIGINT disposition it was started with."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from test_produce import FUSIONSTREAM, _env


@pytest.mark.kafka
@pytest.mark.parametrize("sigint", ["ignored", "default"])
def test_sigterm_stops_produce_with_its_summary(kafka_bootstrap: str, topic_prefix: str, sigint: str) -> None:
    """A script's background job starts with SIGINT ignored; SIGTERM was turned into a SIGINT, so it did
    nothing there and `kill` left produce running (an outside tester's finding)."""
    disposition = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL
    producer = subprocess.Popen(
        [*FUSIONSTREAM, "produce", "synthetic", "--streams", "1", "--seconds", "120", "--prefix", "term"],
        env=_env(kafka_bootstrap, topic_prefix), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    try:
        time.sleep(8)  # started and publishing
        assert producer.poll() is None
        producer.send_signal(signal.SIGTERM)
        _, stderr = producer.communicate(timeout=30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped after" in stderr, stderr[-2000:]
