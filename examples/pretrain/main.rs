//! MoCo v2 pretraining of a CheSS encoder on radiographs (DICOM, PNG, JPEG, TIFF), end to end:
//! loader, augmentations, the MoCo step, progress, metrics, checkpoints, resume, kNN monitor.
//!
//!     pretrain --data /archive/export --out runs/chess --arch resnet50 --batch-size 256
//!
//! Writes `OUT/config.json`, `OUT/metrics.jsonl` and `OUT/checkpoint_{epoch:04d}.pth.tar`
//! (the original layout; `checkpoint_{epoch:04d}_{step:06d}.pth.tar` inside an epoch).
//! SIGINT or SIGTERM: the step in flight finishes, a checkpoint is written, exit status 0;
//! `--resume auto` continues exactly where the run stopped.
//!
//! Several processes (GPUs, nodes): `torchrun --no-python --nproc-per-node N pretrain ...`;
//! `--batch-size` is then the global batch, split over the ranks.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use chess::SgdConfig;
use chess::data::{AugmentConfig, Dataset, LoaderConfig};
use chess::metrics::{KnnConfig, LabelledSet};
use chess::model::{Arch, MocoConfig, StepOptions};
use chess::tasks::pretrain::{KnnMonitor, PretrainModel, Pretraining, Views, checksum_line, rank_loader};
use chess::training::{LrSchedule, Run, RunArgs};
use clap::{ArgAction, Parser};
use serde::Serialize;
use serde_json::json;

/// Every default is the CheSS recipe's, except `--bn-splits` (see its help).
#[derive(Parser, Debug, Serialize)]
#[command(about = "MoCo v2 pretraining of a CheSS chest X-ray encoder")]
struct Args {
    /// Image folders (searched recursively), CSV files (a `Path` column) or list files. Repeatable.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// resnet18 | resnet34 | resnet50.
    #[arg(long, default_value = "resnet50")]
    arch: String,
    /// Images are resized to N x N (bilinear) before augmentation.
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 200)]
    epochs: u64,
    /// Base learning rate of SGD.
    #[arg(long, default_value_t = 0.03)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Weight decay (all parameters).
    #[arg(long, default_value_t = 1e-4)]
    wd: f64,
    /// Feature dimension of the projection head.
    #[arg(long, default_value_t = 128)]
    moco_dim: i64,
    /// Queue length K (negatives).
    #[arg(long, default_value_t = 65_536)]
    moco_k: i64,
    /// Key encoder momentum m.
    #[arg(long, default_value_t = 0.999)]
    moco_m: f64,
    /// Softmax temperature T.
    #[arg(long, default_value_t = 0.2)]
    moco_t: f64,
    /// MLP projection head (MoCo v2); false for MoCo v1's linear head. `--mlp` alone, as in
    /// the original's command lines, means true.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    mlp: bool,
    /// Cosine learning-rate decay per epoch; false uses `--schedule`. `--cos` alone means true.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    cos: bool,
    /// Accepted for the original's command lines (`--aug-plus`): the CheSS recipe's
    /// augmentation is always used; MoCo v1's (`--aug-plus false`) is not available.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    aug_plus: bool,
    /// Accepted for the original's command lines: several processes are started by torchrun
    /// here (`torchrun --no-python --nproc-per-node N pretrain ...`), not by the program.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    multiprocessing_distributed: Option<bool>,
    /// Epochs at which the learning rate drops 10x when `--cos false`.
    #[arg(long, value_delimiter = ',', default_value = "120,160")]
    schedule: Vec<u64>,
    /// Split-batch BN sub-batches per process, with keys computed on a shuffled batch: the
    /// one-process stand-in for the original's shuffle-BN across 8 GPUs, without which MoCo
    /// learns a BN shortcut. Default: 8 in one process; 1 per rank under torchrun, where
    /// shuffle-BN runs across the ranks as in the original (and across `--micro-batches`). A
    /// rank's batch must be a multiple with at least 2 images per split.
    #[arg(long)]
    bn_splits: Option<i64>,
    /// Train each batch as N micro-batches one after another, exactly as N ranks would
    /// (shuffle-BN across them, BN statistics per micro-batch, gradients averaged): the
    /// arithmetic of N GPUs in one process, in about 1/N of the activation memory.
    #[arg(long, default_value_t = 1)]
    micro_batches: i64,
    /// Augment the two views (the recipe); false trains on the resized images as they are.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    augment: bool,
    /// Where the views are drawn: `device` (batched tensor ops on the training device, the CPU
    /// only decodes), `loader` (native loops in the decode threads), or `auto`: `device` on a
    /// GPU, `loader` on a CPU.
    #[arg(long, default_value = "auto", value_parser = ["auto", "loader", "device"])]
    augment_on: String,
    /// Probability of the recipe's affine warp (shift, scale, rotation) per view; 0 turns it off.
    #[arg(long, default_value_t = AugmentConfig::default().p_affine, value_parser = probability)]
    p_affine: f64,
    /// Probability of the recipe's optical distortion per view; 0 turns it off.
    #[arg(long, default_value_t = AugmentConfig::default().p_optical, value_parser = probability)]
    p_optical: f64,
    /// Start the query (and key) encoder from this checkpoint (CheSS, MoCo, torchvision, extracted).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Memory-mapped cache of decoded, resized images: a dataset is decoded once, not per epoch.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// kNN monitor: training images in class folders (the memory bank).
    #[arg(long, requires = "knn_val")]
    knn_train: Option<PathBuf>,
    /// kNN monitor: validation images in class folders.
    #[arg(long, requires = "knn_train")]
    knn_val: Option<PathBuf>,
    /// Run the kNN monitor every E epochs (and before the first and after the last).
    #[arg(long, default_value_t = 1)]
    knn_every: u64,
    /// Neighbours of the kNN monitor.
    #[arg(long, default_value_t = 20)]
    knn_k: i64,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

fn main() -> std::process::ExitCode {
    // Before libtorch allocates anything: activations stay mapped from step to step.
    chess::device::keep_freed_host_memory();
    chess::exit_code(run(Args::parse()))
}

/// A probability flag's value.
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not a probability")) }
}

fn run(args: Args) -> Result<()> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    if !args.aug_plus {
        bail!(
            "--aug-plus false (MoCo v1's augmentation) is not available: the CheSS recipe's augmentation is used"
        );
    }
    if args.multiprocessing_distributed == Some(true) && group.is_none() {
        bail!(
            "--multiprocessing-distributed: start the processes with `torchrun --no-python --nproc-per-node N pretrain ...`"
        );
    }
    if args.micro_batches > 1 && group.is_some() {
        bail!("--micro-batches is for one process; under torchrun each rank trains its share of the batch");
    }
    if !args.batch_size.is_multiple_of(world) {
        bail!("--batch-size {} (the global batch) is not a multiple of the {world} ranks", args.batch_size);
    }
    let run_config = args.run.run_config(args.epochs, args.batch_size);
    let mut run = Run::new(args.run.out.clone(), run_config, group.clone(), device)?;
    let dataset = Arc::new(Dataset::from_sources(&args.data)?);
    if dataset.len() < args.batch_size {
        bail!("{} images found, fewer than one batch of {}", dataset.len(), args.batch_size);
    }
    // By default, on a GPU the CPU only decodes and the views are drawn on the device; on a CPU
    // the decode threads also augment, while the training thread runs the step.
    let aug = AugmentConfig { p_affine: args.p_affine, p_optical: args.p_optical, ..Default::default() };
    let views = match (args.augment, args.augment_on.as_str()) {
        (false, _) => Views::Plain,
        (true, "device") => Views::OnDevice(aug),
        (true, "auto") if device.is_cuda() => Views::OnDevice(aug),
        (true, _) => Views::FromLoader,
    };
    let loader_cfg =
        LoaderConfig::training(args.image_size, args.batch_size / world, args.run.workers(), args.run.seed);
    let loader_views = matches!(views, Views::FromLoader).then_some(aug);
    let loader =
        rank_loader(&dataset, loader_cfg, (rank, world), args.cache.as_deref(), device, loader_views)
            .map_err(anyhow::Error::from_boxed)?;
    let batches = loader.batches_per_epoch() as u64;
    // Split BN by default in one process (8 splits, the usual stand-in for shuffle-BN), plain
    // BN across ranks or micro-batches.
    let speed = args.run.speed(device)?;
    let model = PretrainModel {
        moco: MocoConfig {
            arch: args.arch.parse::<Arch>()?,
            in_channels: 1,
            dim: args.moco_dim,
            queue_size: args.moco_k,
            momentum: args.moco_m,
            temperature: args.moco_t,
            mlp: args.mlp,
            bn_splits: args.bn_splits.unwrap_or(if world > 1 || args.micro_batches > 1 { 1 } else { 8 }),
        },
        sgd: SgdConfig { lr: args.lr, momentum: args.momentum, weight_decay: args.wd },
        options: StepOptions { precision: speed.precision.value, channels_last: speed.channels_last.value },
        micro_batches: args.micro_batches,
        init: args.init.clone(),
    };
    let local_batch = (args.batch_size / world) as i64;
    let trainer =
        model.build(device, args.run.seed, local_batch, rank == 0).map_err(anyhow::Error::from_boxed)?;
    let schedule = if args.cos { LrSchedule::Cosine } else { LrSchedule::Step(args.schedule.clone()) };
    let mut task = Pretraining::new(trainer, &loader, views, schedule, args.lr, args.epochs);
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task.trainer = task.trainer.with_process_group(g.clone())?;
    }
    let extra = json!({"images": dataset.len(), "recipe": "CheSS MoCo v2 (Cho et al., 2023)", "speed": speed.to_json()});
    run.write_config(serde_json::to_value(&args)?, extra)?;
    if let (Some(train), Some(val)) = (&args.knn_train, &args.knn_val) {
        let cfg = LoaderConfig { batch_size: 64, ..loader_cfg };
        let train = LabelledSet::new(train, None, cfg)?;
        let val = LabelledSet::new(val, Some(&train.classes()), cfg)?;
        let config = KnnConfig { k: args.knn_k, ..KnnConfig::default() };
        task.knn = Some(KnnMonitor { train, val, config, every: args.knn_every });
    }
    if run.is_main() {
        let per_rank = if world > 1 { format!(", {local_batch} per rank") } else { String::new() };
        eprintln!(
            "pretraining {} on {} images ({batches} batches of {} per epoch{per_rank}), {} px, device {device:?}, {}, out {}",
            args.arch,
            dataset.len(),
            args.batch_size,
            args.image_size,
            speed.describe(),
            args.run.out.display()
        );
    }
    if let (0, Some(knn)) = (run.state().global_step, &task.knn) {
        knn.run(&task.trainer, 0, run.log()).map_err(anyhow::Error::from_boxed)?;
    }
    run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    if let Some(g) = &group {
        println!("{}", checksum_line(&task.trainer, g));
    }
    Ok(())
}
