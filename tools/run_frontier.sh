#!/usr/bin/env bash
# The frontier runs of docs/results.md ("The frontier on the DeiT-S shape"), one process per run, all at once on one
# GPU: APHQ-ViT and FIMA-Q official vs our aphq / fimaq at W3A3 (compare_official.py, one side per process), and
# ptq_test.py runs of relu_fisher at W3A3 and W2A4 and of aphq / fimaq at W2A4, IT iterations per block everywhere.
#   bash tools/run_frontier.sh CONFIG CHECKPOINT DATA_NPZ OUT APHQ_DIR FIMAQ_DIR
# e.g. bash tools/run_frontier.sh configs/classification/cifar10_deit_s.py DEIT_S.safetensors SUBSET_NPZ \
#          work_dirs/frontier PATH/APHQ-ViT PATH/FIMA-Q
# Environment: IT (iterations per block, default 100), SEED (default 0), LIMIT (seconds per process, default 3000),
# SNAPSHOT (a .tar.gz path: OUT, reconstruction checkpoints left out, is packed there every 20 s and at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
C=$1; K=$2; S=$3; O=$4; APHQ=$5; FIMAQ=$6
IT=${IT:-100}; SEED=${SEED:-0}; LIMIT=${LIMIT:-3000}; PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$O"
go() { n=$1; shift; echo "$PY $*" > "$O/$n.command.txt"
  ( timeout "$LIMIT" "$PY" "$@" > "$O/$n.log" 2>&1; echo "$n rc=$? t=$SECONDS" >> "$O/status.txt" ) & }
for spec in aphq="$APHQ" fimaq="$FIMAQ"; do m=${spec%%=*}
  for side in official ours; do
    go fid_${m}_w3_$side tools/compare_official.py "$C" "$K" --official "$spec" --side $side --bits 3 --seeds "$SEED" \
       --device cuda --calib-num 1024 --official-args iters="$IT" --cfg-options data.path="$S" --out "$O/fid_${m}_w3_$side"
  done
done
bench() { n=$1; w=$2; a=$3; shift 3
  go bench_${n}_w${w}a${a} tools/ptq_test.py "$C" "$K" --w-bits $w --a-bits $a --method "$@" --seed "$SEED" \
     --device cuda --recon-iters "$IT" --cfg-options data.path="$S" --out "$O/bench_${n}_w${w}a${a}" --overwrite \
     --checkpoint-dir "$O/ckpt/$n$w$a"; }
bench rf 3 3 relu_fisher; bench rf 2 4 relu_fisher; bench aphq 2 4 aphq; bench fimaq 2 4 fimaq
pack() { [ -n "${SNAPSHOT:-}" ] && tar czf "$SNAPSHOT.tmp" --exclude=ckpt --exclude='*.staging*' -C "$O" . 2>/dev/null \
  && mv "$SNAPSHOT.tmp" "$SNAPSHOT"; }
while [ -n "$(jobs -rp)" ]; do sleep 20; pack; done
wait; pack; cat "$O/status.txt"
