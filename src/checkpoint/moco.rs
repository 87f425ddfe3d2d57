//! MoCo training checkpoints in the original layout, so that a run moves freely between this
//! crate and the Python code:
//! `{'epoch', 'arch', 'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue',
//! 'module.queue_ptr'}, 'optimizer': SGD state_dict}`.
use std::collections::HashMap;

use tch::Tensor;

use super::{Checkpoint, CheckpointError, Value};
use crate::model::{self, MocoTrainer};

/// The DDP prefix the original code's state dicts carry.
pub const PREFIX: &str = "module.";

/// The checkpoint of `trainer` after `epoch` finished epochs; `extra` entries (e.g. step
/// counters and RNG state for exact resume) are appended to the top-level dict.
pub fn to_value(trainer: &MocoTrainer, epoch: i64, lr: f64, extra: Vec<(String, Value)>) -> Value {
    let moco = &trainer.model;
    let state: Vec<(Value, Value)> = model::state_dict(moco, "module")
        .into_iter()
        .map(|(name, t)| (Value::Str(name), Value::Tensor(t)))
        .collect();
    // The original optimiser holds all parameters of the model (query then key encoder); the
    // key encoder's never receive gradients, so only the first half carry momentum buffers.
    let n_query = trainer.optimizer.params().len() as i64;
    let opt_state: Vec<(Value, Value)> = trainer
        .optimizer
        .momentum_buffers()
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let b = b.as_ref()?;
            let entry = Value::Dict(vec![(Value::str("momentum_buffer"), Value::Tensor(b.detach().copy()))]);
            Some((Value::Int(i as i64), entry))
        })
        .collect();
    let cfg = trainer.optimizer.config();
    let group = Value::Dict(vec![
        (Value::str("lr"), Value::Float(lr)),
        (Value::str("momentum"), Value::Float(cfg.momentum)),
        (Value::str("dampening"), Value::Int(0)),
        (Value::str("weight_decay"), Value::Float(cfg.weight_decay)),
        (Value::str("nesterov"), Value::Bool(false)),
        (Value::str("maximize"), Value::Bool(false)),
        (Value::str("foreach"), Value::None),
        (Value::str("differentiable"), Value::Bool(false)),
        (Value::str("fused"), Value::None),
        (Value::str("params"), Value::List((0..2 * n_query).map(Value::Int).collect())),
    ]);
    let optimizer = Value::Dict(vec![
        (Value::str("state"), Value::Dict(opt_state)),
        (Value::str("param_groups"), Value::List(vec![group])),
    ]);
    let mut root = vec![
        (Value::str("epoch"), Value::Int(epoch)),
        (Value::str("arch"), Value::str(moco.config().arch.name())),
        (Value::str("state_dict"), Value::OrderedDict(state)),
        (Value::str("optimizer"), optimizer),
    ];
    root.extend(extra.into_iter().map(|(k, v)| (Value::Str(k), v)));
    Value::Dict(root)
}

/// Restores model state and momentum buffers from a checkpoint in the original layout;
/// returns the epoch it records. Shapes must match the trainer's configuration.
pub fn restore(trainer: &mut MocoTrainer, ckpt: &Checkpoint) -> Result<i64, CheckpointError> {
    let root = &ckpt.root;
    let bad = |m: &str| CheckpointError::Mapping(format!("not a MoCo checkpoint: {m}"));
    let epoch = root.get("epoch").and_then(Value::as_int).ok_or_else(|| bad("no 'epoch'"))?;
    if let Some(arch) = root.get("arch").and_then(Value::as_str) {
        let want = trainer.model.config().arch.name();
        if arch != want {
            return Err(CheckpointError::Mapping(format!("checkpoint arch is {arch}, the run uses {want}")));
        }
    }
    let sd = root.get("state_dict").ok_or_else(|| bad("no 'state_dict'"))?;
    let tensors: HashMap<String, Tensor> = sd
        .flatten()
        .into_iter()
        .map(|(n, t)| (n.strip_prefix(PREFIX).map(str::to_string).unwrap_or(n), t))
        .collect();
    model::load_state(&trainer.model, "", &tensors).map_err(|e| CheckpointError::Mapping(e.to_string()))?;

    let n = trainer.optimizer.params().len();
    let mut buffers: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
    if let Some(state) = root.get("optimizer").and_then(|o| o.get("state")).and_then(Value::as_dict) {
        for (k, v) in state {
            let Some(i) = k.as_int().filter(|&i| (0..n as i64).contains(&i)) else {
                continue; // key-encoder indices carry no state in valid checkpoints
            };
            if let Some(b) = v.get("momentum_buffer").and_then(Value::as_tensor) {
                buffers[i as usize] = Some(b.copy());
            }
        }
    }
    trainer.optimizer.set_momentum_buffers(buffers).map_err(CheckpointError::Mapping)?;
    Ok(epoch)
}
