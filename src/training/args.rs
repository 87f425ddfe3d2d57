//! The flags every training program shares, so that `--out`, `--resume auto`, `--seed` or
//! `--amp` mean the same in each (`#[command(flatten)] run: RunArgs` in a program's flags).
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tch::Device;

use super::TrainingError;
use crate::device::{Resolved, resolve_channels_last, resolve_precision};
use crate::distributed::{self, Backend, ProcessGroup};
use crate::{DeviceSpec, Precision};

/// Output, resume, checkpoints, logging, device and launch flags.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct RunArgs {
    /// Output folder: config.json, metrics.jsonl, checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Resume: `auto` (the newest checkpoint in --out, if any) or a checkpoint path.
    #[arg(long)]
    pub resume: Option<String>,
    /// Write the epoch checkpoint every N epochs (and always after the last, or on a stop).
    #[arg(long, default_value_t = 1)]
    pub save_every_epochs: u64,
    /// Also write a checkpoint every N steps (0: only at epoch ends).
    #[arg(long, default_value_t = 10_000)]
    pub save_every_iters: u64,
    /// Write a metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Stop (with a checkpoint) after this many steps in all; for benchmarks and smoke runs.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Seed of initialisation, shuffling, augmentation and every random choice of a step.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Mixed precision of the forward passes: auto | off | bf16 | fp16 (fp16 with loss scaling).
    /// auto: bf16 where the device computes it natively (CPUs with AVX512_BF16 or AMX, CUDA
    /// compute capability 8.0+), off elsewhere.
    #[arg(long, default_value = "auto")]
    pub amp: String,
    /// channels_last memory format: auto | on | off (`--channels-last` alone: on). auto: on for
    /// CUDA and CPU, where it was measured faster.
    #[arg(long, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    pub channels_last: String,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Under torchrun: c10d backend, nccl | gloo (default: nccl on CUDA, gloo on CPU).
    #[arg(long)]
    pub backend: Option<String>,
    /// Under torchrun: seconds a collective may wait for the other ranks before the run stops
    /// with an error (a rank died or hangs).
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,
}

impl RunArgs {
    /// The device, and the torchrun group when torchrun started this process (each rank then
    /// trains on `cuda:LOCAL_RANK`).
    pub fn device_and_group(&self) -> Result<(Device, Option<std::sync::Arc<ProcessGroup>>), TrainingError> {
        let device = self.device.parse::<DeviceSpec>()?.resolve()?;
        let backend = match &self.backend {
            Some(name) => Some(name.parse::<Backend>().map_err(TrainingError::Config)?),
            None => None,
        };
        let timeout = Duration::from_secs(self.dist_timeout.max(1));
        Ok(distributed::join_from_env(device, backend, timeout)?)
    }

    /// `--amp` and `--channels-last` resolved for `device`, with their reasons.
    pub fn speed(&self, device: Device) -> Result<SpeedSettings, TrainingError> {
        Ok(SpeedSettings {
            precision: resolve_precision(&self.amp, device)?,
            channels_last: resolve_channels_last(&self.channels_last, device)?,
        })
    }

    /// Decode threads: `--workers`, else every core.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(default_workers)
    }

    /// The run's schedule of logs and checkpoints for `epochs` epochs of `batch_images` images.
    pub fn run_config(&self, epochs: u64, batch_images: usize) -> super::RunConfig {
        super::RunConfig {
            epochs,
            log_every: self.log_every,
            save_every_epochs: self.save_every_epochs,
            save_every_iters: self.save_every_iters,
            max_steps: self.max_steps,
            seed: self.seed,
            resume: self.resume.clone(),
            batch_images,
        }
    }
}

/// Where a saved model runs, and in what precision (every inference subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Mixed precision of the forward passes: off | auto | bf16 | fp16 (off: fp32, so that
    /// outputs do not depend on the machine).
    #[arg(long, default_value = "off")]
    pub amp: String,
}

impl DeviceArgs {
    pub fn device(&self) -> Result<Device, TrainingError> {
        Ok(self.device.parse::<DeviceSpec>()?.resolve()?)
    }

    /// `--amp` on `device` (`auto` resolved as for training).
    pub fn precision(&self, device: Device) -> Result<Precision, TrainingError> {
        Ok(resolve_precision(&self.amp, device)?.value)
    }
}

/// [`DeviceArgs`] and batching for subcommands over many images (`eval`, `predict`, `compare`,
/// `generate`): one type for every program, the `--batch-size` default (`BATCH`) sized to the
/// program's model.
#[derive(clap::Args, Debug, Clone)]
pub struct InferenceArgs<const BATCH: usize> {
    #[command(flatten)]
    pub on: DeviceArgs,
    #[arg(long, default_value_t = BATCH)]
    pub batch_size: usize,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
}

impl<const BATCH: usize> InferenceArgs<BATCH> {
    pub fn device(&self) -> Result<Device, TrainingError> {
        self.on.device()
    }

    pub fn precision(&self, device: Device) -> Result<Precision, TrainingError> {
        self.on.precision(device)
    }

    /// Decode threads: `--workers`, else every core.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(default_workers)
    }

    /// `--batch-size`, at least 1.
    pub fn batch_size(&self) -> usize {
        self.batch_size.max(1)
    }
}

/// Decode threads when `--workers` is not given: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What `--amp` and `--channels-last` came to on this run's device.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedSettings {
    pub precision: Resolved<Precision>,
    pub channels_last: Resolved<bool>,
}

impl SpeedSettings {
    /// For the start line: `amp bf16 (auto: the CPU has AVX512_BF16), channels_last on (...)`.
    pub fn describe(&self) -> String {
        format!(
            "amp {} ({}), channels_last {} ({})",
            self.precision.value,
            self.precision.reason,
            if self.channels_last.value { "on" } else { "off" },
            self.channels_last.reason
        )
    }

    /// For `config.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "amp": self.precision.value.to_string(),
            "amp_reason": self.precision.reason,
            "channels_last": self.channels_last.value,
            "channels_last_reason": self.channels_last.reason,
        })
    }
}
