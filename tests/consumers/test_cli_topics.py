"""`fusionstream topics create|describe` against the real broker, on topics of a unique prefix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_admin

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("video", "audio", "text", "predictions", "deadletter")
DEADLINE_S = 90.0


@pytest.fixture
def names(kafka_bootstrap: str, topic_prefix: str) -> Iterator[dict[str, str]]:
    """The five topic names of this test (deleted afterwards)."""
    topics = {kind: f"{topic_prefix}.{kind}" for kind in KINDS}
    yield topics
    asyncio.run(delete_topics(kafka_bootstrap, [*topics.values(), f"{topic_prefix}.other-video"]))


def _env(names: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **{f"FUSIONSTREAM_{kind.upper()}_TOPIC": name for kind, name in names.items()}}


def topics(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusionstream", "topics", *args], env=env or dict(os.environ), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusionstream: error: "), done.stderr
    return lines[0]


def layout(bootstrap: str, names: list[str]) -> dict[str, int | None]:
    """Partition count per topic as the broker has it (None: missing)."""

    async def scenario() -> dict[str, int | None]:
        admin = make_admin(bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        return {d["topic"]: (len(d["partitions"]) if not d["error_code"] else None) for d in described}

    return asyncio.run(scenario())


def test_kafka_topics_create_makes_the_five_topics_and_keeps_their_layout(
    kafka_bootstrap: str, names: dict[str, str], tmp_path: Path
) -> None:
    # Names and broker from a --config file, as an operator would keep them beside the service's.
    config = tmp_path / "fs.toml"
    config.write_text("".join(f'{kind}_topic = "{name}"\n' for kind, name in names.items()))
    created = topics("create", "--config", str(config), "--bootstrap", kafka_bootstrap, "--partitions", "3", "--json")
    assert created.returncode == 0, created.stderr
    report = json.loads(created.stdout)
    assert [t["name"] for t in report] == list(names.values())
    assert all(t["partitions"] == 3 and t["replication_factor"] == 1 and t["created"] for t in report), report
    assert layout(kafka_bootstrap, list(names.values())) == dict.fromkeys(names.values(), 3)

    # Again with the settings' count (4): the input topics have 3, so it is refused, naming them.
    refused = topics("create", "--config", str(config), "--bootstrap", kafka_bootstrap)
    assert refused.returncode == 1
    line = error_line(refused)
    assert all(f"{names[kind]} has 3" in line for kind in ("video", "audio", "text")), line
    assert "--partitions 3 keeps them" in line

    # With their count: nothing to do, and said so.
    again = topics("create", "--config", str(config), "--bootstrap", kafka_bootstrap, "--partitions", "3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already there") == 5 and "created" not in again.stdout

    described = topics("describe", "--config", str(config), "--bootstrap", kafka_bootstrap)
    assert described.returncode == 0, described.stderr
    for name in names.values():
        assert f"{name} " in described.stdout and "3 partitions, replication factor 1" in described.stdout


def test_kafka_topics_create_refuses_an_input_topic_with_another_partition_count(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    asyncio.run(ensure_topics(kafka_bootstrap, [names["audio"]], 2))
    env = {**_env(names), "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap}
    done = topics("create", "--partitions", "4", env=env)
    assert done.returncode == 1
    line = error_line(done)
    assert f"{names['audio']} has 2" in line and names["video"] not in line
    # Refused before anything was created.
    assert layout(kafka_bootstrap, list(names.values())) == {name: (2 if kind == "audio" else None)
                                                             for kind, name in names.items()}
    # describe shows what is there and fails on what is missing.
    described = topics("describe", "--json", env=env)
    assert described.returncode == 1
    shown = {t["name"]: t["partitions"] for t in json.loads(described.stdout)}
    assert shown == {name: (2 if kind == "audio" else None) for kind, name in names.items()}
    assert "missing topic(s): " in error_line(described) and "fusionstream topics create" in described.stderr

    # The output topics take any count: the same rule as `serve`.
    asyncio.run(ensure_topics(kafka_bootstrap, [names["predictions"]], 1))
    done = topics("create", "--partitions", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert layout(kafka_bootstrap, list(names.values())) == {name: (1 if kind == "predictions" else 2)
                                                             for kind, name in names.items()}
    # describe checks the co-partitioning too: an input topic with 3 partitions beside two with 2.
    other = names["video"].removesuffix(".video") + ".other-video"
    asyncio.run(ensure_topics(kafka_bootstrap, [other], 3))
    mixed = topics("describe", env={**env, "FUSIONSTREAM_VIDEO_TOPIC": other})
    assert mixed.returncode == 1
    assert f"{other} has 3" in error_line(mixed) and f"{names['audio']} has 2" in mixed.stderr


def test_kafka_topics_create_errors_are_one_line(kafka_bootstrap: str, names: dict[str, str]) -> None:
    env = {**_env(names), "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap}
    # The test broker is a single node: it cannot hold two replicas.
    done = topics("create", "--replication-factor", "2", env=env)
    assert done.returncode == 1
    assert "InvalidReplicationFactorError" in error_line(done) and "Traceback" not in done.stderr

    down = topics("create", "--bootstrap", "127.0.0.1:1", env=env)
    assert down.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in error_line(down)


def test_a_sasl_client_on_a_plaintext_listener_is_told_so_not_that_kafka_is_unreachable(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    """aiokafka's clients only say they could not connect; one probe of the broker says why."""
    env = {**_env(names), "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "FUSIONSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FUSIONSTREAM_SASL_MECHANISM": "PLAIN",
           "FUSIONSTREAM_SASL_USERNAME": "svc", "FUSIONSTREAM_SASL_PASSWORD": "hunter2"}
    done = topics("describe", env=env)
    assert done.returncode == 1
    line = error_line(done)
    assert "does not accept SASL_PLAINTEXT with SASL mechanism PLAIN" in line and "cannot reach" not in line
    assert "hunter2" not in done.stderr + done.stdout


def test_kafka_produce_with_create_topics_off_refuses_missing_input_topics(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    """Where topics are made ahead of time, a producer's typo in a topic name is not a new topic."""
    env = _env(names) | {"FUSIONSTREAM_CREATE_TOPICS": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "fusionstream", "produce", "synthetic", "--bootstrap", kafka_bootstrap, "--streams", "1",
         "--seconds", "1", "--fast"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "do not exist and create_topics is off" in error_line(done) and names["video"] in error_line(done)

    async def exists() -> set[str]:
        admin = make_admin(kafka_bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    assert not set(names.values()) & asyncio.run(exists()), "nothing was created"
