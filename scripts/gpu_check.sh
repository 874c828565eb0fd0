#!/usr/bin/env bash
# Everything GPU-side in one run, on a machine with an NVIDIA GPU; installs nothing.
#
#   scripts/gpu_check.sh                        (steps 1-5: about 5 minutes on an H200; step 6 about 5 more)
#   STEPS="tests workers" scripts/gpu_check.sh   (the GPU tests and step 6 alone: one 10-minute slot)
#
# 1. the GPU tests (pytest -m gpu: TensorRT parity with ONNX Runtime, engine cache reuse and
#    rebuild, torch CUDA graphs and fp16 against the CPU), each skipping with its reason where its
#    runtime is missing;
# 2. `fusionstream bench` (engine, pipeline and naive stages; no broker, no real-time search)
#    on every GPU backend this machine has: tensorrt fp16, torch cuda fp16 with CUDA graphs,
#    torch cuda fp16 without, torch cuda fp32 with graphs; onnxruntime CPU as the reference;
# 3. `fusionstream evaluate` of the shipped model on the same held-out windows: accuracy on the
#    GPU backends (fp16) beside onnxruntime fp32 on the CPU;
# 4. one summary table;
# 5. the real-time search (most live streams under the latency bound) of the embedded pipeline
#    on torch cuda fp16 with CUDA graphs, one process;
# 6. the same search through W pipeline processes sharing the GPU (`bench --workers 1,2,4,8`
#    without a broker: each process its own intake and engine session), with the GPU's and the
#    CPUs' load at each count: how many live streams one GPU holds when the host's cores feed it.
#
# Settings (environment): PYTHON (default: .venv/bin/python if present, else python3),
# OUT (where logs and JSON go, default: a temporary directory), BENCH_ARGS (bench flags),
# EVAL_SECONDS (held-out seconds for step 3, default 600), STEPS (the steps to run, default
# "tests bench evaluate realtime workers"; step 4 follows 2), WORKERS (step 6's counts: a list,
# default 1,2,4,8; a single N means 1..N), WORKERS_START (step 6's first trial, default 128
# streams), WORKERS_TIMEOUT (step 6's limit, default 560 s), REALTIME (0 skips step 5).
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FUSIONSTREAM_ENGINE_CACHE="${FUSIONSTREAM_ENGINE_CACHE:-$OUT/engines}"
# 32 streams: enough windows (about 1,300) that a GPU's engine stage runs long enough to time.
BENCH_ARGS="${BENCH_ARGS:---streams 32 --seconds 20 --batch-sizes 1,8,32,64 --no-kafka --no-realtime --naive-streams 1}"
EVAL_SECONDS="${EVAL_SECONDS:-600}"
STEPS=" ${STEPS:-tests bench evaluate realtime workers} "
WORKERS="${WORKERS:-1,2,4,8}"
WORKERS_START="${WORKERS_START:-128}"
step() { [[ "$STEPS" == *" $1 "* ]]; }
for asked in $STEPS; do
  [[ " tests bench evaluate realtime workers " == *" $asked "* ]] || { echo "unknown step '$asked' in STEPS" >&2; exit 2; }
done
HELDOUT="$(mktemp -d)"  # rendered once, evaluated by every backend
MODEL="$REPO_ROOT/engines/models/default"

ORT=(FUSIONSTREAM_BACKEND=onnxruntime)
TRT=(FUSIONSTREAM_BACKEND=tensorrt FUSIONSTREAM_PRECISION=fp16)
CUDA_FP16_GRAPHS=(FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp16 FUSIONSTREAM_CUDA_GRAPHS=true)
CUDA_FP16=(FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp16 FUSIONSTREAM_CUDA_GRAPHS=false)
CUDA_FP32_GRAPHS=(FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp32 FUSIONSTREAM_CUDA_GRAPHS=true)

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
"$PYTHON" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "onnxruntime", "tensorrt", "cv2", "av", "aiokafka", "typer", "rich", "pydantic_settings",
             "pynvml"):
    try:
        module = importlib.import_module(name)
        print(f"{name:18s} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # a missing package is reported, not fatal: the checks that need it skip
        print(f"{name:18s} MISSING ({type(exc).__name__}: {exc})")
try:
    import torch
    print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
except Exception as exc:
    print("probe failed:", exc)
EOF

tests_status=0
if step tests; then
  echo "== GPU tests"
  "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider tests/engines 2>&1 | tee "$OUT/gpu-tests.log"
  tests_status=${PIPESTATUS[0]}
fi

declare -a NAMES=()
run_bench() {  # name, env assignments...
  local name=$1; shift
  echo "== bench: $name"
  if env "$@" timeout 240 "$PYTHON" -m fusionstream bench $BENCH_ARGS --json >"$OUT/bench-$name.json" 2>"$OUT/bench-$name.log"; then
    NAMES+=("$name")
  else
    echo "   failed or unavailable (last lines of $OUT/bench-$name.log):"; tail -n 3 "$OUT/bench-$name.log" | sed 's/^/   /'
  fi
}
if step bench; then
  run_bench onnxruntime-cpu "${ORT[@]}"
  run_bench tensorrt-fp16 "${TRT[@]}"
  run_bench torch-cuda-fp16-graphs "${CUDA_FP16_GRAPHS[@]}"
  run_bench torch-cuda-fp16 "${CUDA_FP16[@]}"
  run_bench torch-cuda-fp32-graphs "${CUDA_FP32_GRAPHS[@]}"
fi

run_eval() {  # name, env assignments...
  local name=$1; shift
  echo "== evaluate: $name"
  if ! env "$@" timeout 240 "$PYTHON" -m fusionstream evaluate "$MODEL" --seconds "$EVAL_SECONDS" --cache "$HELDOUT" \
      --json >"$OUT/eval-$name.json" 2>"$OUT/eval-$name.log"; then
    echo "   failed or unavailable:"; tail -n 2 "$OUT/eval-$name.log" | sed 's/^/   /'
  fi
}
if step evaluate; then
  run_eval onnxruntime-cpu "${ORT[@]}"
  run_eval tensorrt-fp16 "${TRT[@]}"
  run_eval torch-cuda-fp16-graphs "${CUDA_FP16_GRAPHS[@]}"
fi

if step bench; then
  echo "== summary"
  "$PYTHON" scripts/gpu_summary.py "$OUT" "${NAMES[@]}"
fi

# Without step 2 in this run, step 5 runs anyway (it fails on its own, with its log, where torch has no CUDA).
if step realtime && [[ "${REALTIME:-1}" != 0 ]] && { ! step bench || [[ " ${NAMES[*]} " == *" torch-cuda-fp16-graphs "* ]]; }; then
  echo "== real-time search: embedded pipeline, torch cuda fp16 + CUDA graphs"
  # Starts at 128 streams with 14 s trials (the H200's 16 cores sustained 208 in 10 s trials): the
  # search then fits in about three minutes.
  env "${CUDA_FP16_GRAPHS[@]}" timeout 220 "$PYTHON" -m fusionstream bench --streams 8 --seconds 20 --no-kafka \
      --rounds 1 --batch-sizes 32 --naive-streams 1 --start-streams 128 --trial-seconds 14 --json \
      >"$OUT/realtime-torch-cuda.json" 2>"$OUT/realtime-torch-cuda.log" || echo "   did not finish (see $OUT/realtime-torch-cuda.log)"
  "$PYTHON" scripts/gpu_summary.py --realtime "$OUT/realtime-torch-cuda.json" || true
fi
if step workers; then
  echo "== workers: live streams through W pipeline processes on one GPU (W = $WORKERS), torch cuda fp16 + graphs"
  # No broker (the GPU machine has none): each process replays its share of the streams live. 10 s trials,
  # one attempt each, the search of each count starting from the last count's answer: about 80 s a count.
  # COLUMNS: rich would wrap the per-trial lines of the log (the grep below reads them) at 160 columns.
  env "${CUDA_FP16_GRAPHS[@]}" COLUMNS=400 timeout "${WORKERS_TIMEOUT:-560}" "$PYTHON" -m fusionstream bench --streams 16 --seconds 20 --no-kafka \
      --rounds 1 --batch-sizes 32,64 --naive-streams 1 --no-int8 --trial-seconds 10 --trial-attempts 1 \
      --start-streams "$WORKERS_START" --max-streams 4096 --workers "$WORKERS" --json \
      >"$OUT/workers-torch-cuda.json" 2>"$OUT/workers-torch-cuda.log" || echo "   did not finish (see $OUT/workers-torch-cuda.log)"
  # Each trial's line and each count's answer as it ended: what is left if the time limit cut the run short.
  grep -E "^  w[0-9]" "$OUT/workers-torch-cuda.log" | sed 's/^/   /'
  "$PYTHON" scripts/gpu_summary.py --workers "$OUT/workers-torch-cuda.json" || true
fi
rm -rf "$HELDOUT"
echo "logs and JSON: $OUT"
exit "$tests_status"
