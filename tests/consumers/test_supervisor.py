"""`fusionstream serve --workers N`: the supervisor, its workers, and fast recovery with static membership.

Without a broker: how the host's /metrics merges the workers', when its /healthz is healthy, the worker
count and thread split, the settings line a worker gets. Against the real broker (subprocesses, as in
production): ``kill -9`` of one worker during a live run, ten times (no window lost; exactly-once: none
duplicated; each kill → the restarted worker's first prediction timed), a graceful SIGTERM of the
supervisor (every worker stops, offsets committed, the static members left the group), and a static
member that stops for good handing its partitions over at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from faultkit import produce_paced, report, scrape, service_processes, total, window_figures
from servicekit import (
    PARTITIONS,
    Reader,
    ServiceProcess,
    all_topics,
    census_of,
    http_get,
    produce,
    service_settings,
    synthetic,
)

from fusionstream.consumers.engine import service_options, service_threads
from fusionstream.consumers.kafka import delete_topics, ensure_topics, leave_group, make_admin, make_consumer
from fusionstream.consumers.service.hostview import WorkerView, host_health, merge_families
from fusionstream.consumers.service.supervisor import resolve_workers, threads_per_worker
from fusionstream.consumers.service.worker import settings_line
from fusionstream.consumers.settings import Settings

DEADLINE_S = 180.0
#: kill → first prediction of the restarted worker (issue #17: p99 ≤ 3 s over 10 kills).
RECOVERY_P99_S = 3.0


# -- without a broker -----------------------------------------------------------------------------

WORKER_TEXT = """# HELP fusionstream_predictions_published_total Predictions acknowledged by the broker.
# TYPE fusionstream_predictions_published_total counter
fusionstream_predictions_published_total {n}
# HELP fusionstream_consumer_lag High watermark minus the next offset to fetch, per input partition.
# TYPE fusionstream_consumer_lag gauge
fusionstream_consumer_lag{{topic="fs.video",partition="{p}"}} 3.0
"""


def test_host_metrics_hold_each_family_once_with_every_worker_labelled() -> None:
    families = {f.name: f for f in merge_families([("0", WORKER_TEXT.format(n=5, p=0)),
                                                   ("1", WORKER_TEXT.format(n=7, p=2))])}
    assert set(families) == {"fusionstream_predictions_published", "fusionstream_consumer_lag"}
    published = families["fusionstream_predictions_published"]
    assert published.type == "counter"
    totals = {s.labels["worker"]: s.value for s in published.samples if s.name.endswith("_total")}
    assert totals == {"0": 5.0, "1": 7.0}
    lag = families["fusionstream_consumer_lag"].samples
    assert {(s.labels["worker"], s.labels["partition"]) for s in lag} == {("0", "0"), ("1", "2")}


def test_host_health_waits_for_every_worker_and_forgives_a_restart_within_the_grace_period() -> None:
    views = [WorkerView(0, "h-0", 1), WorkerView(1, "h-1", 2)]
    ok, detail = host_health(views, grace_s=10, now=100)
    assert not ok and detail["state"] == "starting", "no worker served yet"
    for view in views:
        view.healthy, view.healthy_at, view.state = True, 100.0, "running"
    assert host_health(views, grace_s=10, now=100)[0]
    views[1].healthy, views[1].state = False, "down"  # died at about t=100
    ok, detail = host_health(views, grace_s=10, now=105)
    assert ok and detail["workers"]["1"]["state"] == "down", "restarting, within the grace period"
    ok, detail = host_health(views, grace_s=10, now=111)
    assert not ok and detail["workers"]["1"]["unhealthy_for_s"] == 11.0


def test_auto_workers_follow_the_cores_the_partitions_and_the_gpu() -> None:
    assert resolve_workers(Settings(workers=3)) == 3
    assert resolve_workers(Settings(workers="auto"), cores=16) == 4, "no more workers than partitions (4)"
    assert resolve_workers(Settings(workers="auto", partitions=12), cores=16) == 8
    assert resolve_workers(Settings(workers="auto", partitions=12, backend="torch", device="cuda"), cores=16) == 4
    assert resolve_workers(Settings(workers="auto"), cores=2) == 1, "two cores: one process, no supervisor"
    assert threads_per_worker(Settings(threads=0), 3, cores=16) == 4, "a core left to each worker's Python thread"
    assert threads_per_worker(Settings(threads=0), 2, cores=2) == 1
    assert threads_per_worker(Settings(threads=12), 3, cores=16) == 4, "threads, when set, shared out as they are"
    assert threads_per_worker(Settings(threads=2), 4) == 1, "at least one engine thread each"


def test_a_pipeline_leaves_a_core_to_its_python_thread_unless_threads_says_otherwise() -> None:
    assert service_threads(Settings(threads=0), cores=2) == 1
    assert service_threads(Settings(threads=0), cores=16) == 15
    assert service_threads(Settings(threads=0), cores=1) == 1
    assert service_threads(Settings(threads=2), cores=2) == 2
    assert service_options(Settings(threads=0, backend="onnxruntime"))["threads"] == service_threads(
        Settings(threads=0))


def test_a_worker_gets_every_setting_secrets_included(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                        sasl_password="s3cret", group_id="g", threads=8)
    monkeypatch.setenv("FUSIONSTREAM_GROUP_ID", "from-the-environment")  # the worker's env must not win
    line = json.loads(settings_line(settings, ready_fd=7, workers=1, threads=2))
    assert line["ready_fd"] == 7
    copy = Settings(**line["settings"])
    assert copy.sasl_password is not None and copy.sasl_password.get_secret_value() == "s3cret"
    assert (copy.group_id, copy.threads, copy.workers) == ("g", 2, 1)
    # Unset stays unset: the worker takes the model's window, as a single `serve` does.
    assert "window_ms" not in copy.model_fields_set and "hop_ms" not in copy.model_fields_set


# -- against the broker ---------------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from service_processes(tmp_path)


def host_health_of(service: ServiceProcess) -> dict[str, Any]:
    service.alive()
    status, body = http_get(service.port, "/healthz")
    return {"http_status": status, **json.loads(body)}


async def until_host(service: ServiceProcess, ready: Callable[[dict[str, Any]], bool],
                     timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            health = await asyncio.to_thread(host_health_of, service)
            if ready(health):
                return health
        except OSError:
            health = {}
        if time.monotonic() > deadline:
            raise TimeoutError(f"host /healthz not as expected after {timeout_s}s: {health}")
        await asyncio.sleep(0.1)


class TimedReader(Reader):
    """A Reader that notes when each record arrived (monotonic), to time recoveries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[float] = []

    async def poll(self, timeout_ms: int = 50) -> None:
        before = len(self.records)
        await super().poll(timeout_ms)
        self.arrived.extend([time.monotonic()] * (len(self.records) - before))

    async def end_offsets(self, partitions: set[int]) -> dict[int, int]:
        ends = await self._consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}

    def first_new(self, ends: dict[int, int]) -> float | None:
        """Arrival time of the first record past ``ends`` in one of its partitions."""
        for record, arrived in zip(self.records, self.arrived, strict=True):
            if record.partition in ends and record.offset >= ends[record.partition]:
                return arrived
        return None


def ready_to_kill(started: dict[int, float], stable_s: float) -> Callable[[dict[str, Any]], bool]:
    """Every worker healthy, the standby warm, and each worker serving long enough to be restarted at once."""
    def ready(health: dict[str, Any]) -> bool:
        now = time.monotonic()
        return (health["http_status"] == 200 and health["standby"] == "warm"
                and all(w["healthy"] and now - started.get(int(i), 0) >= stable_s
                        for i, w in health["workers"].items()))
    return ready


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize(("exactly_once", "kills"), [(False, 3), (True, 10)], ids=["at-least-once", "exactly-once"])
def test_kafka_workers_killed_one_at_a_time_are_restarted_fast_and_lose_no_window(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess],
    exactly_once: bool, kills: int,
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, exactly_once=exactly_once)
    census = census_of(settings)
    seconds = 20 + 8 * kills  # live input for the whole run
    records = list(census.watch(synthetic(streams=4, seconds=seconds, seed=17).records()))
    recoveries: list[float] = []

    async def scenario() -> tuple[TimedReader, Reader, dict[str, float], dict[str, Any], int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            host = processes(settings, "sup", WORKERS="2")
            started: dict[int, float] = {}
            committed_only = exactly_once
            async with TimedReader(kafka_bootstrap, settings.predictions_topic,
                                   read_committed=committed_only) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic, read_committed=committed_only) as dead:
                await until_host(host, lambda h: h["http_status"] == 200)
                producing = asyncio.create_task(produce_paced(settings, records, speed=1.0))
                reading = asyncio.create_task(reader.until(lambda r: producing.done() and census.expected <= set(
                    r.windows()), timeout_s=seconds + DEADLINE_S, on_wait=host.alive))
                for kill in range(kills):
                    health = await until_host(host, ready_to_kill(started, stable_s=6.0))
                    victim = health["workers"][str(kill % 2)]
                    owned = set(victim["health"]["assigned_partitions"])
                    assert owned, f"worker {kill % 2} owns partitions to take back"
                    os.kill(victim["pid"], signal.SIGKILL)
                    killed = time.monotonic()
                    ends = await reader.end_offsets(owned)
                    while (first := reader.first_new(ends)) is None:
                        assert time.monotonic() - killed < 60, f"kill {kill}: no prediction of {owned} in 60 s"
                        await asyncio.sleep(0.02)
                    recoveries.append(first - killed)
                    after = await until_host(host, lambda h, pid=victim["pid"], i=str(kill % 2):
                                             h["workers"][i]["pid"] != pid and h["workers"][i]["healthy"])
                    started[kill % 2] = killed
                    assert set(after["workers"][str(kill % 2)]["health"]["assigned_partitions"]) == owned, \
                        "static membership: the restarted worker took its own partitions back"
                await producing
                await reading
                samples = await asyncio.to_thread(scrape, host.port)
                health = await asyncio.to_thread(host_health_of, host)
                rc = host.terminate()
                await reader.to_end()
                await dead.to_end()
            return reader, dead, samples, health, rc
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, samples, health, rc = asyncio.run(scenario())
    figures = window_figures(reader.windows(), census.expected)
    ordered = sorted(recoveries)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    mode = "exactly_once" if exactly_once else "at_least_once"
    report(f"worker_kill_recovery_{mode}", {**figures, "kills": kills, "recovery_s": [round(r, 2) for r in recoveries],
                                            "recovery_p50_s": round(statistics.median(recoveries), 2),
                                            "recovery_p99_s": round(p99, 2)})
    assert rc == 0, "the supervisor and its workers stopped cleanly"
    assert figures["windows_lost"] == 0, f"missing {sorted(census.expected - set(reader.windows()))[:5]}"
    if exactly_once:
        assert figures["duplicates"] == 0, "read_committed sees every window once, kills or not"
    assert dead.records == [], "re-read records are not late"
    assert total(samples, "fusionstream_worker_restarts_total") == kills
    assert sum(w["restarts"] for w in health["workers"].values()) == kills
    assert total(samples, "fusionstream_predictions_published_total") > 0
    assert any('worker="1"' in name for name in samples if name.startswith("fusionstream_predictions_published"))
    assert p99 <= RECOVERY_P99_S, f"kill → first prediction of the restarted worker: {ordered}"


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_sigterm_of_the_supervisor_stops_every_worker_with_offsets_committed(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess],
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=4, seconds=6, seed=18).records()))
    inputs = [settings.video_topic, settings.audio_topic, settings.text_topic]

    async def scenario() -> tuple[dict[str, Any], dict[str, float], int, dict[TopicPartition, int], dict[Any, Any],
                                  list[Any]]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        admin = make_admin(kafka_bootstrap)
        await admin.start()
        try:
            host = processes(settings, "grace", WORKERS="2")
            health = await until_host(host, lambda h: h["http_status"] == 200)
            await produce(settings, records)
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader:
                await reader.until(lambda r: census.expected <= set(r.windows()), on_wait=host.alive)
            samples = await asyncio.to_thread(scrape, host.port)
            pids = [w["pid"] for w in health["workers"].values()]
            assert host.proc is not None
            host.proc.send_signal(signal.SIGTERM)
            stopping = await asyncio.to_thread(_health_until_gone, host.port)
            rc = host.proc.wait(timeout=60)
            consumer = make_consumer(bootstrap=kafka_bootstrap, group_id="reader-" + topic_prefix)
            await consumer.start()
            try:
                ends = await consumer.end_offsets([TopicPartition(t, p) for t in inputs for p in range(PARTITIONS)])
            finally:
                await consumer.stop()
            committed = await admin.list_consumer_group_offsets(settings.group_id)
            described = (await admin.describe_consumer_groups([settings.group_id]))[0]
            group = described.groups[0]  # (error_code, group_id, state, protocol_type, protocol, members, ...)
            alive = [pid for pid in pids if _running(pid)]
            return health, samples, rc, ends, committed, [group, alive, stopping]
        finally:
            await admin.close()
            await delete_topics(kafka_bootstrap, all_topics(settings))

    health, samples, rc, ends, committed, (group, alive, stopping) = asyncio.run(scenario())
    # It answered 200 "running" while its workers were leaving the group (an outside tester's finding): from the
    # signal on, a load balancer must be told to look elsewhere.
    # (The first answers may come before the supervisor's loop has taken the signal.)
    after = stopping[next((i for i, said in enumerate(stopping) if said != (200, "running")), len(stopping)):]
    assert after and set(after) == {(503, "stopping")}, stopping
    assert health["state"] == "running" and set(health["workers"]) == {"0", "1"}
    assert {w["instance"] for w in health["workers"].values()} == {"grace-0", "grace-1"}
    owned = [set(w["health"]["assigned_partitions"]) for w in health["workers"].values()]
    assert owned[0] and owned[1] and not owned[0] & owned[1], "the group split the partitions"
    for worker in ("0", "1"):
        assert samples[f'fusionstream_worker_up{{worker="{worker}"}}'] == 1.0
        assert f'fusionstream_records_consumed_total{{topic="{settings.video_topic}",worker="{worker}"}}' in samples
    assert rc == 0
    assert alive == [], "every worker exited"
    assert {tp: committed[tp].offset for tp in ends} == ends, "every input record committed"
    assert group[2] == "Empty" and not group[5], "both static members left the group explicitly"


def _health_until_gone(port: int) -> list[tuple[int, str]]:
    """Each /healthz answer (status, state), polled until the port closes."""
    said = []
    while True:
        try:
            status, body = http_get(port, "/healthz")
        except OSError:
            return said
        said.append((status, json.loads(body)["state"]))
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.kafka
def test_kafka_a_static_member_that_leaves_hands_its_partitions_over_at_once(
    kafka_bootstrap: str, topic_prefix: str,
) -> None:
    """aiokafka sends no LeaveGroup for a static member; without ``leave_group`` its partitions would wait out
    its 10 s session."""
    topic, group = f"{topic_prefix}.static", f"{topic_prefix}-static"

    async def scenario() -> float:
        await ensure_topics(kafka_bootstrap, [topic], PARTITIONS)
        admin = make_admin(kafka_bootstrap)
        await admin.start()
        a, b = (make_consumer(topic, bootstrap=kafka_bootstrap, group_id=group, group_instance_id=name,
                              session_timeout_ms=10_000, heartbeat_interval_ms=500) for name in ("a", "b"))
        try:
            await a.start()
            await b.start()
            while not (a.assignment() and b.assignment()):
                await asyncio.gather(a.getmany(timeout_ms=100), b.getmany(timeout_ms=100))
            await a.stop()
            left = time.monotonic()
            await leave_group(admin, group, "a")
            while len(b.assignment()) < PARTITIONS:
                assert time.monotonic() - left < 8, "b did not get a's partitions before a's session would end"
                await b.getmany(timeout_ms=100)
            return time.monotonic() - left
        finally:
            await b.stop()
            await admin.close()
            await delete_topics(kafka_bootstrap, [topic])

    moved_s = asyncio.run(scenario())
    print(f"partitions moved {moved_s:.2f} s after the static member left")
    assert moved_s < 5


@pytest.mark.slow
def test_workers_that_never_serve_are_restarted_with_backoff_then_given_up(tmp_path: Path) -> None:
    """No broker: each worker exits 1 at once (``broker_wait_s`` 0); the supervisor backs off, then exits 1."""
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9", "FUSIONSTREAM_BROKER_WAIT_S": "0",
           "FUSIONSTREAM_WORKERS": "2", "FUSIONSTREAM_METRICS_PORT": "0", "FUSIONSTREAM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fusionstream", "serve"], env=env, capture_output=True, text=True,
                          timeout=DEADLINE_S)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "restarting in 0.5 s" in done.stdout and "restarting in 4.0 s" in done.stdout
    assert "failed 5 starts in a row" in done.stdout
    assert took > 0.5 + 1 + 2 + 4, "the backoff was waited out"
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors and all(line.startswith("fusionstream: error:") for line in errors), "one line per failure"
    # Each worker's line says which worker it is; the last says why the command gave up.
    assert all(re.match(r"fusionstream: error: \[\S+-[01]\] ", line) for line in errors[:-1]), errors
    assert "failed 5 starts in a row" in errors[-1]


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_a_frozen_exactly_once_worker_neither_duplicates_nor_stays_stuck(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess],
) -> None:
    """SIGSTOP of one worker past the group's 10 s session: the other takes its partitions and republishes from
    the last commit. First the frozen one resumes (SIGCONT after 13 s): its open transaction must be aborted,
    not committed (a client read 4 windows twice after a 25 s stop), and it exits to be restarted. Then one
    stays frozen: the supervisor kills it once it has not answered for 20 s, and its restart fences the
    transaction it left open. Read committed, every window once."""
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, exactly_once=True)
    census = census_of(settings)
    seconds = 75
    records = list(census.watch(synthetic(streams=4, seconds=seconds, seed=19).records()))

    async def freeze(host: ServiceProcess, worker: str, started: dict[int, float], resume_after_s: float | None
                     ) -> int:
        health = await until_host(host, ready_to_kill(started, stable_s=6.0))
        pid = health["workers"][worker]["pid"]
        os.kill(pid, signal.SIGSTOP)
        if resume_after_s is not None:
            await asyncio.sleep(resume_after_s)
            os.kill(pid, signal.SIGCONT)
        await until_host(host, lambda h: h["workers"][worker]["pid"] != pid and h["workers"][worker]["healthy"],
                         timeout_s=90)
        started[int(worker)] = time.monotonic()
        return pid

    async def scenario() -> tuple[Reader, Reader, int, str]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            host = processes(settings, "frz", WORKERS="2")
            started: dict[int, float] = {}
            async with Reader(kafka_bootstrap, settings.predictions_topic, read_committed=True) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic, read_committed=True) as dead:
                await until_host(host, lambda h: h["http_status"] == 200)
                producing = asyncio.create_task(produce_paced(settings, records, speed=1.0))
                reading = asyncio.create_task(reader.until(lambda r: producing.done() and census.expected <= set(
                    r.windows()), timeout_s=seconds + DEADLINE_S, on_wait=host.alive))
                await freeze(host, "0", started, resume_after_s=13.0)
                await freeze(host, "1", started, resume_after_s=None)
                await producing
                await reading
                rc = host.terminate()
                await reader.to_end()
                await dead.to_end()
            return reader, dead, rc, host.tail(200_000)
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, rc, log = asyncio.run(scenario())
    figures = window_figures(reader.windows(), census.expected)
    report("frozen_worker_exactly_once", figures)
    assert "stood still for 1" in log, "the resumed worker refused to commit (see freezes.py)"
    assert re.search(r"worker 1 \(frz-1, pid \d+\) not answering for 2\d s: killing it", log), log[-3000:]
    assert figures["windows_lost"] == 0, f"missing {sorted(census.expected - set(reader.windows()))[:5]}"
    assert figures["duplicates"] == 0, "read_committed sees every window once, frozen workers or not"
    assert dead.records == [], "nothing late: what the resumed worker dead-lettered was in its aborted transaction"
    assert rc == 0
