"""Word error rate and real-time factor of the ASR producer's recogniser on the speech bank's digits.

    python scripts/asr_wer.py [--grammar general|digits] [--voices all|train|test|voice:NAME,...] [--snr-db 20]

Per voice, every clip of the bank (ten digits, both speeds) is spoken in turn, with 0.6 s pauses
over a noise floor ``snr-db`` below the speech, and streamed to
``fusionstream.stream.sources.asr.Recognizer`` in 40 ms chunks exactly as
``fusionstream produce ... --asr`` does. Prints one JSON line per voice and one for all of them:
WER (substitutions + deletions + insertions over reference words), processor seconds per second of
audio (the real-time factor), and the latency from a word's end to the moment its utterance was
decided, in event time (the pause that closed it; add decoding time for wall time).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fusionstream.stream.sources.asr import AsrConfig, Recognizer, Utterance, word_error_rate
from fusionstream.stream.sources.speech import SpeechBank
from fusionstream.units import NS

RATE = 16_000
CHUNK = 640  # 40 ms
PAUSE_S = 0.6


def voice_stream(clips: list, snr_db: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The clips back to back with pauses, at a common speech level over a noise floor; and the words."""
    level = 0.1
    noise = level * 10 ** (-snr_db / 20)
    parts = []
    for clip in clips:
        parts.append(np.zeros(round(PAUSE_S * RATE), np.float32))
        parts.append(clip.samples * np.float32(level / clip.rms))
    parts.append(np.zeros(round(PAUSE_S * RATE), np.float32))
    audio = np.concatenate(parts)
    audio += rng.standard_normal(len(audio)).astype(np.float32) * np.float32(noise)
    return audio, [clip.word for clip in clips]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grammar", default="general", choices=["general", "digits"])
    parser.add_argument("--voices", default="all",
                        help="all, train, test, or voice:NAME[,NAME...] (the first bank's nine: see docs/asr.md)")
    parser.add_argument("--snr-db", type=float, default=20.0)
    args = parser.parse_args()
    bank = SpeechBank.load(args.voices)
    rng = np.random.default_rng(0)
    errors = words = 0
    cpu = audio_s = 0.0
    lags: list[float] = []
    started = time.perf_counter()
    for voice in bank.voices:
        clips = [c for d in range(10) for c in bank[d] if c.voice == voice]
        audio, reference = voice_stream(clips, args.snr_db, rng)
        recogniser = Recognizer(RATE, AsrConfig(grammar=args.grammar))
        heard: list[str] = []
        events = []
        for at in range(0, len(audio), CHUNK):
            events += recogniser.feed(audio[at : at + CHUNK], at * NS // RATE)
        events += recogniser.flush()
        for event in events:
            if isinstance(event, Utterance):
                heard += [w.text for w in event.words]
                lags += [(event.decided_ns - w.t_end_ns) / 1e6 for w in event.words]
        e, n = word_error_rate(reference, heard)
        errors, words = errors + e, words + n
        cpu, audio_s = cpu + recogniser.cpu_s, audio_s + recogniser.audio_s
        rtf = round(recogniser.real_time_factor, 3)
        print(json.dumps({"voice": voice, "wer": round(e / n, 3), "words": n, "rtf": rtf, "heard": " ".join(heard)}),
              flush=True)
    print(json.dumps({
        "grammar": args.grammar, "voices": args.voices, "snr_db": args.snr_db, "wer": round(errors / words, 3),
        "words": words, "rtf_cpu": round(cpu / audio_s, 3), "wall_s": round(time.perf_counter() - started, 1),
        "decide_lag_ms_p50": round(float(np.percentile(lags, 50))) if lags else None,
        "decide_lag_ms_p95": round(float(np.percentile(lags, 95))) if lags else None,
    }))


if __name__ == "__main__":
    main()
