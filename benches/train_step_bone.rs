//! `train_step_bone`: one step of `bone_suppression train` with a perceptual loss (the U-Net on
//! a ResNet-50 encoder, named as smp's; L1 plus the perceptual term on a frozen 1-channel
//! ResNet-50 at [stem, layer1..4] with weights [1/32 .. 1]; Adam lr 1e-3), ours
//! (`BoneSuppression`, the task `bone_suppression train` runs, fed a ready batch) against the
//! same step in PyTorch with segmentation_models_pytorch (`benches/python/train_bone.py`), the
//! same thread count. Batch 4 at 256 px (`BENCH_BATCH`, `BENCH_SIZE`); `BENCH_AMP` off | bf16.
//! Rounds as `train_step_classify`.
mod common;

use std::time::Instant;

use chess::data::{Batch, Dataset};
use chess::losses::PerceptualLoss;
use chess::metrics::image_quality::SsimWindow;
use chess::model::Arch;
use chess::optim::AdamConfig;
use chess::tasks::bone_suppression::{
    BoneArch, BoneCard, BoneNet, BoneSuppression, BoneTaskConfig, PairEval,
};
use chess::training::{StepAt, Task};
use common::{StepBench, env_or};
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step_bone") {
        return Ok(());
    }
    chess::device::keep_freed_host_memory();
    let threads: i32 = env_or("BENCH_THREADS", common::num_cpus() as i32);
    let (batch, size) = (env_or("BENCH_BATCH", 4i64), env_or("BENCH_SIZE", 256i64));
    let device = common::device()?;
    let amp: String = env_or("BENCH_AMP", "off".to_string());
    tch::set_num_threads(threads);
    chess::device::prepare(device);
    tch::manual_seed(0);
    let precision = amp.parse()?;
    let arch = BoneArch::Unet(Arch::ResNet50);
    let net = BoneNet::new(arch, device).map_err(anyhow::Error::from_boxed)?;
    let val = Dataset::default();
    let loss = "l1=1,perceptual=1".parse()?;
    let config = BoneTaskConfig {
        adam: AdamConfig { lr: 1e-3, ..AdamConfig::adam() },
        plateau_factor: 0.5,
        plateau_patience: 5,
        loss,
        perceptual: Some(PerceptualLoss::random(Arch::ResNet50, 0, device)),
        precision,
        channels_last: false,
        eval: PairEval {
            image_size: size,
            batch_size: 4,
            workers: 1,
            precision,
            device,
            window: SsimWindow::Uniform7,
        },
        out: std::env::temp_dir(),
        is_main: false,
        card: BoneCard {
            arch,
            image_size: size,
            epoch: None,
            val_psnr: None,
            val_ssim: None,
            loss: "l1=1,perceptual=1".into(),
            init: "scratch".into(),
            perceptual: None,
        },
        val_every: 1,
        epochs: 1,
    };
    let mut task = BoneSuppression::new(net, &val, config).map_err(anyhow::Error::from_boxed)?;
    let images = (Tensor::rand([batch, 1, size, size], (Kind::Float, device)) * 255.0).round();
    let targets = Tensor::rand([batch, 1, size, size], (Kind::Float, device)) * 255.0;
    let mut step = 0u64;
    let rust_step = || -> anyhow::Result<f64> {
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
    let python = || {
        let mut cmd = common::python();
        cmd.arg(common::root().join("benches/python/train_bone.py"))
            .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
            .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string(), "--amp", &amp])
            .args(["--threads", &threads.to_string()]);
        cmd
    };
    let extra = serde_json::json!({ "threads": threads, "image_size": size, "arch": "unet-resnet50",
        "device": format!("{device:?}"), "amp": amp, "loss": "l1=1,perceptual=1 (resnet50, random, frozen)" });
    StepBench::from_env("train_step_bone", batch).run(rust_step, python, extra)
}
