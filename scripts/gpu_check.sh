#!/usr/bin/env bash
# Everything GPU-side in one run, on a machine with an NVIDIA GPU; installs nothing.
#
#   scripts/gpu_check.sh            (about 5-8 minutes; made to fit one 10-minute slot)
#
# 1. the GPU tests (pytest -m gpu: TensorRT parity with ONNX Runtime, engine cache reuse and
#    rebuild, torch CUDA graphs), each skipping with its reason where its runtime is missing;
# 2. `fusionstream bench` (engine, pipeline and naive stages; no broker, no real-time search)
#    on every GPU backend this machine has: tensorrt fp16, torch cuda fp16 with CUDA graphs,
#    torch cuda fp16 without, onnxruntime CUDA execution provider; onnxruntime CPU as the
#    reference;
# 3. one summary table.
#
# Settings (environment): PYTHON (default: .venv/bin/python if present, else python3),
# OUT (where logs and JSON go, default: a temporary directory), BENCH_ARGS (extra bench flags).
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FUSIONSTREAM_ENGINE_CACHE="${FUSIONSTREAM_ENGINE_CACHE:-$OUT/engines}"
BENCH_ARGS="${BENCH_ARGS:---streams 8 --seconds 20 --no-kafka --no-realtime --naive-streams 1}"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
"$PYTHON" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "onnxruntime", "tensorrt", "cv2", "av", "aiokafka", "typer", "rich", "pydantic_settings"):
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

echo "== GPU tests"
"$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider tests/engines 2>&1 | tee "$OUT/gpu-tests.log"
tests_status=${PIPESTATUS[0]}

declare -a NAMES=() RESULTS=()
run_bench() {  # name, env assignments...
  local name=$1; shift
  echo "== bench: $name"
  if env "$@" timeout 240 "$PYTHON" -m consumers bench $BENCH_ARGS --json >"$OUT/bench-$name.json" 2>"$OUT/bench-$name.log"; then
    NAMES+=("$name"); RESULTS+=("$OUT/bench-$name.json")
  else
    echo "   failed or unavailable (last lines of $OUT/bench-$name.log):"; tail -n 3 "$OUT/bench-$name.log" | sed 's/^/   /'
  fi
}
run_bench onnxruntime-cpu FUSIONSTREAM_BACKEND=onnxruntime
run_bench tensorrt-fp16 FUSIONSTREAM_BACKEND=tensorrt FUSIONSTREAM_PRECISION=fp16
run_bench torch-cuda-fp16-graphs FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp16 FUSIONSTREAM_CUDA_GRAPHS=true
run_bench torch-cuda-fp16 FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp16 FUSIONSTREAM_CUDA_GRAPHS=false
run_bench torch-cuda-fp32-graphs FUSIONSTREAM_BACKEND=torch FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp32 FUSIONSTREAM_CUDA_GRAPHS=true

echo "== summary"
"$PYTHON" - "${NAMES[@]}" -- "${RESULTS[@]}" <<'EOF'
import json, sys
args = sys.argv[1:]
split = args.index("--")
names, files = args[:split], args[split + 1:]
print(f"{'backend':26s} {'engine w/s':>11s} {'pipeline w/s':>13s} {'naive w/s':>10s} {'pipe/engine':>12s} {'pipe/naive':>11s} {'batch':>6s}")
for name, path in zip(names, files):
    lines = [l for l in open(path) if l.strip()]
    report = json.loads(lines[-1])
    rate, ratios = report["windows_per_s"], report["ratios"]
    batch = report["stages"]["engine"].get("batch_size", "?")
    print(f"{name:26s} {rate['engine']:11.1f} {rate['pipeline']:13.1f} {rate['naive']:10.1f} "
          f"{ratios['pipeline/engine']:12.3f} {ratios['pipeline/naive']:11.3f} {batch:>6}")
EOF
echo "logs and JSON: $OUT"
exit "$tests_status"
