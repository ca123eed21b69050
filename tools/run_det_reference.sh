#!/usr/bin/env bash
# The reference detector with a CIFAR-10-pretrained backbone (issue 16), start to end:
#   1 pretrain  tools/train_cls.py: the detector's Swin backbone as a CIFAR-10 classifier (224 px, float16 weights)
#   2 convert   tools/timm_swin_to_mmdet.py --check-config: timm weights -> QuantSwin pretrained weights, checked to
#               fill every backbone weight of the detector config
#   3 detector  torchrun ... tools/train_det.py --launcher pytorch --auto-scale-lr --fit-schedule: Mask R-CNN on
#               COCO person, NGPUS processes (CPU processes over gloo where there is no CUDA)
#   4 float16   the final detector weights as float16 ({'state_dict', 'meta'}, weights_only-loadable) + sha256
#   5 evaluate  tools/ptq_test.py --fp-only on those float16 weights (COCO box/mask mAP on the val split)
#
#   tools/run_det_reference.sh                                  # every visible GPU (or one CPU process)
#   NGPUS=4 CLS_MAX_TIME=240 DET_MAX_TIME=900 OUT=work_dirs/det_reference tools/run_det_reference.sh
#
# Environment (defaults in brackets):
#   OUT [work_dirs/det_reference]  output folder: progress.log, logs/<stage>.log, cls/, backbone_mmdet.pth, det/,
#                                  detector_fp16.pth(.sha256), eval/report.{json,md}, summary.json,
#                                  train_curve.{png,json} (tools/plot_train_curve.py)
#   NGPUS [visible CUDA devices, else 1]  processes of the detector training (GPUs, or CPU processes over gloo)
#   CLS_MAX_TIME [240]  seconds of the classifier's training loop (train_cls --max-time --fit-schedule; the schedule is
#                       shortened to fit; data decoding, torch.compile's first epoch, the final test and saving come
#                       on top, about a minute on a GPU)
#   DET_MAX_TIME [900]  seconds of the detector training (train_det --max-time --fit-schedule: after two epochs the
#                       schedule is shortened to the epochs that fit, lr steps scaled with it)
#   DET_EPOCHS [36]     the detector config's epochs (lr steps at 3/4 and 11/12 of them), at most
#   CIFAR_NPZ [../shared/data/cifar10/cifar10_jpeg_packed.npz]   COCO_PERSON_ROOT [../shared/data/coco_person/]
#   DEVICE [cuda if available, else cpu]   PYTHON [python]
#   CLS_CONFIG, DET_CONFIG  [configs/classification/cifar10_swin_det_backbone.py,
#                            configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person_cifar-pretrained.py]
#   CLS_ARGS, DET_ARGS, EVAL_ARGS  extra arguments of train_cls.py, train_det.py, ptq_test.py (word-split), e.g.
#                       CLS_ARGS="--train-num 512 --test-num 100 --epochs 1" for a quick check
#   LAST_STAGE [5]      stop after this stage (1-5), e.g. LAST_STAGE=1 pretrains only (no COCO data or mmdet needed);
#                       a later run with the same OUT continues from there (for machines that cannot hold both
#                       data sets, or calls with a time limit)
#   FORCE [0]           1: run every stage again. By default a stage that finished before (OUT/.done/<stage>) is
#                       skipped, so a run cut short by a hard time limit continues where it stopped.
#
# Each stage appends its start, end and duration to OUT/progress.log and its whole output to OUT/logs/<stage>.log, and
# marks itself done only when it succeeded: whatever finished stays in OUT. Exit status: the failing stage's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-work_dirs/det_reference}"
CLS_CONFIG="${CLS_CONFIG:-$REPO/configs/classification/cifar10_swin_det_backbone.py}"
DET_CONFIG="${DET_CONFIG:-$REPO/configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person_cifar-pretrained.py}"
CIFAR_NPZ="${CIFAR_NPZ:-../shared/data/cifar10/cifar10_jpeg_packed.npz}"
export COCO_PERSON_ROOT="${COCO_PERSON_ROOT:-../shared/data/coco_person/}"
CLS_MAX_TIME="${CLS_MAX_TIME:-240}"
DET_MAX_TIME="${DET_MAX_TIME:-900}"
FORCE="${FORCE:-0}"
LAST_STAGE="${LAST_STAGE:-5}"
read -r -a CLS_EXTRA <<< "${CLS_ARGS:-}"
read -r -a DET_EXTRA <<< "${DET_ARGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

fail() { echo "run_det_reference.sh: error: $*" >&2; exit 2; }
resolve() {  # NAME PATH: an absolute path, from the working folder first, then the repository (as the configs do)
    if [[ -e "$2" ]]; then realpath "$2"; elif [[ "$2" != /* && -e "$REPO/$2" ]]; then realpath "$REPO/$2"
    else fail "$1 not found: $2"; fi
}
positive() { [[ "$2" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v v="$2" 'BEGIN { exit !(v > 0) }' \
    || fail "$1 must be a positive number, got '$2'"; }
positive CLS_MAX_TIME "$CLS_MAX_TIME"
positive DET_MAX_TIME "$DET_MAX_TIME"
[[ -z "${DET_EPOCHS:-}" || "$DET_EPOCHS" =~ ^[1-9][0-9]*$ ]] || fail "DET_EPOCHS must be a positive integer, got '$DET_EPOCHS'"
[[ "$LAST_STAGE" =~ ^[1-5]$ ]] || fail "LAST_STAGE must be one of 1-5, got '$LAST_STAGE'"
CLS_CONFIG="$(resolve CLS_CONFIG "$CLS_CONFIG")"
DET_CONFIG="$(resolve DET_CONFIG "$DET_CONFIG")"
if [[ "$FORCE" == 1 || ! -f "$OUT/.done/1_pretrain" ]]; then CIFAR_NPZ="$(resolve CIFAR_NPZ "$CIFAR_NPZ")"; fi
if [[ "$LAST_STAGE" -ge 3 ]]; then  # the detector stages read the COCO person set
    COCO_PERSON_ROOT="$(resolve COCO_PERSON_ROOT "$COCO_PERSON_ROOT")/"  # the configs append file names to it
    for f in instances_train.json instances_val.json images; do
        [[ -e "$COCO_PERSON_ROOT$f" ]] || fail "COCO_PERSON_ROOT=$COCO_PERSON_ROOT lacks $f"
    done
fi

if [[ -z "${DEVICE:-}" ]]; then
    DEVICE="$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
fi
if [[ -z "${NGPUS:-}" ]]; then
    NGPUS=1
    if [[ "$DEVICE" == cuda* ]]; then NGPUS="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"; fi
fi
[[ "$NGPUS" =~ ^[1-9][0-9]*$ ]] || fail "NGPUS must be a positive integer, got '$NGPUS'"
CLS_FAST=() DET_FAST=()
if [[ "$DEVICE" == cuda* ]]; then CLS_FAST=(--amp --compile) DET_FAST=(--amp); fi

mkdir -p "$OUT/logs" "$OUT/.done"
OUT="$(cd "$OUT" && pwd)"
export CIFAR_BACKBONE="$OUT/backbone_mmdet.pth"  # read by the detector config
export PYTHONUNBUFFERED=1
cd "$REPO"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" | tee -a "$OUT/progress.log"; }

stage() {  # stage NAME COMMAND...: run once, output to logs/NAME.log, marked done on success
    local name="$1"; shift
    if [[ "${name%%_*}" -gt "$LAST_STAGE" ]]; then
        log "stop: LAST_STAGE=$LAST_STAGE (a run with the same OUT continues from stage ${name%%_*})"
        exit 0
    fi
    if [[ "$FORCE" != 1 && -f "$OUT/.done/$name" ]]; then
        log "skip $name (done before; FORCE=1 runs it again)"
        return 0
    fi
    log "start $name: $*"
    local t0=$SECONDS status
    set +e
    "$@" 2>&1 | tee "$OUT/logs/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    if [[ $status -ne 0 ]]; then
        log "FAILED $name (exit $status after $((SECONDS - t0)) s): see $OUT/logs/$name.log"
        exit "$status"
    fi
    touch "$OUT/.done/$name"
    log "done $name ($((SECONDS - t0)) s)"
}

log "run_det_reference.sh: device $DEVICE, $NGPUS detector process(es), output $OUT"

stage 1_pretrain "$PYTHON" tools/train_cls.py "$CLS_CONFIG" --data-path "$CIFAR_NPZ" --out "$OUT/cls" \
    --device "$DEVICE" --half --max-time "$CLS_MAX_TIME" --fit-schedule "${CLS_FAST[@]}" "${CLS_EXTRA[@]}"

stage 2_convert "$PYTHON" tools/timm_swin_to_mmdet.py "$OUT/cls/model.safetensors" "$CIFAR_BACKBONE" \
    --check-config "$DET_CONFIG"

stage 3_detector "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NGPUS" \
    tools/train_det.py "$DET_CONFIG" --launcher pytorch --auto-scale-lr --work-dir "$OUT/det" \
    --max-time "$DET_MAX_TIME" --fit-schedule "${DET_FAST[@]}" "${DET_EXTRA[@]}"

half_weights() {
    "$PYTHON" - "$OUT/det/model_final.pth" "$OUT/detector_fp16.pth" <<'EOF'
import hashlib, os, sys
import torch
src, dst = sys.argv[1:]
ckpt = torch.load(src, map_location="cpu", weights_only=True)
state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
torch.save({"state_dict": state, "meta": dict(ckpt.get("meta", {}), dtype="float16")}, dst + ".tmp")
os.replace(dst + ".tmp", dst)
digest = hashlib.sha256(open(dst, "rb").read()).hexdigest()
with open(dst + ".sha256", "w") as f:
    f.write(f"{digest}  {os.path.basename(dst)}\n")
print(f"{dst}: {len(state)} tensors, {os.path.getsize(dst) / 2 ** 20:.1f} MiB, sha256 {digest}")
EOF
}
stage 4_float16 half_weights

# The float16 weights as published are what is measured (loaded into the float32 model).
stage 5_evaluate "$PYTHON" tools/ptq_test.py "$DET_CONFIG" "$OUT/detector_fp16.pth" --fp-only --device "$DEVICE" \
    --out "$OUT/eval" --work-dir "$OUT/eval_work" "${EVAL_EXTRA[@]}"

"$PYTHON" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
cls = json.load(open(os.path.join(out, "cls", "metrics.json")))
report = json.load(open(os.path.join(out, "eval", "report.json")))
digest = open(os.path.join(out, "detector_fp16.pth.sha256")).read().split()[0]
summary = {"classifier_top1": cls["top1"], "classifier_epochs": cls["epochs"], "classifier_num_test": cls["num_test"],
           "classifier_train_time_s": cls["train_time_s"], "detector_fp": report["fp"],
           "detector_weights": os.path.join(out, "detector_fp16.pth"), "detector_sha256": digest}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF
# The training curve (loss per iteration, validation mAP per evaluated epoch) of the newest detector run in OUT/det.
SCALARS="$(ls -t "$OUT"/det/*/vis_data/scalars.json 2>/dev/null | head -1)"
if [[ -n "$SCALARS" ]]; then
    "$PYTHON" tools/plot_train_curve.py "$SCALARS" --out "$OUT/train_curve.png" --json "$OUT/train_curve.json" \
        --title "$(basename "$DET_CONFIG" .py)" || log "no training curve (tools/plot_train_curve.py failed)"
fi
log "finished: $OUT/summary.json; detector weights $OUT/detector_fp16.pth sha256 $(cut -d' ' -f1 "$OUT/detector_fp16.pth.sha256")"
