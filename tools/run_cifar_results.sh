#!/usr/bin/env bash
# Reproduces docs/results for the CIFAR-10 reference ViT and Swin on one GPU:
#   bash tools/run_cifar_results.sh CIFAR_NPZ VIT_CKPT SWIN_CKPT OUT [RECON_SETTING]
# CIFAR_NPZ is the packed-JPEG CIFAR-10 file (configs' data.path); the checkpoints come from tools/train_cls.py.
# Every (model, method group, bit width) runs as its own process, all at once on the one GPU (small models leave it
# mostly idle); each writes OUT/<model>_<group>/report.json. RECON_SETTING (default "small", see
# plugin/quant/recon.py) sets the iterations of the reconstruction methods; ABLATION_BITS (default "4 3") the widths
# of the ablation rows. Then tools/make_results.py merges the reports into OUT/page.
set -uo pipefail
cd "$(dirname "$0")/.."
NPZ=$1; VIT=$2; SWIN=$3; OUT=$4; SETTING=${5:-small}; LIMIT=${LIMIT:-560}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
run() {  # model ckpt group args...
  local model=$1 ckpt=$2 group=$3; shift 3
  local dir="$OUT/${model}_${group}"; mkdir -p "$dir"
  local cmd=("$PY" tools/ptq_test.py "configs/classification/cifar10_${model}.py" "$ckpt" --device cuda --quiet
             --cfg-options "data.path=$NPZ" --out "$dir" "$@")
  echo "${cmd[*]}" > "$dir/command.txt"
  timeout "$LIMIT" "${cmd[@]}" > "$dir/log.txt" 2>&1 || echo "FAILED or timed out: $model $group (see $dir/log.txt)"
}
for m in vit swin; do
  ckpt=$VIT; [ "$m" = swin ] && ckpt=$SWIN
  run $m "$ckpt" base --bits 3 4 6 --method minmax ptq4vit repq dopq_lite &
  for b in 3 4 6; do run $m "$ckpt" seed_w$b --bits $b --method isvit aiqvit --recon-setting "$SETTING" & done
  for b in ${ABLATION_BITS:-4 3}; do
    run $m "$ckpt" ablation_w${b}_isvit --bits $b --method dopq_lite_no_tanq isvit_no_sulq isvit_no_sos \
        --recon-setting "$SETTING" &
    run $m "$ckpt" ablation_w${b}_aiqvit --bits $b --method aiqvit_no_dfq aiqvit_no_lowrank aiqvit_no_curriculum \
        --recon-setting "$SETTING" &
  done
done
wait
runs=$(for m in vit swin; do for g in base seed_w3 seed_w4 seed_w6 ablation_w4_isvit ablation_w4_aiqvit \
    ablation_w3_isvit ablation_w3_aiqvit; do
  [ -f "$OUT/${m}_$g/report.json" ] && echo "$OUT/${m}_$g"; done; done)
"$PY" tools/make_results.py $runs --out "$OUT/page" --title "CIFAR-10 reference models"
