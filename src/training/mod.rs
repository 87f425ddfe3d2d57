//! The home of a training run, shared by every program (pretrain, classify, bone
//! suppression, nodule GAN): the run folder ([`RunDir`]: `config.json`, `metrics.jsonl`,
//! atomic checkpoints, `--resume auto`), the loop ([`Run::fit`] around a [`Task`]), progress
//! and throughput, stop signals agreed across ranks ([`StopSignal`]), the shared flags
//! ([`RunArgs`]) and the exact-resume rule.
//!
//! Exact resume rests on three facts: the loader's batches and views depend only on
//! (seed, epoch, batch); libtorch's global generator is reseeded from (seed, global step) before
//! every step ([`step_seed`], applied by [`Run::fit`], not by each program); and the checkpoint
//! holds the models, optimiser and scheduler states, loss-scaler state and the position in the
//! run. So a resumed run repeats the uninterrupted one.
pub mod args;
pub mod progress;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod selection;
pub mod stop;

use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointError, Value};

pub use args::{DeviceArgs, InferenceArgs, RunArgs};
pub use progress::{EpochProgress, SkipReport, Throughput};
pub use run::{Outcome, Run, RunBatch, RunConfig, StepAt, StepOutput, Task, TaskError};
pub use run_dir::{MetricsLog, RunDir};
pub use schedule::LrSchedule;
pub use selection::{Selection, plot_curves, train_loss_and_validation, validation_due};
pub use stop::StopSignal;

/// Why a run could not start, go on or resume.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("{}: {what}: {source}", path.display())]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("signal handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Task(run::TaskError),
}

impl TrainingError {
    fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), what, source }
    }
}

/// Where a run stands: `epoch` epochs are finished, and `step` steps of the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct RunPosition {
    pub epoch: u64,
    pub step: u64,
}

impl RunPosition {
    /// The checkpoint file of this position: the original `checkpoint_{epoch:04d}.pth.tar` at
    /// an epoch boundary, `checkpoint_{epoch:04d}_{step:06d}.pth.tar` inside an epoch (so names
    /// sort in run order).
    pub fn file_name(self) -> String {
        if self.step == 0 {
            format!("checkpoint_{:04}.pth.tar", self.epoch)
        } else {
            format!("checkpoint_{:04}_{:06}.pth.tar", self.epoch, self.step)
        }
    }

    /// Inverse of [`RunPosition::file_name`].
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_prefix("checkpoint_")?.strip_suffix(".pth.tar")?;
        let (epoch, step) = match stem.split_once('_') {
            Some((e, s)) => (e, s.parse().ok()?),
            None => (stem, 0),
        };
        Some(Self { epoch: epoch.parse().ok()?, step })
    }
}

/// The seed of libtorch's global generator for a step: random choices inside the step (the
/// shuffle-BN permutation) then depend on the step alone, not on the history of the process.
pub fn step_seed(seed: u64, global_step: u64) -> i64 {
    let mut rng = crate::data::Rng::new(seed ^ global_step.wrapping_mul(0xA076_1D64_78BD_642F));
    (rng.next_u64() >> 1) as i64
}

/// Entries this crate adds to the checkpoint's top-level dict (the original keys are untouched,
/// so the file still loads in the Python code).
pub const RUN_KEY: &str = "chess_rs";

/// Where a run stands and what it needs to go on exactly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunState {
    pub position: RunPosition,
    pub global_step: u64,
    pub seed: u64,
    /// fp16 loss scaler (scale, growth tracker), when training in fp16.
    pub scaler: Option<(f64, i64)>,
    /// The unfinished epoch's sums of the step values, so that the epoch's means after a
    /// mid-epoch resume are the uninterrupted run's.
    pub epoch_so_far: EpochSums,
}

/// Sums (as f64) of each step value over the steps an epoch has done, and their number.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpochSums {
    pub steps: u64,
    pub sums: Vec<(String, f64)>,
}

/// An epoch's mean of each step value (`loss`, a program's loss terms), in the order the
/// program's step reports them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpochMeans(pub Vec<(String, f64)>);

impl EpochMeans {
    /// The mean of `name`, NaN where no step reported it.
    pub fn get(&self, name: &str) -> f64 {
        self.0.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v)
    }
}

impl RunState {
    /// The run entry of a checkpoint: `{"epoch", "step_in_epoch", "global_step", "seed",
    /// "version"[, "scaler_scale", "scaler_growth_tracker"]}`.
    pub fn to_value(&self) -> Value {
        let mut run = vec![
            (Value::str("epoch"), Value::Int(self.position.epoch as i64)),
            (Value::str("step_in_epoch"), Value::Int(self.position.step as i64)),
            (Value::str("global_step"), Value::Int(self.global_step as i64)),
            // As a string: pickled ints are signed 64-bit.
            (Value::str("seed"), Value::Str(self.seed.to_string())),
            (Value::str("version"), Value::str(env!("CARGO_PKG_VERSION"))),
        ];
        if let Some((scale, tracker)) = self.scaler {
            run.push((Value::str("scaler_scale"), Value::Float(scale)));
            run.push((Value::str("scaler_growth_tracker"), Value::Int(tracker)));
        }
        if self.epoch_so_far.steps > 0 {
            run.push((Value::str("epoch_steps"), Value::Int(self.epoch_so_far.steps as i64)));
            let sums =
                self.epoch_so_far.sums.iter().map(|(k, v)| (Value::str(k), Value::Float(*v))).collect();
            run.push((Value::str("epoch_sums"), Value::Dict(sums)));
        }
        Value::Dict(run)
    }

    /// Inverse of [`RunState::to_value`]; `key` names the entry in errors.
    pub fn from_value(run: &Value, key: &str) -> Result<Self, CheckpointError> {
        let int = |k: &str| run.get(k).and_then(Value::as_int);
        let bad = |k: &str| CheckpointError::Mapping(format!("'{key}.{k}' is missing or not an integer"));
        let count = |k: &str| int(k).and_then(|v| u64::try_from(v).ok()).ok_or_else(|| bad(k));
        let epoch = count("epoch")?;
        let step = count("step_in_epoch")?;
        let global_step = count("global_step")?;
        let seed = run
            .get("seed")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("seed"))?;
        let scaler = match run.get("scaler_scale") {
            Some(Value::Float(f)) => Some((*f, int("scaler_growth_tracker").unwrap_or(0))),
            _ => None,
        };
        // Absent in epoch-end checkpoints and in those written before it existed.
        let epoch_so_far = match (int("epoch_steps"), run.get("epoch_sums").and_then(Value::as_dict)) {
            (Some(steps), Some(entries)) if steps > 0 => {
                let mut sums = Vec::new();
                for (k, v) in entries {
                    match (k.as_str(), v) {
                        (Some(k), Value::Float(v)) => sums.push((k.to_string(), *v)),
                        _ => {
                            return Err(CheckpointError::Mapping(format!("'{key}.epoch_sums' is malformed")));
                        }
                    }
                }
                EpochSums { steps: steps as u64, sums }
            }
            _ => EpochSums::default(),
        };
        Ok(RunState { position: RunPosition { epoch, step }, global_step, seed, scaler, epoch_so_far })
    }
}

/// Checkpoints of a run folder, in run order.
pub fn list_checkpoints(dir: &Path) -> std::io::Result<Vec<(RunPosition, PathBuf)>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(pos) = path.file_name().and_then(|n| n.to_str()).and_then(RunPosition::parse_file_name) {
            found.push((pos, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest checkpoint of a run folder, for `--resume auto`.
pub fn latest_checkpoint(dir: &Path) -> std::io::Result<Option<(RunPosition, PathBuf)>> {
    Ok(list_checkpoints(dir)?.pop())
}

/// Removes mid-epoch checkpoints older than `keep`: they are superseded (epoch checkpoints are
/// kept, as the original keeps them).
pub fn prune_mid_epoch(dir: &Path, keep: RunPosition) -> std::io::Result<()> {
    for (pos, path) in list_checkpoints(dir)? {
        if pos.step != 0 && pos < keep {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort_in_run_order() {
        let a = RunPosition { epoch: 1, step: 0 };
        let b = RunPosition { epoch: 1, step: 50 };
        let c = RunPosition { epoch: 2, step: 0 };
        assert_eq!(a.file_name(), "checkpoint_0001.pth.tar");
        assert_eq!(b.file_name(), "checkpoint_0001_000050.pth.tar");
        for p in [a, b, c] {
            assert_eq!(RunPosition::parse_file_name(&p.file_name()), Some(p));
        }
        let mut names = [c.file_name(), b.file_name(), a.file_name()];
        names.sort();
        assert_eq!(names, [a.file_name(), b.file_name(), c.file_name()]);
        assert_eq!(RunPosition::parse_file_name("checkpoint_x.pth.tar"), None);
        assert_eq!(RunPosition::parse_file_name("model_best.pth.tar"), None);
    }

    #[test]
    fn the_run_entry_round_trips_with_an_unfinished_epoch() {
        let state = RunState {
            position: RunPosition { epoch: 2, step: 7 },
            global_step: 27,
            seed: u64::MAX,
            scaler: Some((1024.0, 3)),
            epoch_so_far: EpochSums {
                steps: 7,
                sums: vec![("loss".into(), 4.25), ("top1".into(), 0.1 + 0.2)],
            },
        };
        assert_eq!(RunState::from_value(&state.to_value(), "run").unwrap(), state);
        // An epoch-end entry (and an older file) has no sums.
        let ended = RunState { epoch_so_far: EpochSums::default(), ..state };
        assert!(ended.to_value().get("epoch_sums").is_none());
        assert_eq!(RunState::from_value(&ended.to_value(), "run").unwrap(), ended);
    }
}
