//! `train_step`: one MoCo v2 step (ResNet-50, batch 16, 224 px, K = 65,536, fp32, plain BN) on
//! the CPU with the same thread count on both sides, ours (`MocoTrainer::step`) against the
//! original loop in PyTorch (`benches/python/train_moco.py --synthetic`). The two sides
//! alternate in rounds (`BENCH_ROUNDS`, 5) of 5 timed steps each (`BENCH_STEPS`), after 3
//! warm-up steps (`BENCH_WARMUP`), so that a slow minute on a shared machine hits both; the
//! ratio is of the medians over all rounds. The same random views every step.
//! `BENCH_RUST_ONLY=1`: ours alone, each step's time and resident memory (diagnosis).
//!
//! benches/gpu.sh runs it on CUDA: `BENCH_DEVICE=cuda BENCH_BATCH=64 BENCH_SIZE=512
//! BENCH_AMP=bf16 BENCH_CHANNELS_LAST=1`, the same settings on both sides.
mod common;

use std::time::Instant;

use chess::SgdConfig;
use chess::model::{Moco, MocoConfig, MocoTrainer, StepOptions};
use common::{StepBench, StepSetup, env_or};
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step") {
        return Ok(());
    }
    let setup = StepSetup::from_env()?;
    let (batch, size) = (env_or("BENCH_BATCH", 16i64), env_or("BENCH_SIZE", 224i64));
    let moco = Moco::new(MocoConfig::default(), setup.device)?;
    let options = StepOptions { precision: setup.precision()?, channels_last: setup.channels_last };
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), options)?;
    let q = Tensor::randn([batch, 1, size, size], (Kind::Float, setup.device));
    let k = Tensor::randn([batch, 1, size, size], (Kind::Float, setup.device));
    let rust_step = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let stats = trainer.step(&q, &k, 0.03)?;
        let _ = stats.values();
        Ok(t.elapsed().as_secs_f64())
    };
    let python = || {
        let mut cmd = setup.python("train_moco.py", batch, size);
        cmd.args(["--synthetic", "--arch", "resnet50"]);
        cmd
    };
    let extra = setup.describe(serde_json::json!({ "arch": "resnet50", "image_size": size }));
    StepBench::from_env("train_step", batch).run(rust_step, python, extra)
}
