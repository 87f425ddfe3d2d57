//! SIGINT and SIGTERM as a clean stop: the step in flight finishes, a checkpoint is written,
//! the program exits with status 0 and `--resume auto` continues. A second signal exits at once.
//! Under torchrun the ranks agree, so that all of them stop after the same step.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::Device;

use super::TrainingError;
use crate::distributed::ProcessGroup;

/// The stop request of this process, and whether the ranks agreed on one.
#[derive(Debug)]
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    agreed: bool,
    handlers: Vec<signal_hook::SigId>,
}

impl StopSignal {
    /// Installs the handlers: the first signal sets the flag, a second one ends the process.
    pub fn install() -> Result<Self, TrainingError> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut handlers = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let shutdown = signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone());
            handlers.push(shutdown.map_err(TrainingError::Signal)?);
            handlers.push(signal_hook::flag::register(sig, flag.clone()).map_err(TrainingError::Signal)?);
        }
        Ok(Self { flag, agreed: false, handlers })
    }

    /// Whether this process was signalled.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Asks every rank whether any was signalled (without a group: this process); the answer
    /// stays in [`StopSignal::agreed`].
    pub fn agree(&mut self, group: Option<&ProcessGroup>, device: Device) -> Result<bool, TrainingError> {
        let local = self.requested();
        self.agreed = match group {
            Some(g) => g.any(local, device)?,
            None => local,
        };
        Ok(self.agreed)
    }

    pub fn agreed(&self) -> bool {
        self.agreed
    }
}

impl Drop for StopSignal {
    /// A later run in the same process (a test, a notebook-like driver) starts with a clean
    /// slate: a signal no longer reaches this run's flag, nor exits because it was set.
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
