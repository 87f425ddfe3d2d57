//! `train_step_classify`: one step of `classify train` (the CheSS classification recipe:
//! ResNet-50 with a one-channel stem and a linear head of 14 labels, BCE with logits, SGD lr 1e-3
//! momentum 0.9; batch 16, 224 px, fp32 on the CPU), ours (`Classification`, the task `classify
//! train` runs, fed a ready batch) against the same step in PyTorch
//! (`benches/python/train_classify.py`), the same thread count. The sides alternate in rounds
//! (`BENCH_ROUNDS`, 5) of `BENCH_STEPS` (5) timed steps after `BENCH_WARMUP` (3); medians over
//! all rounds. `BENCH_AMP`, `BENCH_CHANNELS_LAST`, `BENCH_DEVICE`, `BENCH_BATCH`, `BENCH_SIZE`
//! as in `train_step`.
mod common;

use chess::SgdConfig;
use chess::data::Dataset;
use chess::model::Arch;
use chess::tasks::classify::{
    Classification, Classifier, ClassifyConfig, EvalConfig, Labelled, Layout, Mode, ModelCard, ReportOptions,
};
use common::{StepBench, StepSetup, env_or};
use tch::{Kind, Tensor};

const LABELS: i64 = 14;

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step_classify") {
        return Ok(());
    }
    let setup = StepSetup::from_env()?;
    let (batch, size) = (env_or("BENCH_BATCH", 16i64), env_or("BENCH_SIZE", 224i64));
    let (device, precision, channels_last) = (setup.device, setup.precision()?, setup.channels_last);
    let labels: Vec<String> = (0..LABELS).map(|i| format!("label{i}")).collect();
    let model = Classifier::new(Arch::ResNet50, LABELS, true, device);
    let val = Labelled { dataset: Dataset::default(), layout: Layout::Classes(labels.clone()) };
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
    let rust_step = common::task_step(&mut task, &images, Some(&targets));
    let python = || {
        let mut cmd = setup.python("train_classify.py", batch, size);
        cmd.args(["--arch", "resnet50", "--labels", &LABELS.to_string()]);
        cmd
    };
    let extra =
        setup.describe(serde_json::json!({ "arch": "resnet50", "labels": LABELS, "image_size": size }));
    StepBench::from_env("train_step_classify", batch).run(rust_step, python, extra)
}
