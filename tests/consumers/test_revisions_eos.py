"""Exactly once per (window, revision) across ``kill -9``, with revisions on (docs/predictions.md#revisions).

A live feed as real sources deliver it: video and audio in real time, flagged complete, and a
transcript whose words arrive 300-700 ms after they end, with text progress records between them
(an ASR's "decoded up to T"). So a window of a caught-up service gets a provisional prediction when
its video and audio are complete and its final about 700 ms later, when the transcript is. A
``serve --exactly-once`` service is killed with ``kill -9`` three times while some windows have had their
provisional prediction but not their final, and restarted under the same instance id each time. Read
committed, the predictions topic must then hold one final per window, each ``(window_id, revision)``
once, and every revision 1 final after its window's one provisional prediction on the same partition.

The two bugs it found have broker-free tests at the end: a stream whose first predictions were all
provisional was left out of the checkpoint (a restart predicted those windows again as revision 0), and
records re-read after a restart amended the windows published before it (a new revision per record).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faultkit import report, service_processes
from servicekit import PARTITIONS, Reader, ServiceProcess, all_topics, census_of, service_settings, topic_of

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.settings import Settings
from fusionstream.stream import wire
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.media import audio_record, image_record, progress_record, text_record
from fusionstream.stream.records import MODALITIES, AudioChunk, Encoding, Frame, MediaItem, Modality, Progress, Record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS

STREAMS = 4
KILLS = 3
FRAME_NS, CHUNK_NS = 100 * MS, 40 * MS
#: A word is delivered this long after it ends (an ASR or a captioner; issue #16's profile).
WORD_DELAY_MS = (300, 700)
#: The recogniser's progress stays this far behind the wall clock: no word can still come before it.
ASR_LAG_NS = WORD_DELAY_MS[1] * MS
TEXT_PROGRESS_EVERY_NS = 250 * MS
#: The schedule's length; the scenario ends the input much earlier (:meth:`LiveFeed.finish`).
MAX_S = 80
#: Every wait on the service; generous, for two shared cores.
WAIT_S = 60.0


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from service_processes(tmp_path)


class LiveFeed:
    """``STREAMS`` live streams, event time = wall clock: each record is sent when a real source would.

    Video frames 40 ms after capture, 40 ms audio chunks when recorded, all flagged complete; one word a
    second, delivered 300-700 ms after it ends, and a text progress record every 250 ms saying how far the
    transcript is complete (never past a word not delivered yet).
    """

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.census = census_of(settings)
        self.t0 = (time.time_ns() // NS + 1) * NS  # whole seconds: window starts fall on the hop
        self._end_ns: int | None = None
        self.sent = 0
        rng = random.Random(seed)
        frame = image_record("x", 0, 0, FRAME_NS, np.full((64, 64, 3), 90, np.uint8), complete=True)
        silence = np.zeros(CHUNK_NS * 16_000 // NS, np.float32)
        due: list[tuple[int, int, Record]] = []  # (when to send, tie-break, record)
        for i in range(STREAMS):
            sid = f"rev-{i}"
            for k in range(MAX_S * NS // FRAME_NS):
                t = self.t0 + k * FRAME_NS
                due.append((t + 40 * MS, 0, dataclasses.replace(frame, stream_id=sid, seq=k, t_start_ns=t,
                                                                t_end_ns=t + FRAME_NS)))
            for k in range(MAX_S * NS // CHUNK_NS):
                t = self.t0 + k * CHUNK_NS
                due.append((t + CHUNK_NS, 0, audio_record(sid, k, t, silence, 16_000, complete=True)))
            # Staggered per stream; 300 ms long, so the next word always comes after this one is delivered.
            words = []
            for k in range(MAX_S):
                start = self.t0 + k * NS + (150 + 100 * i) * MS
                delivered = start + 300 * MS + rng.randint(*WORD_DELAY_MS) * MS
                words.append((delivered, start))
                due.append((delivered, 0, text_record(sid, k, start, start + 300 * MS, "seven", complete=True)))
            # From the stream's first records on (a progress record of a stream not open yet is dropped): until
            # the transcript has said something, the watermark would not wait for it, and the first words
            # would miss windows that closed without them.
            for k in range(MAX_S * NS // TEXT_PROGRESS_EVERY_NS):
                now = self.t0 + CHUNK_NS + k * TEXT_PROGRESS_EVERY_NS
                pending = [start for delivered, start in words if delivered > now]
                told = max(self.t0, min(now - ASR_LAG_NS, *pending[:1]))
                due.append((now, 1, progress_record(sid, Modality.TEXT, len(words) - len(pending), told)))
        due.sort(key=lambda d: (d[0], d[1]))
        self._due = due

    def finish(self, after_s: float) -> None:
        """End every stream at the first whole second ``after_s`` from now; each source then says it ended."""
        self._end_ns = -(-(time.time_ns() + int(after_s * NS)) // NS) * NS

    def _keep(self, record: Record) -> bool:
        end = self._end_ns
        if end is None:
            return True
        if record.encoding is Encoding.PROGRESS:
            return record.t_end_ns <= end
        return record.t_start_ns < end if record.modality is not Modality.TEXT else record.t_end_ns <= end

    async def run(self, producer: AIOKafkaProducer) -> None:
        """Send the schedule in real time until :meth:`finish`'s end (and the last words after it)."""
        pending: list[asyncio.Future[Any]] = []
        for at_ns, _, record in self._due:
            end = self._end_ns
            if end is not None and at_ns > end + ASR_LAG_NS + 100 * MS:
                break
            if (wait_s := (at_ns - time.time_ns()) / NS) > 0:
                await asyncio.sleep(wait_s)
            if self._keep(record):
                pending.append(await self._send(producer, record))
            if len(pending) >= 100:
                await asyncio.gather(*pending)  # raises a refused send here, not at the end
                pending.clear()
        assert self._end_ns is not None, f"the scenario ran past the {MAX_S} s schedule"
        for i in range(STREAMS):
            for modality in MODALITIES:
                pending.append(await self._send(producer, progress_record(f"rev-{i}", modality, 0, self._end_ns,
                                                                          ended=True)))
        await asyncio.gather(*pending)

    async def _send(self, producer: AIOKafkaProducer, record: Record) -> asyncio.Future[Any]:
        if record.encoding is not Encoding.PROGRESS:
            next(self.census.watch([record]))  # the windows it must land in
        self.sent += 1
        return await producer.send(topic_of(self.settings, record), wire.encode(record),
                                   key=record.stream_id.encode(), timestamp_ms=record.t_start_ns // 1_000_000)

    @property
    def expected(self) -> set[str]:
        return {f"{sid}@{start}" for sid, start in self.census.expected}


def values(records: Sequence[ConsumerRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def awaiting_final(records: Sequence[ConsumerRecord]) -> set[str]:
    """Windows with a provisional prediction among ``records`` and no final."""
    seen = values(records)
    return {v["window_id"] for v in seen if not v["final"]} - {v["window_id"] for v in seen if v["final"]}


def history(records: Sequence[ConsumerRecord], window: str) -> list[tuple[int, int, int, bool, str]]:
    """(partition, offset, revision, final, closed_by) of each prediction of ``window``: for failure messages."""
    return [(r.partition, r.offset, v["revision"], v["final"], v["closed_by"])
            for r, v in zip(records, values(records), strict=True) if v["window_id"] == window]


def check_revisions(records: Sequence[ConsumerRecord], expected: set[str]) -> dict[str, int]:
    """The guarantees of docs/predictions.md#revisions, read committed; returns the counts."""
    where: dict[tuple[str, int], list[tuple[int, int]]] = {}
    finals: Counter[str] = Counter()
    provisional: set[str] = set()
    amended: list[tuple[str, int, int, int]] = []
    for record, value in zip(records, values(records), strict=True):
        window = value["window_id"]
        where.setdefault((window, value["revision"]), []).append((record.partition, record.offset))
        if value["closed_by"] == "amended":
            # A word that came after its window closed (possible when the machine is slow): the window's
            # next revision, after the final it amends (docs/predictions.md#revisions).
            assert value["final"] and value["revision"] >= 1, history(records, window)
            amended.append((window, value["revision"], record.partition, record.offset))
            continue
        assert (value["revision"], value["final"]) in {(0, False), (0, True), (1, True)}, history(records, window)
        finals[window] += value["final"]
        if not value["final"]:
            provisional.add(window)
    twice = sorted(w for (w, _), places in where.items() if len(places) > 1)
    assert not twice, f"{len(twice)} (window, revision) published twice, e.g. {history(records, twice[0])}"
    assert set(finals) == expected, (f"missing {sorted(expected - set(finals))[:4]}, "
                                     f"unexpected {sorted(set(finals) - expected)[:4]}")
    several = sorted(w for w, n in finals.items() if n != 1)
    assert not several, f"{len(several)} windows with more than one final, e.g. {history(records, several[0])}"
    for window, revision, partition, offset in amended:
        before = where.get((window, revision - 1), [])
        assert before and before[0][0] == partition and before[0][1] < offset, history(records, window)
    # (window, 0) is unique, so a window with a provisional prediction has no revision 0 final.
    revised = {w for (w, rev), places in where.items() if rev == 1
               and not any((w, 1, p, o) in amended for p, o in places)}
    unfinished = sorted(provisional - revised)
    assert not unfinished, f"a provisional prediction without a revision 1 final: {history(records, unfinished[0])}"
    # The documented exception (predictions.md, `revision`): after a restart, a window the last run's
    # provisionals had passed while it held nothing yet says revision 1 with no provisional before it. The
    # checkpoint keeps one cut per stream, not which windows before it were passed. Seen under load only.
    unannounced = revised - provisional
    for window in revised - unannounced:
        (first,), (second,) = where[window, 0], where[window, 1]
        assert first[0] == second[0] and first[1] < second[1], history(records, window)
    return {"windows": len(expected), "provisional": len(provisional), "predictions": len(records),
            "revision_1_without_provisional": len(unannounced)}


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_revisions_exactly_once_per_window_and_revision_across_kill_9(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess]
) -> None:
    # Long idle timeouts: a stall of this (test) process must not close windows early and make words late;
    # the streams end with progress records marked ended, which close their last windows at once.
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, exactly_once=True, revisions=True,
                                text_wait_ms=3000, idle_timeout_ms=4000, evict_after_s=10.0)
    env = {"revisions": "true", "text_wait_ms": "3000"}
    feed = LiveFeed(settings, seed=16)
    started = time.monotonic()

    async def scenario() -> tuple[list[ConsumerRecord], list[ConsumerRecord], list[int], int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        producer = make_producer(kafka_bootstrap, linger_ms=5)
        feeding: asyncio.Task[None] | None = None
        try:
            async with Reader(kafka_bootstrap, settings.predictions_topic, read_committed=True) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic, read_committed=True) as dead:
                service = processes(settings, "eos", **env)
                await service.health()  # joined: the input is live from its first record
                await producer.start()
                feeding = asyncio.create_task(feed.run(producer))

                def alive() -> None:
                    service.alive()
                    if feeding is not None and feeding.done():
                        feeding.result()  # a failed send ends the test with its error
                        raise AssertionError("the input ended before the kills")

                straddled: list[int] = []
                for kill in range(KILLS):
                    since = len(reader.records)
                    # The first kill comes at the streams' start, when some have provisional predictions and
                    # no final yet; the others once the restarted service is live (it published provisional
                    # predictions of its own). Each while windows have their provisional prediction committed
                    # and their final not.
                    live = 2 if kill == 0 else 6
                    await reader.until(lambda r, since=since, live=live: len(awaiting_final(r.records)) >= 3
                                       and sum(not v["final"] for v in values(r.records[since:])) >= live,
                                       timeout_s=WAIT_S, on_wait=alive)
                    service.kill()  # no flush, no commit; its open transaction is aborted by the restart
                    await reader.to_end()  # everything it committed: the open transaction blocks the rest
                    straddled.append(len(awaiting_final(reader.records)))
                    service = processes(settings, "eos", **env)  # the same instance id fences the dead one
                feed.finish(after_s=3.0)
                await feeding
                await reader.until(lambda r: feed.expected <= {v["window_id"] for v in values(r.records) if v["final"]},
                                   timeout_s=WAIT_S, on_wait=service.alive)
                rc = service.terminate()
                await reader.to_end()
                await dead.to_end()
                return reader.records, dead.records, straddled, rc
        finally:
            if feeding is not None:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
            await producer.stop()
            await delete_topics(kafka_bootstrap, all_topics(settings))

    predictions, dead, straddled, rc = asyncio.run(scenario())

    figures = check_revisions(predictions, feed.expected)
    report("revisions_exactly_once_kill_9", {**figures, "straddled_per_kill": straddled, "records_sent": feed.sent,
                                             "dead_letters": len(dead), "wall_s": round(time.monotonic() - started, 1)})
    assert rc == 0
    assert all(n >= 1 for n in straddled), f"each kill left provisional predictions without their final: {straddled}"
    assert figures["provisional"] * 3 >= figures["windows"], (
        "a caught-up service makes provisional predictions (windows of a backlog re-read after a restart need none)")
    assert dead == [], f"nothing was late or bad: {[(r.topic, dict(r.headers)) for r in dead[:3]]}"


# -- the bugs it found, without a broker ----------------------------------------------------------

T0 = 1_767_225_600 * NS  # hop-aligned
REVISIONS = WindowConfig(lateness_ns=0, provisional_without=frozenset({Modality.TEXT}))


@dataclasses.dataclass
class Fetched:
    offset: int
    key: bytes


def media(stream_id: str, from_ms: int, to_ms: int) -> list[MediaItem]:
    """10 fps frames and 40 ms audio chunks over [from_ms, to_ms), flagged complete, in event-time order."""
    items: list[MediaItem] = [Frame(stream_id, T0 + t * MS, T0 + (t + 100) * MS, np.zeros((4, 4, 3), np.uint8),
                                    complete=True) for t in range(from_ms, to_ms, 100)]
    items += [AudioChunk(stream_id, T0 + t * MS, T0 + (t + 40) * MS, np.zeros(640, np.float32), 16_000, complete=True)
              for t in range(from_ms, to_ms, 40)]
    return sorted(items, key=lambda item: item.t_start_ns)


def test_a_stream_whose_first_predictions_are_provisional_gets_no_second_one_after_a_restart() -> None:
    """The first kill above: the streams had provisional predictions and no final yet."""
    aligner = Aligner(REVISIONS)
    handover = Handover(REVISIONS.hop_ns)
    handover.bind(aligner)
    handover.assign({("fs.video", 0): None})
    items = media("cam", 0, 1200)
    handover.fetched(("fs.video", 0), [Fetched(i, b"cam") for i in range(len(items))])
    for item in items:
        aligner.add(item, 0)
    aligner.progress(Progress("cam", Modality.TEXT, T0), 0)  # the transcript: complete up to 0 only
    early = aligner.provisional(0)
    assert [(w.t_start_ns - T0) // MS for w in early] == [-500, 0] and aligner.poll(0) == []
    for window in early:
        handover.provisional_acknowledged(window)
    offset, metadata = handover.to_commit()[("fs.video", 0)]
    checkpoint = Checkpoint.decode(metadata)
    assert checkpoint is not None and offset == 0
    assert checkpoint.streams == {"cam": T0 - 500 * MS}, "nothing was published before the first provisional"
    assert checkpoint.provisional == {"cam": T0 + 500 * MS}

    restarted = Aligner(REVISIONS)  # kill -9, restart: re-read everything from the committed offset
    again = Handover(REVISIONS.hop_ns)
    again.bind(restarted)
    again.assign({("fs.video", 0): SimpleNamespace(offset=offset, metadata=metadata)})
    for item in items:
        restarted.add(item, 0)
    restarted.progress(Progress("cam", Modality.TEXT, T0), 0)
    assert restarted.provisional(0) == [], "their provisional predictions are published already"
    restarted.progress(Progress("cam", Modality.TEXT, T0 + 1200 * MS), 0)
    finals = restarted.poll(0)
    assert [((w.t_start_ns - T0) // MS, w.revision, w.final) for w in finals] == [(-500, 1, True), (0, 1, True)]


def test_records_re_read_after_a_restart_do_not_predict_windows_published_before_it_again() -> None:
    """The later kills above: a re-read record in a published window and an open one is no late record
    (with revisions on, a late one amends the closed window); the windows before the resume stay closed."""
    aligner = Aligner(REVISIONS)
    aligner.resume("cam", T0 + 1000 * MS, T0 + 1500 * MS)  # published up to 1000, provisional to 1500
    for item in media("cam", 500, 2500):  # re-read from the committed offset: before the resume point too
        aligner.add(item, 0)
    aligner.progress(Progress("cam", Modality.TEXT, T0 + 2500 * MS), 0)
    closed = [*aligner.poll(0), *aligner.provisional(0), *aligner.poll(0)]
    assert [((w.t_start_ns - T0) // MS, w.revision, w.final) for w in closed] == [
        (1000, 1, True), (1500, 0, True)], "the windows from the resume point on, each once"
