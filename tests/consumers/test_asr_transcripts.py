"""`--asr` on the synthetic streams: the transcript is what PocketSphinx hears in their audio, not the
synthetic captions, in the embedded demo and through `produce synthetic` to a real broker (docs/asr.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Modality, Record
from fusionstream.stream.sources import GroundTruth, SyntheticAV, SyntheticConfig
from fusionstream.stream.wire import decode
from fusionstream.units import MS
from tests.consumers.test_produce import _env, _produce, _topics, check_layout, read_topics

FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]
#: What the digits grammar can say.
DIGIT_VOCABULARY = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def _captions(config: SyntheticConfig) -> list[str]:
    """The synthetic source's own transcript: its words in time order."""
    return [decode_media(r).text for r in SyntheticAV(config).records() if r.modality is Modality.TEXT]  # type: ignore[union-attr]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSIONSTREAM, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_inline_recognition_is_reproducible_and_puts_each_word_after_the_audio_that_decided_it() -> None:
    """Unpaced (demo --fast, produce --fast/--no-pacing): the words follow their audio in the record
    order, as late in event time as the recogniser needed, the same on every run."""
    from fusionstream.consumers.producers.asr import AsrStats, asr_transcripts
    from fusionstream.stream.sources.asr import AsrConfig

    config = SyntheticConfig(streams=1, seconds=5, seed=2)

    def run(stats: AsrStats) -> list[Record]:
        spoken = (r for r in SyntheticAV(config).records() if r.modality is not Modality.TEXT)
        return list(asr_transcripts(spoken, AsrConfig(grammar="digits"), inline=True, stats=stats))

    stats = AsrStats()
    first, second = run(stats), run(AsrStats())
    assert first == second
    words = [i for i, r in enumerate(first) if r.modality is Modality.TEXT and not r.is_progress]
    assert len(words) >= 2 and stats.words == len(words) and stats.progress >= 4
    assert 3 < stats.audio_s <= 5.01 and 0 < stats.real_time_factor < 0.5  # less a dropped segment's audio
    for i in words:  # after the audio that covers the word's end, and never before it was spoken
        heard = max(r.t_end_ns for r in first[:i] if r.modality is Modality.AUDIO)
        assert heard >= first[i].t_end_ns


@pytest.mark.slow
def test_demo_asr_scores_the_recognisers_words_not_the_synthetic_captions(shipped_model: Path) -> None:
    """Real time, 1 stream, 6 s: the recogniser's words (with progress records) are the transcript."""
    result = _run("demo", "--asr", "--asr-grammar", "digits", "--streams", "1", "--seconds", "6", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    text, asr = summary["transcript"], summary["asr"]
    heard = text["heard"].split()
    assert text["words"] >= 3 and text["progress_records"] >= 10, text  # about 4 progress records a second
    assert set(heard) <= DIGIT_VOCABULARY and text["digit_words"] == text["words"], text
    # The demo's own source (seed 1234, held-out voices): its captions are not what was scored.
    captions = _captions(SyntheticConfig(streams=1, seconds=6, seed=1234, voices="test"))
    assert heard != captions[: len(heard)], (heard, captions)
    assert 0 <= text["words_naming_true_digit"] <= 1 and 0 <= text["segments_named"] <= 1
    assert text["source"] == "PocketSphinx (digits)" and asr["grammar"] == "digits"
    assert 0 < asr["real_time_factor"] < 0.5
    assert asr["lag_ms"]["p50"] < 1000, asr  # the recogniser kept up with the audio
    assert summary["windows"] >= 10 and summary["missing_windows"] == 0


def test_demo_asr_refuses_more_streams_than_recognition_keeps_up_with() -> None:
    result = _run("demo", "--asr", "--streams", "2", "--seconds", "5", timeout=60)
    assert result.returncode == 1
    assert "at most 1 stream(s) in real time" in result.stderr and "--fast" in result.stderr, result.stderr


@pytest.mark.slow
def test_kafka_produce_synthetic_asr_publishes_recognised_words_and_progress(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Paced, 1 stream, 4 s: the text topic holds the recogniser's words and progress records, the
    synthetic captions none of it; the audio and video are the source's, and the truth is written."""
    truth_file = tmp_path / "truth.json"
    args = ["synthetic", "--streams", "1", "--seconds", "4", "--seed", "3", "--asr", "--asr-grammar", "digits",
            "--truth", str(truth_file)]
    counts = _produce(args, _env(kafka_bootstrap, topic_prefix))

    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    assert check_layout(received).keys() == {"cam-00"}
    texts: list[Record] = sorted((decode(m.value) for m in received[Modality.TEXT]), key=lambda r: r.seq)
    assert counts["records"]["text"] == sum(not r.is_progress for r in texts)
    assert [r.seq for r in texts] == list(range(len(texts)))  # words and progress share the text seq
    words = [r for r in texts if not r.is_progress]
    progress = [r for r in texts if r.is_progress]
    said = [decode_media(w).text for w in words]  # type: ignore[union-attr]
    assert len(words) >= 2 and set(said) <= DIGIT_VOCABULARY, said
    assert all(0 <= w.meta["confidence"] <= 1 and "utterance" in w.meta for w in words)
    assert said != _captions(SyntheticConfig(streams=1, seconds=4, seed=3))[: len(said)]
    assert len(progress) >= 4 and progress[-1].meta.get("ended")  # none while an utterance is open
    audio = [decode(m.value) for m in received[Modality.AUDIO]]
    assert abs(progress[-1].t_start_ns - max(a.t_end_ns for a in audio)) <= 10 * MS  # decoded to the end
    # Every word was spoken while the stream's audio ran, and the truth covers it.
    truth = GroundTruth.from_dict(json.loads(truth_file.read_text()))
    start, end = truth.span("cam-00")
    assert all(start <= w.t_start_ns < w.t_end_ns <= end for w in words)
    assert len(received[Modality.VIDEO]) == 4 * 15 and len(audio) == 4 * 25  # 15 fps, 40 ms chunks


def test_produce_synthetic_asr_refuses_streams_it_cannot_recognise_in_real_time(tmp_path: Path) -> None:
    done = _run("produce", "synthetic", "--streams", "3", "--asr", "--bootstrap", "127.0.0.1:1", timeout=60)
    assert done.returncode == 1 and "at most 1 stream(s) in real time" in done.stderr, done.stderr


def test_score_predictions_scores_the_latest_revision_of_each_window_of_the_truths_streams(tmp_path: Path) -> None:
    """scripts/score_predictions.py, how serve's output is scored against `produce synthetic --truth`."""
    from fusionstream.stream.sources.truth import Segment

    s = 1_000_000_000
    truth = GroundTruth({"cam-00": [Segment(0, 2 * s, 3), Segment(2 * s, 4 * s, 5)]})
    (tmp_path / "truth.json").write_text(json.dumps(truth.to_dict()))

    def prediction(stream: str, start: float, label: str, revision: int = 0, text: bool = True) -> str:
        t0 = int(start * s)
        return json.dumps({"window_id": f"{stream}@{t0}", "stream_id": stream, "t_start_ns": t0, "t_end_ns": t0 + s,
                           "label": label, "modalities": {"video": True, "audio": True, "text": text},
                           "revision": revision, "final": True})

    lines = [
        prediction("cam-00", 0, "7", text=False),  # revised below: only revision 1 counts
        prediction("cam-00", 0, "3", revision=1),
        prediction("cam-00", 1, "3"),
        prediction("cam-00", 1.5, "3"),  # half 3, half 5: not clear; the tie goes to the earlier digit, 3
        prediction("cam-00", 2, "8", text=False),
        prediction("cam-99", 0, "1"),  # another producer's stream on the same topic
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "scripts/score_predictions.py", str(tmp_path / "truth.json"),
                           str(tmp_path / "predictions.jsonl")], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"windows": 4, "accuracy": 0.6667, "accuracy_all": 0.75,
                                       "clear_windows": 3, "windows_with_text": 0.75, "not_final": 0,
                                       "other_streams": 1}
