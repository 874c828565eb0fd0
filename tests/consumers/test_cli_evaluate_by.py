"""`fusionstream evaluate --by voice|digit [--clean]`: figures per held-out voice and per digit.

The per-voice figures are only worth something if each voice's streams really speak that voice
alone, on the same plan (digits, times, corruption) as the others, and `--clean` really renders
no corruption: those are checked on the source itself, the breakdown end to end on the shipped model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusionstream.consumers.training.evaluate import heldout_parts
from fusionstream.consumers.training.evaluate_by import parse_by
from fusionstream.consumers.training.frozen_data import DIGITS, SyntheticPart, data_key
from fusionstream.engines.manifest import load_manifest
from fusionstream.stream.sources import SpeechBank, SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.speech import UnknownVoice, voices_of

#: Seconds of held-out streams per set: enough for a clear window of every digit with seed 10000.
SECONDS = 60


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusionstream", "evaluate", *args], capture_output=True, text=True,
                          timeout=600, check=False)


def test_by_voice_and_digit_gives_every_test_voice_and_digit_on_clean_streams(shipped_model: Path,
                                                                               tmp_path: Path) -> None:
    done = _evaluate(str(shipped_model), "--seconds", str(SECONDS), "--by", "voice", "--by", "digit", "--clean",
                     "--json", "--cache", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["clean"] is True
    test_voices = voices_of("test")
    assert list(result["by_voice"]) == list(test_voices)
    modalities = set(result["single"])
    for voice, scores in result["by_voice"].items():
        assert scores["windows"] > 0 and scores["all_windows"] >= scores["windows"], voice
        figures = [scores["fused"], *scores["single"].values(), *scores["without"].values()]
        assert all(0.0 <= f <= 1.0 for f in figures), (voice, scores)
        assert set(scores["single"]) == modalities
        # Clean streams, three modalities: fused is near perfect whatever the voice.
        assert scores["fused"] >= 0.9, (voice, scores)
        assert list(scores["by_digit"]) == list(DIGITS)
    # Same seed, same plan: every voice's windows show the same frames, so video alone scores the same;
    # the voices differ in what is heard, so audio alone does not.
    voices = list(result["by_voice"].values())
    assert len({v["single"]["video"] for v in voices}) == 1
    assert len({v["windows"] for v in voices}) == 1
    assert len({v["single"]["audio"] for v in voices}) > 1
    assert list(result["by_digit"]) == list(DIGITS)
    for digit, scores in result["by_digit"].items():
        assert scores["windows"] > 0, digit
        assert all(0.0 <= f <= 1.0 for f in (scores["fused"], *scores["single"].values())), (digit, scores)
    assert sum(s["windows"] for s in result["by_digit"].values()) == result["windows"]
    # The embedding cache: one file per voice beside the mixed set's, none shared.
    assert len(list(tmp_path.glob("evaluation-*.npz"))) == 1 + len(test_voices)
    tables = done.stderr
    assert "accuracy per voice" in tables and "audio alone: accuracy per voice and digit" in tables


def test_unknown_voice_and_breakdown_are_one_line_errors(shipped_model: Path, tmp_path: Path) -> None:
    done = _evaluate(str(shipped_model), "--seconds", "6", "--voice", "nobody")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "no voice 'nobody'" in done.stderr and voices_of("test")[0] in done.stderr
    done = _evaluate(str(shipped_model), "--by", "voice,colour")
    assert done.returncode == 2 and "cannot break down by colour" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _evaluate(str(shipped_model), "--by", "voice", "--data", str(tmp_path))
    assert done.returncode == 1 and "do not apply to --data clips" in done.stderr
    for option, value in (("--seconds", "30"), ("--seed", "3")):  # were silently ignored with --data
        done = _evaluate(str(shipped_model), option, value, "--data", str(tmp_path))
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--seconds and --seed draw the synthetic held-out streams" in done.stderr


def test_by_values_repeat_or_comma_separate() -> None:
    assert parse_by(["digit", "voice"]) == parse_by(["voice,digit"]) == ("voice", "digit")
    assert parse_by(None) == () and parse_by(["Digit"]) == ("digit",)
    with pytest.raises(ValueError, match="speaker"):
        parse_by(["voice", "speaker"])


def test_a_single_voice_source_speaks_only_that_voice() -> None:
    voice = voices_of("test")[0]
    bank = SpeechBank.load(f"voice:{voice}")
    assert bank.voices == (voice,)
    assert all(clip.voice == voice for digit in range(10) for clip in bank[digit])
    alone = SyntheticAV(SyntheticConfig(streams=2, seconds=20.0, seed=3, voices=f"voice:{voice}"))
    mixed = SyntheticAV(SyntheticConfig(streams=2, seconds=20.0, seed=3, voices="test"))
    spoken = [u for sid in alone.stream_ids for u in alone.utterances(sid)]
    assert len(spoken) > 10 and {u.voice for u in spoken} == {voice}
    # The same plan, the words said by the split's several voices: the check above can fail.
    assert {u.voice for sid in mixed.stream_ids for u in mixed.utterances(sid)} == set(voices_of("test"))
    assert alone.truth.segments("cam-00") == mixed.truth.segments("cam-00")
    # Each word lies inside its segment, and says its digit.
    for sid in alone.stream_ids:
        for u in alone.utterances(sid):
            segment = alone.truth.segment_at(sid, u.t_start_ns)
            assert segment is not None and segment.digit == u.digit and u.t_end_ns <= segment.t_end_ns
    with pytest.raises(UnknownVoice, match="no voice 'nobody'"):
        SyntheticAV(SyntheticConfig(voices="voice:nobody"))


def test_clean_heldout_streams_have_no_corrupted_segment_and_keys_differ(shipped_model: Path) -> None:
    manifest = load_manifest(shipped_model)
    voice = voices_of("test")[0]
    sets = {(voices, clean): heldout_parts(manifest, seconds=SECONDS, seed=10_000, data=None, voices=voices,
                                           clean=clean)
            for voices in ("test", f"voice:{voice}") for clean in (False, True)}

    def states(parts: list) -> set[str]:
        out = set()
        for part in parts:
            assert isinstance(part, SyntheticPart)
            truth = SyntheticAV(part.config).truth
            for sid in truth.stream_ids:
                for s in truth.segments(sid):
                    out |= {f"video:{s.video_state}", f"audio:{s.audio_state}", f"text:{s.text_state}"}
        return out

    for (voices, clean), (_, parts) in sets.items():
        found = states(parts)
        if clean:
            assert found == {"video:clean", "audio:clean", "text:clean"}, voices
            assert all(p.config.corruption.asr_error == 0.0 for p in parts)  # type: ignore[union-attr]
        else:
            assert found > {"video:clean", "audio:clean", "text:clean"}, voices  # the corruption is there
    # What the cache keys on: each voice and --clean are other windows.
    assert len({data_key(parts, DIGITS) for _, parts in sets.values()}) == len(sets)
