#!/usr/bin/env bash
# `make demo`: the whole story in a few minutes on 2 CPU cores.
#  1. MoCo v2 pretraining (the CheSS recipe, scaled down: ResNet-18, 128 px) on the 300 training
#     radiographs of data/cxr-pneumonia-demo, labels unused;
#  2. classification, normal vs pneumonia, fine-tuned from scratch and from that encoder;
#  3. both judged on the 120 test radiographs, and compared with a paired bootstrap.
# A demo of the tools at toy scale: see docs/classification.md for a real experiment.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/examples
DATA=data/cxr-pneumonia-demo
OUT=${DEMO_OUT:-target/demo}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-8}
CLASSIFY_EPOCHS=${CLASSIFY_EPOCHS:-10}
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1/3 pretraining (MoCo v2, ResNet-18, 128 px, $PRETRAIN_EPOCHS epochs of 300 images)"
$BIN/pretrain --data "$DATA/train" --out "$OUT/pretrain" --cache "$OUT/decoded.cache" \
    --arch resnet18 --image-size 128 --batch-size 32 --moco-k 1024 --epochs "$PRETRAIN_EPOCHS" \
    --log-every 10
ENCODER="$OUT/pretrain/checkpoint_$(printf %04d "$PRETRAIN_EPOCHS").pth.tar"

for init in scratch pretrained; do
    from=scratch
    [ "$init" = pretrained ] && from=$ENCODER
    echo "== 2/3 classification from $init ($CLASSIFY_EPOCHS epochs)"
    $BIN/classify train --train "$DATA/train" --test "$DATA/test" --out "$OUT/classify-$init" \
        --init "$from" --arch resnet18 --image-size 128 --batch-size 32 --epochs "$CLASSIFY_EPOCHS" \
        --lr 0.01 --patient-id 'person\d+|NORMAL2-IM-\d+|IM-\d+' --log-every 10
done

echo "== 3/3 pretrained vs scratch on the same test images"
$BIN/classify compare "$OUT/classify-pretrained" "$OUT/classify-scratch" --data "$DATA/test" \
    --out "$OUT/compare.json"
cat <<DONE

demo done (a toy: 300 training images, minutes of CPU; a real experiment: docs/classification.md)
  pretraining:     $OUT/pretrain/metrics.jsonl, checkpoints $OUT/pretrain/checkpoint_*.pth.tar
  classification:  $OUT/classify-{scratch,pretrained}/ (best.pth, curves.png, val/, test/roc.png, test/confusion.png)
  comparison:      $OUT/compare.json
DONE
