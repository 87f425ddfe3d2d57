#!/usr/bin/env bash
# Builds what benches/gpu.sh runs on a CUDA machine that has torch 2.11 but no Rust toolchain:
# the release `pretrain` binary, the CUDA parity test binary, the bench binaries, wheels of the Python baseline's
# packages missing there (albumentations), and a subset of the radiographs. All into .devcarry/
# (git-ignored), which travels with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CHESS_DATA:-../shared/data}
N=${GPU_BENCH_IMAGES:-3000}
out=.devcarry
mkdir -p "$out/data" "$out/whl"
cargo build --release --example pretrain
cp target/release/examples/pretrain "$out/"
test_bin=$(cargo test --release --test parity_moco --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
cp "$test_bin" "$out/parity_moco"
# The three bench binaries gpu.sh runs with BENCH_DEVICE=cuda.
cargo bench --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
for m in map(json.loads, sys.stdin):
    name = m.get("target", {}).get("name")
    if m.get("executable") and name in ("train_step", "data_pipeline", "load_checkpoint"):
        shutil.copy(m["executable"], sys.argv[1] + "/bench_" + name)
' "$out"
rm -rf "$out/data"/*
for cls in NORMAL PNEUMONIA; do
  mkdir -p "$out/data/$cls"
  find "$DATA/cxr-pneumonia-224/train/$cls" -type f | sort | head -n $((N / 2)) | xargs cp -t "$out/data/$cls"
done
( cd "$out/whl" && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d . albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
    pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16 )
du -sh "$out"
