//! The checkpoint of any training run (classification, bone suppression, the nodule GAN): one
//! dict that `torch.load(path, weights_only=True)` reads, laid out in `docs/checkpoints.md`:
//!
//! ```text
//! {"format": "chess-rs/training-state/1",
//!  "models":     {"net_G": OrderedDict(state_dict), "net_D": ..., ...},
//!  "optimizers": {"G": optimizer.state_dict(), "D": ...},
//!  "schedulers": {"G": scheduler.state_dict(), ...},
//!  "scaler":     torch.amp.GradScaler.state_dict()   (fp16 runs only),
//!  "run":        {"epoch", "step_in_epoch", "global_step", "seed", "version"}}
//! ```
//!
//! Model names are the program's (NVlabs SPADE's `net_G`, `net_D`, `net_E`; `model` for one),
//! each a plain `state_dict()` that the PyTorch module of the same architecture loads; each
//! optimiser and scheduler entry is what PyTorch's own `state_dict()` returns, so its
//! `load_state_dict` accepts it. MoCo pretraining keeps the original code's layout instead
//! (see [`super::moco`]).
use std::collections::HashMap;

use tch::Tensor;

use super::{Checkpoint, CheckpointError, Value};
use crate::model::StateDict;
use crate::optim::{GradScaler, LrScheduler, Optimizer};
use crate::training::RunState;

/// The `format` entry: what this layout is, and its version.
pub const FORMAT: &str = "chess-rs/training-state/1";

/// Builds a training-state checkpoint, entry by entry.
#[derive(Debug, Default)]
pub struct StateWriter {
    models: Vec<(Value, Value)>,
    optimizers: Vec<(Value, Value)>,
    schedulers: Vec<(Value, Value)>,
    scaler: Option<Value>,
}

impl StateWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn model(mut self, name: &str, model: &dyn StateDict) -> Self {
        let tensors = model
            .named_tensors("")
            .into_iter()
            .map(|t| (Value::Str(t.name), Value::Tensor(t.tensor.detach())))
            .collect();
        self.models.push((Value::str(name), Value::OrderedDict(tensors)));
        self
    }

    pub fn optimizer(mut self, name: &str, optimizer: &dyn Optimizer) -> Self {
        self.optimizers.push((Value::str(name), optimizer.state_dict()));
        self
    }

    pub fn scheduler(mut self, name: &str, scheduler: &dyn LrScheduler) -> Self {
        self.schedulers.push((Value::str(name), scheduler.state_dict()));
        self
    }

    /// `torch.amp.GradScaler.state_dict()`, with its default growth and backoff factors.
    pub fn scaler(mut self, scaler: &GradScaler) -> Self {
        self.scaler = Some(Value::Dict(vec![
            (Value::str("scale"), Value::Float(scaler.scale)),
            (Value::str("growth_factor"), Value::Float(2.0)),
            (Value::str("backoff_factor"), Value::Float(0.5)),
            (Value::str("growth_interval"), Value::Int(scaler.growth_interval)),
            (Value::str("_growth_tracker"), Value::Int(scaler.growth_tracker)),
        ]));
        self
    }

    /// The whole dict, with the run's position.
    pub fn finish(self, run: &RunState) -> Value {
        let mut root = vec![
            (Value::str("format"), Value::str(FORMAT)),
            (Value::str("models"), Value::Dict(self.models)),
            (Value::str("optimizers"), Value::Dict(self.optimizers)),
            (Value::str("schedulers"), Value::Dict(self.schedulers)),
        ];
        if let Some(scaler) = self.scaler {
            root.push((Value::str("scaler"), scaler));
        }
        root.push((Value::str("run"), RunState { scaler: None, ..run.clone() }.to_value()));
        Value::Dict(root)
    }
}

/// Reads a training-state checkpoint back into a program's models, optimisers and schedulers.
#[derive(Debug)]
pub struct StateReader<'a> {
    root: &'a Value,
}

impl<'a> StateReader<'a> {
    /// Refuses a checkpoint of another layout (e.g. a MoCo checkpoint given to `--resume` of
    /// another program) with one line saying what it is.
    pub fn new(ckpt: &'a Checkpoint) -> Result<Self, CheckpointError> {
        match ckpt.root.get("format").and_then(Value::as_str) {
            Some(FORMAT) => Ok(Self { root: &ckpt.root }),
            Some(other) => Err(mapping(format!("a '{other}' checkpoint; this program reads '{FORMAT}'"))),
            None if ckpt.root.get("state_dict").is_some() => Err(mapping(format!(
                "a model checkpoint (MoCo or PyTorch training layout), not a '{FORMAT}' training state: \
                 use it as initial weights, not to resume"
            ))),
            None => Err(mapping(format!("not a '{FORMAT}' training state (no 'format' entry)"))),
        }
    }

    fn entry(&self, group: &str, name: &str) -> Result<&'a Value, CheckpointError> {
        self.root
            .get(group)
            .and_then(|g| g.get(name))
            .ok_or_else(|| mapping(format!("no '{group}.{name}' entry")))
    }

    /// Copies the tensors of model `name` into `model` (every tensor present, with its shape).
    pub fn model(&self, name: &str, model: &dyn StateDict) -> Result<(), CheckpointError> {
        let entries = self
            .entry("models", name)?
            .as_dict()
            .ok_or_else(|| mapping(format!("'models.{name}' is not a dict")))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in entries {
            if let (Some(k), Value::Tensor(t)) = (k.as_str(), v) {
                tensors.insert(k.to_string(), t.shallow_clone());
            }
        }
        crate::model::load_state(model, "", &tensors).map_err(|e| mapping(format!("'models.{name}': {e}")))
    }

    pub fn optimizer(&self, name: &str, optimizer: &mut dyn Optimizer) -> Result<(), CheckpointError> {
        optimizer
            .load_state_dict(self.entry("optimizers", name)?)
            .map_err(|e| mapping(format!("'optimizers.{name}': {e}")))
    }

    pub fn scheduler(&self, name: &str, scheduler: &mut dyn LrScheduler) -> Result<(), CheckpointError> {
        scheduler
            .load_state_dict(self.entry("schedulers", name)?)
            .map_err(|e| mapping(format!("'schedulers.{name}': {e}")))
    }

    /// Restores the loss scaler, when the checkpoint has one.
    pub fn scaler(&self, scaler: &mut GradScaler) -> Result<(), CheckpointError> {
        let Some(s) = self.root.get("scaler") else { return Ok(()) };
        let scale = match s.get("scale") {
            Some(Value::Float(f)) => *f,
            Some(Value::Int(i)) => *i as f64,
            _ => return Err(mapping("'scaler.scale' is missing".into())),
        };
        scaler.scale = scale;
        scaler.growth_tracker = s.get("_growth_tracker").and_then(Value::as_int).unwrap_or(0);
        if let Some(i) = s.get("growth_interval").and_then(Value::as_int) {
            scaler.growth_interval = i;
        }
        Ok(())
    }

    pub fn run(&self) -> Result<RunState, CheckpointError> {
        let run = self.root.get("run").ok_or_else(|| mapping("no 'run' entry".into()))?;
        RunState::from_value(run, "run")
    }
}

fn mapping(msg: String) -> CheckpointError {
    CheckpointError::Mapping(msg)
}
