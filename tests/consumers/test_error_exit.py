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

import pytest

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


def test_a_service_cancelled_while_stopping_on_an_error_exits_1_with_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A worker that stopped on a broker error was cancelled on its way out and exited 0 ("aborted"): its
    supervisor logged a clean exit, and `restart: on-failure` would not have restarted it."""
    import asyncio

    from aiokafka.errors import LeaderNotAvailableError

    from fusionstream.consumers.service.main import exit_status, serve_until_stopped

    class Failing:
        failure: BaseException | None = None
        failed_at = None  # the hang watch stays quiet

        def stop(self) -> None: ...

        async def run(self) -> None:
            self.failure = LeaderNotAvailableError()
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(5)

    status = exit_status("the service", lambda: asyncio.run(serve_until_stopped(Failing())))  # type: ignore[arg-type]
    assert status == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionstream: error: ") and err.endswith("LeaderNotAvailableError") and "\n" not in err


def test_sigterm_while_waiting_for_the_broker_at_start_stops_at_once(tmp_path: Path) -> None:
    """It logged "stopping" and went on retrying for the rest of broker_wait_s (57 s): an orchestrator's
    grace period is shorter, so it would have been SIGKILLed."""
    import os
    import signal
    import socket

    with socket.socket() as probe:  # a port nothing listens on: every connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "FUSIONSTREAM_BROKER_WAIT_S": "120",
           "FUSIONSTREAM_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "fusionstream", "serve"], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert serve.stdout is not None
        deadline = time.monotonic() + 120
        for line in serve.stdout:  # the engine loads first; then the broker is tried, and refused
            if "not reachable yet" in line:
                break
            assert time.monotonic() < deadline, "never waited for the broker"
        signalled = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        rest, _ = serve.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        serve.kill()
    assert serve.returncode == 0, rest
    assert took < 5, f"{took:.1f} s after SIGTERM"
    assert "stopped while waiting for the broker" in rest


@pytest.mark.parametrize("failure", ["numpy", "onnxruntime"])
def test_running_out_of_memory_is_one_line_not_a_traceback(failure: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Under `ulimit -v` a service decoding audio died with 50 lines of traceback ending in numpy's
    `_ArrayMemoryError` (ONNX Runtime's failures say `std::bad_alloc` in a RuntimeException)."""
    import numpy as np

    from fusionstream.consumers.service.main import exit_status

    def body() -> None:
        if failure == "numpy":
            np.empty(1 << 62, dtype=np.uint8)  # more than any machine: numpy raises its MemoryError
        try:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                               "running Conv node. Status Message: std::bad_alloc")
        except RuntimeError as exc:
            raise ValueError("the batch failed") from exc  # the allocation failure as another error's cause

    status = exit_status("the worker", body, tag=lambda: "w1")
    assert status == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fusionstream: error: [w1] out of memory") and "\n" not in err, err
    assert "Traceback" not in captured.err + captured.out


def test_a_bug_still_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from fusionstream.consumers.service.main import exit_status

    def body() -> None:
        raise ValueError("a bug, not a lack of memory")

    with caplog.at_level("ERROR"):
        assert exit_status("the service", body) == 1
    assert any(record.exc_info for record in caplog.records)
