#!/usr/bin/env bash
# Official code vs ours as a grid of processes, one per (bit width, seed, side), spread over the GPUs:
#   bash tools/run_fidelity.sh CODE=PATH CONFIG CHECKPOINT OUT [extra compare_official.py options...]
# e.g.
#   BITS="3 4" SEEDS="0 1 2" bash tools/run_fidelity.sh isvit=PATH/IaS-ViT configs/classification/cifar10_vit.py \
#       VIT.safetensors work_dirs/fid_isvit --cfg-options data.path=CIFAR_NPZ
# Environment: BITS (default "3 4"), SEEDS (default "0 1 2"), SIDES (default "official ours"), GPUS (default: every
# GPU nvidia-smi lists, else "cpu"), LIMIT (seconds per process, default 3000), SNAPSHOT (a .tar.gz path: the finished
# runs are packed there every minute and at the end, so a caller with a hard time limit keeps what finished).
# Each run writes OUT/<code>_w<bits>_s<seed>_<side>/ (fidelity.json + log.txt); tools/merge_fidelity.py then joins
# them into OUT/merged. The official codes are slow in Python: keep about 3 official processes per GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
SPEC=$1; CONFIG=$2; CKPT=$3; OUT=$4; shift 4
CODE=${SPEC%%=*}
BITS=${BITS:-3 4}; SEEDS=${SEEDS:-0 1 2}; SIDES=${SIDES:-official ours}; LIMIT=${LIMIT:-3000}
PY=${PYTHON:-python3}
if [ -z "${GPUS:-}" ]; then
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ')
  [ -n "$GPUS" ] || GPUS=cpu
fi
read -ra gpu_list <<< "$GPUS"
mkdir -p "$OUT"
snapshot() { [ -n "${SNAPSHOT:-}" ] && tar -czf "$SNAPSHOT.tmp" -C "$OUT" . 2>/dev/null && mv "$SNAPSHOT.tmp" "$SNAPSHOT"; }
n=0
for b in $BITS; do for s in $SEEDS; do for side in $SIDES; do
  gpu=${gpu_list[$((n % ${#gpu_list[@]}))]}; n=$((n + 1))   # no subshell: the counter must advance
  dir="$OUT/${CODE}_w${b}_s${s}_${side}"; mkdir -p "$dir"
  if [ "$gpu" = cpu ]; then dev=(--device cpu); env=(); else dev=(--device cuda); env=(CUDA_VISIBLE_DEVICES="$gpu"); fi
  cmd=("$PY" tools/compare_official.py "$CONFIG" "$CKPT" --official "$SPEC" --bits "$b" --seeds "$s" --side "$side"
       "${dev[@]}" --out "$dir" "$@")
  echo "${cmd[*]}" > "$dir/command.txt"
  echo "start $dir on ${gpu}"
  (env "${env[@]}" timeout "$LIMIT" "${cmd[@]}" > "$dir/log.txt" 2>&1 && echo "done $dir" \
     || echo "FAILED or timed out: $dir (see $dir/log.txt)") &
done; done; done
while [ -n "$(jobs -rp)" ]; do sleep 60; snapshot; echo "--- $(date +%T): $(jobs -rp | wc -l) running"; done
wait
runs=$(for d in "$OUT"/*_w*_s*_*; do [ -f "$d/fidelity.json" ] && echo "$d"; done)
[ -n "$runs" ] && "$PY" tools/merge_fidelity.py $runs --out "$OUT/merged"
snapshot
