"""``fusionstream view`` on a port that is taken: one line that says what to do (an outside user got
aiohttp's "[Errno 98] error while attempting to bind on address …" and no hint)."""

from __future__ import annotations

import socket
import subprocess
import sys

from servicekit import free_port


def test_kafka_a_taken_port_is_one_line_naming_the_flag(kafka_bootstrap: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "fusionstream", "view", "--port", str(port), "--bootstrap",
                               kafka_bootstrap], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"fusionstream: error: cannot serve the viewer on 127.0.0.1:{port}: address already in use (choose another "
        "with --port, or --port 0 for any free one)"], done.stderr
