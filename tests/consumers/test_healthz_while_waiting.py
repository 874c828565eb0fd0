"""``/healthz`` answers while ``serve`` waits for its broker (an outside SRE found no port at all for up to
``broker_wait_s``: a liveness probe failed the instance while it waited, instead of reading 503 "starting")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from servicekit import free_port, http_get


def _closed_port() -> int:
    return free_port()  # nothing listens on it


def test_healthz_is_503_starting_while_the_broker_is_waited_for() -> None:
    port = free_port()
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}",
           "FUSIONSTREAM_BROKER_WAIT_S": "20", "FUSIONSTREAM_METRICS_PORT": str(port)}
    service = subprocess.Popen([sys.executable, "-m", "fusionstream", "serve"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = http_get(port, "/healthz")
            except OSError:
                time.sleep(0.2)
        assert answer is not None, "no /healthz while waiting for the broker"
        status, body = answer
        assert status == 503 and json.loads(body)["state"] == "starting"
        assert service.poll() is None  # still waiting
    finally:
        service.terminate()
        _, err = service.communicate(timeout=30)
    assert service.returncode == 0, err  # SIGTERM while waiting stops at once, cleanly
