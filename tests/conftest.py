"""Shared fixtures. A real Kafka broker, one per test session, started only when a test asks for it.

``scripts/test.sh`` (``make test``) starts the broker and exports ``KAFKA_BOOTSTRAP``;
with plain ``pytest`` the ``kafka_bootstrap`` fixture starts one itself, on free
ports with a temporary state directory, and stops it when the session ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"
# kafka.sh waits up to 60 s for the broker; fetching the jars on a first run takes longer.
KAFKA_START_LIMIT_S = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that needs the broker is a `kafka` test, so `-m "not kafka"` runs without Java.
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the ports differ.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Kafka broker: ``$KAFKA_BOOTSTRAP``, or one started for this session."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP"):
        yield bootstrap
        return

    port, controller_port = _free_ports(2)
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "KAFKA_STATE_DIR": str(tmp_path_factory.mktemp("kafka")),
    }

    def kafka_sh(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    try:
        started = kafka_sh("start", KAFKA_START_LIMIT_S)
    except subprocess.TimeoutExpired:
        kafka_sh("stop", 60)  # the JVM runs detached from kafka.sh: stop it through its pid file
        pytest.fail(f"no Kafka broker after {KAFKA_START_LIMIT_S}s (deselect these tests with -m 'not kafka')")
    if started.returncode != 0:
        kafka_sh("stop", 60)
        pytest.fail(
            f"scripts/kafka.sh start failed (exit {started.returncode}); deselect these tests with -m 'not kafka'"
            f" or set KAFKA_BOOTSTRAP:\n{started.stderr}",
            pytrace=False,
        )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        kafka_sh("stop", 60)


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix for topic and group names, so tests never see each other's records."""
    return f"fs-test-{uuid.uuid4().hex[:12]}"
