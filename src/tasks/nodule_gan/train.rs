//! `nodule_gan train` from its flags: images with masks, the perceptual loss's encoder, the GAN,
//! the task, the run.
use std::sync::Arc;

use serde_json::json;
use tch::Device;

use super::args::TrainArgs;
use super::{GanCard, GanTaskConfig, LossWeights, NoduleGan, SpadeGan, adam_configs};
use crate::Precision;
use crate::data::{Dataset, Loader, LoaderConfig, TargetKind};
use crate::losses::{Normalisation, PerceptualLoss};
use crate::model::{Arch, SpadeConfig};
use crate::tasks::{rank_and_world, refuse};
use crate::training::{Outcome, Run, TaskError, step_seed};

/// How a training run ended.
#[derive(Debug)]
pub struct Trained {
    /// Every epoch ran (false: stopped by a signal or `--max-steps`, resumable).
    pub finished: bool,
    pub is_main: bool,
    /// Under torchrun: `rank R/W: checksum G .. E .. D ..` of the networks at the end (equal
    /// lines: the ranks hold the same model).
    pub checksum: Option<String>,
}

fn perceptual(args: &TrainArgs, device: Device) -> Result<Option<PerceptualLoss>, TaskError> {
    let Some(source) = &args.perceptual_weights else { return Ok(None) };
    let norm: Normalisation = args.perceptual_norm.parse()?;
    Ok(Some(if source == "random" {
        if norm != Normalisation::Chess {
            refuse!("--perceptual-weights random is a 1-channel encoder: use --perceptual-norm chess");
        }
        PerceptualLoss::random(Arch::ResNet18, args.run.seed, device)
    } else {
        PerceptualLoss::from_file(source, norm, device)?
    }))
}

/// The images with their masks, from whichever of the three forms the flags give.
pub fn dataset(args: &TrainArgs) -> Result<Dataset, TaskError> {
    Ok(match (&args.images, &args.masks, &args.pairs, &args.nodules) {
        (Some(i), Some(m), _, _) => Dataset::from_paired_folders(i, m, TargetKind::Mask)?,
        (_, _, Some(csv), _) => Dataset::from_pair_csv(csv, TargetKind::Mask)?,
        (_, _, _, Some(csv)) => Dataset::from_circle_csv(csv)?,
        _ => refuse!("give --images and --masks folders, --pairs CSV (image,mask) or --nodules CSV"),
    })
}

pub fn train(args: &TrainArgs) -> Result<Trained, TaskError> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = rank_and_world(&group);
    let config = SpadeConfig {
        ngf: args.ngf,
        ndf: args.ndf,
        z_dim: args.z_dim,
        crop_size: args.image_size,
        encoder_size: args.encoder_size,
        norm: args.norm.parse()?,
        d_layers: args.d_layers,
        d_scales: args.d_scales,
        ..SpadeConfig::default()
    };
    config.check()?;
    if args.decay_epochs > args.epochs {
        refuse!("--decay-epochs {} exceeds --epochs {}", args.decay_epochs, args.epochs);
    }
    let data = dataset(args)?;
    // --batch-size is the global batch: each of the `world` ranks takes its share.
    if !args.batch_size.is_multiple_of(world) {
        refuse!("--batch-size {} (the global batch) is not a multiple of the {world} ranks", args.batch_size);
    }
    let batch_size = args.batch_size.min(data.len() / world * world).max(world);
    let batches = (data.len() / batch_size) as u64;
    if batches == 0 {
        refuse!("{} images: fewer than one batch of {batch_size}", data.len());
    }
    let mut run =
        Run::new(args.run.out.clone(), args.run.run_config(args.epochs, batch_size), group.clone(), device)?;
    let speed = args.run.speed(device)?;
    let precision = speed.precision.value;
    if precision == Precision::Fp16 {
        refuse!("--amp fp16 needs loss scaling, which nodule_gan does not do: use --amp bf16");
    }
    let loader_cfg =
        LoaderConfig::training(args.image_size, batch_size / world, args.run.workers(), args.run.seed);
    let loader = Loader::new(Arc::new(data.clone()), loader_cfg).with_shard(rank, world);
    // The sample grid: the first (up to) 8 images, in order.
    let k = data.len().min(8);
    let sample_cfg = LoaderConfig { batch_size: k, shuffle: false, drop_last: false, ..loader_cfg };
    let first = Dataset { samples: data.samples[..k].to_vec() };
    let sample_batch = Loader::new(Arc::new(first), sample_cfg)
        .epoch(0, 0)
        .next()
        .and_then(|b| Some((b.targets?, b.images)));
    let perceptual = perceptual(args, device)?;
    let perceptual_source = perceptual.as_ref().map(|p| p.source().to_string());
    let weights =
        LossWeights { kld: args.kld_weight, feat: args.feat_weight, perceptual: args.perceptual_weight };
    tch::manual_seed(step_seed(args.run.seed, u64::MAX));
    let mut gan = SpadeGan::new(config, device, adam_configs(args.lr_g, args.lr_d), weights, perceptual)?;
    gan.precision = precision;
    if speed.channels_last.value {
        gan.use_channels_last()?;
    }
    let card = GanCard { config, weights, perceptual: perceptual_source.clone(), epoch: 0 };
    let task_config = GanTaskConfig {
        out: args.run.out.clone(),
        is_main: run.is_main(),
        rank,
        seed: args.run.seed,
        epochs: args.epochs,
        decay_epochs: args.decay_epochs,
        flip: args.flip,
        sample_every: args.sample_every,
        sample_batch,
        card,
    };
    let mut task = NoduleGan::new(gan, task_config)?;
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task.gan.with_data_parallel(g.clone())?;
    }
    let extra = json!({
        "images": data.len(), "perceptual": perceptual_source, "spade": config,
        "loss_weights": weights, "speed": speed.to_json(),
    });
    run.write_config(serde_json::to_value(args)?, extra)?;
    if run.is_main() {
        eprintln!(
            "nodule GAN (SPADE, ngf {}, ndf {}, {} px) on {} images, {batches} batches of {batch_size}, perceptual: {}, device {device:?}, {}",
            args.ngf,
            args.ndf,
            args.image_size,
            data.len(),
            perceptual_source.as_deref().unwrap_or("none"),
            speed.describe()
        );
    }
    let outcome = run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    let checksum = group.as_ref().map(|g| {
        use crate::distributed::checksum;
        let sum =
            |net: &dyn crate::model::StateDict| checksum(net.named_tensors("").iter().map(|t| &t.tensor));
        let gan = &task.gan;
        format!(
            "rank {}/{}: checksum G {:016x} E {:016x} D {:016x}",
            g.rank(),
            g.world_size(),
            sum(&gan.g),
            sum(&gan.e),
            sum(&gan.d)
        )
    });
    Ok(Trained {
        finished: matches!(outcome, Outcome::Finished | Outcome::NothingToDo),
        is_main: run.is_main(),
        checksum,
    })
}
