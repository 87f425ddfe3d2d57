#!/usr/bin/env bash
# What does pretraining buy on chest X-ray labels, and how much more when labels are few?
#
# Kermany et al.'s pneumonia set (../shared/data/cxr-pneumonia-224: 5,216 training and 624 test
# radiographs, normal vs pneumonia, CC BY 4.0). One MoCo v2 pretraining of ResNet-18 at 128 px on
# the training images (labels unused), then classification with 1 %, 10 % and 100 % of the
# training labels, from scratch and from that encoder, fine-tuned and as a linear probe, on fixed
# step budgets; mean AUROC on the official test split with bootstrap intervals, and paired
# `classify compare` of pretrained vs scratch at every fraction. Three seeds (three label draws)
# at 1 %, where the spread is largest.
#
# Resumable across days: every run resumes from its newest checkpoint (--resume auto) and a run
# whose test report exists is skipped. Stop it any time (Ctrl-C saves a checkpoint).
#
#     experiments/pneumonia_fractions.sh            # everything, then the summary
#     PRETRAIN_EPOCHS=30 experiments/pneumonia_fractions.sh
#     experiments/pneumonia_fractions.sh summary    # the table and plot from what has finished
#     ENCODER=target/experiments/pneumonia/pretrain/checkpoint_0008.pth.tar \
#         experiments/pneumonia_fractions.sh classify   # classification from a chosen encoder
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${CHESS_DATA:-../shared/data}/cxr-pneumonia-224
OUT=${OUT:-target/experiments/pneumonia}
BIN=${BIN:-target/release/examples}
PY=.venv/bin/python
# This CPU (and any with AVX512_BF16 or AMX, or a CUDA GPU of compute capability 8.0+) computes
# bf16 natively; elsewhere use AMP=off.
AMP=${AMP:-bf16}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-12}
FRACTIONS=${FRACTIONS:-"0.01 0.1 1.0"}
SEEDS_1PCT=${SEEDS_1PCT:-"0 1 2"}
# Nodes of the patient names in the file names: person123_bacteria_456.jpeg, IM-0115-0001.jpeg.
PATIENT='person\d+|NORMAL2-IM-\d+|IM-\d+'
COMMON=(--arch resnet18 --image-size 128 --amp "$AMP" --channels-last off --patient-id "$PATIENT" --bootstrap 1000)

mkdir -p "$OUT/runs"

pretrain() {
    cargo build --release --example pretrain --example classify --example chart
    # 64 images a step, K = 4096 negatives, the recipe's augmentation and schedule otherwise.
    $BIN/pretrain --data "$DATA/train" --out "$OUT/pretrain" --cache "$OUT/pretrain-128.cache" \
        --arch resnet18 --image-size 128 --batch-size 64 --moco-k 4096 --epochs "$PRETRAIN_EPOCHS" \
        --amp "$AMP" --save-every-iters 200 --log-every 20 --resume auto
}

# budget FRACTION -> "steps batch val_every"
budget() {
    case "$1" in
        0.01) echo "150 16 15" ;;  # ~47 images: 2 batches an epoch, 75 epochs
        0.1)  echo "300 32 5" ;;   # ~465 images: 14 batches an epoch, 22 epochs (308 steps)
        *)    echo "300 32 1" ;;   # ~4,650 images: 145 batches an epoch, 3 epochs (435 steps)
    esac
}

# One classification run (skipped when its test report exists), then its comparison.
classify_run() {
    local fraction=$1 mode=$2 seed=$3 encoder=$4 steps batch val_every
    read -r steps batch val_every <<<"$(budget "$fraction")"
    for init in scratch chess; do
        local run="$OUT/runs/f${fraction}_${mode}_${init}_s${seed}"
        [ -f "$run/test/metrics.json" ] && continue
        local from=scratch lr=()
        [ "$init" = chess ] && from=$encoder
        # MoCo's linear-evaluation lr 30 diverges on these 128 px ResNet-18 features
        # (validation AUROC 0.5); 0.03 for both inits.
        [ "$mode" = linear ] && lr=(--lr 0.03)
        echo "== $run"
        $BIN/classify train --train "$DATA/train" --test "$DATA/test" --out "$run" \
            --fraction "$fraction" --seed "$seed" --init "$from" --mode "$mode" \
            --steps "$steps" --batch-size "$batch" --val-every "$val_every" \
            --plateau-patience 3 --save-every-iters 0 --save-every-epochs 10 --log-every 20 \
            --resume auto "${lr[@]}" "${COMMON[@]}"
    done
    local cmp="$OUT/runs/f${fraction}_${mode}_s${seed}_compare.json"
    [ -f "$cmp" ] || $BIN/classify compare "$OUT/runs/f${fraction}_${mode}_chess_s${seed}" \
        "$OUT/runs/f${fraction}_${mode}_scratch_s${seed}" --data "$DATA/test" --out "$cmp" --amp "$AMP"
}

classify_runs() {
    # The encoder: the last epoch's checkpoint, or ENCODER=... (e.g. an earlier epoch's).
    local encoder="${ENCODER:-$OUT/pretrain/checkpoint_$(printf %04d "$PRETRAIN_EPOCHS").pth.tar}"
    [ -f "$encoder" ] || { echo "no pretrained encoder at $encoder: pretraining has not finished"; exit 1; }
    # Every fraction and mode with seed 0 first, then the further seeds at 1 %.
    for fraction in $FRACTIONS; do
        for mode in linear finetune; do
            classify_run "$fraction" "$mode" 0 "$encoder"
        done
    done
    for seed in $SEEDS_1PCT; do
        [ "$seed" = 0 ] && continue
        for mode in finetune linear; do
            classify_run 0.01 "$mode" "$seed" "$encoder"
        done
    done
}

summary() {
    $PY experiments/summarize_fractions.py "$OUT"
    if [ -f "$OUT/fractions.json" ]; then
        $BIN/chart --spec "$OUT/fractions.json" --out "$OUT/fractions.png"
        echo "plot: $OUT/fractions.png"
    fi
}

case "${1:-all}" in
    pretrain) pretrain ;;
    classify) classify_runs ;;
    summary) summary ;;
    all) pretrain; classify_runs; summary ;;
    *) echo "usage: $0 [all|pretrain|classify|summary]"; exit 2 ;;
esac
