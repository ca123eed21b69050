#!/usr/bin/env bash
# Reproduces docs/results for the CIFAR-10 reference ViT and Swin on one GPU:
#   bash tools/run_cifar_results.sh CIFAR_NPZ VIT_CKPT SWIN_CKPT OUT [RECON_SETTING]
# CIFAR_NPZ is the packed-JPEG CIFAR-10 file (configs' data.path); the checkpoints come from tools/train_cls.py.
# Every (model, method group, bit width, seed) runs as its own process, all at once on the one GPU (small models
# leave it mostly idle); each writes OUT/<model>_<group>_w<bits>_s<seed>/report.json. Environment:
#   RECON_SETTING (5th argument, default "small", see plugin/quant/recon.py): iterations of the reconstruction passes;
#   SEEDS (default "0 1 2"): calibration draws of the W3A3/W4A4 rows (W6A6 and the one-switch ablations: seed 0);
#   MODELS (default "vit swin"); LIMIT (default 560): seconds allowed to each process.
# Then tools/make_results.py merges the reports into OUT/page (several seeds: mean ± std).
set -uo pipefail
cd "$(dirname "$0")/.."
NPZ=$1; VIT=$2; SWIN=$3; OUT=$4; SETTING=${5:-small}; LIMIT=${LIMIT:-560}
SEEDS=${SEEDS:-0 1 2}; MODELS=${MODELS:-vit swin}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
run() {  # model ckpt group bits seed methods...
  local model=$1 ckpt=$2 group=$3 bits=$4 seed=$5; shift 5
  local dir="$OUT/${model}_${group}_w${bits}_s${seed}"; mkdir -p "$dir"
  local fp=--no-fp; [ "$group" = base ] && [ "$seed" = 0 ] && fp=  # one full-precision evaluation per model
  local cmd=("$PY" tools/ptq_test.py "configs/classification/cifar10_${model}.py" "$ckpt" --device cuda --quiet
             --cfg-options "data.path=$NPZ" --out "$dir" --bits "$bits" --seed "$seed" $fp
             --recon-setting "$SETTING" --overwrite --method "$@")  # --overwrite: command.txt and log.txt are already in $dir
  echo "${cmd[*]}" > "$dir/command.txt"
  timeout "$LIMIT" "${cmd[@]}" > "$dir/log.txt" 2>&1 || echo "FAILED or timed out: $dir (see $dir/log.txt)"
}
for m in $MODELS; do
  ckpt=$VIT; [ "$m" = swin ] && ckpt=$SWIN
  for b in 3 4 6; do
    seeds=$SEEDS; [ "$b" = 6 ] && seeds=0
    for s in $seeds; do
      run $m "$ckpt" base $b $s minmax ptq4vit repq repq_strict dopq_lite &
      run $m "$ckpt" isvit $b $s isvit &
      run $m "$ckpt" aiqvit $b $s aiqvit aiqvit_dfq_interval &
      run $m "$ckpt" dopq $b $s dopq dopq_no_mosf &
    done
  done
  for b in 4 3; do
    run $m "$ckpt" ablation_a $b 0 dopq_lite_no_tanq dopq_no_tanq isvit_no_sulq isvit_no_sos &
    run $m "$ckpt" ablation_b $b 0 aiqvit_no_dfq aiqvit_no_lowrank aiqvit_no_curriculum &
    run $m "$ckpt" ablation_c $b 0 aiqvit_rank20 aiqvit_rank100 &
  done
done
wait
runs=$(for d in "$OUT"/*_w*_s*; do [ -f "$d/report.json" ] && echo "$d"; done)
"$PY" tools/make_results.py $runs --out "$OUT/page" --title "CIFAR-10 reference models"
