//! `train_step`: one MoCo v2 step (ResNet-50, batch 16, 224 px, K = 65,536, fp32, plain BN) on
//! the CPU with the same thread count on both sides, ours (`MocoTrainer::step`) against the
//! original loop in PyTorch (`benches/python/train_moco.py --synthetic`). The two sides
//! alternate in rounds (`BENCH_ROUNDS`, 3) of 5 timed steps each (`BENCH_STEPS`), after 3
//! warm-up steps (`BENCH_WARMUP`), so that a slow minute on a shared machine hits both; the
//! ratio is of the medians over all rounds. The same random views every step.
//!
//! benches/gpu.sh runs it on CUDA: `BENCH_DEVICE=cuda BENCH_BATCH=64 BENCH_SIZE=512
//! BENCH_AMP=bf16 BENCH_CHANNELS_LAST=1`, the same settings on both sides.
mod common;

use std::time::Instant;

use chess::model::{Moco, MocoConfig, MocoTrainer, StepOptions};
use chess::{Precision, SgdConfig};
use common::env_or;
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step") {
        return Ok(());
    }
    // As `pretrain` does (see chess::device::keep_freed_host_memory); the Python side runs
    // with glibc's defaults, as the original does.
    chess::device::keep_freed_host_memory();
    let threads: i32 = env_or("BENCH_THREADS", common::num_cpus() as i32);
    let (batch, size, warmup) =
        (env_or("BENCH_BATCH", 16i64), env_or("BENCH_SIZE", 224i64), env_or("BENCH_WARMUP", 3usize));
    let (steps, rounds) = (env_or("BENCH_STEPS", 5usize), env_or("BENCH_ROUNDS", 3usize));
    let device = common::device()?;
    let amp: String = env_or("BENCH_AMP", "off".to_string());
    let channels_last = env_or("BENCH_CHANNELS_LAST", 0u8) == 1;
    tch::set_num_threads(threads);
    chess::device::prepare(device);
    tch::manual_seed(0);
    let moco = Moco::new(MocoConfig::default(), device)?;
    let options = StepOptions { precision: amp.parse::<Precision>()?, channels_last };
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), options)?;
    let q = Tensor::randn([batch, 1, size, size], (Kind::Float, device));
    let k = Tensor::randn([batch, 1, size, size], (Kind::Float, device));
    let mut rust_step = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let stats = trainer.step(&q, &k, 0.03)?;
        let _ = stats.values();
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        rust_step()?;
    }
    if std::env::var_os("BENCH_RUST_ONLY").is_some() {
        // Diagnosis: every step's time and the process's resident memory, ours only.
        for i in 0..steps {
            let t = rust_step()?;
            println!("train_step rust step {i}: {t:.3} s, rss {} MB", common::rss_mb());
        }
        return Ok(());
    }
    let (mut rust_times, mut python_times, mut per_round) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let times: Vec<f64> = (0..steps).map(|_| rust_step()).collect::<anyhow::Result<_>>()?;
        let mut cmd = common::python();
        cmd.arg(common::root().join("benches/python/train_moco.py"))
            .args([
                "--synthetic",
                "--arch",
                "resnet50",
                "--device",
                if device.is_cuda() { "cuda" } else { "cpu" },
            ])
            .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string(), "--amp", &amp])
            .args(if channels_last { &["--channels-last"][..] } else { &[] })
            .args(["--threads", &threads.to_string(), "--warmup", &warmup.to_string()])
            .args(["--steps", &(warmup + steps).to_string()]);
        let out = common::last_json(&common::run(cmd)?)?;
        let py: Vec<f64> = out["step_times_s"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        let (r, p) = (common::median(times.clone()), common::median(py.clone()));
        println!("train_step round {round}: median step {r:.3} s (rust) vs {p:.3} s (python)");
        per_round.push(serde_json::json!({"rust_s": r, "python_s": p}));
        rust_times.extend(times);
        python_times.extend(py);
    }
    let (rust, python) = (common::median(rust_times), common::median(python_times));
    println!(
        "train_step: median step {rust:.3} s (rust) vs {python:.3} s (python), {threads} threads, {device:?}, batch {batch}, {size} px, amp {amp}, channels_last {channels_last}"
    );
    let (rust_ips, python_ips) = (batch as f64 / rust, batch as f64 / python);
    common::record(
        "train_step",
        rust_ips,
        python_ips,
        rust_ips / python_ips,
        "images/s",
        serde_json::json!({ "rust_median_step_s": rust, "python_median_step_s": python, "threads": threads,
            "arch": "resnet50", "batch": batch, "image_size": size, "rounds": per_round,
            "device": format!("{device:?}"), "amp": amp, "channels_last": channels_last }),
    )
}
