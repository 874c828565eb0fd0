"""`view` waits for a broker that is not up yet, as `serve` does (`broker_wait_s`): started beside its broker, as
a compose file starts them, it exited at once while the service waited."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from servicekit import free_port
from test_subscribe import REPO_ROOT


def test_view_keeps_trying_for_broker_wait_s_then_says_so_in_one_line() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fusionstream", "view", "--bootstrap", f"127.0.0.1:{free_port()}", "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90, check=False,
        env={**os.environ, "FUSIONSTREAM_BROKER_WAIT_S": "3"},
    )
    waited = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert waited >= 3, f"gave up after {waited:.1f} s"
    retries = [line for line in result.stderr.splitlines() if "not reachable yet" in line]
    assert retries, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fusionstream: error: cannot reach Kafka at 127.0.0.1:") and "after 3 s" in last, last
