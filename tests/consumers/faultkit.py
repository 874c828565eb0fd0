"""Helpers of the soak and fault tests: process memory, /metrics scraping, paced producing, figures, a private broker.

The service-level helpers (settings, Reader, ServiceProcess, ...) live in test_service.py
and are imported from there; this module adds what only long-running and fault tests need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servicekit import NS, Reader, ServiceProcess, http_get, produce

from fusionstream.consumers.settings import Settings
from fusionstream.stream.records import Record

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"


def duration_s(default: float) -> float:
    """How long a soak runs: ``FUSIONSTREAM_SOAK_SECONDS`` (``make soak`` sets it), else ``default``."""
    return float(os.environ.get("FUSIONSTREAM_SOAK_SECONDS", default))


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(port: int) -> dict[str, float]:
    """The service's /metrics as {"name{labels}": value}."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], metric: str) -> float:
    """Sum of a metric over its labels (e.g. consumer lag over every input partition)."""
    return sum(v for k, v in samples.items() if k == metric or k.startswith(metric + "{"))


@dataclass
class Sampler:
    """Samples a service process's RSS and consumer lag every ``interval_s`` while the test runs."""

    pid: int
    port: int
    interval_s: float = 2.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, RSS MiB, lag records)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Sampler:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sample(self) -> tuple[float, float, float]:
        lag = total(await asyncio.to_thread(scrape, self.port), "fusionstream_consumer_lag")
        sample = (time.monotonic() - self._started, rss_mib(self.pid), lag)
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # a scrape can fail on a loaded machine; the next one counts
                await self.sample()
            await asyncio.sleep(self.interval_s)

    def rss_between(self, start_s: float, end_s: float) -> float:
        """Median RSS of the samples taken in [start_s, end_s] (a median: one GC spike is not growth)."""
        values = [rss for t, rss, _ in self.samples if start_s <= t <= end_s]
        if not values:
            raise AssertionError(f"no memory sample between {start_s:.0f}s and {end_s:.0f}s")
        return statistics.median(values)

    def max_lag(self) -> float:
        return max((lag for _, _, lag in self.samples), default=0.0)

    def max_rss(self) -> float:
        return max((rss for _, rss, _ in self.samples), default=0.0)


def window_figures(windows: Sequence[tuple[str, int]], expected: set[tuple[str, int]]) -> dict[str, int]:
    counts = Counter(windows)
    return {
        "windows_expected": len(expected),
        "windows_predicted": len(counts),
        "windows_lost": len(expected - set(counts)),
        "windows_unexpected": len(set(counts) - expected),
        "duplicates": sum(n - 1 for n in counts.values()),
    }


def report(name: str, figures: dict[str, Any]) -> None:
    """Print the figures as one JSON line, and keep them in $FUSIONSTREAM_ARTIFACTS/<name>.json when it is set."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(line)
    if artifacts := os.environ.get("FUSIONSTREAM_ARTIFACTS"):
        out = Path(artifacts)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(line + "\n")


async def produce_paced(settings: Settings, records: Sequence[Record], speed: float, chunk: int = 50) -> None:
    """Produce like a live source running ``speed`` times faster than real time (by event time)."""
    t0, started = records[0].t_start_ns, time.monotonic()
    for first in range(0, len(records), chunk):
        part = records[first : first + chunk]
        due = (part[0].t_start_ns - t0) / NS / speed - (time.monotonic() - started)
        if due > 0:
            await asyncio.sleep(due)
        await produce(settings, part)


class PrivateBroker:
    """A broker of one test's own (scripts/kafka.sh on free ports, state in a temporary directory).

    ``stop(keep_state=True)`` shuts it down cleanly and keeps its topics, offsets and groups,
    so ``start()`` brings back the same broker: a restart, as an operator would do it.
    """

    def __init__(self, state_dir: Path, port: int, controller_port: int) -> None:
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {**os.environ, "KAFKA_STATE_DIR": str(state_dir), "KAFKA_PORT": str(port),
                    "KAFKA_CONTROLLER_PORT": str(controller_port)}

    def _run(self, command: str, *, keep_state: bool = False, timeout_s: float = 180) -> str:
        env = {**self.env, "KAFKA_KEEP_STATE": "1" if keep_state else "0"}
        done = subprocess.run([str(KAFKA_SH), command], env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def start(self) -> None:
        # A loaded machine can take longer than kafka.sh's default minute to bring a JVM up.
        self.env.setdefault("KAFKA_START_TIMEOUT", "150")
        self._run("start")

    def stop(self, *, keep_state: bool) -> None:
        self._run("stop", keep_state=keep_state)


def service_processes(tmp_path: Path) -> Iterator[Callable[[Settings, str], ServiceProcess]]:
    """Body of a ``processes`` fixture: starts service subprocesses, reaps them, prints their logs at the end."""
    started: list[ServiceProcess] = []

    def start(settings: Settings, instance_id: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(settings, instance_id, tmp_path)
        process.env.update({f"FUSIONSTREAM_{name.upper()}": value for name, value in env.items()})
        started.append(process.start())
        return process

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()
            print(f"--- serve {process.instance_id} ({process.log.name}) ---\n{process.tail(6000)}")


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are picked."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def until_covered(reader: Reader, expected: set[tuple[str, int]], timeout_s: float,
                        alive: Callable[[], None]) -> None:
    """Read predictions until every expected window is there; on timeout, say which windows are missing."""
    try:
        await reader.until(lambda r: expected <= set(r.windows()), timeout_s=timeout_s, on_wait=alive)
    except TimeoutError:
        missing = sorted(expected - set(reader.windows()))
        raise AssertionError(f"{len(missing)} of {len(expected)} windows never predicted, e.g. {missing[:8]}") from None
