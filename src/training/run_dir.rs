//! A run's folder: `config.json` (what was run), `metrics.jsonl` (one JSON record per line, as
//! it happens) and the checkpoints, named by their position so that names sort in run order.
//! Under torchrun only rank 0 writes: every rank holds the same state.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{RunPosition, TrainingError, latest_checkpoint, prune_mid_epoch};
use crate::checkpoint::{self, Value};

/// The output folder of a run.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    is_main: bool,
}

impl RunDir {
    /// Creates the folder (on every rank: they may need it for their own files, e.g. caches).
    pub fn create(path: PathBuf, is_main: bool) -> Result<Self, TrainingError> {
        std::fs::create_dir_all(&path).map_err(|e| TrainingError::io(&path, "cannot create", e))?;
        Ok(Self { path, is_main })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process writes (rank 0, or a plain run).
    pub fn is_main(&self) -> bool {
        self.is_main
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// `config.json`, written whole or not at all.
    pub fn write_config(&self, config: &Json) -> Result<(), TrainingError> {
        if !self.is_main {
            return Ok(());
        }
        let path = self.path.join("config.json");
        let text = serde_json::to_string_pretty(config).expect("JSON values serialise") + "\n";
        crate::atomic::write_atomically(&path, |f| f.write_all(text.as_bytes()))
            .map_err(|e| TrainingError::io(&path, "cannot write", e))
    }

    /// The metrics log, appended to (a resumed run continues the same file).
    pub fn metrics_log(&self) -> Result<MetricsLog, TrainingError> {
        if !self.is_main {
            return Ok(MetricsLog { file: None, path: self.metrics_path() });
        }
        let path = self.metrics_path();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainingError::io(&path, "cannot open", e))?;
        Ok(MetricsLog { file: Some(file), path })
    }

    /// The newest checkpoint of the folder, for `--resume auto`.
    pub fn latest_checkpoint(&self) -> Result<Option<(RunPosition, PathBuf)>, TrainingError> {
        latest_checkpoint(&self.path).map_err(|e| TrainingError::io(&self.path, "cannot list", e))
    }

    /// Writes `root` as the checkpoint of `position` (atomically: a killed run leaves the
    /// previous file or the new one, never half of one) and removes the mid-epoch checkpoints
    /// it supersedes.
    pub fn save_checkpoint(&self, position: RunPosition, root: &Value) -> Result<PathBuf, TrainingError> {
        let path = self.path.join(position.file_name());
        checkpoint::save(&path, root)?;
        prune_mid_epoch(&self.path, position)
            .map_err(|e| TrainingError::io(&self.path, "cannot prune", e))?;
        Ok(path)
    }
}

/// `metrics.jsonl`: one record per line, each line one `write` (a reader such as `tail -f` or a
/// dashboard never sees half a record), flushed at once (a killed run keeps its log). On ranks
/// other than 0 it writes nothing.
#[derive(Debug)]
pub struct MetricsLog {
    file: Option<File>,
    path: PathBuf,
}

impl MetricsLog {
    pub fn write(&mut self, record: &Json) -> Result<(), TrainingError> {
        if let Some(f) = &mut self.file {
            f.write_all(format!("{record}\n").as_bytes())
                .map_err(|e| TrainingError::io(&self.path, "cannot write", e))?;
        }
        Ok(())
    }

    /// Whether records are written (rank 0).
    pub fn is_main(&self) -> bool {
        self.file.is_some()
    }
}
