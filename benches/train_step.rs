//! `train_step`: one MoCo v2 step (ResNet-50, batch 16, 224 px, K = 65,536, fp32, plain BN) on
//! the CPU with the same thread count on both sides, ours (`MocoTrainer::step`) against the
//! original loop in PyTorch (`benches/python/train_moco.py --synthetic`). Median of 10 steps
//! after 3 warm-up steps; the same random views every step.
mod common;

use std::time::Instant;

use chess::SgdConfig;
use chess::model::{Moco, MocoConfig, MocoTrainer, StepOptions};
use common::env_or;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step") {
        return Ok(());
    }
    let threads: i32 = env_or("BENCH_THREADS", common::num_cpus() as i32);
    let (batch, size, warmup, steps) = (16i64, 224i64, 3usize, env_or("BENCH_STEPS", 10usize));
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let moco = Moco::new(MocoConfig::default(), Device::Cpu)?;
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), StepOptions::default())?;
    let q = Tensor::randn([batch, 1, size, size], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([batch, 1, size, size], (Kind::Float, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let stats = trainer.step(&q, &k, 0.03)?;
        let _ = stats.values();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let rust = common::median(times);

    let mut cmd = common::python();
    cmd.arg(common::root().join("benches/python/train_moco.py"))
        .args(["--synthetic", "--arch", "resnet50", "--device", "cpu"])
        .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string()])
        .args(["--threads", &threads.to_string(), "--warmup", &warmup.to_string()])
        .args(["--steps", &(warmup + steps).to_string()]);
    let python = common::last_json(&common::run(cmd)?)?["median_step_s"].as_f64().unwrap_or(f64::NAN);
    println!("train_step: median step {rust:.3} s (rust) vs {python:.3} s (python), {threads} threads");
    let (rust_ips, python_ips) = (batch as f64 / rust, batch as f64 / python);
    common::record(
        "train_step",
        rust_ips,
        python_ips,
        rust_ips / python_ips,
        "images/s",
        serde_json::json!({ "rust_median_step_s": rust, "python_median_step_s": python, "threads": threads,
            "arch": "resnet50", "batch": batch, "image_size": size }),
    )
}
