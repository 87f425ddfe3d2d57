//! The loop every training program shares: epochs of steps over a loader, with logging,
//! checkpoints, resume, stop signals and throughput, around a [`Task`] that knows its model.
//!
//! A task never reads a signal, writes a metrics line or names a checkpoint file: the [`Run`]
//! does. What a task provides is one step on one batch, what happens after an epoch
//! (validation, schedulers), and its checkpoint (see [`Task`]).
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor};

use super::progress::{EpochProgress, SkipReport, Throughput};
use super::run_dir::{MetricsLog, RunDir};
use super::stop::StopSignal;
use super::{EpochMeans, EpochSums, RunPosition, RunState, TrainingError, step_seed};
use crate::checkpoint::{self, Checkpoint, Value};
use crate::data::Skipped;
use crate::distributed::ProcessGroup;

/// Errors of a task's own code, passed through the run unchanged (the binaries use anyhow,
/// which converts into this).
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// A batch as the run sees it: where it sits in the epoch, how many images it holds, and the
/// files that had to be skipped to fill it.
pub trait RunBatch {
    fn index(&self) -> usize;
    fn images(&self) -> usize;
    fn skipped(&self) -> &[Skipped];
}

impl RunBatch for crate::data::Batch {
    fn index(&self) -> usize {
        self.index
    }
    fn images(&self) -> usize {
        self.samples.len()
    }
    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// What one step reports.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// Named scalars (loss terms, accuracies) left on the device: they are read back only at
    /// logged steps, so a step never waits for the GPU. Their epoch means go to the epoch record.
    pub values: Vec<(&'static str, Tensor)>,
    /// Further entries of the step record (the learning rate, timings), as they are.
    pub extra: Vec<(&'static str, Json)>,
}

/// Where a step sits in the run.
#[derive(Debug, Clone, Copy)]
pub struct StepAt {
    pub epoch: u64,
    /// Steps done in this epoch before this one.
    pub step: u64,
    /// Steps done in the run before this one.
    pub global_step: u64,
}

/// One training program's model, optimisers and step.
pub trait Task {
    type Batch: RunBatch;

    /// One optimisation step on `batch`. libtorch's generator has just been seeded from the run
    /// seed and the global step, so random choices inside it repeat on resume.
    fn step(&mut self, batch: Self::Batch, at: StepAt) -> Result<StepOutput, TaskError>;

    /// After the `epoch`-th epoch (0-based) finished, before its checkpoint is written:
    /// validation, schedulers, extra records. `means` are the epoch's means of the step values
    /// (over every step of the epoch, across a resume). Entries returned join the epoch record.
    fn end_epoch(
        &mut self,
        epoch: u64,
        means: &EpochMeans,
        log: &mut MetricsLog,
    ) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let _ = (epoch, means, log);
        Ok(Vec::new())
    }

    /// The checkpoint at `state`, as a dict PyTorch loads (e.g. `checkpoint::TrainingState`).
    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError>;

    /// Restores the task from `ckpt`; returns the run state it holds. `batches_per_epoch` lets a
    /// checkpoint of another program (no run position) resume at its epoch's end.
    fn restore(&mut self, ckpt: &Checkpoint, batches_per_epoch: u64) -> Result<RunState, TaskError>;
}

/// When a run logs, saves and stops.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub epochs: u64,
    /// A step record every N steps (and at each epoch's last step).
    pub log_every: u64,
    /// An epoch checkpoint every N epochs (and always after the last, or on a stop).
    pub save_every_epochs: u64,
    /// A mid-epoch checkpoint every N steps (0: none).
    pub save_every_iters: u64,
    /// Stop, with a checkpoint, after this many steps in all.
    pub max_steps: Option<u64>,
    /// Seed of everything random in the run; kept in checkpoints.
    pub seed: u64,
    /// `auto` (the newest checkpoint of the run folder, if any) or a checkpoint's path.
    pub resume: Option<String>,
    /// Images per global batch (all ranks), for throughput.
    pub batch_images: usize,
}

/// How [`Run::fit`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch done.
    Finished,
    /// Stopped by SIGINT/SIGTERM (on any rank), with a checkpoint.
    Stopped,
    /// `max_steps` reached, with a checkpoint.
    MaxSteps,
    /// The checkpoint resumed from had already finished every epoch.
    NothingToDo,
}

/// The first steps of a process warm up kernels, caches and cudnn's autotuner: the run's
/// throughput leaves them out.
pub const WARMUP_STEPS: u64 = 10;

/// A training run: its folder, log, position and stop signal (see the module doc).
pub struct Run {
    config: RunConfig,
    dir: RunDir,
    log: MetricsLog,
    stop: StopSignal,
    group: Option<Arc<ProcessGroup>>,
    device: Device,
    state: RunState,
    started: Instant,
    last_checkpoint: Option<PathBuf>,
    throughput: Throughput,
}

impl Run {
    /// Opens the run folder (rank 0 alone writes into it) and installs the stop signal first,
    /// so that a signal during set-up is not lost. `group` is the torchrun group, if any.
    pub fn new(
        out: PathBuf,
        config: RunConfig,
        group: Option<Arc<ProcessGroup>>,
        device: Device,
    ) -> Result<Self, TrainingError> {
        let stop = StopSignal::install()?;
        let is_main = group.as_ref().is_none_or(|g| g.rank() == 0);
        let dir = RunDir::create(out, is_main)?;
        let log = dir.metrics_log()?;
        let state = RunState { seed: config.seed, ..RunState::default() };
        Ok(Self {
            config,
            dir,
            log,
            stop,
            group,
            device,
            state,
            started: Instant::now(),
            last_checkpoint: None,
            throughput: Throughput::default(),
        })
    }

    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    pub fn is_main(&self) -> bool {
        self.dir.is_main()
    }

    pub fn log(&mut self) -> &mut MetricsLog {
        &mut self.log
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    fn world(&self) -> (usize, usize) {
        self.group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()))
    }

    /// `config.json`: `args` (the program's flags), `extra` entries, the command line, world
    /// size, device and versions.
    pub fn write_config(&self, args: Json, extra: Json) -> Result<(), TrainingError> {
        let mut config = json!({
            "args": args,
            "world_size": self.world().1,
            "command": std::env::args().collect::<Vec<_>>(),
            "device": format!("{:?}", self.device),
            "cuda_devices": tch::Cuda::device_count(),
            "versions": {"chess-rs": env!("CARGO_PKG_VERSION"), "libtorch": crate::LIBTORCH_VERSION, "tch": "0.24.0"},
        });
        if let (Some(c), Json::Object(extra)) = (config.as_object_mut(), extra) {
            c.extend(extra);
        }
        self.dir.write_config(&config)
    }

    /// Restores `task` from `config.resume` (`auto`: the newest checkpoint of the folder, if
    /// any). Prints where the run continues.
    pub fn resume<T: Task>(&mut self, task: &mut T, batches_per_epoch: u64) -> Result<(), TrainingError> {
        let Some(spec) = self.config.resume.clone() else { return Ok(()) };
        let path = match spec.as_str() {
            "auto" => self.dir.latest_checkpoint()?.map(|(_, p)| p),
            path => {
                let p = PathBuf::from(path);
                if !p.exists() {
                    return Err(TrainingError::Resume { path: p, reason: "no such checkpoint".into() });
                }
                Some(p)
            }
        };
        let Some(path) = path else {
            if self.is_main() {
                eprintln!("--resume auto: no checkpoint in {}, starting fresh", self.dir.path().display());
            }
            return Ok(());
        };
        let ckpt = checkpoint::load(&path)?;
        let state = task
            .restore(&ckpt, batches_per_epoch)
            .map_err(|e| TrainingError::Resume { path: path.clone(), reason: e.to_string() })?;
        if self.is_main() {
            if state.seed != self.config.seed {
                eprintln!("note: the run was started with --seed {}; continuing with it", state.seed);
            }
            eprintln!(
                "resumed from {}: {} epochs and {} steps done ({} steps in all)",
                path.display(),
                state.position.epoch,
                state.position.step,
                state.global_step
            );
        }
        self.state = state;
        Ok(())
    }

    /// Runs the epochs from where the run stands. `epoch_batches(e, start)` gives the batches of
    /// epoch `e` from batch `start` on (this rank's shard); files skipped to fill them are read
    /// from the batches.
    pub fn fit<T, I>(
        &mut self,
        task: &mut T,
        batches_per_epoch: u64,
        mut epoch_batches: impl FnMut(u64, u64) -> I,
    ) -> Result<Outcome, TrainingError>
    where
        T: Task,
        I: Iterator<Item = T::Batch>,
    {
        if self.state.position.step >= batches_per_epoch && batches_per_epoch > 0 {
            self.state.position = RunPosition { epoch: self.state.position.epoch + 1, step: 0 };
        }
        if self.state.position.epoch >= self.config.epochs {
            if self.is_main() {
                eprintln!("nothing to do: the run had already finished {} epochs", self.config.epochs);
            }
            return Ok(Outcome::NothingToDo);
        }
        let (rank, world) = self.world();
        let mut outcome = Outcome::Finished;
        for epoch in self.state.position.epoch..self.config.epochs {
            let start_step = if epoch == self.state.position.epoch { self.state.position.step } else { 0 };
            let progress = EpochProgress::new(epoch, batches_per_epoch, start_step, self.is_main());
            let mut skip_report = SkipReport::new(rank, world);
            let mut skipped: Vec<Skipped> = Vec::new();
            let mut seen = BTreeSet::new();
            // A resumed epoch's sums go on from those of the steps before the stop.
            let resumed = if start_step > 0 {
                std::mem::take(&mut self.state.epoch_so_far)
            } else {
                EpochSums::default()
            };
            let mut sums: Vec<(String, Tensor)> = resumed
                .sums
                .iter()
                .map(|(k, v)| (k.clone(), Tensor::from(*v).to_device(self.device)))
                .collect();
            let mut extra_last: Vec<(&'static str, Json)> = Vec::new();
            let epoch_start = Instant::now();
            let (mut steps, mut images, mut wait) = (0u64, 0u64, Duration::ZERO);
            let mut stopped = None;
            let mut batches = epoch_batches(epoch, start_step);
            loop {
                let t = Instant::now();
                let Some(batch) = batches.next() else { break };
                wait += t.elapsed();
                skip_report.show(&progress, batch.skipped());
                for s in batch.skipped() {
                    if seen.insert(s.path.clone()) {
                        skipped.push(s.clone());
                    }
                }
                let at = StepAt { epoch, step: batch.index() as u64, global_step: self.state.global_step };
                tch::manual_seed(step_seed(self.state.seed, self.state.global_step));
                let out = match task.step(batch, at) {
                    Ok(out) => out,
                    Err(e) => {
                        progress.abandon();
                        return Err(TrainingError::Task(e));
                    }
                };
                self.state.global_step += 1;
                self.state.position = RunPosition { epoch, step: at.step + 1 };
                steps += 1;
                images += self.config.batch_images as u64;
                self.throughput.add_step(self.config.batch_images as u64);
                progress.inc();
                accumulate(&mut sums, &out.values, self.device);

                let last_of_epoch = self.state.position.step == batches_per_epoch;
                let logged =
                    self.state.global_step.is_multiple_of(self.config.log_every.max(1)) || last_of_epoch;
                if logged {
                    let values: Vec<(&'static str, f64)> =
                        out.values.iter().map(|(n, t)| (*n, t.double_value(&[]))).collect();
                    let ips = self.throughput.close_window();
                    progress.message(&values, ips);
                    let mut record = json!({"kind": "step", "epoch": epoch, "step": self.state.position.step,
                        "global_step": self.state.global_step});
                    let r = record.as_object_mut().expect("an object");
                    r.extend(values.iter().map(|(n, v)| (n.to_string(), json!(v))));
                    r.extend(out.extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
                    r.insert("img_per_s".into(), json!(ips));
                    r.insert("skipped".into(), json!(skipped.len()));
                    r.insert("data_wait_s".into(), json!(wait.as_secs_f64()));
                    self.log.write(&record)?;
                }
                extra_last = out.extra;
                // Ranks agree at logged steps only: agreeing reads a value back from the
                // device, which would make the CPU wait for the GPU at every step.
                if self.group.is_none() || logged {
                    self.stop.agree(self.group.as_deref(), self.device)?;
                }
                let max_reached = self.config.max_steps.is_some_and(|m| self.state.global_step >= m);
                let periodic = self.config.save_every_iters > 0
                    && self.state.global_step.is_multiple_of(self.config.save_every_iters);
                if !last_of_epoch && (periodic || self.stop.agreed() || max_reached) {
                    self.state.epoch_so_far = EpochSums {
                        steps: resumed.steps + steps,
                        sums: sums.iter().map(|(k, s)| (k.clone(), s.double_value(&[]))).collect(),
                    };
                    let path = self.save(task)?;
                    if self.stop.agreed() || max_reached {
                        progress.abandon();
                        let why =
                            if self.stop.agreed() { "stopped by signal" } else { "reached --max-steps" };
                        if let Some(path) = path {
                            eprintln!(
                                "{why} after step {} of epoch {epoch}; saved {}; continue with --resume auto",
                                self.state.position.step,
                                path.display()
                            );
                        }
                        stopped = Some(if self.stop.agreed() { Outcome::Stopped } else { Outcome::MaxSteps });
                        break;
                    }
                }
            }
            drop(batches);
            if let Some(o) = stopped {
                outcome = o;
                break;
            }
            progress.finish();
            let secs = epoch_start.elapsed().as_secs_f64();
            let n = (resumed.steps + steps).max(1) as f64;
            let means = EpochMeans(sums.iter().map(|(k, s)| (k.clone(), s.double_value(&[]) / n)).collect());
            self.state.position = RunPosition { epoch: epoch + 1, step: 0 };
            self.state.epoch_so_far = EpochSums::default();
            let task_entries = task.end_epoch(epoch, &means, &mut self.log).map_err(TrainingError::Task)?;
            let done = epoch + 1 == self.config.epochs;
            let max_reached = self.config.max_steps.is_some_and(|m| self.state.global_step >= m);
            let ending = done || self.stop.agreed() || max_reached;
            let path = if ending || (epoch + 1).is_multiple_of(self.config.save_every_epochs.max(1)) {
                self.save(task)?
            } else {
                None
            };
            if self.is_main() {
                let values: String = means.0.iter().map(|(k, v)| format!("{k} {v:.4}, ")).collect();
                let saved = path.as_ref().map(|p| format!("; saved {}", p.display())).unwrap_or_default();
                eprintln!(
                    "epoch {epoch}: {values}{:.1} img/s, {} files skipped{}, {secs:.0} s{saved}",
                    images as f64 / secs,
                    skipped.len(),
                    if world > 1 { " (rank 0)" } else { "" },
                );
            }
            let mut record = json!({"kind": "epoch", "epoch": epoch, "steps": resumed.steps + steps, "seconds": secs,
                "img_per_s": images as f64 / secs, "skipped": skipped.len(),
                "skipped_files": skipped.iter().map(|s| json!({"path": s.path, "reason": s.reason})).collect::<Vec<_>>(),
                "data_wait_s": wait.as_secs_f64(), "checkpoint": path});
            let r = record.as_object_mut().expect("an object");
            r.extend(means.0.iter().map(|(k, v)| (k.clone(), json!(v))));
            r.extend(extra_last.iter().map(|(k, v)| (k.to_string(), v.clone())));
            r.extend(task_entries.into_iter().map(|(k, v)| (k.to_string(), v)));
            self.log.write(&record)?;
            if self.stop.agreed() {
                if self.is_main() {
                    eprintln!("stopped by signal after epoch {epoch}; continue with --resume auto");
                }
                outcome = Outcome::Stopped;
                break;
            }
            if max_reached {
                if self.is_main() {
                    eprintln!("reached --max-steps after epoch {epoch}");
                }
                outcome = Outcome::MaxSteps;
                break;
            }
        }
        self.finish()?;
        Ok(outcome)
    }

    /// Writes the checkpoint of the current position (rank 0; every rank holds the same
    /// state) and removes the mid-epoch ones it supersedes.
    pub fn save<T: Task>(&mut self, task: &T) -> Result<Option<PathBuf>, TrainingError> {
        if !self.is_main() {
            return Ok(None);
        }
        let root = task.checkpoint(&self.state).map_err(TrainingError::Task)?;
        let path = self.dir.save_checkpoint(self.state.position, &root)?;
        self.last_checkpoint = Some(path.clone());
        Ok(Some(path))
    }

    /// The run's last record and console line.
    fn finish(&mut self) -> Result<(), TrainingError> {
        let throughput = self.throughput.images_per_second();
        self.log.write(&json!({"kind": "end", "global_step": self.state.global_step,
            "epochs_done": self.state.position.epoch, "seconds": self.started.elapsed().as_secs_f64(),
            "img_per_s": throughput}))?;
        if let (true, Some(p)) = (self.is_main(), &self.last_checkpoint) {
            eprintln!(
                "done: {} steps, {}; checkpoint {}; metrics {}",
                self.state.global_step,
                throughput.map_or(
                    format!("no rate (this process ran only warm-up steps, the first {WARMUP_STEPS})"),
                    |t| format!("{t:.1} img/s after warm-up")
                ),
                p.display(),
                self.dir.metrics_path().display()
            );
        }
        Ok(())
    }
}

/// Adds a step's values to the epoch's sums, on the device (as doubles).
fn accumulate(sums: &mut Vec<(String, Tensor)>, values: &[(&'static str, Tensor)], device: Device) {
    for (name, v) in values {
        let v = v.detach().to_device(device).to_kind(Kind::Double);
        match sums.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += v,
            None => sums.push((name.to_string(), v)),
        }
    }
}
