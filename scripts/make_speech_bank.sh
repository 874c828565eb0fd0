#!/usr/bin/env bash
# Regenerate stream/sources/speech_bank/: espeak-ng clips of the ten digit words in
# several voices and two speeds, as 16 kHz mono 16-bit WAV with the silence trimmed.
#
# The synthetic AV-digits source (stream/sources/synthetic.py) speaks these clips, so
# demos, tests and training hear real synthesized speech rather than tones.
# Output is deterministic for a given espeak-ng + sox version (no dither, no clock).
#
# Needs: espeak-ng, sox  (apt-get install espeak-ng sox)
# Usage: scripts/make_speech_bank.sh [OUTPUT_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(dirname "$here")/stream/sources/speech_bank}"

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install espeak-ng sox)" >&2; exit 1; }
done

# Voices are espeak-ng language voices, some with a variant (+f3 ...) for a different
# pitch/timbre and one (+klatt) with a different synthesiser. The test voices are held out
# of training so evaluation measures generalisation to unseen speakers/accents.
train_voices=(en-us en en-gb-x-rp en+f3 en+m3 en+klatt)
test_voices=(en-gb-scotland en-029 en-us+f4)
speeds=(140 190)  # words per minute (espeak-ng default is 175)
digits=(zero one two three four five six seven eight nine)
rate=16000

for voice in "${train_voices[@]}" "${test_voices[@]}"; do
    espeak-ng -v "$voice" -s 175 -w /dev/null "zero" \
        || { echo "error: espeak-ng has no voice '$voice'" >&2; exit 1; }
done

mkdir -p "$out"
rm -f "$out"/*.wav "$out"/index.json
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for voice in "${train_voices[@]}" "${test_voices[@]}"; do
    for speed in "${speeds[@]}"; do
        for i in "${!digits[@]}"; do
            espeak-ng -v "$voice" -s "$speed" -w "$tmp/raw.wav" "${digits[$i]}"
            # -D: no dither (it is random). espeak-ng writes 22050 Hz: resample to 16 kHz.
            # silence ... reverse silence ... reverse trims both ends at 0.5 % of full scale,
            # quiet enough to keep the onsets of fricatives (four, six, seven).
            # norm -3: every clip peaks at -3 dBFS so the source sets loudness itself.
            sox -D "$tmp/raw.wav" -r "$rate" -b 16 -c 1 "$out/${voice}_${speed}_${i}.wav" \
                silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse norm -3
        done
    done
done

json_list() {  # json_list a b c -> "a", "b", "c"
    local first=1
    for item in "$@"; do
        if ((first)); then first=0; else printf ', '; fi
        printf '"%s"' "$item"
    done
}

cat >"$out/index.json" <<EOF
{
  "format": "fusionstream-speech-bank/1",
  "generator": "scripts/make_speech_bank.sh (espeak-ng $(espeak-ng --version | awk 'NR==1 {print $4}'), sox $(sox --version | awk 'NR==1 {print $3}'))",
  "sample_rate": $rate,
  "file_pattern": "{voice}_{speed}_{digit}.wav",
  "digits": [$(json_list "${digits[@]}")],
  "speeds_wpm": [$(json_list "${speeds[@]}" | tr -d '"')],
  "voices": [$(json_list "${train_voices[@]}" "${test_voices[@]}")],
  "split": {
    "train": [$(json_list "${train_voices[@]}")],
    "test": [$(json_list "${test_voices[@]}")]
  }
}
EOF

echo "wrote $(ls "$out"/*.wav | wc -l) clips ($(cat "$out"/* | wc -c) bytes) to $out"
