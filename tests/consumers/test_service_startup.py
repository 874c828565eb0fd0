"""`serve` at start: it waits for the broker, says in one line why it cannot start, and refuses windows the
model was not trained on. The retry logic and the log filter without a broker; `serve` as a subprocess against
no broker, a broker that starts 20 s after it, and the shared broker."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka.errors import CoordinatorNotAvailableError, KafkaConnectionError
from faultkit import PrivateBroker, free_ports
from servicekit import (
    REPO_ROOT,
    Reader,
    ServiceProcess,
    census_of,
    covers,
    free_port,
    produce,
    service_settings,
    synthetic,
    wait_healthy,
)

from fusionstream.consumers.kafka import BrokerAuthError, MissingTopicsError, delete_topics, ensure_topics
from fusionstream.consumers.kafka.client_logs import lower_routine_client_errors
from fusionstream.consumers.kafka.readiness import Backoff, when_ready
from fusionstream.consumers.producers.errors import BrokerUnavailable
from fusionstream.consumers.service import InferenceService
from fusionstream.consumers.settings import ModelWindowMismatch, Settings
from fusionstream.engines.spec import ModelSpec

NS = 1_000_000_000
MS = 1_000_000


# -- waiting for the broker, without a broker ----------------------------------------------------


@dataclass
class FakeTime:
    """A clock that only the fake sleep moves: the backoff is checked without waiting for it."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_an_unreachable_broker_is_retried_with_capped_backoff_then_given_up_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused at once
    fake = FakeTime()
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    with caplog.at_level(logging.INFO), pytest.raises(BrokerUnavailable) as raised:
        asyncio.run(when_ready(step, bootstrap=address, wait_s=20, backoff=Backoff(0.5, 5.0),
                               clock=fake.clock, sleep=fake.sleep))

    assert calls == [], "the step runs only once a broker answers"
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5], "doubling, capped at 5 s, never past the wait"
    attempts = [r.getMessage() for r in caplog.records if "not reachable yet" in r.getMessage()]
    assert len(attempts) == len(fake.slept) and all(r.levelno == logging.WARNING for r in caplog.records
                                                    if "not reachable yet" in r.getMessage())
    assert attempts[2] == (f"broker {address} not reachable yet (attempt 3, retrying in 2.0 s; giving up after 20 s): "
                           "connection refused")
    message = str(raised.value)
    assert "\n" not in message and address in message and "20 s" in message and "FUSIONSTREAM_BROKER_WAIT_S" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no aiokafka ERROR lines while waiting"


def test_a_coordinator_lookup_that_is_retried_is_logged_as_info_not_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fusionstream.consumers.kafka.client_logs import _BrokerAway

    aiokafka_log = logging.getLogger("aiokafka.consumer.group_coordinator")
    for installed in list(aiokafka_log.filters):  # an earlier test's filters: their rate limits start afresh
        aiokafka_log.removeFilter(installed)
    lower_routine_client_errors()
    lower_routine_client_errors()  # idempotent
    assert len(aiokafka_log.filters) == 2 and isinstance(aiokafka_log.filters[1], _BrokerAway)
    with caplog.at_level(logging.INFO):
        aiokafka_log.error("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())
        aiokafka_log.error("Group Coordinator Request failed: %s", KafkaConnectionError("x"))  # the same, held back
        aiokafka_log.error("Heartbeat session expired - marking coordinator dead")
        aiokafka_log.error("Heartbeat failed: %r", RuntimeError("something else"))
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in levels] == ["INFO", "WARNING", "ERROR"], levels
    assert "not available yet" in levels[0][1]
    assert "one such line per 10 s" in levels[1][1], "a broker restart's routine expiry: a warning, rate-limited"
    caplog.clear()
    for installed in list(aiokafka_log.filters):
        aiokafka_log.removeFilter(installed)
    lower_routine_client_errors()
    with caplog.at_level(logging.WARNING):
        aiokafka_log.error("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())
    assert caplog.records == [], "lowered to INFO, it obeys the configured level"


def test_fusionstream_debug_leaves_aiokafkas_wire_debug_off_unless_asked() -> None:
    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    wire = logging.getLogger("aiokafka.conn")
    seen: list[str] = []
    handler = logging.StreamHandler(io.StringIO())  # a plain handler, with no level of its own (as basicConfig's)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    old_root, old_client = root.level, client.level
    root.addHandler(handler)
    try:
        for level, asked, expected in (
            (logging.DEBUG, logging.NOTSET, ["ours", "kept"]),  # FUSIONSTREAM_LOG_LEVEL=DEBUG: no wire lines
            (logging.DEBUG, logging.DEBUG, ["ours", "wire", "kept"]),  # aiokafka's level set on purpose: left
            (logging.WARNING, logging.NOTSET, []),  # WARNING: aiokafka's INFO lines stay out too
        ):
            seen.clear()
            root.setLevel(level)
            client.setLevel(asked)
            lower_routine_client_errors()
            logging.getLogger("fusionstream.consumers.service").debug("ours")
            wire.debug("wire")
            wire.info("kept")
            assert seen == expected, (logging.getLevelName(level), seen)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_root)
        client.setLevel(old_client)


def test_a_broker_that_is_away_is_a_few_warnings_not_a_flood_of_errors(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker restart: aiokafka logged each failed connection, metadata request and fetch at ERROR, about
    3,400 lines a second; a broker that lost its data, "topic not found" at each metadata refresh (158,000 a
    minute) and a producer's coordinator lookups at INFO ten a second. One line per kind per 10 s now (a
    WARNING, an INFO for a retried lookup), saying how many it held back."""
    from fusionstream.consumers.kafka import client_logs
    from fusionstream.consumers.kafka.client_logs import _BrokerAway

    now = [0.0]
    away = _BrokerAway(clock=lambda: now[0])
    kinds = {("test.aiokafka", "Unable connect to node with id %s: %s"): logging.WARNING,
             ("test.aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s"): logging.WARNING,
             ("test.aiokafka.cluster", "Topic %s not found in cluster metadata"): logging.WARNING,
             ("test.aiokafka.producer.sender", "Discovered coordinator %s for group id %s"): logging.INFO}
    for key, level in kinds.items():
        monkeypatch.setitem(client_logs._BROKER_AWAY, key, level)
    client, fetcher, cluster, sender = (logging.getLogger(name) for name, _ in kinds)
    for logger in (client, fetcher, cluster, sender):
        logger.addFilter(away)
    try:
        with caplog.at_level(logging.INFO):
            for i in range(500):
                client.error("Unable connect to node with id %s: %s", 1, "connection refused")
                fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
                cluster.error("Topic %s not found in cluster metadata", f"fs.{('video', 'audio', 'text')[i % 3]}")
                sender.info("Discovered coordinator %s for group id %s", 1, "fusionstream")
                now[0] += 0.01  # 5 s in all
            client.error("Something else went wrong")  # not one of the kinds: as it was
            now[0] += 10.0
            client.error("Unable connect to node with id %s: %s", 1, "connection refused")
        lines = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING", "INFO", "ERROR", "WARNING"], lines
        assert "one such line per 10 s" in lines[0][1] and "connection refused" in lines[0][1]
        assert lines[2][1].startswith("Topic fs.video not found in cluster metadata")
        assert lines[5][1].endswith("(499 more like it in the last 10 s)")
    finally:
        for logger in (client, fetcher, cluster, sender):
            logger.removeFilter(away)


def test_every_client_of_ours_quiets_a_broker_that_is_away() -> None:
    """Subscribers, producers and the viewer make their clients with make_consumer/make_producer: a process
    that logs at INFO (a subscriber app) got aiokafka's thousands of ERROR lines a second in an outage too."""
    from fusionstream.consumers.kafka import make_consumer
    from fusionstream.consumers.kafka.client_logs import _BrokerAway

    for name in ("aiokafka", "aiokafka.consumer.fetcher"):  # whatever an earlier test installed: gone
        logger = logging.getLogger(name)
        for installed in [f for f in logger.filters if isinstance(f, _BrokerAway)]:
            logger.removeFilter(installed)

    async def make() -> None:
        consumer = make_consumer("t", bootstrap="127.0.0.1:1", group_id="g")  # never started: connects to nothing
        await consumer.stop()

    asyncio.run(make())
    for name in ("aiokafka", "aiokafka.consumer.fetcher"):
        assert sum(isinstance(f, _BrokerAway) for f in logging.getLogger(name).filters) == 1, name


# -- window and hop against the model ------------------------------------------------------------


def test_window_settings_that_disagree_with_the_model_are_refused_naming_both_values(shipped_model: Path) -> None:
    spec = ModelSpec.load(shipped_model)
    settings = Settings(model_dir=shipped_model, window_ms=2000, hop_ms=1000)
    with pytest.raises(ModelWindowMismatch) as raised:
        InferenceService(settings, None, spec)  # type: ignore[arg-type]  # refused before the runner is used
    message = str(raised.value)
    assert "window_ms=2000" in message and "1000 ms" in message and "FUSIONSTREAM_WINDOW_MS=1000" in message
    assert "hop_ms=1000" in message and "500 ms" in message and "FUSIONSTREAM_HOP_MS=500" in message
    assert "\n" not in message
    with pytest.raises(ModelWindowMismatch, match=r"^hop_ms=250 .*FUSIONSTREAM_HOP_MS=500"):
        Settings(model_dir=shipped_model, hop_ms=250).check_model_windows(spec)
    config = Settings(model_dir=shipped_model).model_window_config(spec)
    assert (config.window_ns, config.hop_ns) == (spec.window_ns, spec.hop_ns)


def test_a_model_without_a_declared_hop_has_only_its_window_checked() -> None:
    no_hop = SimpleNamespace(window_ns=NS, hop_ns=None, frames_per_window=4, sample_rate=16_000)
    config = Settings(hop_ms=250).model_window_config(no_hop)  # type: ignore[arg-type]
    assert config.hop_ns == 250_000_000
    with pytest.raises(ModelWindowMismatch, match="window_ms=2000"):
        Settings(window_ms=2000, hop_ms=250).check_model_windows(no_hop)  # type: ignore[arg-type]


def test_unset_windows_are_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """model-format.md: serve, demo and bench take the window from model.json; only a window the user set
    (flag, environment, file) that disagrees is refused."""
    two_s = SimpleNamespace(window_ns=2 * NS, hop_ns=None, frames_per_window=4, sample_rate=16_000)
    config = Settings().model_window_config(two_s)  # type: ignore[arg-type]
    assert (config.window_ns, config.hop_ns) == (2 * NS, 500 * MS)  # no hop declared: the default hop
    declared = SimpleNamespace(window_ns=2 * NS, hop_ns=NS, frames_per_window=4, sample_rate=16_000)
    config = Settings().model_window_config(declared)  # type: ignore[arg-type]
    assert (config.window_ns, config.hop_ns) == (2 * NS, NS)
    short = SimpleNamespace(window_ns=400 * MS, hop_ns=None, frames_per_window=4, sample_rate=16_000)
    config = Settings().model_window_config(short)  # type: ignore[arg-type]
    assert (config.window_ns, config.hop_ns) == (400 * MS, 400 * MS)  # the default hop, no longer than the window
    with pytest.raises(ModelWindowMismatch, match="hop_ms=450 is longer than the model's window of 400 ms"):
        Settings(hop_ms=450).check_model_windows(short)  # type: ignore[arg-type]
    # A 400 ms model's window given alone: no conflict with the default hop, which is not given.
    config = Settings(window_ms=400).model_window_config(short)  # type: ignore[arg-type]
    assert (config.window_ns, config.hop_ns) == (400 * MS, 400 * MS)
    with pytest.raises(ValueError, match="hop_ms 450 is longer than window_ms 400"):
        Settings(window_ms=400, hop_ms=450)
    monkeypatch.setenv("FUSIONSTREAM_WINDOW_MS", "1000")  # set, even to the default: it must agree
    with pytest.raises(ModelWindowMismatch, match=r"window_ms=1000 disagrees .* unset window_ms to take the model's"):
        Settings().check_model_windows(declared)  # type: ignore[arg-type]


# -- against the shared broker -------------------------------------------------------------------


def test_a_sasl_client_on_a_plaintext_listener_fails_at_once_instead_of_waiting(kafka_bootstrap: str) -> None:
    sasl = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc",
                    sasl_password="hunter2")
    started = time.monotonic()

    async def step() -> None:
        raise AssertionError("never reached")

    with pytest.raises(BrokerAuthError, match=r"does not accept SASL_PLAINTEXT.*FUSIONSTREAM_SECURITY_PROTOCOL"):
        asyncio.run(when_ready(step, bootstrap=kafka_bootstrap, security=sasl.kafka_security(), wait_s=60))
    assert time.monotonic() - started < 10


def test_a_step_that_finds_the_broker_not_ready_is_retried(kafka_bootstrap: str) -> None:
    tries: list[float] = []

    async def step() -> str:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise KafkaConnectionError("Unable to bootstrap")
        return "done"

    assert asyncio.run(when_ready(step, bootstrap=kafka_bootstrap, wait_s=30, backoff=Backoff(0.1, 0.1))) == "done"
    assert len(tries) == 2


def test_missing_topics_that_may_not_be_created_are_one_clear_error(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    existing, missing = f"startup-{tag}-there", f"startup-{tag}-missing"

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [existing], 1)
        try:
            with pytest.raises(MissingTopicsError, match=rf"{missing} do not exist .*FUSIONSTREAM_CREATE_TOPICS"):
                await ensure_topics(kafka_bootstrap, [existing, missing], 1, create=False)
            await ensure_topics(kafka_bootstrap, [existing], 1, create=False)  # all there: fine
        finally:
            await delete_topics(kafka_bootstrap, [existing, missing])

    asyncio.run(scenario())


# -- `serve` as a process ------------------------------------------------------------------------


class Serve:
    """`python -m fusionstream serve` with stdout and stderr kept apart; stdout lines timestamped as they come."""

    def __init__(self, settings: Settings, tmp_path: Path, **env: str) -> None:
        base = ServiceProcess(settings, f"startup-{uuid.uuid4().hex[:6]}", tmp_path)
        self.port = base.port
        self.env = {**base.env, **{f"FUSIONSTREAM_{k.upper()}": v for k, v in env.items()}}
        self.lines: list[tuple[float, str]] = []
        self._err: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "fusionstream", "serve"], cwd=REPO_ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # One reader per pipe, and nothing else reads them: communicate() beside a reader thread takes
        # some of stdout's lines for itself, and a test then misses a line that was printed.
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.append(self.proc.stderr.read())

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def wait_for(self, text: str, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while (seen := self.first(text)) is None:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.stdout()}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s}s:\n{self.stdout()}"
            time.sleep(0.1)
        return seen

    def finish(self, timeout_s: float) -> tuple[int, float, str]:
        """Wait for the exit; (status, when, stderr)."""
        self.proc.wait(timeout=timeout_s)
        ended = time.monotonic()
        self._close()
        return self.proc.returncode, ended, "".join(self._err)

    def _close(self) -> None:
        """Once the process is gone: let the readers take what is left, then close the pipes."""
        for reader in self._readers:
            reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def stdout(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        yield started
    finally:
        for serve in started:
            serve.kill()
            print(f"--- serve stdout ---\n{serve.stdout()[-6000:]}")


def test_serve_refuses_windows_the_model_was_not_trained_on_in_one_line(
    shipped_model: Path, tmp_path: Path, serves: list[Serve]
) -> None:
    settings = service_settings(f"127.0.0.1:{free_port()}", "fs-windows", shipped_model)
    serves.append(serve := Serve(settings, tmp_path, window_ms="2000", broker_wait_s="60"))
    rc, _, err = serve.finish(120)
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("fusionstream: error: window_ms=2000 disagrees"), err
    assert "FUSIONSTREAM_WINDOW_MS=1000" in err and "Traceback" not in err + serve.stdout()
    assert serve.first("not reachable yet") is None, "refused before waiting for a broker"


def test_serve_without_a_broker_gives_up_after_broker_wait_s_with_one_line_on_stderr(
    shipped_model: Path, tmp_path: Path, serves: list[Serve]
) -> None:
    wait_s = 5
    address = f"127.0.0.1:{free_port()}"
    settings = service_settings(address, "fs-nobroker", shipped_model)
    serves.append(serve := Serve(settings, tmp_path, broker_wait_s=str(wait_s)))
    first_try = serve.wait_for("not reachable yet (attempt 1,", timeout_s=120)
    rc, ended, err = serve.finish(wait_s + 60)
    assert rc == 1
    assert ended - first_try < wait_s + 3, f"gave up {ended - first_try:.1f}s after its first try"
    assert err.count("\n") == 1, f"exactly one line on stderr, got:\n{err}"
    assert err.startswith(f"fusionstream: error: cannot reach Kafka at {address}: not reachable after {wait_s} s")
    out = serve.stdout()
    assert "Traceback" not in err + out and " ERROR " not in out
    assert "giving up after 5 s" in out and "attempt 3" in out, out


@pytest.mark.kafka
@pytest.mark.slow
def test_serve_started_before_its_broker_connects_when_it_comes_up_and_serves(
    shipped_model: Path, tmp_path: Path, serves: list[Serve], topic_prefix: str
) -> None:
    broker = PrivateBroker(tmp_path / "kafka", *free_ports(2))
    settings = service_settings(broker.bootstrap, topic_prefix, shipped_model)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=2, seconds=4, seed=21).records()))
    serves.append(serve := Serve(settings, tmp_path, broker_wait_s="240"))
    started = serve.wait_for("not reachable yet (attempt 1,", timeout_s=120)

    async def scenario() -> Reader:
        await wait_healthy(serve.port, timeout_s=240)  # joined: its topics exist
        await produce(settings, records)
        async with Reader(broker.bootstrap, settings.predictions_topic) as reader:
            await reader.until(covers(census.expected), timeout_s=120)
        return reader

    try:
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))  # the broker comes up about 20 s later
        assert serve.proc.poll() is None, "no broker is no reason to exit while broker_wait_s lasts"
        broker.start()
        reader = asyncio.run(scenario())
        serve.proc.terminate()
        rc, _, err = serve.finish(90)
    finally:
        broker.stop(keep_state=False)

    out = serve.stdout()
    assert rc == 0 and err == "", err
    assert set(reader.windows()) == census.expected
    assert serve.first("not reachable yet (attempt 2,") is not None, "it retried while the broker was away"
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert errors == [], f"a first start on a new broker logs no ERROR: {errors[:3]}"


def test_every_quieted_client_message_is_one_aiokafka_logs() -> None:
    """The filter matches aiokafka's format strings exactly: one that drifted (a typo here, a new aiokafka)
    would silently let its flood through again. Each must be the first argument of a log call in the
    installed aiokafka's modules under that logger."""
    import ast

    import aiokafka

    from fusionstream.consumers.kafka.client_logs import _BROKER_AWAY, _ROUTINE_LOOKUP

    root = Path(aiokafka.__file__).parent
    logged: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(("aiokafka", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                    and node.func.attr in {"debug", "info", "warning", "error", "exception"}
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                logged.setdefault(module, set()).add(node.args[0].value)
    for logger, message in _BROKER_AWAY:
        if message == _ROUTINE_LOOKUP:  # ours: the coordinator lookup's line, rewritten before it gets here
            continue
        # Logger names are modules' (aiokafka.consumer.fetcher), or the package's for several (aiokafka).
        under = set().union(*(found for module, found in logged.items() if module.startswith(logger)))
        assert message in under, f"no module under {logger} logs {message!r}"
