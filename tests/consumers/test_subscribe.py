"""Prediction subscribers against a real broker: the async API, `fusionstream tail`, and the Faust app.

The predictions come from the :func:`written` fixture (Prediction(...).to_json() records,
as the service publishes them). The checks are functions of a :class:`OnTopic`
(bootstrap, topic, the values in publication order), so the same checks run against a
predictions topic filled by a live `fusionstream serve`: ``published =
read_published(bootstrap, topic)`` (bare aiokafka, independent of the API under test),
then ``check_api(published)``, ``check_tail(published)`` and ``check_faust(published,
app_id, log_file)`` (``check_faust`` sets FUSIONSTREAM_SUBSCRIBER_WINDOW_S=1 and compares
the per-second class counts).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fusionstream.consumers.kafka import ensure_topics, make_producer
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.subscribers import BadPrediction, PredictionRecord, parse_prediction, subscribe

REPO_ROOT = Path(__file__).resolve().parents[2]
FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]
PARTITIONS = 3
STREAMS = ("cam-00", "cam-01", "cam-02", "lobby")
PER_STREAM = 6
HOP_NS = 500_000_000
DEADLINE_S = 60.0
FAUST_WINDOW_S = 1


@dataclass(frozen=True)
class OnTopic:
    """A predictions topic and the prediction values on it, in the order each stream's were published."""

    bootstrap: str
    topic: str
    values: list[dict[str, Any]]

    def of(self, stream_id: str) -> list[dict[str, Any]]:
        return [v for v in self.values if v["stream_id"] == stream_id]

    @property
    def stream_ids(self) -> list[str]:
        return sorted({v["stream_id"] for v in self.values})


def make_prediction(stream_id: str, index: int, t0_ns: int) -> Prediction:
    """A plausible prediction: labels cycle through three digits, audio is missing in odd windows."""
    label = str((index * 7 + len(stream_id)) % 3)
    scores = {str(d): 0.02 for d in range(10)}
    scores[label] = 0.82
    return Prediction(
        stream_id=stream_id,
        t_start_ns=t0_ns + index * HOP_NS,
        t_end_ns=t0_ns + index * HOP_NS + 2 * HOP_NS,
        label=label,
        score=0.82,
        scores=scores,
        mask=(True, index % 2 == 0, index % 3 != 2),
        coverage=(1.0, 0.5 if index % 2 == 0 else 0.0, 0.25),
        model_version="test-1",
        closed_by="watermark" if index % 4 else "timeout",
        queue_ms=0.5 + index,
        inference_ms=3.25,
        latency_ms=4.0 + index,
        batch_size=1 + index % 4,
    )


async def _send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def write_predictions(
    bootstrap: str, topic: str, *, streams: tuple[str, ...] = STREAMS, multi_label: bool = False
) -> OnTopic:
    """Publish PER_STREAM predictions per stream (event times from now on), keyed by stream id; with
    ``multi_label``, as a multi-label model does (``labels``: none, one or two classes)."""
    # Whole seconds, so that the Faust app's tumbling windows hold a known set of predictions.
    t0 = time.time_ns() // 1_000_000_000 * 1_000_000_000
    values: list[dict[str, Any]] = []
    messages: list[tuple[bytes, bytes]] = []
    for index in range(PER_STREAM):
        for stream_id in streams:
            prediction = make_prediction(stream_id, index, t0)
            value = json.loads(prediction.to_json(capture_to_publish_ms=40.0 + index))
            if multi_label:  # none above its threshold in every fourth window, a second label in every third
                second = {str((int(value["label"]) + 1) % 10): 0.4} if index % 3 == 0 else {}
                value["labels"] = {} if index % 4 == 0 else {value["label"]: value["score"]} | second
            messages.append((stream_id.encode(), json.dumps(value).encode()))
            values.append(value)

    async def scenario() -> None:
        await ensure_topics(bootstrap, [topic], PARTITIONS)
        await _send(bootstrap, topic, messages)

    asyncio.run(scenario())
    return OnTopic(bootstrap, topic, values)


def read_published(bootstrap: str, topic: str) -> OnTopic:
    """What a predictions topic holds now, read with bare aiokafka clients (not the API under test).

    For a topic that a live `fusionstream serve` filled: ``check_tail(read_published(...))``, etc.
    """

    async def scenario() -> list[dict[str, Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
        finally:
            await admin.close()
        parts = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            values: list[dict[str, Any]] = []
            async with asyncio.timeout(DEADLINE_S):
                for tp, end in ends.items():
                    while await consumer.position(tp) < end:
                        for messages in (await consumer.getmany(tp, timeout_ms=200)).values():
                            values.extend(json.loads(m.value) for m in messages)
            return values
        finally:
            await consumer.stop()

    return OnTopic(bootstrap, topic, asyncio.run(scenario()))


@pytest.fixture
def written(kafka_bootstrap: str, topic_prefix: str) -> OnTopic:
    return write_predictions(kafka_bootstrap, f"{topic_prefix}.predictions")


async def _read(published: OnTopic, **options: Any) -> list[PredictionRecord]:
    async with asyncio.timeout(DEADLINE_S):
        async with subscribe(
            published.bootstrap, published.topic, from_beginning=True, until_end=True, **options
        ) as predictions:
            return [p async for p in predictions]


# -- reusable checks --------------------------------------------------------------------------------


def check_api(published: OnTopic) -> None:
    """Everything comes back, equal to what was published, with its Kafka coordinates; the stream filter holds."""
    records = asyncio.run(_read(published))
    assert sorted((r.stream_id, r.t_start_ns) for r in records) == sorted(
        (v["stream_id"], v["t_start_ns"]) for v in published.values
    )
    by_window = {v["window_id"]: v for v in published.values}
    for record in records:
        assert record.to_dict() == by_window[record.window_id]
        assert record.topic == published.topic and record.partition >= 0 and record.offset >= 0
        assert record.timestamp_ms > 0
        assert record.present == tuple(by_window[record.window_id]["modalities"].values())
        assert record.capture_to_publish_ms == by_window[record.window_id]["latency_ms"]["capture_to_publish"]
    # One key, one partition: each stream's predictions come in publication order.
    for stream_id in published.stream_ids:
        mine = [r for r in records if r.stream_id == stream_id]
        assert [r.t_start_ns for r in mine] == [v["t_start_ns"] for v in published.of(stream_id)]
        assert len({r.partition for r in mine}) == 1

    wanted = set(published.stream_ids[:2])
    filtered = asyncio.run(_read(published, stream_ids=wanted))
    assert {r.stream_id for r in filtered} == wanted
    assert len(filtered) == sum(len(published.of(s)) for s in wanted)


def check_tail(published: OnTopic, *, stream_id: str | None = None) -> None:
    """`fusionstream tail --json --from-beginning --limit N` prints the published values, one per line."""
    expected = published.of(stream_id) if stream_id else published.values
    args = ["tail", "--json", "--from-beginning", "--limit", str(len(expected))]
    if stream_id:
        args += ["--stream", stream_id]
    env = {
        **os.environ,
        "FUSIONSTREAM_BOOTSTRAP_SERVERS": published.bootstrap,
        "FUSIONSTREAM_PREDICTIONS_TOPIC": published.topic,
    }
    done = subprocess.run(
        [*FUSIONSTREAM, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(lines, key=lambda v: v["window_id"]) == sorted(expected, key=lambda v: v["window_id"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@contextmanager
def faust_worker(published: OnTopic, app_id: str, log_file: Path,
                 **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Faust worker of the subscriber app on a free port (``settings``: more ``FUSIONSTREAM_SUBSCRIBER_*``);
    yields its base URL and process; stops it with SIGTERM (unless the test killed it)."""
    port = int(settings.pop("web_port", 0)) or _free_port()
    env = {
        **os.environ,
        "FUSIONSTREAM_BOOTSTRAP_SERVERS": published.bootstrap,
        "FUSIONSTREAM_PREDICTIONS_TOPIC": published.topic,
        "FUSIONSTREAM_SUBSCRIBER_APP_ID": app_id,
        "FUSIONSTREAM_SUBSCRIBER_WEB_PORT": str(port),
        "FUSIONSTREAM_SUBSCRIBER_WEB_HOST": "127.0.0.1",
        "FUSIONSTREAM_SUBSCRIBER_WINDOW_S": str(FAUST_WINDOW_S),
        "FUSIONSTREAM_SUBSCRIBER_DATA_DIR": str(log_file.parent / "faust-data"),
        **{f"FUSIONSTREAM_SUBSCRIBER_{name.upper()}": value for name, value in settings.items()},
    }
    with log_file.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "fusionstream.consumers.subscribers.faust_app", "worker", "-l", "info"],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}", worker
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
                pytest.fail(f"the Faust worker did not stop on SIGTERM; log: {log_file}")
    assert code in (0, -signal.SIGTERM, -signal.SIGKILL), (
        f"the Faust worker exited with {code}:\n{log_file.read_text()[-3000:]}")


def _poll_streams(
    url: str, worker: subprocess.Popen[bytes], want: dict[str, tuple[int, int | None]], log_file: Path
) -> dict[str, Any]:
    """GET /streams/ until every stream shows ``(predictions, duplicates)`` as wanted (None: any)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            status, body = _get(f"{url}/streams/")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, body = 0, None
        shown = {s["stream_id"]: (s["predictions"], s["duplicates"]) for s in body["streams"]} if status == 200 else {}
        if shown.keys() == want.keys() and all(
            shown[s][0] == n and d in (None, shown[s][1]) for s, (n, d) in want.items()
        ):
            return body
        log = log_file.read_text()[-3000:]
        assert worker.poll() is None, f"the Faust worker exited with {worker.returncode}:\n{log}"
        assert time.monotonic() < deadline, f"the views never showed {want}, last {shown}:\n{log}"
        time.sleep(0.3)


def check_faust(published: OnTopic, app_id: str, log_file: Path, *, duplicates: dict[str, int] | None = None) -> None:
    """The Faust app's views show each stream's newest prediction and its class counts per tumbling window.

    ``duplicates``: re-deliveries sent on top of ``published.values``, per stream (None: not checked).
    """
    # A window published twice (at least once) counts once: the first copy of its highest revision (an
    # amended final replaces the one counted before it).
    unique: dict[str, list[dict[str, Any]]] = {}
    for stream_id in published.stream_ids:
        kept: dict[str, dict[str, Any]] = {}
        for v in published.of(stream_id):
            if v["window_id"] not in kept or v.get("revision", 0) > kept[v["window_id"]].get("revision", 0):
                kept[v["window_id"]] = v
        unique[stream_id] = list(kept.values())
    want = {s: (len(unique[s]), None if duplicates is None else duplicates.get(s, 0)) for s in published.stream_ids}
    window_ns = FAUST_WINDOW_S * 1_000_000_000
    with faust_worker(published, app_id, log_file) as (url, worker):
        body = _poll_streams(url, worker, want, log_file)
        assert body["window_s"] == FAUST_WINDOW_S
        for stream_id in published.stream_ids:
            mine = unique[stream_id]
            newest = max(mine, key=lambda v: (v["t_start_ns"], v.get("revision", 0)))
            assert [s["latest"] for s in body["streams"] if s["stream_id"] == stream_id] == [newest]
            status, stream = _get(f"{url}/streams/{stream_id}/")
            assert status == 200
            assert stream["latest"] == newest
            # A multi-label prediction counts once for each label it asserts (parse_prediction(v).classes).
            classes = [(v, parse_prediction(v).classes) for v in mine]
            assert stream["totals"] == dict(sorted(Counter(c for _, cs in classes for c in cs).items()))
            windows: dict[int, Counter[str]] = defaultdict(Counter)
            for value, asserted in classes:
                windows[value["t_start_ns"] // window_ns * window_ns].update(asserted)
            expected = [(start, dict(sorted(counts.items()))) for start, counts in sorted(windows.items())]
            assert [(w["window_start_ns"], w["counts"]) for w in stream["windows"]] == expected
        assert _get(f"{url}/streams/no-such-stream/")[0] == 404


# -- tests ------------------------------------------------------------------------------------------


def test_kafka_subscribe_api(written: OnTopic) -> None:
    check_api(written)
    # The reader for live topics sees the same thing.
    assert sorted(read_published(written.bootstrap, written.topic).values, key=lambda v: v["window_id"]) == sorted(
        written.values, key=lambda v: v["window_id"]
    )


def test_kafka_subscribe_skips_or_raises_on_non_predictions(written: OnTopic) -> None:
    stream_id = written.stream_ids[0]
    asyncio.run(
        _send(
            written.bootstrap,
            written.topic,
            [(stream_id.encode(), b"{not json"), (stream_id.encode(), b'{"stream_id": "x"}')],
        )
    )

    async def scenario() -> tuple[int, int]:
        async with subscribe(written.bootstrap, written.topic, from_beginning=True, until_end=True) as predictions:
            count = len([p async for p in predictions])
            return count, predictions.skipped

    count, skipped = asyncio.run(scenario())
    assert (count, skipped) == (len(written.values), 2)
    with pytest.raises(BadPrediction, match="not-json"):
        asyncio.run(_read(written, on_error="raise"))


def test_kafka_tail_prints_json_lines(written: OnTopic) -> None:
    check_tail(written)
    check_tail(written, stream_id=written.stream_ids[1])


def test_kafka_faust_app_views(written: OnTopic, topic_prefix: str, tmp_path: Path) -> None:
    # A re-delivered prediction (at-least-once) must not be counted twice; an amended final (revision 1,
    # another label: a partly late record changed the window) replaces the count of the one before it.
    first = written.values[0]
    amended = dict(written.values[1], revision=1, label=str((int(written.values[1]["label"]) + 1) % 10))
    sent = [first, amended]
    records = [(v["stream_id"].encode(), json.dumps(v).encode()) for v in sent]
    asyncio.run(_send(written.bootstrap, written.topic, records))
    written.values.append(amended)
    check_faust(written, f"{topic_prefix}-faust", tmp_path / "faust.log", duplicates={first["stream_id"]: 1})


def test_kafka_faust_app_counts_each_label_of_a_multi_label_model(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    published = write_predictions(kafka_bootstrap, f"{topic_prefix}.multi", multi_label=True)
    assert {len(v["labels"]) for v in published.values} >= {0, 2}, "some windows assert no label, some several"
    check_faust(published, f"{topic_prefix}-faust-multi", tmp_path / "faust.log")


def test_the_faust_apps_backpressure_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Reading a backlog, Faust's table writes wait for its changelog producer and it logged a WARNING per wait
    ("producer buffer full size 164"): flow control, logged at INFO by the app; other warnings stay."""
    import logging

    from fusionstream.consumers.settings import Settings
    from fusionstream.consumers.subscribers.faust_app import FaustSettings, create_app

    create_app(Settings(bootstrap_servers="127.0.0.1:1"), FaustSettings())
    producer_log = logging.getLogger("faust.transport.producer")
    with caplog.at_level(logging.INFO, logger="faust.transport.producer"):
        producer_log.warning("producer buffer full size 164")
        producer_log.warning("something else")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "faust.transport.producer"]
    assert lines[0][0] == "INFO" and lines[0][1].startswith("producer buffer full size 164 (table writes wait")
    assert lines[1] == ("WARNING", "something else")


def test_parse_prediction_checks_fields() -> None:
    value = make_prediction("cam", 3, 10**18).to_json(capture_to_publish_ms=12.5)
    record = parse_prediction(value)
    assert record.to_dict() == json.loads(value)
    assert record.window_id == f"cam@{10**18 + 3 * HOP_NS}"
    assert record.present == (True, False, True)
    assert record.t_start.year == 2001
    with pytest.raises(BadPrediction, match="missing-field"):
        parse_prediction(b'{"stream_id": "cam", "t_start_ns": 1, "t_end_ns": 2, "label": "1"}')
    with pytest.raises(BadPrediction, match="bad-field"):
        parse_prediction(json.loads(value) | {"t_start_ns": "soon"})
    with pytest.raises(BadPrediction, match="bad-field"):
        parse_prediction(json.loads(value) | {"score": True})
    with pytest.raises(BadPrediction, match="not-json"):
        parse_prediction(b"[1, 2]")
    # Keys a newer service adds are kept, not rejected.
    assert parse_prediction(json.loads(value) | {"trace_id": "abc"}).extra == {"trace_id": "abc"}


def test_tail_without_broker_says_how_to_start_one() -> None:
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}"}
    done = subprocess.run(
        [*FUSIONSTREAM, "tail", "--limit", "1"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 1
    assert "cannot reach Kafka" in done.stderr and "make kafka-start" in done.stderr


def test_kafka_docs_example_runs(written: OnTopic) -> None:
    """The Python example of docs/subscribers.md, run as it is written."""
    doc = (REPO_ROOT / "docs" / "subscribers.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    env = {
        **os.environ,
        "FUSIONSTREAM_BOOTSTRAP_SERVERS": written.bootstrap,
        "FUSIONSTREAM_PREDICTIONS_TOPIC": written.topic,
    }
    done = subprocess.run(
        [sys.executable, "-c", example], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(written.values)
    for value in written.of(STREAMS[0])[:2]:
        start = datetime.fromtimestamp(value["t_start_ns"] / 1e9, tz=UTC).isoformat()
        flags = value["modalities"]
        present = "".join(m if flags[k] else "-" for m, k in zip("VAT", ("video", "audio", "text"), strict=True))
        latency = value["latency_ms"]["capture_to_publish"]
        assert f"{value['stream_id']} {start} {value['label']} 0.82 {present} {latency}" in lines


def test_kafka_subscribe_group_resumes_after_what_it_processed(written: OnTopic, topic_prefix: str) -> None:
    group = f"{topic_prefix}-group"
    total = len(written.values)

    async def take(count: int) -> list[str]:
        seen: list[str] = []
        async with asyncio.timeout(DEADLINE_S):
            async with subscribe(written.bootstrap, written.topic, group_id=group, from_beginning=True) as predictions:
                async for p in predictions:
                    seen.append(p.window_id)
                    if len(seen) == count:
                        break  # leaving the block normally: this one counts as processed
        return seen

    first = asyncio.run(take(5))
    rest = asyncio.run(take(total - 5))
    assert sorted(first + rest) == sorted(v["window_id"] for v in written.values)

