#!/usr/bin/env bash
# Nodule generation on a synthetic PROXY (no nodule data set is reachable from here): real
# radiographs of ../shared/data/cxr-pneumonia-224 with simulated nodules and their masks
# (`nodule_gan proxy`). A small SPADE (64 px, ngf 16, ndf 32, z 64) trained on CPU, runs that
# differ only in the perceptual term's encoder:
#   chess     the ResNet-18 pretrained with `pretrain` by experiments/pneumonia_fractions.sh
#             (a CheSS-shaped encoder at this CPU's budget), CheSS normalisation
#   imagenet  an ImageNet-shaped ResNet-18 (3 channels, ImageNet normalisation) RANDOMLY
#             INITIALISED, in place of ImageNet weights, which cannot be downloaded here
#   none      no perceptual term
#   chess-bf16  as chess, in bf16 autocast (what `--amp auto` gives on a CPU with AVX512_BF16)
# Judged by the FID and KID on pooled features of the CheSS-shaped encoder (`fid --features
# chess`) of images generated from the held-out masks (test split: other patients) against the
# held-out proxy radiographs, and the floor: training radiographs against the same held-out ones.
# Runs are single-threaded (SPADE at this size is many small kernels; see tests/nodule_gan.rs)
# and go two at a time. Resumable: finished runs are skipped.
#
#     experiments/nodule_gan_proxy.sh              # needs ENCODER (default: pneumonia pretrain)
#     experiments/nodule_gan_proxy.sh summary
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CHESS_DATA:-../shared/data}/cxr-pneumonia-224
OUT=${OUT:-target/experiments/nodule_gan}
BIN=${BIN:-target/release/examples}
PY=${PY:-.venv/bin/python}
ENCODER=${ENCODER:-target/experiments/pneumonia/pretrain/checkpoint_0008.pth.tar}
EPOCHS=${EPOCHS:-8}
TRAIN_IMAGES=${TRAIN_IMAGES:-1000}
ARMS=${ARMS:-chess imagenet none}

fid() { OMP_NUM_THREADS=2 $BIN/nodule_gan fid "$1" "$2" --features chess --weights "$ENCODER" --size 64 --kid --kid-subset-size 200 --device cpu; }

if [ "${1:-}" = summary ]; then
    for arm in $ARMS floor; do
        f="$OUT/runs/$arm/fid.txt"
        [ -f "$f" ] && echo "$arm: $(tr '\n' ' ' < "$f")"
    done
    exit 0
fi

cargo build --release --example nodule_gan
mkdir -p "$OUT/runs"
[ -d "$OUT/proxy_train" ] || $BIN/nodule_gan proxy --source "$DATA/train" --out "$OUT/proxy_train" --size 128 --seed 1
[ -d "$OUT/proxy_test" ] || $BIN/nodule_gan proxy --source "$DATA/test" --out "$OUT/proxy_test" --size 128 --seed 2
# A seeded subset of the training images (the CPU's budget), as an image,mask CSV.
if [ ! -f "$OUT/train.csv" ]; then
    { echo image,mask; ls "$OUT/proxy_train/images" | shuf -n "$TRAIN_IMAGES" --random-source=<(yes) | sort |
        sed 's|^\(.*\)$|proxy_train/images/\1,proxy_train/masks/\1|'; } > "$OUT/train.csv"
fi
if [ ! -f "$OUT/imagenet_shaped_random.pt" ]; then
    $PY -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet18().state_dict(), '$OUT/imagenet_shaped_random.pt')"
fi

train_arm() {
    local arm=$1 run="$OUT/runs/$1" extra=() amp=off
    case $arm in
        chess) extra=(--perceptual-weights "$ENCODER" --perceptual-norm chess) ;;
        chess-bf16) extra=(--perceptual-weights "$ENCODER" --perceptual-norm chess) amp=bf16 ;;
        imagenet) extra=(--perceptual-weights "$OUT/imagenet_shaped_random.pt" --perceptual-norm imagenet) ;;
        none) extra=() ;;
    esac
    if [ ! -f "$run/model.json" ] || ! grep -q "\"epoch\": $EPOCHS" "$run/model.json"; then
        OMP_NUM_THREADS=1 $BIN/nodule_gan train --pairs "$OUT/train.csv" --out "$run" --image-size 64 --ngf 16 \
            --ndf 32 --z-dim 64 --encoder-size 64 --batch-size 8 --epochs "$EPOCHS" --decay-epochs $((EPOCHS / 2)) \
            --sample-every 2 --workers 1 --amp "$amp" --channels-last off --resume auto "${extra[@]}" > "$run.log" 2>&1
    fi
    rm -rf "$run/generated"
    OMP_NUM_THREADS=1 $BIN/nodule_gan generate --model "$run" --masks "$OUT/proxy_test/masks" --out "$run/generated" \
        --device cpu >> "$run.log" 2>&1
}

running=0
for arm in $ARMS; do
    [ -f "$OUT/runs/$arm/fid.txt" ] && continue
    mkdir -p "$OUT/runs/$arm"
    train_arm "$arm" &
    running=$((running + 1))
    if [ $running -ge 2 ]; then wait -n; running=$((running - 1)); fi
done
wait
for arm in $ARMS; do
    [ -f "$OUT/runs/$arm/fid.txt" ] || fid "$OUT/runs/$arm/generated" "$OUT/proxy_test/images" > "$OUT/runs/$arm/fid.txt"
done
mkdir -p "$OUT/runs/floor"
if [ ! -f "$OUT/runs/floor/fid.txt" ]; then
    # Training radiographs (the subset, at 64 px) against the held-out ones.
    mkdir -p "$OUT/runs/floor/real64"
    tail -n +2 "$OUT/train.csv" | cut -d, -f1 | head -n 624 | while read -r f; do ln -sf "$(realpath "$OUT/$f")" "$OUT/runs/floor/real64/"; done
    fid "$OUT/runs/floor/real64" "$OUT/proxy_test/images" > "$OUT/runs/floor/fid.txt"
fi
"$0" summary
