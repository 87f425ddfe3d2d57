//! MoCo v2 pretraining (the CheSS recipe) as a [`Task`]: views of each batch, the MoCo step at
//! the epoch's learning rate, checkpoints in the original code's layout, and the kNN monitor.
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tch::{Device, Tensor};

use crate::checkpoint::{self, Checkpoint, CheckpointError, Value};
use crate::data::{AugmentConfig, Batch, Loader, augment};
use crate::metrics::{KnnConfig, LabelledSet, knn_top1};
use crate::model::MocoTrainer;
use crate::training::{
    EpochMeans, LrSchedule, MetricsLog, RUN_KEY, RunPosition, RunState, StepAt, StepOutput, Task, TaskError,
};

/// Where the two views of a batch come from.
#[derive(Debug, Clone, Copy)]
pub enum Views {
    /// Drawn by the loader's decode threads (native loops): only copies are left.
    FromLoader,
    /// Drawn on the training device by batched tensor ops, from the loader's per-batch seed.
    OnDevice(AugmentConfig),
    /// No augmentation: the normalised images twice (debugging, equivalence tests).
    Plain,
}

/// The kNN monitor: top-1 of a k-nearest-neighbour classifier on the encoder's features.
pub struct KnnMonitor {
    pub train: LabelledSet,
    pub val: LabelledSet,
    pub config: KnnConfig,
    /// Every N epochs (and after the last).
    pub every: u64,
}

impl KnnMonitor {
    /// Runs the monitor after `epoch` epochs and logs a `knn` record.
    pub fn run(&self, trainer: &MocoTrainer, epoch: u64, log: &mut MetricsLog) -> Result<(), TaskError> {
        let start = Instant::now();
        let r = knn_top1(
            trainer.model.encoder_q(),
            &self.train,
            &self.val,
            self.config,
            trainer.options().precision,
        );
        if log.is_main() {
            eprintln!(
                "kNN after {epoch} epochs: top-1 {:.2}% ({} train, {} val, k = {}, {:.1} s)",
                r.top1,
                r.train,
                r.val,
                self.config.k,
                start.elapsed().as_secs_f64()
            );
        }
        log.write(&json!({"kind": "knn", "epoch": epoch, "top1": r.top1, "k": self.config.k,
            "temperature": self.config.temperature, "train": r.train, "val": r.val,
            "skipped": r.skipped.len(), "seconds": start.elapsed().as_secs_f64()}))?;
        Ok(())
    }
}

/// MoCo v2 pretraining: the trainer, where its views come from and its learning rate.
pub struct Pretraining<'a> {
    pub trainer: MocoTrainer,
    loader: &'a Loader,
    views: Views,
    schedule: LrSchedule,
    base_lr: f64,
    epochs: u64,
    pub knn: Option<KnnMonitor>,
    augment_time: Duration,
}

impl<'a> Pretraining<'a> {
    pub fn new(
        trainer: MocoTrainer,
        loader: &'a Loader,
        views: Views,
        schedule: LrSchedule,
        base_lr: f64,
        epochs: u64,
    ) -> Self {
        Self { trainer, loader, views, schedule, base_lr, epochs, knn: None, augment_time: Duration::ZERO }
    }

    /// The learning rate of `epoch` (set once at the epoch's start, as the original).
    pub fn lr(&self, epoch: u64) -> f64 {
        self.schedule.lr(self.base_lr, epoch, self.epochs)
    }

    /// The query and key views of `batch` on `device`.
    fn views(&self, batch: &Batch, epoch: u64, device: Device) -> (Tensor, Tensor) {
        if let Some((q, k)) = &batch.views {
            return (crate::device::upload(q, device), crate::device::upload(k, device));
        }
        let x = crate::device::upload(&batch.images, device);
        match self.views {
            Views::OnDevice(aug) => {
                let mut rng = self.loader.views_rng(epoch, batch.index);
                let (q, _) = augment(&x, &aug, &mut rng);
                let (k, _) = augment(&x, &aug, &mut rng);
                (q, k)
            }
            Views::FromLoader | Views::Plain => {
                let v = crate::data::normalize(&x);
                (v.shallow_clone(), v)
            }
        }
    }
}

/// Why a batch came out with fewer than 2 images: each unreadable file was already replaced by
/// up to 15 others, then by a readable image of its batch, so nothing could be read.
fn unreadable(batch: &Batch, epoch: u64, local_batch: usize) -> TaskError {
    let first = batch.skipped.first().map_or(String::new(), |s| format!("; first failure: {s}"));
    format!(
        "batch {} of epoch {epoch}: {} of {local_batch} images readable after {} failed reads{first}",
        batch.index,
        batch.samples.len(),
        batch.skipped.len()
    )
    .into()
}

impl Task for Pretraining<'_> {
    type Batch = Batch;

    fn step(&mut self, batch: Batch, at: StepAt) -> Result<StepOutput, TaskError> {
        if batch.samples.len() < 2 {
            return Err(unreadable(&batch, at.epoch, self.loader.config().batch_size));
        }
        let t = Instant::now();
        let (q, k) = self.views(&batch, at.epoch, self.trainer.model.device());
        self.augment_time += t.elapsed();
        let lr = self.lr(at.epoch);
        let stats = self.trainer.step(&q, &k, lr)?;
        Ok(StepOutput {
            values: vec![("loss", stats.loss), ("top1", stats.top1), ("top5", stats.top5)],
            extra: vec![
                ("lr", json!(lr)),
                ("augment_s", json!(self.augment_time.as_secs_f64())),
                ("applied", json!(stats.applied)),
            ],
        })
    }

    fn end_epoch(
        &mut self,
        epoch: u64,
        _means: &EpochMeans,
        log: &mut MetricsLog,
    ) -> Result<Vec<(&'static str, Json)>, TaskError> {
        self.augment_time = Duration::ZERO;
        if let Some(knn) = &self.knn
            && ((epoch + 1).is_multiple_of(knn.every.max(1)) || epoch + 1 == self.epochs)
        {
            knn.run(&self.trainer, epoch + 1, log)?;
        }
        Ok(Vec::new())
    }

    /// The original layout (`epoch`, `arch`, `state_dict` with `module.` names, `optimizer`) and
    /// the run entry under [`RUN_KEY`]; the optimiser's param group records the learning rate of
    /// the last step's epoch, as PyTorch's does.
    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError> {
        let last_epoch = if state.position.step == 0 {
            state.position.epoch.saturating_sub(1)
        } else {
            state.position.epoch
        };
        let scaler = self.trainer.scaler().map(|s| (s.scale, s.growth_tracker));
        let run = RunState { scaler, ..state.clone() };
        Ok(checkpoint::moco::to_value(
            &self.trainer,
            state.position.epoch as i64,
            self.lr(last_epoch),
            vec![(RUN_KEY.to_string(), run.to_value())],
        ))
    }

    /// A checkpoint of the original code (no run entry) resumes at the start of the epoch after
    /// the one it records.
    fn restore(&mut self, ckpt: &Checkpoint, batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let epoch = checkpoint::moco::restore(&mut self.trainer, ckpt)?;
        let epoch =
            u64::try_from(epoch).map_err(|_| CheckpointError::Mapping(format!("negative epoch {epoch}")))?;
        let Some(run) = ckpt.root.get(RUN_KEY) else {
            return Ok(RunState {
                position: RunPosition { epoch, step: 0 },
                global_step: epoch * batches_per_epoch,
                ..RunState::default()
            });
        };
        let state = RunState::from_value(run, RUN_KEY)?;
        if let (Some((scale, tracker)), Some(sc)) = (state.scaler, self.trainer.scaler_mut()) {
            sc.scale = scale;
            sc.growth_tracker = tracker;
        }
        Ok(state)
    }
}

/// What the MoCo model of a run is built from.
#[derive(Debug, Clone)]
pub struct PretrainModel {
    pub moco: crate::model::MocoConfig,
    pub sgd: crate::SgdConfig,
    pub options: crate::model::StepOptions,
    /// See [`MocoTrainer::with_micro_batches`].
    pub micro_batches: i64,
    /// Query (and key) encoder weights to start from: CheSS, MoCo, torchvision, extracted.
    pub init: Option<std::path::PathBuf>,
}

impl PretrainModel {
    /// The trainer for batches of `local_batch` images (this rank's share), initialised from the
    /// run seed; the load report of `init` is printed when `verbose`.
    pub fn build(
        &self,
        device: Device,
        seed: u64,
        local_batch: i64,
        verbose: bool,
    ) -> Result<MocoTrainer, TaskError> {
        let micro = self.micro_batches.max(1);
        if local_batch % micro != 0 {
            return Err(
                format!("--batch-size {local_batch} is not a multiple of --micro-batches {micro}").into()
            );
        }
        self.moco
            .check_batch_size(local_batch / micro)
            .map_err(|e| format!("--batch-size, --bn-splits, --micro-batches or --moco-k: {e}"))?;
        tch::manual_seed(crate::training::step_seed(seed, u64::MAX));
        let moco = crate::model::Moco::new(self.moco, device)?;
        if let Some(init) = &self.init {
            let weights = checkpoint::EncoderWeights::from_checkpoint(&checkpoint::load(init)?)?;
            let report = weights.load_into(moco.encoder_q(), checkpoint::LoadOptions::default())?;
            moco.copy_query_to_key();
            if verbose {
                eprintln!("init {}: {report}", init.display());
            }
        }
        Ok(MocoTrainer::new(moco, self.sgd, self.options)?.with_micro_batches(micro)?)
    }
}

/// The loader of rank `rank` of `world`: its shard of each global batch of `config.batch_size *
/// world` images, a decode cache (one file per rank: ranks fill them independently), pinned
/// batches for a GPU, and the views drawn by the decode threads when `augment` is given.
pub fn rank_loader(
    dataset: &std::sync::Arc<crate::data::Dataset>,
    config: crate::data::LoaderConfig,
    (rank, world): (usize, usize),
    cache: Option<&std::path::Path>,
    device: Device,
    augment: Option<AugmentConfig>,
) -> Result<Loader, TaskError> {
    let mut loader = Loader::new(dataset.clone(), config).with_shard(rank, world);
    if let Some(path) = cache {
        let path = if world > 1 {
            std::path::PathBuf::from(format!("{}.rank{rank}", path.display()))
        } else {
            path.to_path_buf()
        };
        let cache = crate::data::DecodeCache::open(&path, dataset, config.image_size)?;
        if rank == 0 {
            eprintln!(
                "decode cache {}: {} of {} images cached",
                path.display(),
                cache.filled(),
                dataset.len()
            );
        }
        loader = loader.with_cache(std::sync::Arc::new(cache));
    }
    if device.is_cuda() {
        loader = loader.with_pinned_memory();
    }
    if let Some(aug) = augment {
        loader = loader.with_augment(aug);
    }
    Ok(loader)
}

/// `rank R/W: checksum parameters .. state .. queue ..`: equal lines show that data-parallel
/// ranks hold bit-identical state.
pub fn checksum_line(trainer: &MocoTrainer, group: &crate::distributed::ProcessGroup) -> String {
    use crate::distributed::checksum;
    use crate::model::StateDict;
    let model = &trainer.model;
    let params = checksum(model.query_parameters().iter());
    let all = checksum(model.named_tensors("").iter().map(|t| &t.tensor));
    let queue = checksum([model.queue(), model.queue_ptr()]);
    format!(
        "rank {}/{}: checksum parameters {params:016x} state {all:016x} queue {queue:016x}",
        group.rank(),
        group.world_size()
    )
}
