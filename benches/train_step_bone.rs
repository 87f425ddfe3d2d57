//! `train_step_bone`: one step of `bone_suppression train` with a perceptual loss (the U-Net on
//! a ResNet-50 encoder, named as smp's; L1 plus the perceptual term on a frozen 1-channel
//! ResNet-50 at [stem, layer1..4] with weights [1/32 .. 1]; Adam lr 1e-3), ours
//! (`BoneSuppression`, the task `bone_suppression train` runs, fed a ready batch) against the
//! same step in PyTorch with segmentation_models_pytorch (`benches/python/train_bone.py`), the
//! same thread count. Batch 4 at 256 px (`BENCH_BATCH`, `BENCH_SIZE`); `BENCH_AMP` off | bf16.
//! Rounds as `train_step_classify`.
mod common;

use chess::data::Dataset;
use chess::losses::PerceptualLoss;
use chess::metrics::image_quality::SsimWindow;
use chess::model::Arch;
use chess::optim::AdamConfig;
use chess::tasks::bone_suppression::{
    BoneArch, BoneCard, BoneNet, BoneSuppression, BoneTaskConfig, PairEval,
};
use common::{StepBench, StepSetup, env_or};
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step_bone") {
        return Ok(());
    }
    let setup = StepSetup::from_env()?;
    let (batch, size) = (env_or("BENCH_BATCH", 4i64), env_or("BENCH_SIZE", 256i64));
    let (device, precision) = (setup.device, setup.precision()?);
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
        channels_last: setup.channels_last,
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
    let rust_step = common::task_step(&mut task, &images, Some(&targets));
    let python = || setup.python("train_bone.py", batch, size);
    let extra = setup.describe(serde_json::json!({ "image_size": size, "arch": "unet-resnet50",
        "loss": "l1=1,perceptual=1 (resnet50, random, frozen)" }));
    StepBench::from_env("train_step_bone", batch).run(rust_step, python, extra)
}
