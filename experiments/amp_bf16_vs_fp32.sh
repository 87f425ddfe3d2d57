#!/usr/bin/env bash
# Does bf16 autocast train MoCo v2 as well as fp32? The same pretraining (ResNet-18, 128 px,
# batch 32, K = 4,096, 4 epochs = 652 steps on the 5,216 training images of
# ../shared/data/cxr-pneumonia-224) in fp32 and in bf16, three seeds each; loss and the positive
# key's top-1 at equal step counts, side by side (amp.png), and bf16's final values against the
# fp32 seeds' spread (amp.md).
#
# Resumable: a finished run is skipped, an interrupted one resumes (--resume auto).
#
#     experiments/amp_bf16_vs_fp32.sh            # the six runs, then the summary
#     experiments/amp_bf16_vs_fp32.sh summary    # the table and plot from what has finished
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${CHESS_DATA:-../shared/data}/cxr-pneumonia-224
OUT=${OUT:-target/experiments/amp}
BIN=${BIN:-target/release/examples}
PY=.venv/bin/python
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-4}

runs() {
    [ -x "$BIN/pretrain" ] || cargo build --release --example pretrain --example chart
    mkdir -p "$OUT"
    for seed in $SEEDS; do
        for amp in bf16 off; do
            local run="$OUT/${amp}_s${seed}"
            if grep -q '"kind":"end"' "$run/metrics.jsonl" 2>/dev/null; then continue; fi
            echo "== $run"
            # Every step logged (the curves are smoothed afterwards); a shared decode cache.
            $BIN/pretrain --data "$DATA/train" --out "$run" --cache "$OUT/decoded-128.cache" \
                --arch resnet18 --image-size 128 --batch-size 32 --moco-k 4096 --epochs "$EPOCHS" \
                --amp "$amp" --channels-last off --seed "$seed" --workers 2 --log-every 1 \
                --save-every-iters 200 \
                --resume auto
        done
    done
}

summary() {
    $PY experiments/summarize_amp.py "$OUT"
    $BIN/chart --spec "$OUT/amp.json" --out "$OUT/amp.png"
    echo "plot: $OUT/amp.png"
}

case "${1:-all}" in
    runs) runs ;;
    summary) summary ;;
    all) runs; summary ;;
    *) echo "usage: $0 [all|runs|summary]"; exit 2 ;;
esac
