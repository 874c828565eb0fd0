"""`fusionstream produce` against a real broker: what lands on the three input topics, and how.

docs/wire-format.md: each record goes to its modality's topic, byte-identical to the source's wire
bytes, keyed by its stream id, stamped with its event time in ms; the topics have equal
partition counts, so a stream's three modalities share a partition number.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fusionstream.consumers.producers import Published, PublishError, prepare_topics, producer_for, publish
from fusionstream.consumers.producers.sources import media_source, synthetic_source
from fusionstream.consumers.settings import Settings
from fusionstream.stream.media import decode_media, image_record
from fusionstream.stream.records import MODALITIES, Encoding, Frame, Modality, Record, TextSegment
from fusionstream.stream.sources import GroundTruth, SyntheticAV, SyntheticConfig
from fusionstream.stream.wire import decode, encode
from fusionstream.units import MS, NS

REPO_ROOT = Path(__file__).resolve().parents[2]
FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]
PARTITIONS = 4
DEADLINE_S = 60.0


def _topics(prefix: str) -> dict[Modality, str]:
    return {modality: f"{prefix}.{modality.label}" for modality in MODALITIES}


def _env(bootstrap: str, prefix: str) -> dict[str, str]:
    topics = _topics(prefix)
    return {
        **os.environ,
        "FUSIONSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "FUSIONSTREAM_VIDEO_TOPIC": topics[Modality.VIDEO],
        "FUSIONSTREAM_AUDIO_TOPIC": topics[Modality.AUDIO],
        "FUSIONSTREAM_TEXT_TOPIC": topics[Modality.TEXT],
        "FUSIONSTREAM_PARTITIONS": str(PARTITIONS),
    }


def _produce(args: list[str], env: dict[str, str], stdin: str | None = None) -> dict[str, object]:
    """Run `fusionstream produce ARGS --json --quiet`; return its JSON counts."""
    done = subprocess.run(
        [*FUSIONSTREAM, "produce", *args, "--json", "--quiet"],
        env=env, cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def read_topics(bootstrap: str, topics: dict[Modality, str]) -> dict[Modality, list[ConsumerRecord]]:
    """Everything on ``topics`` up to their current ends, per modality; also checks the partition counts."""

    async def scenario() -> dict[Modality, list[ConsumerRecord]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(topics.values()))
        finally:
            await admin.close()
        assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(topics.values(), PARTITIONS)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(t, p) for t in topics.values() for p in range(PARTITIONS)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            got: dict[Modality, list[ConsumerRecord]] = {m: [] for m in topics}
            by_topic = {t: m for m, t in topics.items()}
            async with asyncio.timeout(DEADLINE_S):
                for tp, end in ends.items():
                    while await consumer.position(tp) < end:
                        for part, messages in (await consumer.getmany(timeout_ms=200)).items():
                            got[by_topic[part.topic]].extend(messages)
            return got
        finally:
            await consumer.stop()

    return asyncio.run(scenario())


def check_layout(received: dict[Modality, list[ConsumerRecord]]) -> dict[str, int]:
    """Key = stream id, timestamp = event time (ms, CreateTime), one partition number per stream; returns it."""
    partition_of: dict[str, set[int]] = defaultdict(set)
    for messages in received.values():
        for message in messages:
            record = decode(message.value)
            assert message.key == record.stream_id.encode("utf-8")
            assert message.timestamp == record.t_start_ns // MS
            assert message.timestamp_type == 0
            partition_of[record.stream_id].add(message.partition)
    assert all(len(p) == 1 for p in partition_of.values()), dict(partition_of)
    return {stream_id: parts.pop() for stream_id, parts in partition_of.items()}


def test_kafka_produce_synthetic_is_byte_identical_and_copartitioned(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    config = SyntheticConfig(streams=5, seconds=3.0, seed=7)
    truth_file = tmp_path / "truth.json"
    args = ["synthetic", "--fast", "--streams", "5", "--seconds", "3", "--seed", "7", "--truth", str(truth_file)]
    counts = _produce(args, _env(kafka_bootstrap, topic_prefix))

    source = SyntheticAV(config)
    expected = list(source.records())
    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    for modality in MODALITIES:
        mine = [encode(r) for r in expected if r.modality is modality]
        assert mine, modality
        assert sorted(m.value for m in received[modality]) == sorted(mine), modality
        # Per stream, a topic keeps the source's order.
        for stream_id in source.stream_ids:
            seqs = [decode(m.value).seq for m in received[modality] if m.key == stream_id.encode()]
            assert seqs == [r.seq for r in expected if r.modality is modality and r.stream_id == stream_id]
    partitions = check_layout(received)
    assert sorted(partitions) == sorted(source.stream_ids)
    assert len(set(partitions.values())) > 1  # not vacuous: the streams spread over partitions
    assert counts["records"] == {m.label: len(received[m]) for m in MODALITIES}
    assert counts["streams"] == source.stream_ids
    assert GroundTruth.from_dict(json.loads(truth_file.read_text())).to_dict() == source.truth.to_dict()


def test_kafka_publish_synthetic_in_real_time(kafka_bootstrap: str, topic_prefix: str) -> None:
    """Paced: event times start at the wall clock, and each record leaves when its time comes."""
    topics = _topics(topic_prefix)
    settings = Settings.load(
        bootstrap_servers=kafka_bootstrap, partitions=PARTITIONS,
        video_topic=topics[Modality.VIDEO], audio_topic=topics[Modality.AUDIO], text_topic=topics[Modality.TEXT],
    )  # fmt: skip
    sent_at: list[tuple[Record, int]] = []

    def stamped(records: Iterable[Record]) -> Iterator[Record]:
        for record in records:  # runs in publish()'s source thread, after pacing
            sent_at.append((record, time.time_ns()))
            yield record

    async def scenario() -> tuple[Published, GroundTruth, int]:
        await prepare_topics(settings)
        producer = producer_for(settings)
        await producer.start()
        try:
            # The source is made once the producer is ready, as `fusionstream produce` does.
            started = time.time_ns()
            records, truth = synthetic_source(SyntheticConfig(streams=2, seconds=1.5, seed=3), realtime=True)
            return await publish(stamped(records), settings, producer=producer, create_topics=False), truth, started
        finally:
            await producer.stop()

    published, truth, started = asyncio.run(scenario())
    elapsed = (time.time_ns() - started) / NS

    assert published.total == len(sent_at) > 50
    assert 1.3 < elapsed < 5.0
    first = min(r.t_start_ns for r, _ in sent_at)
    assert abs(first - started) < 0.5 * NS
    # Released on time: never before its event time, and not long after.
    lags = [(at - r.t_start_ns) / MS for r, at in sent_at]
    assert min(lags) > -5, "a record left before its event time"
    # Spacing is kept: relative to the first record, records leave on time (a busy machine may
    # delay the whole run's start, which shifts every lag alike).
    spread = np.asarray(lags) - lags[0]
    assert np.percentile(spread, 90) < 100, (min(lags), max(lags))
    # The truth moved with the records.
    assert min(truth.span(s)[0] for s in truth.stream_ids) == first
    received = read_topics(kafka_bootstrap, topics)
    assert sum(map(len, received.values())) == published.total
    check_layout(received)


# -- files ----------------------------------------------------------------------------------------

FPS = 10
SECONDS = 2.0
RATE = 16_000
SRT = "1\n00:00:00,200 --> 00:00:00,900\nhello there\n\n2\n00:00:01,100 --> 00:00:01,800\n<i>seven</i> eight\n"


def write_mp4(path: Path, *, audio: bool = True) -> Path:
    """2 s of H.264 at 10 fps (a moving bar) with an AAC tone (unless not ``audio``)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = Fraction(1, FPS)
        track = out.add_stream("aac", rate=RATE) if audio else None
        if track is not None:
            track.layout = "mono"
        for i in range(round(SECONDS * FPS)):
            image = np.full((48, 64, 3), 40, np.uint8)
            image[:, 3 * i : 3 * i + 6] = 250
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if track is None:
            return path
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(SECONDS * RATE)) / RATE)).astype(np.float32)
        for at in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, at : at + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, at
            out.mux(track.encode(frame))
        out.mux(track.encode())
    return path


def test_kafka_produce_video_with_captions(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    mp4 = write_mp4(tmp_path / "clip.mp4")
    srt = tmp_path / "clip.srt"
    srt.write_text(SRT)
    started = time.time_ns()
    counts = _produce(["video", str(mp4), "--captions", str(srt), "--no-pacing"], _env(kafka_bootstrap, topic_prefix))

    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    assert check_layout(received).keys() == {"clip"}  # the file's stem
    # The media; the progress records beside them are tests/consumers/test_progress_service.py's.
    decoded = {m: [decode(msg.value) for msg in received[m]] for m in MODALITIES}
    records = {m: [r for r in decoded[m] if not r.is_progress] for m in MODALITIES}
    # Counted apart: a file's frames are its frames, not one more for its `ended`.
    assert counts["records"] == {m.label: len(records[m]) for m in MODALITIES}
    assert counts["progress"] == sum(r.is_progress for m in MODALITIES for r in decoded[m]) > 0
    assert len(records[Modality.VIDEO]) == SECONDS * FPS
    assert abs(len(records[Modality.AUDIO]) - SECONDS * 1000 / 40) <= 2  # 40 ms chunks
    assert [decode_media(r).text for r in records[Modality.TEXT]] == ["hello there", "seven eight"]  # type: ignore[union-attr]
    for modality in MODALITIES:
        mine = records[modality]
        assert [r.seq for r in mine] == list(range(len(mine)))
        assert all(a.t_start_ns <= b.t_start_ns for a, b in itertools.pairwise(mine))
    # The file's 0:00 is when publishing started, and the three tracks share that origin.
    origin = records[Modality.VIDEO][0].t_start_ns
    assert 0 <= origin - started < 10 * NS
    assert abs(records[Modality.AUDIO][0].t_start_ns - origin) < 50 * MS
    assert records[Modality.TEXT][0].t_start_ns - origin == 200 * MS
    assert isinstance(decode_media(records[Modality.VIDEO][5]), Frame)


def test_media_source_loop_continues_the_timeline(tmp_path: Path) -> None:
    mp4 = write_mp4(tmp_path / "loop.mp4")
    srt = tmp_path / "loop.srt"
    srt.write_text(SRT)
    per_pass = len(list(media_source(mp4, "loop", captions=srt, realtime=False, start_ns=0)))
    records = list(
        itertools.islice(
            media_source(mp4, "loop", captions=srt, loop=True, realtime=False, start_ns=0), per_pass * 2 + 5
        )
    )
    for modality in MODALITIES:
        mine = [r for r in records if r.modality is modality]
        assert [r.seq for r in mine] == list(range(len(mine)))
        assert all(b.t_start_ns >= a.t_end_ns for a, b in itertools.pairwise(mine))
    second = records[per_pass:]
    assert second[0].t_start_ns >= SECONDS * NS - 50 * MS
    texts = [r for r in records if r.modality is Modality.TEXT]
    assert texts[2].t_start_ns - texts[0].t_start_ns == pytest.approx(SECONDS * NS, abs=60 * MS)


def test_kafka_produce_captions_from_stdin(kafka_bootstrap: str, topic_prefix: str) -> None:
    before = time.time_ns()
    counts = _produce(
        ["captions", "-", "--stream-id", "desk"],
        _env(kafka_bootstrap, topic_prefix),
        stdin="the number is seven\n\n   \nnine <b>nine</b>\n",
    )
    after = time.time_ns()
    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    assert not received[Modality.VIDEO] and not received[Modality.AUDIO]
    # Two lines, then the progress record saying the captions ended.
    assert counts["records"] == {"video": 0, "audio": 0, "text": 2} and counts["progress"] == 1
    *records, last = [decode(m.value) for m in received[Modality.TEXT]]
    assert last.is_progress and last.meta["ended"] and last.t_end_ns == records[-1].t_end_ns
    segments = [decode_media(r) for r in records]
    assert all(isinstance(s, TextSegment) for s in segments)
    assert [s.text for s in segments] == ["the number is seven", "nine nine"]  # type: ignore[union-attr]
    assert {m.key for m in received[Modality.TEXT]} == {b"desk"}
    assert all(before <= r.t_end_ns <= after for r in records)  # stamped on arrival
    assert records[1].t_start_ns >= records[0].t_end_ns


# -- errors ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _long_dir(tmp_path: Path) -> Path:
    """A directory whose path is longer than 100 characters (and than any terminal line below)."""
    long = tmp_path / ("a-rather-long-directory-name-" * 5)
    long.mkdir()
    assert len(str(long)) > 100
    return long


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr, which must be the error; returns it."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fusionstream: error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("columns", ["60", "250"])
def test_produce_errors_are_one_clear_line(tmp_path: Path, columns: str) -> None:
    """Whatever the terminal's width and however long the path: one line, the whole message, no traceback."""
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}", "COLUMNS": columns}
    long = _long_dir(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FUSIONSTREAM, "produce", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )

    down = run("synthetic", "--fast", "--seconds", "1")
    assert down.returncode == 1
    line = _one_error_line(down)
    assert "cannot reach Kafka" in line and "make kafka-start" in line

    # A usage error (click's): the whole path, and where to read more, on the one line.
    missing = run("video", str(long / "nope.mp4"))
    assert missing.returncode == 2
    line = _one_error_line(missing)
    assert f"'{long / 'nope.mp4'}' does not exist" in line
    assert line.endswith("(see 'fusionstream produce video --help')")

    captions = run("captions", str(long / "nope.srt"))
    assert captions.returncode == 2
    assert f"no such caption file: {long / 'nope.srt'}" in _one_error_line(captions)

    config = run("synthetic", "--config", str(long / "nope.toml"))
    assert config.returncode == 2
    assert f"settings file {long / 'nope.toml'} does not exist" in _one_error_line(config)

    # A file given to `camera` would be read as fast as OpenCV can, every frame stamped at once.
    clip = long / "clip.mp4"
    clip.write_bytes(b"\0" * 16)
    camera = run("camera", str(clip))
    assert camera.returncode == 1
    assert f"{clip} is a file, not a camera: `fusionstream produce video {clip}`" in _one_error_line(camera)


def test_kafka_produce_stops_cleanly_on_ctrl_c(kafka_bootstrap: str, topic_prefix: str) -> None:
    """Ctrl-C while the source blocks (stdin): what was read is published, exit status 130, a summary."""
    producer = subprocess.Popen(
        [*FUSIONSTREAM, "produce", "captions", "-", "--stream-id", "desk"],
        env=_env(kafka_bootstrap, topic_prefix), cwd=REPO_ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdin is not None
    producer.stdin.write("still listening\n")
    producer.stdin.flush()
    topics = _topics(topic_prefix)
    deadline = time.monotonic() + DEADLINE_S
    received: dict[Modality, list[ConsumerRecord]] = {}
    while not received.get(Modality.TEXT):  # wait until the line is published: the source now blocks on stdin
        assert time.monotonic() < deadline and producer.poll() is None
        time.sleep(0.2)
        if _exists(kafka_bootstrap, topics):
            received = read_topics(kafka_bootstrap, topics)
    assert [decode(m.value).payload for m in received[Modality.TEXT]] == [b"still listening"]
    producer.send_signal(signal.SIGINT)
    _, err = producer.communicate(timeout=DEADLINE_S)
    assert producer.returncode == 130, err
    assert "stopped after 1 record (" in err
    # stderr is a pipe here, where a live status line shows nothing: a plain line says where it produces.
    assert err.splitlines()[0].startswith(f"▶ producing to {kafka_bootstrap}"), err
    # Then an `ended` progress record, so the service closes the stream's windows now (wire-format.md#progress).
    line, ended = (decode(m.value) for m in read_topics(kafka_bootstrap, topics)[Modality.TEXT])
    assert ended.is_progress and ended.meta.get("ended") and ended.stream_id == "desk"
    assert ended.seq == line.seq + 1 and ended.t_end_ns == line.t_end_ns


def _exists(bootstrap: str, topics: dict[Modality, str]) -> bool:
    async def scenario() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(topics.values()))
        finally:
            await admin.close()
        return all(not t["error_code"] and t["partitions"] for t in described)

    return asyncio.run(scenario())


def test_kafka_publish_refuses_a_record_too_large(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = _topics(topic_prefix)
    settings = Settings.load(
        bootstrap_servers=kafka_bootstrap, partitions=PARTITIONS,
        video_topic=topics[Modality.VIDEO], audio_topic=topics[Modality.AUDIO], text_topic=topics[Modality.TEXT],
    )  # fmt: skip
    small = image_record("cam", 0, 0, 40 * MS, np.zeros((8, 8, 3), np.uint8), encoding=Encoding.RAW_RGB24)
    huge = image_record("cam", 1, 40 * MS, 80 * MS, np.zeros((720, 1280, 3), np.uint8), encoding=Encoding.RAW_RGB24)
    with pytest.raises(PublishError, match=r"too large.*--size") as caught:
        asyncio.run(publish([small, huge], settings))
    assert "video record cam#1" in str(caught.value)
    # What came before the failure was flushed, not lost.
    assert [decode(m.value) for m in read_topics(kafka_bootstrap, topics)[Modality.VIDEO]] == [small]


def test_kafka_produce_audio_with_asr(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """`produce audio FILE --asr`: the audio, plus one transcript record per recognised word where it was
    spoken, and progress records up to the end (docs/wire-format.md#progress)."""
    import wave

    from fusionstream.stream.sources import SpeechBank

    clips = [next(c for c in SpeechBank.load("all")[d] if c.voice == "en-us") for d in (1, 5, 2)]
    gap = np.zeros(RATE * 7 // 10, np.float32)
    audio = np.concatenate([part for clip in clips for part in (gap, clip.samples)] + [gap])
    path = tmp_path / "digits.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((audio * 32767).astype("<i2").tobytes())
    counts = _produce(["audio", str(path), "--asr", "--asr-grammar", "digits", "--no-pacing"],
                      _env(kafka_bootstrap, topic_prefix))

    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    assert check_layout(received).keys() == {"digits"}
    records = [decode(m.value) for m in received[Modality.TEXT]]
    assert counts["records"]["text"] == sum(not r.is_progress for r in records)
    words = [r for r in records if not r.is_progress]
    progress = [r for r in records if r.is_progress]
    assert [r.seq for r in records] == list(range(len(records)))  # words and progress share the text seq
    assert 2 <= len(words) <= 5, [r.payload for r in words]
    origin = decode(received[Modality.AUDIO][0].value).t_start_ns
    end = max(decode(m.value).t_end_ns for m in received[Modality.AUDIO])
    first_clip = origin + len(gap) * NS // RATE
    assert abs(words[0].t_start_ns - first_clip) < 150 * MS  # stamped when it was spoken
    assert all(origin <= w.t_start_ns < w.t_end_ns <= end for w in words)
    assert all(0 <= w.meta["confidence"] <= 1 and w.meta["is_final"] for w in words)
    assert {decode_media(w).text for w in words} & {"one", "five", "two"}  # type: ignore[union-attr]
    # Progress never goes back, no word starts before a progress sent earlier, and the last one ends it.
    assert [p.t_start_ns for p in progress] == sorted(p.t_start_ns for p in progress)
    for word in words:
        assert all(p.t_start_ns <= word.t_start_ns for p in progress if p.seq < word.seq)
    assert progress[-1].meta.get("ended") and abs(progress[-1].t_start_ns - end) <= 10 * MS


def test_kafka_produce_asr_refusals(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """`--asr` with `--captions` is refused; `mic --asr` goes as far as the device (this machine has none)."""
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pass
    else:
        pytest.skip("PortAudio is installed: the microphone may exist, and this test would record it")
    env = _env(kafka_bootstrap, topic_prefix)
    run = {"env": env, "cwd": REPO_ROOT, "capture_output": True, "text": True, "timeout": DEADLINE_S}
    mp4, srt = write_mp4(tmp_path / "c.mp4"), tmp_path / "c.srt"
    srt.write_text(SRT)
    both = subprocess.run([*FUSIONSTREAM, "produce", "video", str(mp4), "--captions", str(srt), "--asr"], **run)
    assert both.returncode == 2 and "--asr and --captions" in _one_error_line(both)
    mic = subprocess.run([*FUSIONSTREAM, "produce", "mic", "--asr"], **run)
    assert mic.returncode == 1 and "PortAudio" in _one_error_line(mic)


def test_produce_asr_with_nothing_to_recognise_is_refused_at_once(tmp_path: Path) -> None:
    """Audio too coarse for speech, or a file without an audio track: one line before anything is sent
    (they published no words at all, silently). No broker needed: the check comes first."""
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    run = {"env": env, "cwd": REPO_ROOT, "capture_output": True, "text": True, "timeout": DEADLINE_S}
    low = subprocess.run([*FUSIONSTREAM, "produce", "mic", "--asr", "--sample-rate", "4000"], **run)
    assert low.returncode == 2 and "--asr needs audio at 8000 Hz or more" in _one_error_line(low)
    silent = write_mp4(tmp_path / "silent.mp4", audio=False)
    for command in ("video", "audio"):
        mute = subprocess.run([*FUSIONSTREAM, "produce", command, str(silent), "--asr"], **run)
        assert mute.returncode == 1 and "has no audio track" in _one_error_line(mute), mute.stderr
