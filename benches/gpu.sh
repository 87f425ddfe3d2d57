#!/usr/bin/env bash
# GPU checks and benchmarks, run on the CUDA machine from the repository root after
# benches/gpu-bundle.sh filled .devcarry/ here. Uses that machine's python3 (torch 2.11 + CUDA)
# for libtorch and the PyTorch side. Results go to $OUT (default target/bench/gpu).
#   1. CUDA parity of the MoCo step against PyTorch (tests/parity_moco.rs, CUDA cases);
#   2. pretraining throughput, ResNet-50, 512 px, batch 64, bf16 + channels_last: Rust `pretrain`
#      against the PyTorch baseline (benches/python/train_moco.py), both reading the same JPEGs
#      with 16 decode workers, plus GPU memory and utilisation sampled by nvidia-smi; ends with
#      `BENCH gpu_end_to_end rust= python= ratio=` and $OUT/results.json (benches/gpu_report.py);
#   3. the other comparisons of `make bench` on the GPU, with the same settings on both sides:
#      `BENCH gpu_train_step` (ResNet-50, 512 px, batch 64, bf16 + channels_last),
#      `BENCH gpu_data_pipeline` (decode with 16 workers, augment on the GPU, against 16
#      DataLoader workers running albumentations) and `BENCH gpu_load_checkpoint`, into
#      $OUT/results_benches.json.
# PARTS (default "parity end_to_end benches") picks sections.
set -uo pipefail
OUT=${OUT:-target/bench/gpu}
mkdir -p "$OUT"
B=.devcarry
STEPS=${STEPS:-200}
WORKERS=${WORKERS:-16}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $B/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
find "$PWD/$B/data" -type f | sort > /tmp/files.txt
echo "images: $(wc -l < /tmp/files.txt)"

PARTS=${PARTS:-parity end_to_end benches}
part() { [[ " $PARTS " == *" $1 "* ]]; }

if part parity; then
echo "== CUDA parity"
CHESS_PYTHON=python3 timeout 120 $B/parity_moco cuda --ignored --nocapture --test-threads 1 2>&1 | tee "$OUT/parity_cuda.txt" | grep -E "step|test result|panicked|FAILED|ok$"
fi

sample() { nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$1" & echo $!; }
summary() { python3 - "$1" <<'PY'
import sys
rows = [list(map(float, l.split(","))) for l in open(sys.argv[1]) if l.strip()]
busy = [r for r in rows if r[0] > 0] or rows
print(f"gpu_util_mean={sum(r[0] for r in busy) / len(busy):.0f}% peak_mem_mib={max(r[1] for r in rows):.0f} samples={len(rows)}")
PY
}

rust() {  # $1: run name, $2: bn splits, $3: time limit (s), then extra pretrain flags
  local name=$1 splits=$2 limit=$3; shift 3
  echo "== rust pretrain ($name: bn-splits $splits $*)"
  pid=$(sample "$OUT/smi_rust_$name.csv")
  timeout $limit $B/pretrain --data $B/data --out /tmp/run_$name --arch resnet50 --image-size 512 --batch-size 64 \
    --amp bf16 --channels-last --bn-splits $splits --workers $WORKERS --epochs 100 --max-steps $STEPS \
    --log-every 10 --save-every-iters 0 --device cuda "$@" 2>&1 | tail -4
  kill $pid; summary "$OUT/smi_rust_$name.csv" | sed "s/^/rust $name /" | tee -a "$OUT/summary.txt"
  grep '"kind":"end"' /tmp/run_$name/metrics.jsonl | sed "s/^/rust $name /" | tee -a "$OUT/summary.txt"
  cp /tmp/run_$name/metrics.jsonl "$OUT/metrics_rust_$name.jsonl"
}

if part end_to_end; then
# Same settings on both sides: plain BN (the baseline is one process without shuffle-BN).
# Views drawn on the GPU (the default there), then by the decode threads' native loops.
rust 1 1 120
rust loader 1 120 --augment-on loader
echo "== pytorch baseline (plain BN, single process)"
pid=$(sample "$OUT/smi_python.csv")
PYTHONUNBUFFERED=1 timeout 150 python3 benches/python/train_moco.py --files /tmp/files.txt --device cuda \
  --batch-size 64 --image-size 512 --amp bf16 --channels-last --workers $WORKERS --steps $STEPS 2>&1 |
  tail -3 | sed "s/^/python /" | tee -a "$OUT/summary.txt"
kill $pid; summary "$OUT/smi_python.csv" | sed "s/^/python /" | tee -a "$OUT/summary.txt"
# The recipe's single-process default: split-BN with shuffled keys.
rust 8 8 100
python3 benches/gpu_report.py "$OUT"
fi

bench() {  # $1: bench name, $2: time limit (s), then VAR=value settings
  echo "== bench $1"
  env CHESS_ROOT="$PWD" CHESS_PYTHON=python3 BENCH_PREFIX=gpu_ BENCH_RESULTS="$OUT/results_benches.json" "${@:3}" \
    timeout "$2" "$B/bench_$1" --bench 2>&1 | tee "$OUT/bench_$1.txt" | grep -E "BENCH|round|step|threads|load_checkpoint:|rror"
}
if part benches; then
bench train_step 240 BENCH_DEVICE=cuda BENCH_BATCH=64 BENCH_SIZE=512 BENCH_AMP=bf16 BENCH_CHANNELS_LAST=1 \
  BENCH_THREADS=16 BENCH_WARMUP=10 BENCH_STEPS=${BENCH_STEPS:-20} BENCH_ROUNDS=2
bench data_pipeline 240 BENCH_DEVICE=cuda BENCH_SOURCE="$B/data" BENCH_IMAGES=${BENCH_IMAGES:-2048} \
  BENCH_WORKERS=$WORKERS BENCH_BATCH=64 BENCH_SIZE=512
bench load_checkpoint 120
fi
