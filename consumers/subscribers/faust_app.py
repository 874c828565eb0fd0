"""A faust-streaming app that keeps per-stream state from the predictions topic and serves it over HTTP.

Run it as a Faust worker::

    FUSIONSTREAM_BOOTSTRAP_SERVERS=localhost:9092 python -m fusionstream.consumers.subscribers.faust_app worker -l info

Tables (in memory, backed by Faust changelog topics ``<app id>-<table>-changelog``):

- ``latest``: stream id → the stream's newest prediction (by window start, then revision, so a
  late or re-delivered one never replaces a newer one, and a window's final replaces its
  provisional prediction);
- ``received`` / ``duplicates``: stream id → final predictions counted / re-deliveries ignored
  (provisional predictions are not counted: docs/predictions.md#revisions);
- ``class_counts``: ``[stream id, label]`` → predictions per class (each label a multi-label
  prediction asserts; none for an embedding model's), in tumbling windows of
  ``window_s`` seconds of *event time* (the prediction's window start), kept ``keep_s``
  seconds of wall-clock time after they end;
- ``seen``: window ids already counted, with the revision and classes counted, in the same
  tumbling windows (the service publishes at least once; a window it publishes again is not
  counted twice, and an amended final, a higher revision, moves the window's count to its classes).

HTTP views (Faust's web server, port ``FUSIONSTREAM_SUBSCRIBER_WEB_PORT`` or ``--web-port``):
``GET /streams/`` lists every stream with its newest prediction; ``GET /streams/{id}/`` adds
the class counts per window. Each worker serves the streams of the partitions it owns, so
run one worker (predictions are small) or ask each. Both answer 503 while a worker's tables are not
whole yet: until its partitions are assigned and restored from their changelogs after a (re)start.

Settings: ``FUSIONSTREAM_BOOTSTRAP_SERVERS``, ``FUSIONSTREAM_PREDICTIONS_TOPIC`` (and the
other Kafka settings, see docs/settings.md), and ``FUSIONSTREAM_SUBSCRIBER_*`` for this app
(:class:`FaustSettings`). Faust is on the subscriber side only (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fusionstream.consumers.kafka.errors import BrokerUnavailable
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.subscribers.api import parse_prediction
from fusionstream.consumers.subscribers.errors import BadPrediction
from fusionstream.consumers.subscribers.faust_offsets import gap_tolerant_transport
from fusionstream.stream.errors import FusionStreamError

log = logging.getLogger(__name__)


class FaustSettings(BaseSettings):
    """The Faust app's own settings, from ``FUSIONSTREAM_SUBSCRIBER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FUSIONSTREAM_SUBSCRIBER_", frozen=True, extra="forbid",
                                      allow_inf_nan=False)

    app_id: str = Field("fusionstream-subscriber", description="Faust app id: consumer group and changelog prefix.")
    web_host: str = Field("0.0.0.0", description="Interface of the HTTP views.")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the HTTP views (also: worker --web-port).")
    window_s: int = Field(60, ge=1, description="Tumbling window of the class counts, seconds of event time.")
    keep_s: int = Field(
        3600, ge=0, description="Wall-clock seconds a counts window is kept after it ends (0 = forever)."
    )
    instance_id: str | None = Field(
        None,
        description="Static group membership id of this worker (unique per worker): a worker restarted after a "
        "crash takes its partitions straight back instead of waiting out its old session (about a minute).",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "fusionstream-faust",
        description="Faust's data directory (the tables are in memory; Faust still wants one).",
    )


def _window_time(event: Any) -> float:
    """Windows follow the prediction's event time (its window start), not the Kafka timestamp."""
    return int(json.loads(event.value)["t_start_ns"]) / 1e9


def _kafka_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.sasl_mechanism and settings.sasl_username and settings.sasl_password:
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=settings.kafka_security().get("ssl_context"),
        )
    elif settings.security_protocol == "SSL":
        options["broker_credentials"] = faust.SSLCredentials(settings.kafka_security()["ssl_context"])
    return options


class _RoutineBackpressure(logging.Filter):
    """Faust's table writes wait while more than 100 changelog messages are unsent, and it logs each wait as
    a WARNING ("producer buffer full size 164": reading a backlog of predictions). That is flow control
    working, not a fault: logged at INFO, so that a WARNING from this app still means something."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("producer buffer full size"):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg = f"{record.msg} (table writes wait for the changelog producer: normal on a backlog)"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def create_app(settings: Settings | None = None, faust_settings: FaustSettings | None = None) -> faust.App:
    """The Faust app with its tables, agent and views; nothing connects until a worker starts it."""
    producer_log = logging.getLogger("faust.transport.producer")
    if not any(isinstance(f, _RoutineBackpressure) for f in producer_log.filters):
        producer_log.addFilter(_RoutineBackpressure())
    settings = settings or Settings.load()
    conf = faust_settings or FaustSettings()
    keep = conf.keep_s or None
    app = faust.App(
        conf.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        store="memory://",
        web_host=conf.web_host,
        web_port=conf.web_port,
        datadir=str(conf.data_dir / conf.app_id),
        topic_partitions=settings.partitions,  # changelogs must match the predictions topic; see main()
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=conf.instance_id,
        autodiscover=False,
        **_kafka_options(settings),
    )
    # Before anything reads app.transport: a topic written in transactions (serve --exactly-once) has offset
    # gaps that Faust's own commits stall on (faust_offsets.py).
    app.transport = gap_tolerant_transport(app)
    predictions = app.topic(
        settings.predictions_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    latest = app.Table("latest", default=None, help="stream id → newest prediction")
    received = app.Table("received", default=int, help="stream id → predictions counted")
    duplicates = app.Table("duplicates", default=int, help="stream id → re-delivered predictions ignored")
    class_counts = (
        app.Table("class_counts", default=int, help="[stream id, label] → predictions, per tumbling window")
        .tumbling(conf.window_s, expires=keep)
        .relative_to(_window_time)
    )
    seen = app.Table("seen", default=list, help="window ids counted, with the revision and classes counted")
    seen = seen.tumbling(conf.window_s, expires=keep)
    seen = seen.relative_to(_window_time)

    @app.agent(predictions)
    async def track(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            try:
                p = parse_prediction(
                    event.value, topic=message.topic, partition=message.partition, offset=message.offset
                )
            except BadPrediction as exc:
                log.warning("skipping a record that is not a prediction: %s", exc)
                continue
            newest = latest.get(p.stream_id)
            if newest is None or (p.t_start_ns, p.revision) >= (newest["t_start_ns"], newest.get("revision", 0)):
                latest[p.stream_id] = p.to_dict()  # a window's final replaces its provisional prediction
            if not p.final:
                continue  # counted when its final comes
            # [revision, classes] of the final counted for this window, if one was.
            counted = seen[p.window_id].value() if p.window_id in seen else None
            if counted and p.revision <= counted[0]:
                duplicates[p.stream_id] += 1
                continue
            if counted:  # an amended final (a partly late record changed the window): it replaces the one counted
                for label in counted[1]:
                    class_counts[json.dumps([p.stream_id, label])] -= 1
            else:
                received[p.stream_id] += 1
            seen[p.window_id] = [p.revision, list(p.classes)]
            for label in p.classes:  # a multi-label window counts for each label it asserts, an embedding for none
                class_counts[json.dumps([p.stream_id, label])] += 1

    def stream_summary(stream_id: str) -> dict[str, Any]:
        return {
            "stream_id": stream_id,
            "predictions": received.get(stream_id, 0),
            "duplicates": duplicates.get(stream_id, 0),
            "latest": latest.get(stream_id),
        }

    def counts_of(stream_id: str) -> list[dict[str, Any]]:
        windows: dict[tuple[float, float], dict[str, int]] = defaultdict(dict)
        # A windowed table stores ((key, (start, end)), value); this reads every retained window.
        for (key, (start, end)), count in class_counts.table.items():
            sid, label = json.loads(key)
            if sid == stream_id and count:
                windows[start, end][label] = count
        # Faust's tumbling range is [start, start + size - 0.1]; report it as [start, start + size) in ns.
        return [
            {
                "window_start_ns": round(start * 1e9),
                "window_end_ns": round(start * 1e9) + conf.window_s * 1_000_000_000,
                "counts": dict(sorted(counts.items())),
            }
            for (start, _end), counts in sorted(windows.items())
        ]

    @app.page("/streams/")
    class Streams(View):
        """Every stream with its newest prediction and counters."""

        async def get(self, request: Request) -> Response:
            if (busy := not_ready(app)) is not None:
                return self.json({"error": busy}, status=503)
            streams = sorted(k for k, v in latest.items() if v is not None)
            return self.json({"window_s": conf.window_s, "streams": [stream_summary(s) for s in streams]})

    @app.page("/streams/{stream_id}/")
    class Stream(View):
        """One stream: newest prediction, counters, class counts per tumbling window."""

        async def get(self, request: Request, stream_id: str) -> Response:
            if (busy := not_ready(app)) is not None:
                return self.json({"error": busy}, status=503)
            if latest.get(stream_id) is None:
                raise self.NotFound(f"no predictions of stream {stream_id!r} here")
            totals: dict[str, int] = defaultdict(int)
            windows = counts_of(stream_id)
            for window in windows:
                for label, count in window["counts"].items():
                    totals[label] += count
            return self.json(
                stream_summary(stream_id)
                | {"window_s": conf.window_s, "windows": windows, "totals": dict(sorted(totals.items()))}
            )

    return app


def not_ready(app: faust.App) -> str | None:
    """Why the tables cannot be shown yet, or None. Until its partitions are assigned and their tables
    restored from the changelogs, a restarted worker's tables are empty or partial: its views answered
    with counts that dropped and climbed back for a minute after every restart."""
    if app.in_recovery:
        return "recovering: the tables are being restored from their changelog topics"
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        return "starting: waiting for this worker's partitions of the predictions topic"
    return None


def changelog_topics(app: faust.App) -> dict[str, dict[str, str]]:
    """Each table's changelog topic and the topic configs Faust would create it with."""
    topics: dict[str, dict[str, str]] = {}
    for table in app.tables.values():
        topic = table.changelog_topic
        policy = [name for name, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
        config = {"cleanup.policy": ",".join(policy)} if policy else {}
        if topic.retention:
            config["retention.ms"] = str(int(float(topic.retention) * 1000))
        topics[topic.get_topic_name()] = config | {k: str(v) for k, v in (topic.config or {}).items()}
    return topics


async def prepare(app: faust.App, settings: Settings) -> None:
    """Size the changelogs like the predictions topic, and create them before the worker starts.

    Faust requires a table's changelog to have as many partitions as the topic feeding it.
    And when Faust creates a changelog itself, its consumer can read the topic's metadata
    before the new partitions are in it, see 0 partitions, and crash the agent with
    ``PartitionsMismatch`` until the metadata is next refreshed, minutes later. Creating
    the changelogs here, with Faust's settings, and waiting until every partition has a
    leader avoids that race.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

    from fusionstream.consumers.kafka import ensure_topics, make_admin

    admin = make_admin(settings.bootstrap_servers, settings.kafka_security())
    try:
        try:
            await admin.start()
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(settings.bootstrap_servers, str(exc)) from None
        [described] = await admin.describe_topics([settings.predictions_topic])
        if not described["error_code"] and described["partitions"]:
            app.conf.topic_partitions = len(described["partitions"])
        else:
            log.warning(
                "topic %s does not exist yet; sizing changelogs for %d partitions (FUSIONSTREAM_PARTITIONS)",
                settings.predictions_topic,
                app.conf.topic_partitions,
            )
        partitions = app.conf.topic_partitions
        topics = changelog_topics(app)
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, app.conf.topic_replication_factor, topic_configs=config)
                for name, config in topics.items()
            ]
        )
        for topic, code, *message in response.topic_errors:
            if code and for_code(code) is not TopicAlreadyExistsError:
                raise for_code(code)(f"creating topic {topic!r}: {message[0] if message else ''}")
    finally:
        await admin.close()
    # Waits for a leader on every partition, and refuses changelogs left with another partition count.
    await ensure_topics(settings.bootstrap_servers, list(topics), partitions, security=settings.kafka_security())


app = create_app()


def main() -> None:
    """Faust's command line (``worker``, ``tables``, ...), once the changelog topics are ready."""
    settings = Settings.load()
    if "worker" in sys.argv[1:]:
        from aiokafka.errors import KafkaError

        Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)

        try:
            asyncio.run(prepare(app, settings))
        except (FusionStreamError, KafkaError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    app.main()


if __name__ == "__main__":
    main()
