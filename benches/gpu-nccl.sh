#!/usr/bin/env bash
# The NCCL path on a CUDA machine (after benches/gpu-bundle.sh): `torchrun --no-python` starts
# one rank per GPU, which joins an NCCL group and trains ResNet-50 (512 px, global batch 64,
# bf16 + channels_last). With one GPU, a world of one still runs every collective of a step.
set -uo pipefail
B=.devcarry
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
find "$PWD/$B/data" -type f | sort | head -n 2560 > /tmp/files.txt
timeout ${LIMIT:-150} python3 -m torch.distributed.run --no-python --standalone --nproc-per-node "$NGPU" \
  $B/pretrain --data /tmp/files.txt --out /tmp/nccl_run --arch resnet50 --image-size 512 --batch-size 64 \
  --amp bf16 --channels-last --workers 12 --epochs 1 --max-steps ${STEPS:-40} --log-every 10 2>&1 |
  grep -vE "^W[0-9]+ |^\*+$|OMP_NUM_THREADS"
echo "exit: ${PIPESTATUS[0]}"
grep '"kind":"step"' /tmp/nccl_run/metrics.jsonl | tail -n 3
grep '"kind":"end"' /tmp/nccl_run/metrics.jsonl
if [ -n "${BASELINE:-}" ]; then  # the same run in one plain process, for the overhead of the group
  timeout ${LIMIT:-150} $B/pretrain --data /tmp/files.txt --out /tmp/plain_run --arch resnet50 --image-size 512 \
    --batch-size 64 --bn-splits 1 --amp bf16 --channels-last --workers 12 --epochs 1 --max-steps ${STEPS:-40} \
    --log-every 10 2>&1 | tail -n 1
fi
