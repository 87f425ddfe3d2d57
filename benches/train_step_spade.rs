//! `train_step_spade`: one iteration of `nodule_gan train` (a SPADE generator step with hinge,
//! KLD and a perceptual loss on a frozen 1-channel ResNet-50, then a discriminator step; Adam
//! with TTUR), ours (`SpadeGan`, the networks and steps the task runs) against the same
//! iteration in PyTorch (`benches/python/train_spade.py`, on the networks of
//! `tests/python/spade_reference.py`), the same thread count. A reduced CheSS configuration for
//! a CPU: 128 px, ngf 32, ndf 64, z 256, batch 2 (`BENCH_SIZE`, `BENCH_BATCH`, `BENCH_NGF`);
//! `BENCH_AMP` off | bf16. Rounds as `train_step_classify`.
mod common;

use std::time::Instant;

use chess::losses::PerceptualLoss;
use chess::model::{Arch, SpadeConfig};
use chess::tasks::nodule_gan::{LossWeights, SpadeGan, adam_configs};
use common::{StepBench, StepSetup, env_or};
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("train_step_spade") {
        return Ok(());
    }
    let setup = StepSetup::from_env()?;
    let (batch, size, ngf) =
        (env_or("BENCH_BATCH", 2i64), env_or("BENCH_SIZE", 128i64), env_or("BENCH_NGF", 32i64));
    let device = setup.device;
    let config = SpadeConfig {
        ngf,
        ndf: 64,
        z_dim: 256,
        crop_size: size,
        encoder_size: 128,
        ..SpadeConfig::default()
    };
    let perceptual = PerceptualLoss::random(Arch::ResNet50, 0, device);
    let mut gan =
        SpadeGan::new(config, device, adam_configs(1e-4, 4e-4), LossWeights::default(), Some(perceptual))?;
    gan.precision = setup.precision()?;
    if setup.channels_last {
        gan.use_channels_last()?;
    }
    let labels = Tensor::rand([batch, 1, size, size], (Kind::Float, device)).gt(0.9).to_kind(Kind::Int64);
    let seg = chess::model::spade::one_hot(&labels, 2);
    let real = Tensor::rand([batch, 1, size, size], (Kind::Float, device)) * 2.0 - 1.0;
    let rust_step = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let (_, g) = gan.generator_step(&seg, &real, None)?;
        let d = gan.discriminator_step(&seg, &real, None)?;
        // Waits for the device, as a logging step would.
        let _ = (&g[0].1 + &d[0].1).double_value(&[]);
        Ok(t.elapsed().as_secs_f64())
    };
    let python = || {
        let mut cmd = setup.python("train_spade.py", batch, size);
        cmd.args(["--ngf", &ngf.to_string(), "--ndf", "64", "--z-dim", "256", "--encoder-size", "128"]);
        cmd
    };
    let extra = setup.describe(serde_json::json!({ "image_size": size, "ngf": ngf, "ndf": 64,
        "perceptual": "resnet50 (random, frozen)" }));
    StepBench::from_env("train_step_spade", batch).run(rust_step, python, extra)
}
