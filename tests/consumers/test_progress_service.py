"""Source progress through the real broker: what `fusionstream produce` sends, and how the service
closes windows on it (docs/wire-format.md#progress)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from servicekit import PARTITIONS, Reader, Running, all_topics, produce, service_settings
from test_produce import SRT, _env, _produce, _topics, read_topics, write_mp4

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.settings import Settings
from fusionstream.stream.media import audio_record, decode_media, image_record, progress_record, text_record
from fusionstream.stream.records import FLAG_COMPLETE, MODALITIES, Encoding, Modality, Progress, Record
from fusionstream.stream.wire import decode
from fusionstream.units import MS, NS

SECONDS = 3


def test_kafka_produce_flags_media_and_sends_progress(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    mp4 = write_mp4(tmp_path / "clip.mp4")
    srt = tmp_path / "clip.srt"
    srt.write_text(SRT)
    _produce(["video", str(mp4), "--captions", str(srt), "--no-pacing"], _env(kafka_bootstrap, topic_prefix))
    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    records = {m: [decode(msg.value) for msg in received[m]] for m in MODALITIES}
    for modality in MODALITIES:
        media = [r for r in records[modality] if r.encoding is not Encoding.PROGRESS]
        assert media and all(r.flags == FLAG_COMPLETE and r.version == 1 for r in media)
        last = records[modality][-1]
        assert last.is_progress and decode_media(last) == Progress("clip", modality, last.t_end_ns, True)
        assert last.t_end_ns >= max(r.t_end_ns for r in media)
    # Between the two cues the captions are known to be complete up to the media sent so far.
    told = [r.t_end_ns for r in records[Modality.TEXT] if r.is_progress]
    assert len(told) >= 4 and told == sorted(told)
    assert all(r.version == 2 for r in records[Modality.TEXT] if r.is_progress)

    _produce(["video", str(mp4), "--no-pacing", "--no-progress", "--stream-id", "old"],
             _env(kafka_bootstrap, topic_prefix))
    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    old = [decode(msg.value) for m in MODALITIES for msg in received[m] if msg.key == b"old"]
    assert old and not any(r.is_progress for r in old), "--no-progress sends no version-2 record"
    assert all(r.flags == FLAG_COMPLETE for r in old), "the flag stays: every reader accepts it"


def _grid_t0(settings: Settings, stream_id: str) -> int:
    """A minute ago, on ``stream_id``'s window grid (staggered by default: docs/architecture.md#staggered-windows),
    so its windows start at ``t0 + k * 500 ms``."""
    config = settings.window_config(frames_per_window=8, sample_rate=16_000)
    assert config.stagger, "serve staggers windows by default"
    return (time.time_ns() // NS - 60) * NS + config.offset_ns(stream_id)


def _stream(stream_id: str, t0: int, *, told: bool) -> list[Record]:
    """3 s of 10 fps video and 40 ms audio chunks, one word at 0.2 s; with ``told``, flagged
    complete and ended with a progress record per modality, as our producers send them."""
    rgb = np.full((64, 64, 3), 90, np.uint8)
    records = [image_record(stream_id, i, t0 + i * 100 * MS, t0 + (i + 1) * 100 * MS, rgb, complete=told)
               for i in range(SECONDS * 10)]
    chunk = np.zeros(640, np.float32)
    records += [audio_record(stream_id, i, t0 + i * 40 * MS, chunk, 16_000, complete=told) for i in range(SECONDS * 25)]
    records.append(text_record(stream_id, 0, t0 + 200 * MS, t0 + 500 * MS, "seven", complete=told))
    if told:
        end = t0 + SECONDS * NS
        records += [progress_record(stream_id, m, 99, end, ended=True) for m in MODALITIES]
    return records


def test_kafka_service_closes_windows_on_progress_instead_of_the_idle_timeout(
    kafka_bootstrap: str, topic_prefix: str, shipped_model: Path
) -> None:
    """Both streams end at 3 s. The one whose producer said so gets every window closed by the
    watermark at once; the other's last windows wait out the idle timeout."""
    settings = service_settings(kafka_bootstrap, topic_prefix, shipped_model, idle_timeout_ms=6000, threads=0)
    t0, t0_silent = _grid_t0(settings, "told"), _grid_t0(settings, "silent")
    records = _stream("told", t0, told=True) + _stream("silent", t0_silent, told=False)

    async def scenario() -> tuple[list[dict], float, list[dict]]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, records)
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, Running(settings):
                started = time.monotonic()
                await reader.until(lambda r: any(v["stream_id"] == "told" and v["t_end_ns"] >= t0 + SECONDS * NS
                                                 for v in r.values()), timeout_s=60)
                told_after = time.monotonic() - started
                told = [v for v in reader.values() if v["stream_id"] == "told"]
                await reader.until(lambda r: any(v["stream_id"] == "silent" and v["closed_by"] == "timeout"
                                                 for v in r.values()), timeout_s=60)
                return told, told_after, [v for v in reader.values() if v["stream_id"] == "silent"]
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    told, told_after, silent = asyncio.run(scenario())
    assert told_after < 5.0, "the ended stream's windows did not wait for the 6 s idle timeout"
    assert {v["closed_by"] for v in told} == {"watermark"}
    assert sorted(v["t_start_ns"] for v in told) == [t0 + k * 500 * MS for k in range(-1, 2 * SECONDS)]
    assert {v["t_start_ns"] - t0_silent for v in silent} == {v["t_start_ns"] - t0 for v in told}


def test_kafka_revisions_publish_a_provisional_then_a_final_per_window(
    kafka_bootstrap: str, topic_prefix: str, shipped_model: Path
) -> None:
    """Video and audio arrive; the transcript comes later. With revisions on, each window waiting for
    its text gets a provisional prediction at once and its final (revision 1) when the text comes."""
    settings = service_settings(kafka_bootstrap, topic_prefix, shipped_model, revisions=True, text_wait_ms=10_000,
                                idle_timeout_ms=20_000, threads=0)
    t0 = _grid_t0(settings, "rev")
    media = [r for r in _stream("rev", t0, told=True) if not r.is_progress and r.modality is not Modality.TEXT]
    words = [text_record("rev", i, t0 + (i * 1000 + 200) * MS, t0 + (i * 1000 + 500) * MS, "seven", complete=True)
             for i in range(SECONDS)]
    ended = [progress_record("rev", m, 99, t0 + SECONDS * NS, ended=True) for m in MODALITIES]
    starts = [t0 + k * 500 * MS for k in range(-1, 2 * SECONDS)]

    async def scenario() -> list[dict]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            # The first word, then all the video and audio: the text is complete to 0.5 s only.
            await produce(settings, [words[0], *media])
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, Running(settings):
                await reader.until(lambda r: sum(not v["final"] for v in r.values()) >= 2 * SECONDS - 1, timeout_s=60)
                await produce(settings, [*words[1:], *ended])
                await reader.until(lambda r: {v["t_start_ns"] for v in r.values() if v["final"]} >= set(starts),
                                   timeout_s=60)
                return reader.values()
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    values = asyncio.run(scenario())
    by_window: dict[int, list[tuple[int, bool]]] = {}
    for v in values:  # in publication order: one key, one partition
        by_window.setdefault(v["t_start_ns"], []).append((v["revision"], v["final"]))
    assert set(by_window) == set(starts)
    # [-0.5 s, 0.5 s) had its text when video and audio were complete: one final, revision 0.
    assert by_window[starts[0]] == [(0, True)]
    for start in starts[1:-1]:
        assert by_window[start] == [(0, False), (1, True)], f"window {(start - t0) // MS} ms"
    provisional = [v for v in values if not v["final"]]
    assert all(v["closed_by"] == "provisional" and not v["modalities"]["text"] for v in provisional[1:])


def test_kafka_a_word_delivered_past_its_budget_amends_the_windows_that_closed_without_it(
    kafka_bootstrap: str, topic_prefix: str, shipped_model: Path
) -> None:
    """Revisions on, the text's wait budget short: windows close without a word that comes later. The
    word, spoken across the edge of the first open window, amends the closed windows it belongs to
    (a final with a higher revision, closed_by "amended") instead of missing them silently. (A window
    waits for the text until the newest media is the budget past its end: with media to 3 s and a
    300 ms budget, the windows ending by 2.7 s close.)"""
    settings = service_settings(kafka_bootstrap, topic_prefix, shipped_model, revisions=True, text_wait_ms=300,
                                idle_timeout_ms=20_000, threads=0)
    t0 = _grid_t0(settings, "amend")
    media = [r for r in _stream("amend", t0, told=True) if not r.is_progress]  # the word at 0.2-0.5 s included
    late_word = text_record("amend", 1, t0 + 1900 * MS, t0 + 2100 * MS, "three", complete=True)
    ended = [progress_record("amend", m, 99, t0 + SECONDS * NS, ended=True) for m in MODALITIES]
    closed_before = [t0 + k * 500 * MS for k in range(-1, 4)]  # windows ending by 2.7 s: up to [1.5 s, 2.5 s)

    async def scenario() -> list[dict]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, media)
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, Running(settings):
                await reader.until(lambda r: {v["t_start_ns"] for v in r.values() if v["final"]} >= set(closed_before),
                                   timeout_s=60)
                await produce(settings, [late_word, *ended])
                # The open window's final, not its provisional (revisions on: that comes first, without text).
                await reader.until(lambda r: any(v["closed_by"] == "amended" for v in r.values())
                                   and t0 + 2000 * MS in {v["t_start_ns"] for v in r.values() if v["final"]},
                                   timeout_s=60)
                return reader.values()
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    values = asyncio.run(scenario())
    amended = {v["t_start_ns"]: v for v in values if v["closed_by"] == "amended"}
    assert sorted((s - t0) // MS for s in amended) == [1000, 1500]
    for start, v in amended.items():
        earlier = [u for u in values if u["t_start_ns"] == start and u is not v]
        assert earlier and all(u["final"] and not u["modalities"]["text"] for u in earlier), "closed without the word"
        assert v["final"] and v["modalities"]["text"] and v["revision"] == max(u["revision"] for u in earlier) + 1
    assert [v for v in values if v["t_start_ns"] == t0 + 2000 * MS and v["final"]][-1]["modalities"]["text"], \
        "the open one has it"
