"""Make a recorded speaker sound like a speaker of the other sex: Praat's "Change gender" (PSOLA).

Used by scripts/make_speech_bank.sh. The packaged synthesisers hold only male recorded English
speakers that training may hear (flite's awb, rms, kal; festival's kal; the female slt is held out).
Praat re-synthesises a clip with its pitch median moved and its formants (the vocal tract's
resonances) scaled, keeping duration and words, so training hears pitch and formants of a female
range produced from a real recording rather than only espeak-ng's formant synthesiser.

Usage: python scripts/change_gender.py IN.wav OUT.wav FORMANT_RATIO PITCH_MEDIAN_HZ
Needs praat-parselmouth (`pip install praat-parselmouth`).
"""

from __future__ import annotations

import sys

import parselmouth
from parselmouth.praat import call, run

#: Pitch search range for the analysis (Hz): wide enough for low male and high female voices.
PITCH_FLOOR, PITCH_CEILING = 60.0, 600.0


def change_gender(source: str, target: str, formant_ratio: float, pitch_median_hz: float) -> None:
    # PSOLA fills unvoiced stretches with randomly spaced periods: seed Praat's generator so the
    # bank is the same bytes on every run.
    run("random_initializeWithSeedUnsafelyButPredictably (1)")
    sound = parselmouth.Sound(source)
    # Pitch range factor 1 keeps the speaker's intonation, duration factor 1 the tempo.
    changed = call(sound, "Change gender", PITCH_FLOOR, PITCH_CEILING, formant_ratio, pitch_median_hz, 1.0, 1.0)
    # Re-synthesis can overshoot full scale; the bank normalises loudness afterwards (sox norm).
    call(changed, "Scale peak", 0.9)
    changed.save(target, "WAV")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python scripts/change_gender.py IN.wav OUT.wav FORMANT_RATIO PITCH_MEDIAN_HZ", file=sys.stderr)
        return 2
    change_gender(argv[0], argv[1], float(argv[2]), float(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
