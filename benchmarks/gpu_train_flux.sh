#!/usr/bin/env bash
# Train studio-tiny-flux (the Flux-layout sibling of studio-tiny-flow) on a lent GPU machine:
# 5 minutes at batch 512, then the best EMA model comes back as one tar in $OUT. Without a CUDA
# GPU it says so and exits 0.
#
#   bash benchmarks/gpu_wheels.sh                  # here, once: the wheels that machine lacks
#   bash benchmarks/gpu_train_flux.sh              # on the device machine: the run tool with
#                                                  # carry [".whl"], timeout_s 600 (~7 min all
#                                                  # told: wheels, 5 min training, evaluations)
#   tar -xf <files_at>/studio-tiny-flux.tar -C resources/models/checkpoints/   # back here
#   python resources/workflows/make_workflows.py   # then writes txt2img_flux.json on it
#
# $OUT (default /tmp/gpu_train_flux) gets studio-tiny-flux.tar (the best evaluation's export),
# studio-tiny-flux.json (its metrics), maybe studio-tiny-flux-final.tar, and train.log.
# FLUX_MINUTES / FLUX_BATCH / FLUX_WORKERS / FLUX_LR change the run (defaults 5 / 512 / 14 /
# 5e-4, with a 300-step warm-up). The recipe is the shipped model's (trained on the CPU,
# training/README.md): distilled from studio-tiny-flow (--teacher) and started from its joint
# blocks (--warm-start: 6 double-stream blocks, 2 single-stream ones); FLUX_TEACHER= (empty)
# trains from scratch with the data's targets instead (3 + 6 blocks, lr 1e-3 suits it).
set -u
source "$(dirname "$0")/gpu_env.sh"
gpu_env gpu_train_flux  # repository root, Python, carried wheels; skips without CUDA
OUT=${OUT:-/tmp/gpu_train_flux}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
# 5 minutes of training, then the final evaluation and export (well under a minute)
TEACHER=${FLUX_TEACHER-resources/models/checkpoints/studio-tiny-flow}
DISTILL=()
[ -n "$TEACHER" ] && DISTILL=(--teacher "$TEACHER" --warm-start --num-layers 6 --num-single-layers 2)
timeout $((${FLUX_MINUTES:-5} * 60 + 240)) "$PY" -m training.train_flow --family flux \
    ${DISTILL[@]+"${DISTILL[@]}"} \
    --device cuda --batch "${FLUX_BATCH:-512}" --workers "${FLUX_WORKERS:-14}" \
    --minutes "${FLUX_MINUTES:-5}" --lr "${FLUX_LR:-5e-4}" --warmup 300 --threads 4 \
    --eval-every 500 --log-every 100 \
    --checkpoint-dir /tmp/checkpoints-flux --overwrite --out "$OUT" --tar \
    2>&1 | tee "$OUT/train.log" | grep -v "Writing model shards"
status=${PIPESTATUS[0]}
ls -la "$OUT"
[ -f "$OUT/studio-tiny-flux.json" ] && "$PY" -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('best', json.dumps(d['best']))
print('steps', d['step'], 'seconds', d['seconds'])" "$OUT/studio-tiny-flux.json"
echo "gpu_train_flux: done in $(($(date +%s) - start)) s, status $status"
exit "$status"
