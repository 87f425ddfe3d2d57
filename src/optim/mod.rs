//! Optimisers and learning-rate schedules whose state is plain tensors and numbers, so that
//! checkpoints store and restore it in PyTorch's own layout (tch's libtorch optimisers keep their
//! state out of reach): what `optimizer.state_dict()` and `scheduler.state_dict()` return in
//! PyTorch 2.11, which PyTorch's `load_state_dict` accepts and which ours read back.
//!
//! - [`Sgd`]: `torch.optim.SGD` (momentum, weight decay), the MoCo recipe's optimiser.
//! - [`Adam`]: `torch.optim.Adam` and, with [`AdamConfig::adamw`], `torch.optim.AdamW`.
//! - [`schedule`]: `CosineAnnealingLR`, `StepLR`, `MultiStepLR`, `ReduceLROnPlateau` and the
//!   GAN recipes' constant-then-linear decay (`LambdaLR`).
//! - [`GradScaler`]: fp16 loss scaling.
//!
//! Every optimiser holds one parameter group, as the four training programs need.
pub mod adam;
pub mod grad_scaler;
pub mod schedule;
pub mod sgd;

use tch::{Kind, Tensor};

use crate::checkpoint::Value;

pub use adam::{Adam, AdamConfig, AdamState};
pub use grad_scaler::GradScaler;
pub use schedule::{
    CosineAnnealingLr, LinearDecayLr, LinearDecayRule, LrScheduler, MultiStepLr, PlateauConfig, PlateauMode,
    ReduceLrOnPlateau, StepLr, ThresholdMode,
};
pub use sgd::{Sgd, SgdConfig};

/// Errors of stepping optimisers and of restoring optimiser and scheduler state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A libtorch call failed (the message is libtorch's).
    #[error("optimiser step: {0}")]
    Step(String),
    /// A hyper-parameter PyTorch would refuse too (e.g. a plateau factor >= 1, a step size of 0).
    #[error("invalid {0}")]
    Invalid(String),
    /// A state dict that does not fit this optimiser or scheduler: what is wrong, where.
    #[error("optimiser state dict: {0}")]
    StateDict(String),
}

/// What every optimiser offers a generic training run and checkpoint.
pub trait Optimizer {
    /// The parameters, in the order of the state dict's indices.
    fn params(&self) -> &[Tensor];

    /// Zeroes the gradients in place (they stay defined, so a parameter that had a gradient is
    /// still stepped; PyTorch's default `set_to_none=True` would skip it).
    fn zero_grad(&mut self);

    /// One update with the current learning rate; parameters without a gradient are skipped.
    fn step(&mut self) -> Result<(), OptimError>;

    /// The current learning rate (`param_groups[0]["lr"]`).
    fn lr(&self) -> f64;

    fn set_lr(&mut self, lr: f64);

    /// `param_groups[0]["initial_lr"]`, which PyTorch's schedulers add to the group.
    fn initial_lr(&self) -> Option<f64>;

    fn set_initial_lr(&mut self, lr: f64);

    /// Exactly PyTorch's `optimizer.state_dict()`: `{"state": {index: {...}}, "param_groups":
    /// [{hyper-parameters..., "params": [0, 1, ...]}]}`.
    fn state_dict(&self) -> Value;

    /// Restores what [`Optimizer::state_dict`] (or PyTorch) wrote: hyper-parameters and state;
    /// parameter counts and state shapes must match.
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError>;
}

fn bad(msg: impl Into<String>) -> OptimError {
    OptimError::StateDict(msg.into())
}

/// A number of a state dict: Python ints and floats are both accepted where PyTorch takes either.
pub(crate) fn number(v: &Value, what: &str) -> Result<f64, OptimError> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(bad(format!("'{what}' is a {}, not a number", other.type_name()))),
    }
}

pub(crate) fn integer(v: &Value, what: &str) -> Result<i64, OptimError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Float(f) if f.fract() == 0.0 => Ok(*f as i64),
        other => Err(bad(format!("'{what}' is a {}, not an int", other.type_name()))),
    }
}

pub(crate) fn boolean(v: &Value, what: &str) -> Result<bool, OptimError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(i) => Ok(*i != 0),
        other => Err(bad(format!("'{what}' is a {}, not a bool", other.type_name()))),
    }
}

pub(crate) fn entry<'a>(dict: &'a Value, key: &str, what: &str) -> Result<&'a Value, OptimError> {
    dict.get(key).ok_or_else(|| bad(format!("{what} has no '{key}'")))
}

/// The items of a Python list or tuple.
pub(crate) fn items<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], OptimError> {
    match v {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        other => Err(bad(format!("'{what}' is a {}, not a list", other.type_name()))),
    }
}

/// The one parameter group of a saved optimiser, and its per-parameter state by position.
pub(crate) struct SavedGroup<'a> {
    pub group: &'a Value,
    pub per_param: Vec<(usize, &'a Value)>,
}

/// The single parameter group of an optimizer state dict, checked to hold `n` parameters.
pub(crate) fn single_group(state: &Value, n: usize) -> Result<SavedGroup<'_>, OptimError> {
    let groups = items(entry(state, "param_groups", "the state dict")?, "param_groups")?;
    let [group] = groups else {
        return Err(bad(format!("{} parameter groups, this optimiser has one", groups.len())));
    };
    let ids = items(entry(group, "params", "the parameter group")?, "params")?;
    if ids.len() != n {
        return Err(bad(format!("the saved group holds {} parameters, this optimiser {n}", ids.len())));
    }
    let mut position = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        position.insert(integer(id, "params")?, i);
    }
    let entries =
        entry(state, "state", "the state dict")?.as_dict().ok_or_else(|| bad("'state' is not a dict"))?;
    let mut per_param = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let id = integer(k, "a state key")?;
        let &i = position
            .get(&id)
            .ok_or_else(|| bad(format!("state for parameter {id}, which no group holds")))?;
        per_param.push((i, v));
    }
    Ok(SavedGroup { group, per_param })
}

/// A state tensor for parameter `index`, checked against the parameter's shape and moved to its
/// device and dtype, as PyTorch's `Optimizer.load_state_dict` casts state.
pub(crate) fn state_tensor(
    entry_value: &Value,
    key: &str,
    index: usize,
    param: &Tensor,
) -> Result<Tensor, OptimError> {
    let t = entry_value
        .get(key)
        .and_then(Value::as_tensor)
        .ok_or_else(|| bad(format!("state of parameter {index} has no tensor '{key}'")))?;
    if t.size() != param.size() {
        return Err(bad(format!(
            "'{key}' of parameter {index} has shape {:?}, the parameter {:?}",
            t.size(),
            param.size()
        )));
    }
    let kind = if param.is_floating_point() { param.kind() } else { t.kind() };
    Ok(t.to_device(param.device()).to_kind(kind).copy())
}

/// `torch.tensor(float(step))` as PyTorch keeps Adam's step: a float32 scalar on the CPU.
pub(crate) fn step_tensor(v: &Value, index: usize) -> Result<Tensor, OptimError> {
    let value = match v {
        Value::Tensor(t) if t.numel() == 1 => t.to_kind(Kind::Double).double_value(&[]),
        other => number(other, &format!("step of parameter {index}"))?,
    };
    Ok(Tensor::from_slice(&[value as f32]).view([0i64; 0]))
}

/// The group entries every PyTorch optimiser ends with: `initial_lr` when a scheduler set it,
/// then `params`.
pub(crate) fn group_tail(group: &mut Vec<(Value, Value)>, initial_lr: Option<f64>, n: usize) {
    if let Some(lr) = initial_lr {
        group.push((Value::str("initial_lr"), Value::Float(lr)));
    }
    group.push((Value::str("params"), Value::List((0..n as i64).map(Value::Int).collect())));
}

/// Fails when a flag this crate does not implement is set in a saved group.
pub(crate) fn refuse_flag(group: &Value, key: &str) -> Result<(), OptimError> {
    match group.get(key) {
        Some(Value::Bool(true)) => Err(bad(format!("'{key}' is set; not supported here"))),
        Some(Value::Int(i)) if *i != 0 => Err(bad(format!("'{key}' is {i}; not supported here"))),
        _ => Ok(()),
    }
}
