//! `bone_suppression train` from its flags: the pairs and their validation split, the loss
//! (with the perceptual term's encoder), the network and its initial encoder, the task, the run.
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tch::Device;

use super::args::TrainArgs;
use super::{BoneArch, BoneCard, BoneNet, BoneSuppression, BoneTaskConfig, PairEval};
use crate::Precision;
use crate::data::{Dataset, Loader, LoaderConfig, TargetKind};
use crate::losses::{Distance, Normalisation, PerceptualLoss, Stage, WeightedLoss};
use crate::model::Arch;
use crate::optim::AdamConfig;
use crate::tasks::{rank_and_world, refuse};
use crate::training::{Outcome, Run, TaskError, step_seed};

/// How a training run ended.
#[derive(Debug)]
pub struct Trained {
    /// Every epoch ran (false: stopped by a signal or `--max-steps`, resumable).
    pub finished: bool,
    /// This process is rank 0 (or the only one): the one that reports.
    pub is_main: bool,
    /// (epoch, validation PSNR) of `best.pth`.
    pub best: Option<(u64, f64)>,
}

/// The perceptual loss the flags ask for.
fn perceptual(args: &TrainArgs, device: Device) -> Result<Option<PerceptualLoss>, TaskError> {
    let Some(source) = &args.perceptual_weights else { return Ok(None) };
    let norm: Normalisation = args.perceptual_norm.parse()?;
    let mut loss = if source == "random" {
        if norm != Normalisation::Chess {
            refuse!("--perceptual-weights random is a 1-channel encoder: use --perceptual-norm chess");
        }
        PerceptualLoss::random(Arch::ResNet18, args.run.seed, device)
    } else {
        PerceptualLoss::from_file(source, norm, device)?
    };
    loss.distance = args.perceptual_distance.parse::<Distance>()?;
    if let Some(spec) = &args.perceptual_stages {
        let mut stages = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, w) = item
                .split_once('=')
                .ok_or_else(|| format!("--perceptual-stages: `{item}` is not stage=weight"))?;
            let stage = Stage::ALL
                .into_iter()
                .find(|s| s.name() == name.trim())
                .ok_or_else(|| format!("--perceptual-stages: no stage `{name}` (stem, layer1..layer4)"))?;
            stages.push((
                stage,
                w.trim().parse::<f64>().map_err(|e| format!("--perceptual-stages: `{w}`: {e}"))?,
            ));
        }
        loss.stages = stages;
    }
    Ok(Some(loss))
}

/// Seeded (train, validation) split of pairs by index.
fn split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = crate::data::Rng::new(seed ^ 0xB0E5);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let (mut val, mut train) = (order[..n_val].to_vec(), order[n_val..].to_vec());
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

fn subset(d: &Dataset, idx: &[usize]) -> Dataset {
    Dataset { samples: idx.iter().map(|&i| d.samples[i].clone()).collect() }
}

pub fn train(args: &TrainArgs) -> Result<Trained, TaskError> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = rank_and_world(&group);
    let arch = BoneArch::parse(&args.arch, args.bs_blocks, args.bs_channels)?;
    let all = match (&args.input, &args.target, &args.pairs) {
        (Some(i), Some(t), _) => Dataset::from_paired_folders(i, t, TargetKind::Image)?,
        (_, _, Some(csv)) => Dataset::from_pair_csv(csv, TargetKind::Image)?,
        _ => refuse!("give --input and --target folders, or --pairs CSV"),
    };
    let (train_set, val_set) = match (&args.val_input, &args.val_target) {
        (Some(i), Some(t)) => (all, Dataset::from_paired_folders(i, t, TargetKind::Image)?),
        _ => {
            if all.len() < 2 {
                refuse!(
                    "{} pair(s): too few to hold out a validation split (give --val-input/--val-target)",
                    all.len()
                );
            }
            let (t, v) = split(all.len(), args.val_split, args.split_seed);
            (subset(&all, &t), subset(&all, &v))
        }
    };
    if args.image_size % 32 != 0 && matches!(arch, BoneArch::Unet(_)) {
        refuse!("--image-size {}: the U-Net needs a multiple of 32", args.image_size);
    }
    if !args.batch_size.is_multiple_of(world) {
        refuse!("--batch-size {} (the global batch) is not a multiple of the {world} ranks", args.batch_size);
    }
    let batch_size = args.batch_size.min(train_set.len() / world * world).max(world);
    let batches = (train_set.len() / batch_size) as u64;
    if batches == 0 {
        refuse!("{} training pairs: fewer than one batch of {batch_size}", train_set.len());
    }
    let mut run =
        Run::new(args.run.out.clone(), args.run.run_config(args.epochs, batch_size), group.clone(), device)?;
    let speed = args.run.speed(device)?;
    let precision = speed.precision.value;
    if precision == Precision::Fp16 {
        refuse!(
            "--amp fp16 needs loss scaling, which bone_suppression does not do: use --amp bf16 (same range as fp32)"
        );
    }
    let mut loss: WeightedLoss = args.loss.parse()?;
    let perceptual = perceptual(args, device)?;
    if perceptual.is_some() && !loss.needs_perceptual() {
        loss = format!("{},perceptual={}", args.loss, args.perceptual_weight).parse()?;
    }
    if loss.needs_perceptual() && perceptual.is_none() {
        refuse!("--loss has a perceptual term: give --perceptual-weights PATH (or `random`)");
    }
    let loader_cfg =
        LoaderConfig::training(args.image_size, batch_size / world, args.run.workers(), args.run.seed);
    let mut loader = Loader::new(Arc::new(train_set.clone()), loader_cfg).with_shard(rank, world);
    if args.augment {
        loader = loader.with_joint_augment(crate::data::augment::light_augment());
    }
    tch::manual_seed(step_seed(args.run.seed, u64::MAX));
    let net = BoneNet::new(arch, device)?;
    if args.init != "scratch" {
        let report = net.init_encoder(Path::new(&args.init))?;
        if run.is_main() {
            eprintln!("init {}: {report}", args.init);
        }
    }
    if args.freeze_encoder {
        net.freeze_encoder()?;
    }
    let perceptual_source = perceptual.as_ref().map(|p| p.source().to_string());
    if let (Some(s), true) = (&perceptual_source, run.is_main()) {
        eprintln!("perceptual loss: {s}");
    }
    let card = BoneCard {
        arch,
        image_size: args.image_size,
        epoch: None,
        val_psnr: None,
        val_ssim: None,
        loss: loss.to_string(),
        init: args.init.clone(),
        perceptual: perceptual_source.clone(),
    };
    let config = BoneTaskConfig {
        adam: AdamConfig { lr: args.lr, ..AdamConfig::adam() },
        plateau_factor: args.plateau_factor,
        plateau_patience: args.plateau_patience,
        loss: loss.clone(),
        perceptual,
        precision,
        channels_last: speed.channels_last.value,
        eval: PairEval {
            image_size: args.image_size,
            batch_size: (batch_size / world).max(4),
            workers: args.run.workers(),
            precision,
            device,
            window: args.ssim.window(),
        },
        out: args.run.out.clone(),
        is_main: run.is_main(),
        card,
        val_every: args.val_every,
        epochs: args.epochs,
    };
    let mut task = BoneSuppression::new(net, &val_set, config)?;
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task = task.with_data_parallel(g.clone())?;
    }
    let extra = json!({
        "train_pairs": train_set.len(), "val_pairs": val_set.len(), "loss": loss.to_string(),
        "perceptual": perceptual_source, "arch": arch.name(), "speed": speed.to_json(),
    });
    run.write_config(serde_json::to_value(args)?, extra)?;
    if run.is_main() {
        eprintln!(
            "bone suppression {} on {} pairs ({} validation), loss {loss}, {batches} batches of {batch_size}, {} px, device {device:?}, {}",
            arch.name(),
            train_set.len(),
            val_set.len(),
            args.image_size,
            speed.describe()
        );
    }
    let outcome = run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    let finished = matches!(outcome, Outcome::Finished | Outcome::NothingToDo);
    Ok(Trained { finished, is_main: run.is_main(), best: task.best() })
}
