"""`fusionstream topics ...`: create and describe the service's topics ahead of time.

For clusters where services may not create topics: an operator with the rights runs
``fusionstream topics create`` once, with the same settings (names, partitions) as the
service. The layout rule is the service's: the three input topics have one partition
count (co-partitioning), so an existing input topic with another count is refused, by
name, and nothing is created; the predictions and dead-letter topics may have any.

Outside the ``kafka`` package on purpose: importing that package imports aiokafka, and
``fusionstream --help`` must not pay for it. Kafka is imported when a command runs.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fusionstream.consumers.cli_errors import fail, load_settings, one_line_errors
from fusionstream.consumers.settings import Settings

topics_app = typer.Typer(
    name="topics",
    help=(
        "Create or describe the topics fusionstream uses (names from settings).\n\n"
        "The video, audio and text input topics, the predictions topic and the dead-letter topic. For "
        "clusters where services may not create topics; `serve` and `produce` otherwise create missing "
        "ones themselves."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (lowest precedence after defaults).")]  # noqa: E501, UP045
BootstrapOpt = Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")]  # noqa: E501, UP045
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the topics as one JSON array on stdout instead of a table.")]  # noqa: E501

#: How long to wait for new topics' partitions to have serving leaders.
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of the service as the cluster has it; ``partitions`` is None when it does not exist."""

    name: str
    role: str
    partitions: int | None = None
    replication_factor: int | None = None
    #: Whether `topics create` made it (None: not a creation).
    created: bool | None = None

    @property
    def is_input(self) -> bool:
        return self.role.startswith("input")


def roles(settings: Settings) -> dict[str, str]:
    """Topic name → its role, inputs first; a name configured twice is one topic (its first role)."""
    named = [
        (settings.video_topic, "input: video"),
        (settings.audio_topic, "input: audio"),
        (settings.text_topic, "input: text"),
        (settings.predictions_topic, "output: predictions"),
        (settings.deadletter_topic, "output: dead letters"),
    ]
    found: dict[str, str] = {}
    for name, role in named:
        found.setdefault(name, role)
    return found


@topics_app.command()
def create(
    partitions: Annotated[Optional[int], typer.Option("--partitions", min=1, help="Partitions of each new topic (default: settings' partitions). serve and produce then use the count the input topics have, whatever FUSIONSTREAM_PARTITIONS says.")] = None,  # noqa: E501, UP045
    replication_factor: Annotated[int, typer.Option("--replication-factor", min=1, help="Replicas of each partition of a new topic (1, as `serve` creates them; 3 is usual on a production cluster).")] = 1,  # noqa: E501
    as_json: JsonOpt = False,
    bootstrap: BootstrapOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create the missing topics; refuse an existing input topic whose partition count differs.

    Existing topics are left as they are (an output topic keeps whatever partition count it
    has). Returns when every partition of every topic has a leader that serves it.
    """
    settings = load_settings(config, bootstrap_servers=bootstrap, partitions=partitions)
    topics = _run(_create(settings, replication_factor))
    _show(topics, as_json=as_json)


@topics_app.command()
def describe(
    as_json: JsonOpt = False,
    bootstrap: BootstrapOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show each topic's partitions and replication factor; exit status 1 if one is missing or the input topics'
    partition counts differ."""
    settings = load_settings(config, bootstrap_servers=bootstrap)
    topics = _run(_describe(settings))
    _show(topics, as_json=as_json)
    missing = [t.name for t in topics if t.partitions is None]
    if missing:
        fail(f"missing topic(s): {', '.join(missing)}; create them with `fusionstream topics create`")
    counts = {t.name: t.partitions for t in topics if t.is_input}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{name} has {count}" for name, count in counts.items())
        fail(f"the input topics must have one partition count (co-partitioning), but {found}")


# -- running ---------------------------------------------------------------------------------------


def _run(work: Any) -> list[Topic]:
    """Run a coroutine; a broker that cannot be reached or refuses, or a wrong layout, is the one error line."""
    from aiokafka.errors import KafkaError

    from fusionstream.stream.errors import FusionStreamError

    with one_line_errors(FusionStreamError, KafkaError, TimeoutError, OSError):
        result: list[Topic] = asyncio.run(work)
        return result
    raise AssertionError("unreachable")  # pragma: no cover  (one_line_errors exits)


async def _create(settings: Settings, replication_factor: int) -> list[Topic]:
    from fusionstream.consumers.kafka import TopicLayoutError, ensure_topics

    before = await _describe(settings)
    outputs = [t.name for t in before if not t.is_input]
    try:
        await _reachable(settings, ensure_topics(
            settings.bootstrap_servers, [t.name for t in before], settings.partitions, replication=replication_factor,
            timeout_s=READY_TIMEOUT_S, security=settings.kafka_security(), any_partitions=outputs,
        ))  # fmt: skip
    except TopicLayoutError as exc:
        # Nothing was created. The existing input topics may agree among themselves: say which count keeps them.
        counts = {t.partitions for t in before if t.is_input and t.partitions is not None}
        hint = f"; --partitions {counts.pop()} keeps them" if len(counts) == 1 else ""
        raise TopicLayoutError(f"{exc}{hint}") from None
    existed = {t.name for t in before if t.partitions is not None}
    after = await _describe(settings)
    return [Topic(**(asdict(t) | {"created": t.name not in existed})) for t in after]


async def _describe(settings: Settings) -> list[Topic]:
    from fusionstream.consumers.kafka import make_admin
    from fusionstream.consumers.kafka.admin import describe_topics

    named = roles(settings)
    admin = make_admin(settings.bootstrap_servers, settings.kafka_security(), client_id=f"{settings.client_id}-topics")
    try:
        await _reachable(settings, admin.start())
        # Ours: aiokafka's asks the broker to create a topic it looks up (auto.create.topics.enable, Kafka's default).
        described = {d["topic"]: d for d in await describe_topics(admin, list(named))}
    finally:
        await admin.close()
    topics = []
    for name, role in named.items():
        found = described.get(name)
        parts = found["partitions"] if found is not None and not found["error_code"] else []
        topics.append(Topic(name, role, len(parts) or None, len(parts[0]["replicas"]) if parts else None))
    return topics


async def _reachable(settings: Settings, step: Any) -> Any:
    """Await ``step``; an unreachable broker becomes the producers' error, which says how to start one."""
    from aiokafka.errors import KafkaConnectionError

    from fusionstream.consumers.kafka.readiness import unreachable

    try:
        return await step
    except KafkaConnectionError as exc:
        raise await unreachable(settings.bootstrap_servers, settings.kafka_security(), str(exc)) from None


def _show(topics: list[Topic], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in topics], separators=(",", ":")))
        return
    width = max(len(t.name) for t in topics)
    for t in topics:
        if t.partitions is None:
            state = "missing"
        else:
            state = f"{t.partitions} partitions, replication factor {t.replication_factor}"
            if t.created is not None:
                state += ", created" if t.created else ", already there"
        typer.echo(f"{t.name:<{width}}  {t.role:<21} {state}")


__all__ = ["Topic", "roles", "topics_app"]
