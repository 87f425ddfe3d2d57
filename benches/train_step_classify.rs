//! `train_step_classify`: one step of `classify train` (the CheSS classification recipe:
//! ResNet-50 with a one-channel stem and a linear head of 14 labels, BCE with logits, SGD lr 1e-3
//! momentum 0.9; batch 16, 224 px, fp32 on the CPU), ours (`Classification`, the task `classify
//! train` runs, fed a ready batch) against the same step in PyTorch
//! (`benches/python/train_classify.py`), the same thread count. The sides alternate in rounds
//! (`BENCH_ROUNDS`, 3) of `BENCH_STEPS` (5) timed steps after `BENCH_WARMUP` (3); medians over
//! all rounds. `BENCH_AMP`, `BENCH_CHANNELS_LAST`, `BENCH_DEVICE`, `BENCH_BATCH`, `BENCH_SIZE`
//! as in `train_step`.
mod common;

use std::time::Instant;

use chess::data::{Batch, Dataset};
use chess::model::Arch;
use chess::tasks::classify::{
    Classification, Classifier, ClassifyConfig, EvalConfig, Labelled, Layout, Mode, ModelCard, ReportOptions,
};
use chess::training::{StepAt, Task};
use chess::{Precision, SgdConfig};
use common::env_or;
use tch::{Kind, Tensor};

const LABELS: i64 = 14;

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step_classify") {
        return Ok(());
    }
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

    let labels: Vec<String> = (0..LABELS).map(|i| format!("label{i}")).collect();
    let model = Classifier::new(Arch::ResNet50, LABELS, true, device);
    let val = Labelled { dataset: Dataset::default(), layout: Layout::Classes(labels.clone()) };
    let precision = amp.parse::<Precision>()?;
    let eval = EvalConfig {
        image_size: size,
        batch_size: 16,
        workers: 1,
        precision,
        channels_last,
        device,
        cache: None,
    };
    let card = ModelCard {
        arch: "resnet50".into(),
        labels,
        multi_label: true,
        image_size: size,
        thresholds: None,
        epoch: None,
        val_mean_auroc: None,
        mode: "finetune".into(),
        init: "scratch".into(),
    };
    let config = ClassifyConfig {
        mode: Mode::Finetune,
        sgd: SgdConfig { lr: 1e-3, momentum: 0.9, weight_decay: 0.0 },
        plateau_factor: 0.5,
        plateau_patience: 10,
        balance: None,
        precision,
        channels_last,
        eval,
        report: ReportOptions::default(),
        out: std::env::temp_dir(),
        is_main: false,
        card,
        val_every: 1,
        epochs: 1,
    };
    let mut task = Classification::new(model, &val, config).map_err(anyhow::Error::from_boxed)?;
    let images = (Tensor::rand([batch, 1, size, size], (Kind::Float, device)) * 255.0).round();
    let targets = Tensor::rand([batch, LABELS], (Kind::Float, device)).gt(0.5).to_kind(Kind::Float);
    let mut step = 0u64;
    let mut rust_step = || -> anyhow::Result<f64> {
        let b = Batch {
            index: 0,
            images: images.shallow_clone(),
            samples: (0..batch as usize).collect(),
            skipped: Vec::new(),
            views: None,
            targets: Some(targets.shallow_clone()),
            target_mask: None,
            joint: None,
        };
        let t = Instant::now();
        let out =
            task.step(b, StepAt { epoch: 0, step, global_step: step }).map_err(anyhow::Error::from_boxed)?;
        // Waits for the device, as a logging step would.
        let _ = out.values[0].1.double_value(&[]);
        step += 1;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        rust_step()?;
    }
    let (mut rust_times, mut python_times, mut per_round) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let times: Vec<f64> = (0..steps).map(|_| rust_step()).collect::<anyhow::Result<_>>()?;
        let mut cmd = common::python();
        cmd.arg(common::root().join("benches/python/train_classify.py"))
            .args(["--arch", "resnet50", "--device", if device.is_cuda() { "cuda" } else { "cpu" }])
            .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string(), "--amp", &amp])
            .args(["--labels", &LABELS.to_string()])
            .args(if channels_last { &["--channels-last"][..] } else { &[] })
            .args(["--threads", &threads.to_string(), "--warmup", &warmup.to_string()])
            .args(["--steps", &(warmup + steps).to_string()]);
        let out = common::last_json(&common::run(cmd)?)?;
        let py: Vec<f64> = out["step_times_s"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        let (r, p) = (common::median(times.clone()), common::median(py.clone()));
        println!("train_step_classify round {round}: median step {r:.3} s (rust) vs {p:.3} s (python)");
        per_round.push(serde_json::json!({"rust_s": r, "python_s": p}));
        rust_times.extend(times);
        python_times.extend(py);
    }
    let (rust, python) = (common::median(rust_times), common::median(python_times));
    println!(
        "train_step_classify: median step {rust:.3} s (rust) vs {python:.3} s (python), {threads} threads, {device:?}, batch {batch}, {size} px, amp {amp}, channels_last {channels_last}"
    );
    let (rust_ips, python_ips) = (batch as f64 / rust, batch as f64 / python);
    common::record(
        "train_step_classify",
        rust_ips,
        python_ips,
        rust_ips / python_ips,
        "images/s",
        serde_json::json!({ "rust_median_step_s": rust, "python_median_step_s": python, "threads": threads,
            "arch": "resnet50", "labels": LABELS, "batch": batch, "image_size": size, "rounds": per_round,
            "device": format!("{device:?}"), "amp": amp, "channels_last": channels_last }),
    )
}
