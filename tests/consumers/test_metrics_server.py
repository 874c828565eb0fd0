"""The /metrics and /healthz endpoint: clients that hang up early, and a port that is taken."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from fusionstream.consumers.service.metrics import MetricsPortError, MetricsServer


def test_a_scraper_that_hangs_up_early_leaves_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """A probe with a short timeout (curl -m 0.005) printed a BrokenPipeError traceback per hang-up on stderr."""
    registry = CollectorRegistry()
    for i in range(300):  # a reply long enough to be written after the client is gone
        Counter(f"c{i}", "a counter with a long help text " * 5, ["a"], registry=registry).labels("x" * 50).inc()
    server = MetricsServer(registry, lambda: (True, {}), 0, "127.0.0.1")
    server.start()
    try:
        for _ in range(30):
            client = socket.create_connection(("127.0.0.1", server.port))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            client.close()
        time.sleep(0.5)
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[:2000]


def test_a_taken_port_is_one_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError) as raised:
            MetricsServer(CollectorRegistry(), lambda: (True, {}), port, "127.0.0.1")
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message and "FUSIONSTREAM_METRICS_PORT" in message


def test_healthz_says_whether_the_broker_answers_without_judging_the_instance() -> None:
    """An operator watched /healthz stay 200 "ok" through a 75 s outage with nothing in its body about the
    broker. It still stays 200 (a restart would not bring the broker back), and now says so."""
    from fusionstream.consumers.service.health import BROKER_SILENT_S, Health

    health = Health("dog-0", stall_after_s=60)
    running = {"state": "running", "joined": True, "partitions": {0, 1}, "engine_alive": True, "pipeline": None}
    health.update(**running, broker_silent_s=None)  # no fetch answered yet: nothing to say
    assert health()[0] and "broker" not in health()[1]
    health.update(**running, broker_silent_s=0.3)
    assert health() == (True, {**health()[1], "broker": "answering"})
    health.update(**running, broker_silent_s=BROKER_SILENT_S + 7.4)
    ok, detail = health()
    assert ok and detail["broker"] == f"no fetch answered for {BROKER_SILENT_S + 7.4:.0f} s"


def test_head_is_answered_and_a_client_that_never_sends_its_request_is_dropped() -> None:
    """A load balancer's HEAD /healthz got 501; 600 slow clients (slowloris) each held a thread for ever."""
    import urllib.request

    from fusionstream.consumers.service import metrics

    registry = CollectorRegistry()
    Counter("probes", "something to export", registry=registry)
    server = MetricsServer(registry, lambda: (False, {"state": "starting"}), 0, "127.0.0.1")
    server.start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b""
            assert int(answer.headers["Content-Length"]) > 0  # what a GET would carry
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{server.port}/healthz", method="HEAD"),
                                   timeout=5)
        assert unhealthy.value.code == 503
        unhealthy.value.close()
        timeout = metrics._handler(CollectorRegistry(), lambda: (True, {})).timeout
        assert 0 < timeout <= 30
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            slow.sendall(b"GET /metr")  # and never the rest
            slow.settimeout(timeout + 10)
            started = time.monotonic()
            assert slow.recv(100) == b""  # the server hung up
            assert time.monotonic() - started < timeout + 5
    finally:
        server.stop()


def test_the_metrics_address_is_a_setting() -> None:
    from fusionstream.consumers.settings import Settings

    assert Settings().metrics_host == "0.0.0.0"
    assert Settings(metrics_host="127.0.0.1").metrics_host == "127.0.0.1"
