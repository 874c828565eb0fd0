"""Prometheus metrics of one service instance, and the tiny HTTP server for ``/metrics`` and ``/healthz``.

Every instance has its own :class:`~prometheus_client.CollectorRegistry` (not the
global one), so several services can run in one process (tests, notebooks).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fusionstream.consumers.pipeline.prediction import MODALITY_NAMES, Prediction
from fusionstream.stream.errors import DEAD_LETTER_REASONS, FusionStreamError

log = logging.getLogger(__name__)

# Up to 10 minutes: a service catching up after an outage publishes minutes late, and a quantile beyond the
# last finite bucket reads as that bucket.
_LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_COVERAGE = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The service's counters, gauges and histograms (names start with ``fusionstream_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        ns = "fusionstream"
        self.capture_to_publish = Histogram(
            "capture_to_publish_seconds", "Window end (event time) to the prediction being sent, wall clock.",
            namespace=ns, buckets=_LATENCY_S, registry=registry,
        )
        self.close_to_prediction = Histogram(
            "close_to_prediction_seconds", "Window closed by the aligner to prediction made.",
            namespace=ns, buckets=_LATENCY_S, registry=registry,
        )
        self.close_to_ack = Histogram(
            "close_to_ack_seconds", "Window closed by the aligner to its prediction acknowledged by the broker.",
            namespace=ns, buckets=_LATENCY_S, registry=registry,
        )
        self.queue = Histogram(
            "queue_seconds", "Window closed to its batch entering the engine.",
            namespace=ns, buckets=_LATENCY_S, registry=registry,
        )
        self.inference = Histogram(
            "inference_seconds", "Engine time of the batch a window was in.",
            namespace=ns, buckets=_LATENCY_S, registry=registry,
        )
        self.batch_size = Histogram(
            "batch_size", "Size of the inference batch each window was in.",
            namespace=ns, buckets=_BATCH, registry=registry,
        )
        self.coverage = Histogram(
            "modality_coverage", "Fraction of each window covered by a modality.",
            ["modality"], namespace=ns, buckets=_COVERAGE, registry=registry,
        )
        self.records = Counter(
            "records_consumed", "Input records fetched, per topic.", ["topic"], namespace=ns, registry=registry
        )
        self.windows = Counter(
            "windows_emitted", "Windows closed and predicted, by what closed them.", ["closed_by"],
            namespace=ns, registry=registry,
        )
        self.encoded_ahead = Counter(
            "windows_encoded_ahead", "Open windows encoded while they waited out the lateness (speculate).",
            namespace=ns, registry=registry,
        )
        self.frames_ahead = Counter(
            "frames_encoded_ahead", "Frames open windows will sample, embedded before the windows closed (speculate).",
            namespace=ns, registry=registry,
        )
        self.frames_damaged = Counter(
            "frames_damaged", "Sampled JPEG frames whose compressed data was damaged (lost mid-scan): decoded with the "
            "missing part grey and used; the log names the stream.", namespace=ns, registry=registry,
        )
        self.ignored = Counter(
            "records_ignored", "Records not aligned, not waited for: of a modality the model does not use, "
            "interim transcript results (is_final false), copies of records already taken.",
            namespace=ns, registry=registry,
        )
        self.progress = Counter(
            "progress_records", "Progress records taken (docs/wire-format.md#progress): they close windows sooner.",
            namespace=ns, registry=registry,
        )
        self.partly_late = Counter(
            "records_partly_late", "Records that missed some of their windows (already closed) and joined the rest.",
            namespace=ns, registry=registry,
        )
        self.degraded = Counter(
            "windows_degraded", "Windows predicted without a modality whose encoder failed on their data (each "
            "logged at ERROR with its stream and window).", namespace=ns, registry=registry,
        )
        self.failed = Counter(
            "windows_failed", "Windows that got no prediction: their data failed the engine however the window "
            "was cut (a single-modality window's), while a harmless window ran (each logged at ERROR).",
            namespace=ns, registry=registry,
        )
        self.published = Counter(
            "predictions_published", "Predictions acknowledged by the broker.", namespace=ns, registry=registry
        )
        self.late = Counter(
            "late_records", "Records older than every open window of their stream.", namespace=ns, registry=registry
        )
        self.dead_letters = Counter(
            "dead_letters", "Records sent to the dead-letter topic, by reason.", ["reason"],
            namespace=ns, registry=registry,
        )
        for reason in DEAD_LETTER_REASONS:  # every series from zero: rate() and alerts see the first one
            self.dead_letters.labels(reason)
        self.replayed = Counter(
            "replayed_dead_letters",
            "Re-read records an earlier run already handled (in a published window, or dead-lettered): not "
            "dead-lettered again.",
            namespace=ns, registry=registry,
        )
        self.commits = Counter(
            "commits", "Offset commits (or transactions) completed.", namespace=ns, registry=registry
        )
        self.rebalances = Counter(
            "rebalances", "Partition assignments received.", namespace=ns, registry=registry
        )
        self.pauses = Counter(
            "fetch_pauses", "Times fetching was paused for backpressure.", namespace=ns, registry=registry
        )
        self.lag = Gauge(
            "consumer_lag", "High watermark minus the next offset to fetch, per input partition.",
            ["topic", "partition"], namespace=ns, registry=registry,
        )
        self.backlog = Gauge(
            "backlog_windows", "Windows closed but not yet predicted.", namespace=ns, registry=registry
        )
        self.held = Gauge(
            "held_records", "Fetched records whose offsets cannot be committed yet.", namespace=ns, registry=registry
        )
        self.open_streams = Gauge(
            "open_streams", "Streams with state in the aligner.", namespace=ns, registry=registry
        )
        self.text_wait_max = Gauge(
            "text_wait_max_seconds", "The longest wait budget any stream's transcript is held to (text_wait_ms, "
            "learnt or set); 0 with none.", namespace=ns, registry=registry
        )
        self.assigned = Gauge(
            "assigned_partitions", "Input partitions owned by this instance.", namespace=ns, registry=registry
        )
        self.paused = Gauge(
            "paused", "1 while fetching is paused for backpressure.", namespace=ns, registry=registry
        )
        self.broker_silent = Gauge(
            "broker_silent_seconds", "Seconds since the broker last answered a fetch of an owned, unpaused input "
            "partition (0 before the first answer).", namespace=ns, registry=registry
        )
        # The labelled children used per window or per fetch, looked up once: ``labels()`` takes a lock
        # and builds its key each call (these families' children are never removed).
        self._coverage_of = tuple(self.coverage.labels(modality) for modality in MODALITY_NAMES)
        self._windows_by: dict[str, Any] = {}
        self._records_of: dict[str, Any] = {}

    def observe_prediction(self, prediction: Prediction, capture_to_publish_ms: float) -> None:
        self.capture_to_publish.observe(max(capture_to_publish_ms, 0.0) / 1000)
        self.close_to_prediction.observe(prediction.latency_ms / 1000)
        self.queue.observe(prediction.queue_ms / 1000)
        self.inference.observe(prediction.inference_ms / 1000)
        self.batch_size.observe(prediction.batch_size)
        windows = self._windows_by.get(prediction.closed_by)
        if windows is None:
            windows = self._windows_by[prediction.closed_by] = self.windows.labels(prediction.closed_by)
        windows.inc()
        for child, value in zip(self._coverage_of, prediction.coverage, strict=True):
            child.observe(value)

    def records_fetched(self, topic: str, count: int) -> None:
        """``records_consumed{topic}`` += count."""
        records = self._records_of.get(topic)
        if records is None:
            records = self._records_of[topic] = self.records.labels(topic)
        records.inc(count)


class MetricsPortError(FusionStreamError):
    """The port for /metrics and /healthz cannot be listened on (taken by another process, or not allowed)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper or probe that hung up before its answer (a timeout, curl -m): theirs, not a fault here.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` on a port, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict[str, Any]]],
                 port: int, host: str = "0.0.0.0") -> None:
        handler = _handler(registry, health)
        try:
            self._server = _Server((host, port), handler)
        except socket.gaierror as exc:  # a host name or address that does not resolve: the host is wrong
            raise MetricsPortError(
                f"cannot serve /metrics and /healthz on {host}:{port}: {exc.strerror or exc} (metrics_host, "
                "FUSIONSTREAM_METRICS_HOST, takes an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)") from exc
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve /metrics and /healthz on {host}:{port}: {exc.strerror or exc} (set another "
                "metrics_port: --metrics-port, FUSIONSTREAM_METRICS_PORT; 0 turns them off)") from exc
        # serve_forever looks for a shutdown every poll interval (0.5 s by default): a stopping service waited for it.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fs-metrics", daemon=True)
        self._host = host

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self._host, self.port)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Callable[[], tuple[bool, dict[str, Any]]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        # Seconds a client may take to send its request: a thread per connection, and slow clients that never
        # finished (600 of them, slowloris) held as many threads for ever and delayed the scrapes.
        timeout = 10

        def do_HEAD(self) -> None:  # load balancers' health checks
            self._head_only = True
            try:
                self.do_GET()
            finally:
                self._head_only = False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health"):
                ok, detail = health()
                body = json.dumps({"status": "ok" if ok else "unavailable", **detail}).encode()
                self._reply(200 if ok else 503, body, "application/json")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not getattr(self, "_head_only", False):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    return Handler
