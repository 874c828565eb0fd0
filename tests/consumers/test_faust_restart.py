"""The Faust app's views while a worker starts: they answered 200 with empty, then partial, tables until the
worker's partitions were assigned and restored from the changelogs (counts dropped and climbed back after
every restart), and a worker killed and restarted waited out its old session (about 50 s) before that.
Against the real broker."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from test_subscribe import PER_STREAM, STREAMS, _free_port, _get, faust_worker, write_predictions

from fusionstream.consumers.subscribers.faust_app import FaustSettings, create_app, not_ready

#: Well under the group's session timeout, which a restart without static membership waits out.
REJOIN_DEADLINE_S = 25.0


def _answers(url: str, worker, until: dict[str, int], deadline_s: float) -> list[tuple[int, object]]:
    """Every (status, body) of GET /streams/ until it shows ``until`` (predictions per stream)."""
    seen: list[tuple[int, object]] = []
    deadline = time.monotonic() + deadline_s
    while True:
        assert worker.poll() is None, "the Faust worker exited"
        with contextlib.suppress(OSError):  # its web server is not up yet
            seen.append(_get(f"{url}/streams/"))
        if seen and seen[-1][0] == 200 and _counts(seen[-1][1]) == until:
            return seen
        assert time.monotonic() < deadline, f"the views never showed {until}: last {seen[-1:]}"
        time.sleep(0.2)


def _counts(body: object) -> dict[str, int]:
    return {s["stream_id"]: s["predictions"] for s in body["streams"]}  # type: ignore[index]


def test_a_worker_not_yet_assigned_or_recovering_is_not_ready() -> None:
    app = create_app(faust_settings=FaustSettings(app_id="readiness-check"))
    assert not_ready(app) is not None and not_ready(app).startswith("starting")  # type: ignore[union-attr]
    app.tables.recovery.completed.set()
    assert not_ready(app) is None
    app.in_recovery = True
    assert not_ready(app).startswith("recovering")  # type: ignore[union-attr]


def test_kafka_a_restarted_worker_shows_whole_tables_or_503_and_rejoins_at_once_with_an_instance_id(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    published = write_predictions(kafka_bootstrap, f"{topic_prefix}.predictions")
    app_id = f"{topic_prefix}-faust-restart"
    whole = dict.fromkeys(STREAMS, PER_STREAM)
    # The same web address: Faust's assignor refuses an assignment made for a member at another one.
    static = {"instance_id": "wall-1", "web_port": str(_free_port())}
    with faust_worker(published, app_id, tmp_path / "first.log", **static) as (url, worker):
        first = _answers(url, worker, whole, 90.0)
        worker.send_signal(signal.SIGKILL)  # a crash: no leave-group, its session stays open
        worker.wait()
    with faust_worker(published, app_id, tmp_path / "restarted.log", **static) as (url, worker):
        started = time.monotonic()
        again = _answers(url, worker, whole, REJOIN_DEADLINE_S)
        rejoined_s = time.monotonic() - started
    for status, body in first + again:
        assert status in (200, 503), (status, body)
        if status == 200:  # never a partial table
            assert _counts(body) == whole, body
        else:
            assert body["error"].startswith(("starting", "recovering")), body  # type: ignore[index]
    assert any(status == 503 for status, _ in first + again), "the views never said they were not ready"
    assert rejoined_s < REJOIN_DEADLINE_S
