//! MoCo v2 pretraining of a CheSS encoder on radiographs (DICOM, PNG, JPEG), end to end:
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
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chess::checkpoint::{self, EncoderWeights, LoadOptions};
use chess::data::{AugmentConfig, Batch, Dataset, DecodeCache, Loader, LoaderConfig, Skipped, augment};
use chess::distributed::{self, Backend, Launch, ProcessGroup};
use chess::metrics::{KnnConfig, LabelledSet, knn_top1};
use chess::model::{Arch, Moco, MocoConfig, MocoTrainer, StateDict, StepOptions};
use chess::training::{self, LrSchedule, RunPosition, RunState};
use chess::{DeviceSpec, Precision, SgdConfig};
use clap::{ArgAction, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use tch::{Device, Tensor};

/// Every default is the CheSS recipe's, except `--bn-splits` (see its help).
#[derive(Parser, Debug, Serialize)]
#[command(about = "MoCo v2 pretraining of a CheSS chest X-ray encoder")]
struct Args {
    /// Image folders (searched recursively), CSV files (a `Path` column) or list files. Repeatable.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Output folder: config.json, metrics.jsonl, checkpoints.
    #[arg(long)]
    out: PathBuf,
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
    /// Under torchrun: c10d backend, nccl | gloo (default: nccl on CUDA, gloo on CPU).
    #[arg(long)]
    backend: Option<String>,
    /// Under torchrun: seconds a collective may wait for the other ranks before the run stops
    /// with an error (a rank died or hangs).
    #[arg(long, default_value_t = 600)]
    dist_timeout: u64,
    /// Augment the two views (the recipe); false trains on the resized images as they are
    /// (for debugging and equivalence tests).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    augment: bool,
    /// Where the views are drawn: `device` (batched tensor ops on the training device, the
    /// CPU only decodes), `loader` (native loops in the decode threads, views uploaded
    /// ready), or `auto`: `device` on a GPU, `loader` on a CPU.
    #[arg(long, default_value = "auto", value_parser = ["auto", "loader", "device"])]
    augment_on: String,
    /// Probability of the recipe's affine warp (shift, scale, rotation) per view; 0 turns it off.
    #[arg(long, default_value_t = AugmentConfig::default().p_affine)]
    p_affine: f64,
    /// Probability of the recipe's optical distortion per view; 0 turns it off.
    #[arg(long, default_value_t = AugmentConfig::default().p_optical)]
    p_optical: f64,
    /// Decode threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Mixed precision of the forward passes: off | bf16 | fp16 (fp16 with loss scaling).
    #[arg(long, default_value = "off")]
    amp: String,
    /// channels_last memory format (faster convolutions on recent GPUs).
    #[arg(long)]
    channels_last: bool,
    /// Resume: `auto` (the newest checkpoint in --out, if any) or a checkpoint path.
    #[arg(long)]
    resume: Option<String>,
    /// Write the epoch checkpoint every N epochs (and always after the last, or on a stop).
    #[arg(long, default_value_t = 1)]
    save_every_epochs: u64,
    /// Also write a checkpoint every N steps (0: only at epoch ends).
    #[arg(long, default_value_t = 10_000)]
    save_every_iters: u64,
    /// Seed of initialisation, shuffling, augmentation and shuffle-BN.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start the query (and key) encoder from this checkpoint (CheSS, MoCo, torchvision, extracted).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Memory-mapped cache of decoded, resized images: a dataset is decoded once, not per epoch.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Write a metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Stop (with a checkpoint) after this many steps in all; for benchmarks and smoke runs.
    #[arg(long)]
    max_steps: Option<u64>,
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
}

/// Appends JSON lines, flushed each time so a killed run keeps its log. Ranks other than 0
/// hold none and write nothing.
struct MetricsLog(Option<File>);

impl MetricsLog {
    fn open(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| path.display().to_string())?;
        Ok(Self(Some(f)))
    }

    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        // One write per line: a reader (`tail -f`, a dashboard) never sees half a record.
        if let Some(f) = &mut self.0 {
            f.write_all(format!("{value}\n").as_bytes())?;
        }
        Ok(())
    }

    fn is_main(&self) -> bool {
        self.0.is_some()
    }
}

struct Knn {
    train: LabelledSet,
    val: LabelledSet,
    cfg: KnnConfig,
}

impl Knn {
    fn run(&self, trainer: &MocoTrainer, epoch: u64, log: &mut MetricsLog) -> Result<()> {
        let start = Instant::now();
        let r = knn_top1(
            trainer.model.encoder_q(),
            &self.train,
            &self.val,
            self.cfg,
            trainer.options().precision,
        );
        if log.is_main() {
            eprintln!(
                "kNN after {epoch} epochs: top-1 {:.2}% ({} train, {} val, k = {}, {:.1} s)",
                r.top1,
                r.train,
                r.val,
                self.cfg.k,
                start.elapsed().as_secs_f64()
            );
        }
        log.write(json!({"kind": "knn", "epoch": epoch, "top1": r.top1, "k": self.cfg.k,
            "temperature": self.cfg.temperature, "train": r.train, "val": r.val,
            "skipped": r.skipped.len(), "seconds": start.elapsed().as_secs_f64()}))
    }
}

fn resolve_resume(spec: &str, out: &Path) -> Result<Option<PathBuf>> {
    if spec == "auto" {
        return Ok(training::latest_checkpoint(out)?.map(|(_, p)| p));
    }
    let p = PathBuf::from(spec);
    if !p.exists() {
        bail!("{}: no such checkpoint to resume from", p.display());
    }
    Ok(Some(p))
}

fn write_config(args: &Args, device: Device, path: &Path, dataset_len: usize, world: usize) -> Result<()> {
    let config = json!({
        "args": args,
        "world_size": world,
        "command": std::env::args().collect::<Vec<_>>(),
        "images": dataset_len,
        "device": format!("{device:?}"),
        "cuda_devices": tch::Cuda::device_count(),
        "versions": {"chess-rs": env!("CARGO_PKG_VERSION"), "libtorch": chess::LIBTORCH_VERSION, "tch": "0.24.0"},
        "recipe": "CheSS MoCo v2 (Cho et al., 2023)",
    });
    let text = serde_json::to_string_pretty(&config)? + "\n";
    chess::atomic::write_atomically(path, |f| f.write_all(text.as_bytes()))
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Before libtorch allocates anything: activations stay mapped from step to step.
    chess::device::keep_freed_host_memory();
    chess::exit_code(run(Args::parse()))
}

/// Joins the torchrun group, if launched by torchrun; each rank trains on `cuda:LOCAL_RANK`.
fn join_group(args: &Args, device: Device) -> Result<(Device, Option<Arc<ProcessGroup>>)> {
    let Some(launch) = Launch::from_env()? else { return Ok((device, None)) };
    let device = if device.is_cuda() { Device::Cuda(launch.local_rank) } else { device };
    let backend = match &args.backend {
        Some(name) => name.parse::<Backend>().map_err(anyhow::Error::msg)?,
        None if device.is_cuda() => Backend::Nccl,
        None => Backend::Gloo,
    };
    let timeout = Duration::from_secs(args.dist_timeout.max(1));
    let group = ProcessGroup::join(&launch, backend, timeout, launch.local_rank)?;
    if launch.rank == 0 {
        eprintln!(
            "joined a {} group of {} ranks at {}:{} (this is rank 0, {device:?})",
            backend.name(),
            launch.world_size,
            launch.master_addr,
            launch.master_port
        );
    }
    Ok((device, Some(Arc::new(group))))
}

/// Each rank prints a digest of its parameters, BN statistics and queue: equal lines show
/// that data-parallel ranks hold bit-identical state.
fn print_checksums(trainer: &MocoTrainer, group: &ProcessGroup) {
    let named = trainer.model.named_tensors("");
    let params = distributed::checksum(trainer.model.query_parameters().iter());
    let all = distributed::checksum(named.iter().map(|t| &t.tensor));
    let queue = distributed::checksum([trainer.model.queue(), trainer.model.queue_ptr()]);
    println!(
        "rank {}/{}: checksum parameters {params:016x} state {all:016x} queue {queue:016x}",
        group.rank(),
        group.world_size()
    );
}

/// The loader of this rank's shard: decode cache, pinned batches for a GPU, and the views drawn
/// by the decode threads unless they are drawn on the device.
fn build_loader(
    args: &Args,
    dataset: &Arc<Dataset>,
    group: Option<&ProcessGroup>,
    device: Device,
    aug: &AugmentConfig,
) -> Result<(Loader, LoaderConfig)> {
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    let loader_cfg = LoaderConfig {
        image_size: args.image_size,
        batch_size: args.batch_size / world,
        workers,
        prefetch: 4,
        seed: args.seed,
        shuffle: true,
        drop_last: true,
    };
    let mut loader = Loader::new(dataset.clone(), loader_cfg).with_shard(rank, world);
    if let Some(path) = &args.cache {
        // One cache file per rank: ranks fill them independently, none waits for another.
        let path =
            if world > 1 { PathBuf::from(format!("{}.rank{rank}", path.display())) } else { path.clone() };
        let cache = DecodeCache::open(&path, dataset, args.image_size)?;
        if rank == 0 {
            eprintln!(
                "decode cache {}: {} of {} images cached",
                path.display(),
                cache.filled(),
                dataset.len()
            );
        }
        loader = loader.with_cache(Arc::new(cache));
    }
    // By default, on a GPU the CPU only decodes and the views are drawn on the device; on a CPU
    // the decode threads also augment, while the training thread runs the step.
    let augment_on_device = match args.augment_on.as_str() {
        "device" => true,
        "loader" => false,
        _ => device.is_cuda(),
    };
    if device.is_cuda() {
        loader = loader.with_pinned_memory();
    }
    if args.augment && !augment_on_device {
        loader = loader.with_augment(*aug);
    }
    Ok((loader, loader_cfg))
}

/// The MoCo model and its optimiser, from `--init` weights if given. Split BN by default in
/// one process (8 splits, the usual stand-in for shuffle BN), plain BN across ranks.
fn build_trainer(
    args: &Args,
    arch: Arch,
    precision: Precision,
    device: Device,
    group: Option<&ProcessGroup>,
) -> Result<MocoTrainer> {
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
    let bn_splits = args.bn_splits.unwrap_or(if group.is_some() || args.micro_batches > 1 { 1 } else { 8 });
    tch::manual_seed(training::step_seed(args.seed, u64::MAX));
    let moco_cfg = MocoConfig {
        arch,
        in_channels: 1,
        dim: args.moco_dim,
        queue_size: args.moco_k,
        momentum: args.moco_m,
        temperature: args.moco_t,
        mlp: args.mlp,
        bn_splits,
    };
    let local_batch = (args.batch_size / world) as i64;
    let micro = args.micro_batches.max(1);
    if local_batch % micro != 0 {
        bail!("--batch-size {local_batch} is not a multiple of --micro-batches {micro}");
    }
    moco_cfg
        .check_batch_size(local_batch / micro)
        .context("--batch-size, --bn-splits, --micro-batches or --moco-k")?;
    let moco = Moco::new(moco_cfg, device)?;
    if let Some(init) = &args.init {
        let ckpt = checkpoint::load(init)?;
        let weights = EncoderWeights::from_checkpoint(&ckpt)?;
        let report = weights.load_into(moco.encoder_q(), LoadOptions::default())?;
        moco.copy_query_to_key();
        if rank == 0 {
            eprintln!("init {}: {report}", init.display());
        }
    }
    let sgd = SgdConfig { lr: args.lr, momentum: args.momentum, weight_decay: args.wd };
    let trainer = MocoTrainer::new(moco, sgd, StepOptions { precision, channels_last: args.channels_last })?;
    Ok(trainer.with_micro_batches(micro)?)
}

/// Where the run starts: fresh, or the state of the `--resume` checkpoint restored into
/// `trainer`.
fn resume(args: &Args, trainer: &mut MocoTrainer, batches: u64, is_main: bool) -> Result<RunState> {
    let mut state =
        RunState { position: RunPosition::default(), global_step: 0, seed: args.seed, scaler: None };
    if let Some(spec) = &args.resume {
        match resolve_resume(spec, &args.out)? {
            Some(path) => {
                let ckpt = checkpoint::load(&path)?;
                state = training::restore(trainer, &ckpt, batches)
                    .with_context(|| format!("cannot resume from {}", path.display()))?;
                if is_main && state.seed != args.seed {
                    eprintln!("note: the run was started with --seed {}; continuing with it", state.seed);
                }
                if is_main {
                    eprintln!(
                        "resumed from {}: {} epochs and {} steps done ({} steps in all)",
                        path.display(),
                        state.position.epoch,
                        state.position.step,
                        state.global_step
                    );
                }
            }
            None if is_main => {
                eprintln!("--resume auto: no checkpoint in {}, starting fresh", args.out.display())
            }
            None => {}
        }
    }
    Ok(state)
}

/// Console lines for skipped files: an archive export can hold thousands of non-image
/// objects, so the console names the first 20 of an epoch and metrics.jsonl all of them.
struct SkipReport {
    shown: usize,
    who: String,
}

impl SkipReport {
    const SHOWN: usize = 20;

    fn new(rank: usize, world: usize) -> Self {
        Self { shown: 0, who: if world > 1 { format!("rank {rank}: ") } else { String::new() } }
    }

    fn show(&mut self, pb: &ProgressBar, skipped: &[Skipped]) {
        // Above the bar on a terminal; plain lines in a log file, where the bar is hidden and
        // its println would drop them.
        let say = |line: String| if pb.is_hidden() { eprintln!("{line}") } else { pb.println(line) };
        let who = &self.who;
        for s in skipped {
            self.shown += 1;
            if self.shown <= Self::SHOWN {
                say(format!("{who}skipped {s}"));
            } else if self.shown == Self::SHOWN + 1 {
                say(format!(
                    "{who}more files skipped this epoch: counted in its summary line, all listed in metrics.jsonl"
                ));
            }
        }
    }
}

/// Why a batch came out with fewer than 2 images. Each unreadable file was already replaced
/// by up to 15 others, then by a readable image of its batch: nothing could be read.
fn unreadable(batch: &Batch, epoch: u64, local_batch: usize) -> anyhow::Error {
    let first = batch.skipped.first().map_or(String::new(), |s| format!("; first failure: {s}"));
    anyhow::anyhow!(
        "batch {} of epoch {epoch}: {} of {local_batch} images readable after {} failed reads{first}",
        batch.index,
        batch.samples.len(),
        batch.skipped.len()
    )
}

/// The query and key views of `batch` on `device`: drawn by the loader (only the copies are
/// left), drawn on the device by `aug`, or without augmentation the normalised images twice.
fn views(
    batch: &Batch,
    loader: &Loader,
    epoch: u64,
    aug: Option<&AugmentConfig>,
    device: Device,
) -> (Tensor, Tensor) {
    if let Some((q, k)) = &batch.views {
        return (chess::device::upload(q, device), chess::device::upload(k, device));
    }
    let x = chess::device::upload(&batch.images, device);
    match aug {
        Some(aug) => {
            let mut rng = loader.views_rng(epoch, batch.index);
            let (q, _) = augment(&x, aug, &mut rng);
            let (k, _) = augment(&x, aug, &mut rng);
            (q, k)
        }
        None => {
            let v = chess::data::normalize(&x);
            (v.shallow_clone(), v)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let device = args.device.parse::<DeviceSpec>()?.resolve()?;
    let precision: Precision = args.amp.parse()?;
    let arch: Arch = args.arch.parse()?;
    let (device, group) = join_group(&args, device)?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    let is_main = rank == 0;
    if !args.aug_plus {
        bail!(
            "--aug-plus false (MoCo v1's augmentation) is not available: the CheSS recipe's augmentation is used, --augment false turns it off"
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
    let local_batch = args.batch_size / world;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;

    // Stop flags first, so that a signal during set-up is not lost: the first SIGINT/SIGTERM asks
    // for a clean stop, a second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }

    let dataset = Dataset::from_sources(&args.data)?;
    if dataset.len() < args.batch_size {
        bail!("{} images found, fewer than one batch of {}", dataset.len(), args.batch_size);
    }
    let dataset = Arc::new(dataset);
    for (name, p) in [("--p-affine", args.p_affine), ("--p-optical", args.p_optical)] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} {p} is not a probability");
        }
    }
    let aug =
        AugmentConfig { p_affine: args.p_affine, p_optical: args.p_optical, ..AugmentConfig::default() };
    let (loader, loader_cfg) = build_loader(&args, &dataset, group.as_deref(), device, &aug)?;
    let batches = loader.batches_per_epoch() as u64;

    let mut trainer = build_trainer(&args, arch, precision, device, group.as_deref())?;
    let mut state = resume(&args, &mut trainer, batches, is_main)?;
    if let Some(g) = &group {
        trainer = trainer.with_process_group(g.clone())?;
    }
    let seed = state.seed;
    if state.position.step >= batches && batches > 0 {
        state.position = RunPosition { epoch: state.position.epoch + 1, step: 0 };
    }

    let mut log = if is_main {
        write_config(&args, device, &args.out.join("config.json"), dataset.len(), world)?;
        MetricsLog::open(&args.out.join("metrics.jsonl"))?
    } else {
        MetricsLog(None)
    };
    let knn = match (&args.knn_train, &args.knn_val) {
        (Some(train), Some(val)) => {
            let cfg = LoaderConfig { batch_size: 64, ..loader_cfg };
            let train = LabelledSet::new(train, None, cfg)?;
            let val = LabelledSet::new(val, Some(&train.classes()), cfg)?;
            Some(Knn { train, val, cfg: KnnConfig { k: args.knn_k, ..KnnConfig::default() } })
        }
        _ => None,
    };
    let schedule = if args.cos { LrSchedule::Cosine } else { LrSchedule::Step(args.schedule.clone()) };
    if is_main {
        eprintln!(
            "pretraining {} on {} images ({} batches of {} per epoch{}), {} px, device {:?}, amp {}, out {}",
            arch.name(),
            dataset.len(),
            batches,
            args.batch_size,
            if world > 1 { format!(", {local_batch} per rank") } else { String::new() },
            args.image_size,
            device,
            args.amp,
            args.out.display()
        );
    }
    if state.global_step == 0
        && let Some(knn) = &knn
    {
        knn.run(&trainer, 0, &mut log)?;
    }

    // Only rank 0 writes checkpoints: every rank holds the same state.
    let save = |trainer: &MocoTrainer, state: &RunState, lr: f64| -> Result<Option<PathBuf>> {
        if !is_main {
            return Ok(None);
        }
        let st = RunState { scaler: trainer.scaler().map(|s| (s.scale, s.growth_tracker)), ..state.clone() };
        let path = training::save(&args.out, trainer, &st, lr)?;
        training::prune_mid_epoch(&args.out, st.position)?;
        Ok(Some(path))
    };
    // Ranks stop together: each step they agree whether any of them was signalled.
    let stop_requested = |local: bool| -> Result<bool> {
        Ok(match &group {
            Some(g) => g.any(local, device)?,
            None => local,
        })
    };
    let mut stop_agreed = false;
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (ETA {eta})",
    )?;
    let run_start = Instant::now();
    let (mut timed_images, mut timed_seconds) = (0u64, 0.0f64);
    let mut last_path = None;
    // The first steps of a process warm up kernels, caches and cudnn's autotuner: the run's
    // throughput leaves them out.
    const WARMUP_STEPS: u64 = 10;
    let mut process_steps = 0u64;

    for epoch in state.position.epoch..args.epochs {
        let lr = schedule.lr(args.lr, epoch, args.epochs);
        let start_step = if epoch == state.position.epoch { state.position.step } else { 0 };
        let pb = if is_main { ProgressBar::new(batches) } else { ProgressBar::hidden() };
        let pb = pb.with_style(style.clone()).with_prefix(format!("epoch {epoch}"));
        pb.set_position(start_step);
        let epoch_start = Instant::now();
        let mut it = loader.epoch(epoch, start_step as usize);
        // Sums stay on the device: reading a value each step would make the CPU wait for the GPU.
        let zero = || Tensor::zeros([], (tch::Kind::Double, device));
        let (mut loss_sum, mut top1_sum) = (zero(), zero());
        let mut steps = 0u64;
        let (mut wait, mut aug_time) = (Duration::ZERO, Duration::ZERO);
        let mut window = (Instant::now(), 0u64);
        let mut window_first_step = process_steps;
        let mut stopped = false;
        let mut skip_report = SkipReport::new(rank, world);
        loop {
            let t = Instant::now();
            let Some(batch) = it.next() else { break };
            wait += t.elapsed();
            skip_report.show(&pb, &batch.skipped);
            if batch.samples.len() < 2 {
                pb.abandon();
                return Err(unreadable(&batch, epoch, local_batch));
            }
            let t = Instant::now();
            let (q, k) = views(&batch, &loader, epoch, args.augment.then_some(&aug), device);
            aug_time += t.elapsed();
            tch::manual_seed(training::step_seed(seed, state.global_step));
            let stats = trainer.step(&q, &k, lr)?;
            state.global_step += 1;
            state.position = RunPosition { epoch, step: batch.index as u64 + 1 };
            loss_sum += stats.loss.to_kind(tch::Kind::Double);
            top1_sum += stats.top1.to_kind(tch::Kind::Double);
            steps += 1;
            process_steps += 1;
            window.1 += args.batch_size as u64;
            pb.inc(1);

            let last_of_epoch = state.position.step == batches;
            let max_reached = args.max_steps.is_some_and(|m| state.global_step >= m);
            if state.global_step.is_multiple_of(args.log_every.max(1)) || last_of_epoch {
                let v = stats.values(); // waits for the device
                let secs = window.0.elapsed().as_secs_f64();
                let ips = window.1 as f64 / secs;
                if window_first_step >= WARMUP_STEPS {
                    timed_images += window.1;
                    timed_seconds += secs;
                }
                window = (Instant::now(), 0);
                window_first_step = process_steps;
                pb.set_message(format!("loss {:.4} top-1 {:.1}% lr {lr:.5} {ips:.1} img/s", v.loss, v.top1));
                log.write(json!({"kind": "step", "epoch": epoch, "step": state.position.step,
                    "global_step": state.global_step, "loss": v.loss, "top1": v.top1, "top5": v.top5, "lr": lr,
                    "img_per_s": ips, "skipped": it.skipped().len(), "data_wait_s": wait.as_secs_f64(),
                    "augment_s": aug_time.as_secs_f64(), "applied": stats.applied}))?;
            }
            // Ranks agree at logged steps only: agreeing reads a value back from the device,
            // which would make the CPU wait for the GPU at every step.
            let logged = state.global_step.is_multiple_of(args.log_every.max(1)) || last_of_epoch;
            if group.is_none() || logged {
                stop_agreed = stop_requested(stop.load(Ordering::SeqCst))?;
            }
            let signalled = stop_agreed;
            let periodic =
                args.save_every_iters > 0 && state.global_step.is_multiple_of(args.save_every_iters);
            if !last_of_epoch && (periodic || signalled || max_reached) {
                let path = save(&trainer, &state, lr)?;
                last_path = path.clone().or(last_path);
                if signalled || max_reached {
                    pb.abandon();
                    let why = if signalled { "stopped by signal" } else { "reached --max-steps" };
                    if let Some(path) = path {
                        eprintln!(
                            "{why} after step {} of epoch {epoch}; saved {}; continue with --resume auto",
                            state.position.step,
                            path.display()
                        );
                    }
                    stopped = true;
                    break;
                }
            }
        }
        let skipped = it.skipped().to_vec();
        drop(it);
        if stopped {
            break;
        }
        pb.finish_and_clear();
        let secs = epoch_start.elapsed().as_secs_f64();
        let n = steps.max(1) as f64;
        let (loss, top1) = (loss_sum.double_value(&[]) / n, top1_sum.double_value(&[]) / n);
        state.position = RunPosition { epoch: epoch + 1, step: 0 };
        let done = epoch + 1 == args.epochs;
        let ending = done || stop_agreed || args.max_steps.is_some_and(|m| state.global_step >= m);
        let path = if ending || (epoch + 1).is_multiple_of(args.save_every_epochs.max(1)) {
            let path = save(&trainer, &state, lr)?;
            last_path = path.clone().or(last_path);
            path
        } else {
            None
        };
        let saved = path.as_ref().map(|p| format!("; saved {}", p.display())).unwrap_or_default();
        if is_main {
            eprintln!(
                "epoch {epoch}: loss {loss:.4}, top-1 {top1:.1}%, {:.1} img/s, {} files skipped{}, {:.0} s{saved}",
                (steps * args.batch_size as u64) as f64 / secs,
                skipped.len(),
                if world > 1 { " (rank 0)" } else { "" },
                secs,
            );
        }
        log.write(json!({"kind": "epoch", "epoch": epoch, "loss": loss, "top1": top1, "lr": lr, "steps": steps,
            "seconds": secs, "img_per_s": (steps * args.batch_size as u64) as f64 / secs,
            "skipped": skipped.len(), "skipped_files": skipped.iter().map(|s| json!({"path": s.path, "reason": s.reason})).collect::<Vec<_>>(),
            "data_wait_s": wait.as_secs_f64(), "augment_s": aug_time.as_secs_f64(), "checkpoint": path}))?;
        if let Some(knn) = &knn
            && ((epoch + 1).is_multiple_of(args.knn_every.max(1)) || done)
        {
            knn.run(&trainer, epoch + 1, &mut log)?;
        }
        if stop_agreed {
            if is_main {
                eprintln!("stopped by signal after epoch {epoch}; continue with --resume auto");
            }
            break;
        }
        if args.max_steps.is_some_and(|m| state.global_step >= m) {
            if is_main {
                eprintln!("reached --max-steps after epoch {epoch}");
            }
            break;
        }
    }

    if let Some(g) = &group {
        print_checksums(&trainer, g);
    }
    // None when every step of this process was a warm-up step.
    let throughput = (timed_seconds > 0.0).then(|| timed_images as f64 / timed_seconds);
    log.write(json!({"kind": "end", "global_step": state.global_step, "epochs_done": state.position.epoch,
        "seconds": run_start.elapsed().as_secs_f64(), "img_per_s": throughput}))?;
    if !is_main {
        return Ok(());
    }
    match last_path {
        Some(p) => eprintln!(
            "done: {} steps, {}; checkpoint {}; metrics {}",
            state.global_step,
            throughput.map_or(
                format!("no rate (this process ran only warm-up steps, the first {WARMUP_STEPS})"),
                |t| format!("{t:.1} img/s after warm-up")
            ),
            p.display(),
            args.out.join("metrics.jsonl").display()
        ),
        None => eprintln!("nothing to do: the run had already finished {} epochs", args.epochs),
    }
    Ok(())
}
