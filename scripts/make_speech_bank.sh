#!/usr/bin/env bash
# Regenerate stream/sources/speech_bank/: clips of the ten digit words in many espeak-ng voices
# (accents x variants) and speeds, and in the recorded speakers of two other synthesisers (flite
# and festival) (and, with WITH_MBROLA=1, MBROLA's diphone voices), as 16 kHz mono 16-bit WAV with the
# silence trimmed.
#
# The synthetic AV-digits source (stream/sources/synthetic.py) speaks these clips, so
# demos, tests and training hear real synthesized speech rather than tones.
# Output is deterministic for a given espeak-ng + sox version (no dither, no clock).
#
# Needs: espeak-ng, sox, flite, festival and three festival voices
#   (apt-get install espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts), and
#   with WITH_MBROLA=1, MBROLA's voices from Debian's non-free component (add "contrib non-free" to the apt
#   sources, then apt-get install mbrola mbrola-us1 mbrola-us2 mbrola-en1 mbrola-de1 mbrola-de2 mbrola-de3
#   mbrola-de5 mbrola-fr1 mbrola-fr4 mbrola-pl1 mbrola-sw2 mbrola-hu1)
#   with WITH_PICO_RHVOICE=1, SVOX Pico's and RHVoice's voices (apt-get install libttspico-utils, from the non-free
#   component, and rhvoice rhvoice-english),
#   and a Python with praat-parselmouth (.venv/bin/pip install -e '.[bank]'; PYTHON names it, default python3:
#   PYTHON=.venv/bin/python scripts/make_speech_bank.sh)
# Usage: scripts/make_speech_bank.sh [OUTPUT_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(dirname "$here")/stream/sources/speech_bank}"

for tool in espeak-ng sox flite text2wave; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install espeak-ng sox flite festival)" >&2; exit 1; }
done
python="${PYTHON:-python3}"
"$python" -c "import parselmouth" 2>/dev/null \
    || { echo "error: $python has no parselmouth (pip install praat-parselmouth, or set PYTHON)" >&2; exit 1; }

# Voices are espeak-ng language voices (accents), most with a variant (+f3 ...) for another
# pitch, timbre or synthesiser (+klatt...). Training hears five accents crossed with many
# variants; the test voices are held out of training *entirely*: their accents (Scottish,
# Caribbean, West Midlands) and their variants (f4, m7, klatt4) appear in no training voice,
# so evaluation measures generalisation to speakers and accents the model never heard.
train_accents=(en-us en en-gb-x-rp en-gb-x-gbclan en-us-nyc)
train_variants=("" m1 m2 m3 m4 m5 m6 f1 f2 f3 f5 klatt klatt2 klatt3 croak Andy annie
                benjamin boris david edward grandma linda max quincy steph travis norbert robert)
# The six voices the first bank had come first; then each variant with two accents in turn.
train_voices=(en-us en en-gb-x-rp en+f3 en+m3 en+klatt)
i=0
for variant in "${train_variants[@]}"; do
    for k in 0 1; do
        accent="${train_accents[$(( (i + k * 2) % ${#train_accents[@]} ))]}"
        voice="$accent${variant:++$variant}"
        [[ " ${train_voices[*]} " == *" $voice "* ]] || train_voices+=("$voice")
    done
    i=$((i + 1))
done
test_voices=(en-gb-scotland en-029 en-us+f4 en-gb-x-gbcwmd+m7 en-029+klatt4)
# espeak-ng's voices are one formant synthesiser: a model trained on them alone heard 0.65-0.91 of
# other engines' speakers (audio alone). flite (diphone and clustergen voices of recorded speakers)
# and festival (diphone, HTS) add real recorded speakers. Training hears four flite voices and
# festival's kal; the held-out speakers are ones training never hears from any engine: slt (female,
# CMU ARCTIC) through flite and through festival's HTS voice, and ked (male) through festival.
train_engine_voices=(flite-awb flite-rms flite-kal flite-kal16 festival-kal)
test_engine_voices=(flite-slt festival-ked festival-slt)
# Every recorded speaker training may hear is male: a model trained on them heard the held-out
# female slt worst of all ("two" 0.00 and 0.33). VOICE+female is VOICE re-synthesised by Praat's
# "Change gender" (scripts/change_gender.py) with its formants scaled by the first number and its
# pitch median moved to the second (Hz): female vocal tracts are ~15-20 % shorter, female pitch
# ~165-255 Hz. Each speaker gets other values, so training hears a spread, not one target.
declare -A gender_change=(
    [flite-awb+female]="1.16 190" [flite-rms+female]="1.20 215" [flite-kal+female]="1.18 230"
    [flite-kal16+female]="1.14 175" [festival-kal+female]="1.22 205")
train_engine_voices+=(flite-awb+female flite-rms+female flite-kal+female flite-kal16+female festival-kal+female)
# Speakers of other languages: espeak-ng's voices of twelve languages reading the English words
# by their own spelling rules ("two" as tvo, "one" as o-neh, "three" as tre), each with a variant
# of another pitch. A model that heard English voices alone got 0.54 of such speakers (audio
# alone, media made outside the project). Other languages' voices (fi, cs, hu, sw, hr, da, af,
# es-419, pt-br, fr-be) stay out of the bank: what a model makes of an unheard language is
# measured on them (docs/training.md).
train_language_voices=(de+f2 fr-fr+m3 es+f1 it+m1 pt+f5 nl+m5 pl+f3 sv+m2 tr+f2 ro+m6 id+f1 eo+m4)
# MBROLA (Debian's non-free mbrola-* packages, through espeak-ng's mb-* voices): diphones cut from recordings
# of real speakers, eight of them women, the female recorded speakers the bank lacks (Praat's +female voices
# are men's recordings reshaped). Seven read English with another language's diphones (mb-de5-en: a German
# speaker); mb-us1 is an American woman, mb-us2/mb-en1 men. Only with WITH_MBROLA=1: on the ablation budget
# they did not help the held-out female speaker beyond what a seed moves it by (docs/training.md), so the
# committed bank, and the shipped model, are without them.
train_mbrola_voices=()
if [[ "${WITH_MBROLA:-0}" == 1 ]]; then
    train_mbrola_voices=(mb-us1 mb-de1-en mb-de3-en mb-de5-en mb-fr4-en mb-pl1-en mb-sw2-en mb-hu1-en
                         mb-us2 mb-en1 mb-de2-en mb-fr1-en)
fi
# SVOX Pico (en-US, en-GB: two women, HMM voices of recorded speakers) and RHVoice (clb and lyubov, women; alan,
# bdl and evgeniy-eng, men: statistical voices of recorded speakers, lyubov and evgeniy reading English with a
# Russian accent). RHVoice's slt is the held-out speaker's own recordings, so it stays out. Only with
# WITH_PICO_RHVOICE=1: tried on the ablation budget (docs/training.md), not in the shipped model yet.
train_pico_rhvoice_voices=()
if [[ "${WITH_PICO_RHVOICE:-0}" == 1 ]]; then
    for tool in pico2wave RHVoice-test; do
        command -v "$tool" >/dev/null \
            || { echo "error: $tool is not installed (apt-get install libttspico-utils rhvoice rhvoice-english)" >&2; exit 1; }
    done
    train_pico_rhvoice_voices=(pico-en-US pico-en-GB rhvoice-clb rhvoice-lyubov rhvoice-alan rhvoice-bdl
                               rhvoice-evgeniy-eng)
fi
train_voices+=("${train_engine_voices[@]}" "${train_language_voices[@]}" "${train_mbrola_voices[@]}"
               "${train_pico_rhvoice_voices[@]}")
test_voices+=("${test_engine_voices[@]}")
speeds=(140 190)  # words per minute (espeak-ng default is 175)
# The first bank's six voices and the test voices are spoken at both speeds; each later training
# voice at one speed of three in turn (training perturbs tempo anyway), which keeps the bank small.
first_voices=6
one_speed=(130 160 190)
declare -A voice_speeds=()
for i in "${!train_voices[@]}"; do
    (( i < first_voices )) || voice_speeds["${train_voices[$i]}"]="${one_speed[$(( i % 3 ))]}"
done
# Each other engine's training voice at all three speeds: there are few of them.
for voice in "${train_engine_voices[@]}" "${train_mbrola_voices[@]}" "${train_pico_rhvoice_voices[@]}"; do
    voice_speeds["$voice"]="${one_speed[*]}"
done
speeds_of() { echo "${voice_speeds[$1]:-${speeds[*]}}"; }
digits=(zero one two three four five six seven eight nine)
rate=16000

# synthesise VOICE WPM WORD OUT.wav: flite-NAME and festival-NAME voices through those engines
# (speed as a duration stretch of their default, about 175 wpm), any other through espeak-ng.
synthesise() {
    local voice="$1" speed="$2" word="$3" wav="$4" stretch
    stretch="$(awk -v s="$speed" 'BEGIN { printf "%.4f", 175 / s }')"
    case "$voice" in
        *+female)
            synthesise "${voice%+female}" "$speed" "$word" "$tmp/male.wav"
            # shellcheck disable=SC2086  # two numbers: formant ratio, pitch median
            "$python" "$here/change_gender.py" "$tmp/male.wav" "$wav" ${gender_change[$voice]} ;;
        flite-*) flite -voice "${voice#flite-}" --setf duration_stretch="$stretch" -t "$word" -o "$wav" ;;
        festival-slt)  # the HTS voice ignores Duration_Stretch: sox changes its tempo, not its pitch
            echo "$word" | text2wave -eval "(voice_cmu_us_slt_arctic_hts)" -o "$tmp/hts.wav"
            sox -D "$tmp/hts.wav" "$wav" tempo -s "$(awk -v s="$speed" 'BEGIN { printf "%.4f", s / 175 }')" ;;
        festival-*)
            echo "$word" | text2wave -eval "(voice_${voice#festival-}_diphone)" \
                -eval "(Parameter.set 'Duration_Stretch $stretch)" -o "$wav" ;;
        pico-*)  # no rate option: sox changes the tempo, not the pitch
            pico2wave -l "${voice#pico-}" -w "$tmp/pico.wav" "$word"
            sox -D "$tmp/pico.wav" "$wav" tempo -s "$(awk -v s="$speed" 'BEGIN { printf "%.4f", s / 175 }')" ;;
        rhvoice-*)  # -r: the rate in percent of the voice's own
            echo "$word" | RHVoice-test -p "${voice#rhvoice-}" \
                -r "$(awk -v s="$speed" 'BEGIN { printf "%d", s / 175 * 100 }')" -o "$wav" ;;
        *) espeak-ng -v "$voice" -s "$speed" -w "$wav" "$word" ;;
    esac
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for voice in "${train_voices[@]}" "${test_voices[@]}"; do
    synthesise "$voice" 175 zero "$tmp/check.wav" \
        || { echo "error: no voice '$voice' (espeak-ng, flite or festival)" >&2; exit 1; }
done

mkdir -p "$out"
rm -f "$out"/*.wav "$out"/index.json

for voice in "${train_voices[@]}" "${test_voices[@]}"; do
    for speed in $(speeds_of "$voice"); do
        for i in "${!digits[@]}"; do
            synthesise "$voice" "$speed" "${digits[$i]}" "$tmp/raw.wav"
            # -D: no dither (it is random). The engines write 8 to 32 kHz: resample to 16 kHz.
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

other_engines=""
if ((${#train_pico_rhvoice_voices[@]})); then
    other_engines=", libttspico $(dpkg-query -W -f='${Version}' libttspico-utils), rhvoice-english $(dpkg-query -W -f='${Version}' rhvoice-english)"
fi

cat >"$out/index.json" <<EOF
{
  "format": "fusionstream-speech-bank/1",
  "generator": "scripts/make_speech_bank.sh (espeak-ng $(espeak-ng --version | awk 'NR==1 {print $4}'), $(flite --version | awk 'NR==2 {print $2}'), festival $(festival --version | awk '{print $6}' | cut -d: -f1), sox $(sox --version | awk 'NR==1 {print $3}'), praat-parselmouth $("$python" -c 'import parselmouth; print(parselmouth.__version__)')${other_engines})",
  "sample_rate": $rate,
  "file_pattern": "{voice}_{speed}_{digit}.wav",
  "digits": [$(json_list "${digits[@]}")],
  "speeds_wpm": [$(json_list "${speeds[@]}" | tr -d '"')],
  "speeds_by_voice": {$(first=1; for v in "${train_voices[@]}"; do
      [[ -n "${voice_speeds[$v]:-}" ]] || continue
      ((first)) && first=0 || printf ', '
      printf '"%s": [%s]' "$v" "$(echo "${voice_speeds[$v]}" | sed 's/ /, /g')"
  done)},
  "voices": [$(json_list "${train_voices[@]}" "${test_voices[@]}")],
  "split": {
    "train": [$(json_list "${train_voices[@]}")],
    "test": [$(json_list "${test_voices[@]}")]
  }
}
EOF

echo "wrote $(ls "$out"/*.wav | wc -l) clips ($(cat "$out"/* | wc -c) bytes) to $out"
