"""`fusionstream view`: the per-stream state (unit tests), and the page in headless Chromium during a live run.

The live test runs the real service in-process on the shipped model, a synthetic source
published in real time (event time = now, like cameras), and `fusionstream view` as a
subprocess; Chromium (Debian's ``chromium``, driven by Playwright) loads the page, and the
DOM must show, for every stream, a drawn frame and a prediction that is on the
predictions topic with the same label and score. A screenshot is saved to the test's
tmp dir and to ``$FUSIONSTREAM_ARTIFACTS`` when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servicekit import Running, all_topics, free_port, http_get, service_settings
from test_subscribe import read_published

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.subscribers.api import parse_prediction
from fusionstream.consumers.viewer.state import LEVEL_FLOOR_DB, TIMELINE_LENGTH, TRANSCRIPT_CHARS, ViewerState, to_jpeg
from fusionstream.stream import wire
from fusionstream.stream.media import audio_record, image_record, progress_record, text_record
from fusionstream.stream.records import Encoding, Modality, Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.units import NS

REPO_ROOT = Path(__file__).resolve().parents[2]
STREAMS = 3
SECONDS = 14.0
DEADLINE_S = 90.0
FPS = 5


# -- the state, without Kafka -----------------------------------------------------------------------


def prediction(stream_id: str, t_start_ns: int, label: str = "7", score: float = 0.9) -> Any:
    return parse_prediction({
        "stream_id": stream_id, "t_start_ns": t_start_ns, "t_end_ns": t_start_ns + NS, "label": label,
        "score": score, "scores": {label: score, "1": 1 - score}, "modalities": {"video": True, "audio": False,
        "text": True}, "coverage": {"video": 1.0, "audio": 0.0, "text": 0.5}, "closed_by": "watermark",
    })  # fmt: skip


def frame(stream_id: str, t_ns: int, value: int = 128, encoding: Encoding = Encoding.JPEG) -> Record:
    image = np.full((16, 16, 3), value, np.uint8)
    return wire.decode(wire.encode(image_record(stream_id, 0, t_ns, t_ns + NS // 15, image, encoding=encoding)))


def test_newest_frame_wins_by_event_time_and_raw_frames_are_served_as_jpeg() -> None:
    state = ViewerState(sync=False)
    t0 = 1_800_000_000 * NS
    assert state.on_record(frame("cam", t0 + NS), now=0.0)
    assert not state.on_record(frame("cam", t0), now=0.1), "an older frame arriving late does not replace it"
    assert state.on_record(frame("cam", t0 + 2 * NS), now=0.2)
    assert state.on_record(frame("cam", t0 - 60 * NS), now=0.3), "far older: the producer restarted"
    number, record = state.frame("cam") or (0, None)
    assert number == 3 and record is not None and record.t_start_ns == t0 - 60 * NS
    assert to_jpeg(record).startswith(b"\xff\xd8")
    state.on_record(frame("raw", t0, encoding=Encoding.RAW_RGB24), now=0.4)
    number, record = state.frame("raw") or (0, None)
    assert number == 1 and record is not None and to_jpeg(record).startswith(b"\xff\xd8")
    assert state.frame("nobody") is None


@pytest.mark.parametrize("modality", list(Modality))
def test_progress_records_are_passed_over(modality: Modality) -> None:
    """Our file producers end each modality with an ``ended`` progress record (no media, no sample rate):
    the viewer shows nothing for it and goes on (it raised KeyError on the audio one and stopped)."""
    state = ViewerState(sync=False)
    t0 = 1_800_000_000 * NS
    assert state.on_record(frame("cam", t0), now=0.0)
    for ended in (False, True):
        record = wire.decode(wire.encode(progress_record("cam", modality, 9, t0 + NS, ended=ended)))
        assert not state.on_record(record, now=0.1)
    assert state.on_record(frame("cam", t0 + NS), now=0.2) and (state.frame("cam") or (0,))[0] == 2


def test_synced_video_is_delayed_so_each_label_is_drawn_on_a_frame_of_its_window() -> None:
    state = ViewerState(sync=True)
    t0 = 1_800_000_000 * NS
    hop = NS // 2
    # Frames every 100 ms up to t0 + 6 s; predictions (W = 1 s, H = 0.5 s) lag the video by about 1.5 s.
    for i in range(61):
        state.on_record(frame("cam", t0 + i * NS // 10), now=0)
        if i % 5 == 0 and i >= 25:
            start = t0 + (i // 5 - 5) * hop
            state.on_prediction(prediction("cam", start, label=str(i // 5 % 10)), now=0)
    snap = state.snapshot("cam", now=0) or {}
    shown_t, p = snap["frame"]["t_ns"], snap["prediction"]
    assert p["on_frame"] and p["t_start_ns"] <= shown_t < p["t_end_ns"], "the label belongs to the frame shown"
    assert snap["frame"]["behind_ms"] >= 1000, "the video waits for its predictions"
    assert state.frame("cam", snap["frame"]["seq"]) == state.frame("cam"), "the page gets the frame it was told of"
    unsynced = ViewerState(sync=False)
    unsynced.streams = state.streams
    snap = unsynced.snapshot("cam", now=0) or {}
    assert snap["frame"]["behind_ms"] == 0 and snap["frame"]["t_ns"] == t0 + 6 * NS
    assert not snap["prediction"]["on_frame"], "--no-sync: the newest frame, the newest prediction"


def test_timeline_is_in_event_time_order_without_duplicates_and_sent_incrementally() -> None:
    state = ViewerState()
    t0 = 1_800_000_000 * NS
    for i in (2, 0, 1, 3):
        assert state.on_prediction(prediction("cam", t0 + i * NS // 2, label=str(i)), now=i)
    assert not state.on_prediction(prediction("cam", t0), now=5), "a re-read (look-back, at-least-once) is a no-op"
    snap = state.snapshot("cam", now=5) or {}
    assert [e["label"] for e in snap["timeline"]] == ["0", "1", "2", "3"]
    assert snap["prediction"]["label"] == "3" and snap["prediction"]["window_id"] == f"cam@{t0 + 3 * NS // 2}"
    assert snap["prediction"]["top"][0] == ["3", 0.9]
    assert state.on_prediction(prediction("cam", t0 - NS // 2, label="9"), now=6)
    assert (state.snapshot("cam", now=6) or {})["prediction"]["label"] == "3", "an older window is not the latest"
    assert [e["label"] for e in (state.snapshot("cam", now=6, since=4) or {})["timeline"]] == ["9"]
    for i in range(TIMELINE_LENGTH + 10):
        state.on_prediction(prediction("cam", t0 + (10 + i) * NS), now=7)
    assert len((state.snapshot("cam", now=7) or {})["timeline"]) == TIMELINE_LENGTH


def test_multi_label_and_embedding_predictions_show_what_their_model_publishes() -> None:
    state = ViewerState()
    t0 = 1_800_000_000 * NS
    base = {k: v for k, v in prediction("cam", t0).to_dict().items() if k != "window_id"}
    multi = parse_prediction(base | {"labels": {"person": 0.81, "car": 0.64}})
    none_above = parse_prediction(base | {"t_start_ns": t0 + NS, "t_end_ns": t0 + 2 * NS, "labels": {}})
    assert state.on_prediction(multi, now=1)
    snap = (state.snapshot("cam", now=1) or {})["prediction"]
    assert (snap["task"], snap["label"], snap["score"]) == ("multi_label", "person+car", 0.81)
    assert snap["labels"] == [["person", 0.81], ["car", 0.64]]
    assert state.on_prediction(none_above, now=2)
    assert (state.snapshot("cam", now=2) or {})["prediction"]["label"] == "none"
    vector = parse_prediction(base | {"t_start_ns": t0 + 2 * NS, "t_end_ns": t0 + 3 * NS, "label": "", "score": 0.0,
                                      "scores": {}, "embedding": [0.5] * 384})
    assert vector.task == "embedding" and vector.classes == ()
    assert state.on_prediction(vector, now=3)
    snap = state.snapshot("cam", now=3) or {}
    assert (snap["prediction"]["label"], snap["prediction"]["score"]) == ("embedding[384]", None)
    assert snap["prediction"]["embedding_size"] == 384
    assert [e["label"] for e in snap["timeline"]] == ["person+car", "none", "embedding[384]"]
    assert multi.classes == ("person", "car") and prediction("cam", t0).classes == ("7",)


def test_a_final_replaces_its_provisional_prediction_and_never_the_reverse() -> None:
    state = ViewerState()
    t0 = 1_800_000_000 * NS
    base = {k: v for k, v in prediction("cam", t0, label="3", score=0.6).to_dict().items() if k != "window_id"}
    provisional = parse_prediction(base | {"revision": 0, "final": False})
    final = parse_prediction(base | {"label": "8", "score": 0.95, "revision": 1, "final": True})
    assert state.on_prediction(provisional, now=1)
    assert (state.snapshot("cam", now=1) or {})["prediction"]["final"] is False
    assert state.on_prediction(final, now=2)
    snap = state.snapshot("cam", now=2) or {}
    assert (snap["prediction"]["label"], snap["prediction"]["revision"], snap["prediction"]["final"]) == ("8", 1, True)
    assert [e["label"] for e in snap["timeline"]] == ["8"], "one entry per window: the latest revision"
    assert not state.on_prediction(provisional, now=3), "a re-read provisional does not undo the final"
    assert (state.snapshot("cam", now=3) or {})["prediction"]["label"] == "8"


def test_audio_level_transcript_filter_and_eviction() -> None:
    state = ViewerState(stream_ids=["cam"], forget_after_s=10)
    t0 = 1_800_000_000 * NS
    tone = 0.5 * np.sin(np.linspace(0, 200 * np.pi, 640, dtype=np.float32))  # RMS 0.354: -9 dBFS
    for i in range(10):
        state.on_record(wire.decode(wire.encode(audio_record("cam", i, t0 + i * 40_000_000, tone, 16_000))), now=0)
    level = (state.snapshot("cam", now=0) or {})["audio"]["level_db"]
    assert level == pytest.approx(-9.0, abs=0.3)
    state.on_record(audio_record("cam", 11, t0 + NS, np.zeros(640, np.float32), 16_000), now=0)
    assert (state.snapshot("cam", now=0) or {})["audio"]["level_db"] == LEVEL_FLOOR_DB, "silence now: the floor"

    state.on_record(text_record("cam", 0, t0, t0 + NS // 2, "seven"), now=1)
    state.on_record(text_record("cam", 1, t0 + NS, t0 + NS + 1, "thr", is_final=False), now=1)
    state.on_record(text_record("cam", 2, t0 + NS, t0 + 2 * NS, "three"), now=1)
    transcript = (state.snapshot("cam", now=1) or {})["transcript"]
    assert transcript["text"] == "seven three" and transcript["is_final"], "a partial result is replaced"
    # A caption of a megabyte went to every page on every update of its stream (2.6 MB, JSON-escaped).
    state.on_record(text_record("cam", 3, t0 + 2 * NS, t0 + 3 * NS, "Grüße " * 200_000 + "ende"), now=1)
    text = (state.snapshot("cam", now=1) or {})["transcript"]["text"]
    assert len(text) == TRANSCRIPT_CHARS + 1 and text.startswith("…Grüße") and text.endswith("Grüße ende"), text

    assert not state.on_record(frame("other", t0), now=1), "--stream filters"
    assert list(state.streams) == ["cam"] and state.counts == {"audio": 11, "text": 4}
    assert state.evict(now=5) == [] and state.evict(now=12) == ["cam"] and not state.streams


# -- live: service + synthetic cameras + viewer + Chromium ----------------------------------------


class ViewerProcess:
    """`python -m fusionstream view` on a free port, with the test's topics; its output goes to a log file."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        fields = ("bootstrap_servers", "video_topic", "audio_topic", "text_topic", "predictions_topic")
        self.env = {**os.environ, **{f"FUSIONSTREAM_{name.upper()}": str(getattr(settings, name)) for name in fields}}
        self.log = log_dir / "view.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ViewerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fusionstream", "view", "--port", str(self.port), "--fps", str(FPS)],
                cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"view exited with {self.proc.returncode}:\n{self.output()}")

    async def ready(self, topics: list[str]) -> dict[str, Any]:
        """Wait until /healthz answers with every partition of every topic assigned."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.alive()
            try:
                status, body = await asyncio.to_thread(http_get, self.port, "/healthz")
                health = json.loads(body)
                if status == 200 and all(health["assigned"].get(t) for t in topics):
                    return health
            except OSError:
                pass
            assert time.monotonic() < deadline, f"viewer not ready after {DEADLINE_S}s:\n{self.output()}"
            await asyncio.sleep(0.2)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:] if self.log.exists() else ""


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no `chromium` on PATH (scripts/test.sh installs it as root: apt-get install chromium)")
    pytest.importorskip("playwright.async_api", reason="the viewer test drives Chromium with playwright (dev extra)")
    return path


@pytest.fixture
def viewer_process(tmp_path: Path) -> Iterator[list[ViewerProcess]]:
    started: list[ViewerProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.cleanup()
            print(f"--- fusionstream view ---\n{process.output()}")


async def paced(settings: Settings, records: list[Record]) -> int:
    """Publish like live cameras: each record when the wall clock reaches its event time."""
    topics = {Modality.VIDEO: settings.video_topic, Modality.AUDIO: settings.audio_topic,
              Modality.TEXT: settings.text_topic}
    producer = make_producer(settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        sent = []
        for record in records:
            due = (record.t_start_ns - time.time_ns()) / NS
            if due > 0.005:
                await asyncio.sleep(due)
            sent.append(await producer.send(topics[record.modality], wire.encode(record), key=record.stream_id.encode(),
                                            timestamp_ms=record.t_start_ns // 1_000_000))
        await asyncio.gather(*sent)
        return len(sent)
    finally:
        await producer.stop()


# What the page shows, per stream card: read from the DOM only (what a user sees).
STATES = """() => [...document.querySelectorAll("section.stream[data-stream] .state")].map((el) => el.textContent)"""
DOM_SNAPSHOT = """() => [...document.querySelectorAll("section.stream[data-stream]")].map((el) => {
  const canvas = el.querySelector("canvas.frame");
  let lit = 0;
  if (canvas.dataset.frameSeq) {
    const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < px.length; i += 4 * 97) if (px[i] + px[i + 1] + px[i + 2] > 60) lit++;
  }
  return {
    stream: el.dataset.stream,
    windowId: el.dataset.windowId || null,
    label: el.querySelector(".prediction .label").textContent,
    score: el.querySelector(".prediction .score").textContent,
    frameSeq: Number(canvas.dataset.frameSeq || 0),
    lit,
    mask: [...el.querySelectorAll(".modality")].map((m) => m.dataset.present === "true"),
    db: el.querySelector(".audio .db").textContent,
    transcript: el.querySelector(".transcript").textContent,
    timeline: [...el.querySelectorAll(".timeline li")].map((li) => [li.dataset.windowId, li.textContent]),
  };
})"""


def shown(cards: list[dict[str, Any]], stream_ids: list[str]) -> bool:
    """Every stream has a drawn frame, a prediction, an audio level and a few predictions on its timeline."""
    by_stream = {c["stream"]: c for c in cards}
    return all(
        (c := by_stream.get(sid)) is not None and c["windowId"] and c["frameSeq"] > 0 and c["lit"] > 20
        and c["db"].endswith("dBFS") and len(c["timeline"]) >= 3
        for sid in stream_ids
    )


async def count_events(port: int, seconds: float) -> dict[str, int]:
    """Stream updates per stream that one /events client gets in ``seconds``."""
    from aiohttp import ClientSession, ClientTimeout

    counts: dict[str, int] = {}
    event = ""
    async with ClientSession(timeout=ClientTimeout(total=None, sock_read=seconds + 10)) as session, \
            session.get(f"http://127.0.0.1:{port}/events") as response:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = (await asyncio.wait_for(response.content.readline(), deadline - time.monotonic())).decode()
            except TimeoutError:
                break
            if line.startswith("event: "):
                event = line[7:].strip()
            elif line.startswith("data: ") and event == "stream":
                stream_id = json.loads(line[6:])["stream"]
                counts[stream_id] = counts.get(stream_id, 0) + 1
    return counts


def test_kafka_viewer_page_shows_live_frames_with_published_predictions(
    kafka_bootstrap: str, topic_prefix: str, shipped_model: Path, tmp_path: Path, chromium: str,
    viewer_process: list[ViewerProcess],
) -> None:
    from playwright.async_api import async_playwright

    # A live source's pace: windows wait for late modalities as they would in production.
    settings = service_settings(kafka_bootstrap, topic_prefix, shipped_model, threads=1, idle_timeout_ms=3000)
    start_ns = time.time_ns() + 4 * NS  # the cameras "start" once the viewer and the service are up
    source = SyntheticAV(SyntheticConfig(streams=STREAMS, seconds=SECONDS, voices="test", seed=77, start_ns=start_ns))
    records = list(source.records())
    screenshot = tmp_path / "viewer.png"

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, int], float, list[str]]:
        viewer = ViewerProcess(settings, tmp_path).start()
        viewer_process.append(viewer)
        await viewer.ready(all_topics(settings)[:4])
        async with Running(settings), async_playwright() as pw:
            producing = asyncio.create_task(paced(settings, records))
            browser = await pw.chromium.launch(executable_path=chromium)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 760})
                await page.goto(viewer.url)
                started = time.monotonic()
                while not shown(cards := await page.evaluate(DOM_SNAPSHOT), source.stream_ids):
                    viewer.alive()
                    assert not producing.done() or producing.exception() is None, producing.exception()
                    assert time.monotonic() - started < DEADLINE_S, f"the page never showed every stream: {cards}"
                    await asyncio.sleep(0.3)
                waited = time.monotonic() - started
                events = await count_events(viewer.port, 2.0)
                await page.screenshot(path=str(screenshot), full_page=True)
                producing.cancel()  # the cameras stop; their last windows close by timeout, 3 s on
                await asyncio.sleep(10.0)
                await (later := await browser.new_page()).goto(viewer.url)
                await asyncio.sleep(1.5)  # connected, and a second for the page's stale check
                states = await later.evaluate(STATES)
            finally:
                await browser.close()
                producing.cancel()  # the rest of the cameras' minutes adds nothing
                with contextlib.suppress(asyncio.CancelledError):
                    await producing
        assert viewer.terminate() == 0, viewer.output()
        return cards, events, waited, states

    asyncio.run(ensure_topics(kafka_bootstrap, all_topics(settings), 4))
    try:
        cards, events, waited, states = asyncio.run(scenario())
        published = {v["window_id"]: v for v in read_published(kafka_bootstrap, settings.predictions_topic).values}
    finally:
        asyncio.run(delete_topics(kafka_bootstrap, all_topics(settings)))
    if artifacts := os.environ.get("FUSIONSTREAM_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / "viewer.png")

    # What the page shows was published: same window, label and score, mask as the window had.
    for card in cards:
        value = published.get(card["windowId"])
        assert value is not None, f"{card['stream']}: {card['windowId']} is not on the predictions topic"
        assert value["stream_id"] == card["stream"]
        assert card["label"] == value["label"] and card["score"] == f"{value['score']:.2f}", card
        assert card["mask"] == [value["modalities"][m] for m in ("video", "audio", "text")], card
        for window_id, label in card["timeline"]:
            assert published[window_id]["label"] == label
    assert {c["stream"] for c in cards} == set(source.stream_ids)
    assert any(c["transcript"].strip() and c["transcript"] != "no transcript yet" for c in cards)
    # Throttled: at most FPS updates per stream and second reach a browser (plus the first, at connect).
    assert events and all(n <= FPS * 2 + 2 for n in events.values()), events
    assert screenshot.stat().st_size > 10_000
    # A page opened after the streams fell silent counts from their last input, not from its own load.
    idle = [int(m.group(1)) for state in states if (m := re.fullmatch(r"no input for (\d+) s", state))]
    assert len(idle) == len(states) == STREAMS and min(idle) >= 4, states
    print(f"page complete after {waited:.1f}s; {len(published)} predictions; screenshot {screenshot}")


def test_view_without_a_broker_is_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fusionstream", "view", "--bootstrap", f"127.0.0.1:{free_port()}", "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "FUSIONSTREAM_BROKER_WAIT_S": "0"})  # else it waits for a broker to start, as serve
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fusionstream: error: cannot reach Kafka at 127.0.0.1:"), result.stderr


def test_kafka_view_refused_by_the_broker_says_why(kafka_bootstrap: str) -> None:
    # It said "cannot reach Kafka … start a local one with make kafka-start" to a wrong login or protocol.
    env = {**os.environ, "FUSIONSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FUSIONSTREAM_SASL_MECHANISM": "PLAIN",
           "FUSIONSTREAM_SASL_USERNAME": "u", "FUSIONSTREAM_SASL_PASSWORD": "p"}
    command = [sys.executable, "-m", "fusionstream", "view", "--bootstrap", kafka_bootstrap, "--port", "0"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 1
    assert " ".join(result.stderr.split()).startswith(
        f"fusionstream: error: the broker at {kafka_bootstrap} does not accept SASL_PLAINTEXT"), result.stderr


def test_the_page_gets_the_published_score_unrounded() -> None:
    # Rounded to 4 places first, 0.995001 became 0.995 and the page's two places showed "0.99" for a
    # prediction published (and read by any client) as 1.00.
    state = ViewerState()
    t0 = 1_800_000_000 * NS
    assert state.on_prediction(prediction("cam", t0, label="4", score=0.995001), now=1)
    snap = state.snapshot("cam", now=1) or {}
    assert snap["prediction"]["score"] == 0.995001
    assert snap["prediction"]["top"][0] == ["4", 0.995001]
    assert snap["timeline"][0]["score"] == 0.995001
