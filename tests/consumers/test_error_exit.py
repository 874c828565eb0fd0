"""A service whose cleanup after a fatal error hangs still exits: status 1, the error as one line.

A client dogfooding `serve --workers 2 --exactly-once` saw a worker log "stopping on an error" when its
broker lost its data and then sit for minutes, neither serving nor exiting, so nobody restarted it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

HANGS = textwrap.dedent("""
    import logging, time
    from types import SimpleNamespace
    from fusionstream.consumers.service.main import exit_if_cleanup_hangs

    logging.basicConfig(level=logging.INFO)
    service = SimpleNamespace(failed_at=None, failure=None)
    exit_if_cleanup_hangs(service, after_s=0.5)  # type: ignore[arg-type]
    time.sleep(1.0)  # serving: nothing happens
    service.failure = RuntimeError("KafkaError: Unexpected error during batch delivery")
    service.failed_at = time.monotonic()
    time.sleep(30)  # a cleanup that never returns
    print("not reached")
""")


def test_a_cleanup_that_hangs_after_a_fatal_error_ends_the_process() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HANGS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "not reached" not in done.stdout and took < 20
    assert "fusionstream: error: KafkaError: Unexpected error during batch delivery" in done.stderr
    assert "still stopping 0.5 s after the error; exiting without finishing the cleanup" in done.stderr
