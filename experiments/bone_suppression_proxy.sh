#!/usr/bin/env bash
# Bone suppression on a synthetic PROXY (no public paired set is reachable from here; BSE-JSRT
# needs registration): real radiographs of ../shared/data/cxr-pneumonia-224 are the targets and
# the same radiographs with synthetic rib and clavicle bands are the inputs (`bone_suppression
# proxy`). Three runs that differ only in the perceptual term of the loss:
#   none     L1 0.16 + (1 - SSIM) 0.84
#   random   + perceptual loss on a RANDOMLY INITIALISED ResNet-18 (in place of ImageNet weights,
#            which cannot be downloaded here)
#   chess    + perceptual loss on the ResNet-18 pretrained with `pretrain` by
#            experiments/pneumonia_fractions.sh (a CheSS-shaped encoder, this CPU's budget)
# U-Net (ResNet-18 encoder from scratch), 128 px; PSNR/SSIM/RMSE on held-out proxy pairs made
# from the test split (other patients). Resumable: finished runs are skipped.
#
#     experiments/bone_suppression_proxy.sh            # needs the pretrained encoder (ENCODER=...)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CHESS_DATA:-../shared/data}/cxr-pneumonia-224
OUT=${OUT:-target/experiments/bone_suppression}
BIN=target/release/examples
ENCODER=${ENCODER:-target/experiments/pneumonia/pretrain/checkpoint_0012.pth.tar}
AMP=${AMP:-bf16}
EPOCHS=${EPOCHS:-8}
TRAIN_IMAGES=${TRAIN_IMAGES:-400}
cargo build --release --example bone_suppression
mkdir -p "$OUT"
[ -d "$OUT/proxy-train" ] || $BIN/bone_suppression proxy --source "$DATA/train/NORMAL" --out "$OUT/proxy-train" \
    --size 128 --limit "$TRAIN_IMAGES" --seed 0
[ -d "$OUT/proxy-test" ] || $BIN/bone_suppression proxy --source "$DATA/test/NORMAL" --out "$OUT/proxy-test" \
    --size 128 --limit 100 --seed 1

for row in none random chess; do
    run="$OUT/runs/$row"
    [ -f "$run/test/metrics.json" ] && continue
    extra=()
    case $row in
        random) extra=(--perceptual-weights random --perceptual-weight 0.5) ;;
        chess) extra=(--perceptual-weights "$ENCODER" --perceptual-weight 0.5) ;;
    esac
    $BIN/bone_suppression train --input "$OUT/proxy-train/input" --target "$OUT/proxy-train/target" \
        --out "$run" --arch unet-resnet18 --image-size 128 --batch-size 16 --epochs "$EPOCHS" \
        --loss l1=0.16,ssim=0.84 --amp "$AMP" --channels-last off --save-every-iters 0 --log-every 10 --resume auto "${extra[@]}"
    $BIN/bone_suppression eval --model "$run/best.pth" --input "$OUT/proxy-test/input" \
        --target "$OUT/proxy-test/target" --out "$run/test" --amp "$AMP" --side-by-side 4
done

echo "| perceptual loss | PSNR (dB) | SSIM | RMSE |"
echo "|---|---|---|---|"
for row in none random chess; do
    m="$OUT/runs/$row/test/metrics.json"
    [ -f "$m" ] && .venv/bin/python -c "import json,sys; m=json.load(open('$m')); print(f\"| $row | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['rmse']:.3f} |\")"
done
