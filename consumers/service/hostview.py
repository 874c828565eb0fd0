"""What `serve --workers N` shows for the whole host: one ``/metrics`` and one ``/healthz`` over its workers.

Each worker serves its own endpoints on 127.0.0.1 (:mod:`fusionstream.consumers.service.worker`); the
supervisor's endpoint reads them at each request and merges them. ``/metrics`` holds every worker's
families, each sample labelled ``worker="<i>"`` (a family appears once, with every worker's samples, as
Prometheus requires), plus the supervisor's own (``fusionstream_worker_restarts_total{worker}``,
``fusionstream_worker_up{worker}``). A restarted worker counts from zero again: Prometheus reads that as a
counter reset, which ``rate()`` handles. ``/healthz`` is unhealthy while any worker has been unhealthy
(down, starting, or its own ``/healthz`` failing) for longer than a grace period, with details per worker.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

#: How long the host endpoint waits for one worker's endpoint (a worker stuck that long counts as down).
SCRAPE_TIMEOUT_S = 2.0


@dataclass
class WorkerView:
    """What the supervisor knows of one worker slot. Written by the supervisor's loop, read by HTTP threads."""

    index: int
    instance_id: str
    port: int
    pid: int | None = None
    state: str = "starting"  # starting, running, down, stopping, stopped
    restarts: int = 0
    last_exit: int | None = None
    #: When its /healthz last answered 200 (monotonic), None before it ever did.
    healthy_at: float | None = None
    healthy: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


#: A worker's state while its /healthz does not answer.
NOT_ANSWERING = "not answering (starting or stuck)"


def read_worker(port: int, path: str) -> tuple[int, bytes]:
    """GET a worker's endpoint: (status, body); raises OSError when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=SCRAPE_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # /healthz answers 503 with its details
        with error:
            return error.code, error.read()


def free_port() -> int:
    """A port for a worker's /metrics on 127.0.0.1 (kept for the slot: its restarts reuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_health(view: WorkerView, now: float) -> None:
    """Refresh ``view`` from the worker's /healthz (called by the supervisor every poll interval)."""
    if view.state not in ("starting", "running"):
        view.healthy = False
        return
    pid = view.pid
    try:
        status, body = read_worker(view.port, "/healthz")
        detail = json.loads(body)
    except (OSError, ValueError):
        status, detail = 0, {"status": "unavailable", "state": NOT_ANSWERING}
    if view.pid != pid or view.state not in ("starting", "running"):
        return  # the worker died (or was replaced) meanwhile: what it said is stale
    view.healthy, view.detail = status == 200, detail
    if view.healthy:
        view.healthy_at = now
        view.state = "running"


def host_health(views: Sequence[WorkerView], grace_s: float,
                now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """(healthy, details): healthy while every worker is healthy, or was healthy less than ``grace_s`` ago
    (a crashed worker being restarted). Before every worker first served, the host is still starting."""
    now = time.monotonic() if now is None else now
    workers: dict[str, Any] = {}
    ok = True
    for view in views:
        within_grace = view.healthy_at is not None and now - view.healthy_at <= grace_s
        ok = ok and (view.healthy or within_grace)
        workers[str(view.index)] = {
            "instance": view.instance_id, "pid": view.pid, "state": view.state, "healthy": view.healthy,
            "restarts": view.restarts, "last_exit": view.last_exit,
            **({} if view.healthy or view.healthy_at is None
               else {"unhealthy_for_s": round(now - view.healthy_at, 1)}),
            "health": view.detail,
        }
    state = "running" if all(v.healthy_at is not None for v in views) else "starting"
    return ok, {"state": state, "workers": workers, "grace_s": grace_s}


class HostMetrics(Collector):
    """Collects every live worker's /metrics at each scrape, each sample labelled with its worker."""

    def __init__(self, views: Callable[[], Sequence[WorkerView]]) -> None:
        self._views = views
        self._lock = threading.Lock()  # two scrapes at once would read every worker twice for nothing

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            texts = []
            for view in self._views():
                if view.state != "running":
                    continue
                try:
                    status, body = read_worker(view.port, "/metrics")
                except OSError:
                    continue  # it died or is restarting: its series pause, as a single process's would
                if status == 200:
                    texts.append((str(view.index), body.decode()))
        yield from merge_families(texts)


def merge_families(texts: Sequence[tuple[str, str]]) -> list[Metric]:
    """Metric families of several exposition texts, one family per name, each sample labelled ``worker``."""
    merged: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    return list(merged.values())


__all__ = ["HostMetrics", "WorkerView", "free_port", "host_health", "merge_families", "poll_health", "read_worker"]
