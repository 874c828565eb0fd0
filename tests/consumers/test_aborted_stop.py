"""A stop cut short by a second signal exits 1 with one line, told apart from a clean stop (exit 0).

From an outside operator: a second SIGTERM 0.2 s after the first aborted both workers of `serve --workers 2`
("without a final commit") and the host exited 0, as a clean stop does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_a_second_signal_aborts_with_status_1_and_one_line(kafka_bootstrap: str) -> None:
    prefix = f"abort-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap, "FUSIONSTREAM_METRICS_PORT": "0",
           "FUSIONSTREAM_THREADS": "1", "FUSIONSTREAM_GROUP_ID": f"{prefix}.group", "PYTHONUNBUFFERED": "1",
           **{f"FUSIONSTREAM_{kind.upper()}_TOPIC": f"{prefix}.{kind}"
              for kind in ("video", "audio", "text", "predictions", "deadletter")}}
    for second in (False, True):
        serve = subprocess.Popen([sys.executable, "-m", "fusionstream", "serve"], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert serve.stdout is not None
            deadline = time.monotonic() + 120
            for line in serve.stdout:
                if " serving " in line:
                    break
                assert time.monotonic() < deadline, "never served"
            serve.send_signal(signal.SIGTERM)
            if second:
                time.sleep(0.05)
                serve.send_signal(signal.SIGTERM)
            _, err = serve.communicate(timeout=60)
        finally:
            serve.kill()
        errors = [line for line in err.splitlines() if line.strip()]
        if second:
            assert serve.returncode == 1, err
            assert len(errors) == 1 and errors[0].startswith("fusionstream: error: aborted by a second signal"), err
        else:
            assert serve.returncode == 0 and errors == [], err
