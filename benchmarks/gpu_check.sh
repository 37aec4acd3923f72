#!/usr/bin/env bash
# The GPU check: what a session lent a GPU machine runs first (its output goes in the closing
# note). Finishes in under 8 minutes on one GPU; without a CUDA GPU it says so and exits 0.
#
#   bash benchmarks/gpu_check.sh                 # here: skips cleanly
#   bash benchmarks/gpu_check.sh --quick         # the tests only
#
# On the device machine (Python 3.12 with torch, no diffusers), the wheels that machine lacks
# travel in .whl/ (made here by `bash benchmarks/gpu_wheels.sh`) and are installed first.
# Figures land in $GPU_CHECK_OUT (default: $OUT when set, else /tmp/gpu_check):
#   gpu_tests.json  differences measured by tests/test_gpu.py (CUDA vs CPU, each precision)
#   bench_gpu.json  graph/pipeline time and peak VRAM, SD1.5- and SDXL-sized, VRAM budget
#   bench_dit.json  the same for the flow-matching transformers (when that benchmark exists)
set -u
source "$(dirname "$0")/gpu_env.sh"
gpu_env gpu_check  # repository root, Python, carried wheels; skips without CUDA
export GPU_CHECK_OUT=${GPU_CHECK_OUT:-${OUT:-/tmp/gpu_check}}
mkdir -p "$GPU_CHECK_OUT"

section() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
start=$(date +%s)
status=0

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF'
import sys, torch, diffusers, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"diffusers {diffusers.__version__}, transformers {transformers.__version__}")
print("device:", torch.cuda.get_device_name(), "| bf16:", torch.cuda.is_bf16_supported())
EOF

section "CUDA-marked tests (every default workflow on CUDA in fp32/fp16/bf16, VRAM budget)"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rfE --tb=short \
    -W ignore::UserWarning >"$GPU_CHECK_OUT/gpu_tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR|E  )|passed|failed" "$GPU_CHECK_OUT/gpu_tests.log" | tail -25
[ -f "$GPU_CHECK_OUT/gpu_tests.json" ] && cat "$GPU_CHECK_OUT/gpu_tests.json"

if [ "${1:-}" != "--quick" ]; then
    section "graph vs diffusers pipeline, SD1.5-sized 512x512 and SDXL-sized 1024x1024, 20 steps"
    timeout 300 "$PY" benchmarks/bench_gpu.py --reps 3 --out "$GPU_CHECK_OUT/bench_gpu.json" \
        2>"$GPU_CHECK_OUT/bench_gpu.log" >/dev/null || status=1
    cat "$GPU_CHECK_OUT/bench_gpu.json" 2>/dev/null || tail -5 "$GPU_CHECK_OUT/bench_gpu.log"

    if [ -f benchmarks/bench_dit.py ]; then
        section "flow-matching transformers (SD3.5 / Flux), graph vs pipeline on CUDA"
        timeout 150 "$PY" benchmarks/bench_dit.py --device cuda --real-size \
            >"$GPU_CHECK_OUT/bench_dit.json" 2>"$GPU_CHECK_OUT/bench_dit.log" || status=1
        cat "$GPU_CHECK_OUT/bench_dit.json" 2>/dev/null
        tail -3 "$GPU_CHECK_OUT/bench_dit.log"
    fi
fi

section "done in $(($(date +%s) - start)) s, status $status"
exit $status
