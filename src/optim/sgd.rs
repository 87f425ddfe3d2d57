//! `torch.optim.SGD` with momentum and weight decay, the MoCo recipe's optimiser.
use tch::Tensor;

use super::{OptimError, Optimizer, bad, entry, group_tail, number, refuse_flag, single_group, state_tensor};
use crate::checkpoint::Value;

/// `torch.optim.SGD` hyper-parameters (no dampening, no Nesterov: the MoCo recipe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// CheSS pretraining: lr 0.03, momentum 0.9, weight decay 1e-4.
    fn default() -> Self {
        Self { lr: 0.03, momentum: 0.9, weight_decay: 1e-4 }
    }
}

/// SGD with momentum and weight decay, computing what `torch.optim.SGD` computes:
/// `g += wd * p; buf = momentum * buf + g (buf = g at the first step); p -= lr * buf`.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Tensor>,
    momentum_buffers: Vec<Option<Tensor>>,
    config: SgdConfig,
    initial_lr: Option<f64>,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Self {
        let momentum_buffers = params.iter().map(|_| None).collect();
        Self { params, momentum_buffers, config, initial_lr: None }
    }

    /// The hyper-parameters; `lr` is the one of the last step (or of the constructor).
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Momentum buffers by parameter index; `None` until a parameter first gets a gradient.
    pub fn momentum_buffers(&self) -> &[Option<Tensor>] {
        &self.momentum_buffers
    }

    /// Restores momentum buffers (e.g. from a checkpoint); the count must match the parameters.
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<(), String> {
        if buffers.len() != self.params.len() {
            return Err(format!("{} momentum buffers for {} parameters", buffers.len(), self.params.len()));
        }
        for (i, (b, p)) in buffers.iter().zip(&self.params).enumerate() {
            if let Some(b) = b
                && b.size() != p.size()
            {
                return Err(format!("momentum buffer {i}: shape {:?}, parameter {:?}", b.size(), p.size()));
            }
        }
        self.momentum_buffers = buffers
            .into_iter()
            .zip(&self.params)
            .map(|(b, p)| b.map(|b| b.to_device(p.device()).to_kind(p.kind())))
            .collect();
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Gradients of all parameters that have one.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::grad).filter(Tensor::defined).collect()
    }

    /// One update with learning rate `lr` (which becomes the current one, as a scheduler's
    /// `group["lr"] = lr` would); parameters without a gradient are skipped.
    /// Uses PyTorch's own arithmetic: the per-tensor loop on CPU, multi-tensor kernels on CUDA.
    pub fn step(&mut self, lr: f64) -> Result<(), String> {
        self.config.lr = lr;
        let SgdConfig { momentum, weight_decay, .. } = self.config;
        let foreach = self.params.first().is_some_and(|p| p.device().is_cuda());
        crate::ffi::sgd_step(&self.params, &mut self.momentum_buffers, lr, momentum, weight_decay, foreach)
    }
}

impl Optimizer for Sgd {
    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn zero_grad(&mut self) {
        Sgd::zero_grad(self);
    }

    fn step(&mut self) -> Result<(), OptimError> {
        Sgd::step(self, self.config.lr).map_err(OptimError::Step)
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn initial_lr(&self) -> Option<f64> {
        self.initial_lr
    }

    fn set_initial_lr(&mut self, lr: f64) {
        self.initial_lr = Some(lr);
    }

    /// `{"state": {i: {"momentum_buffer": t}}` for parameters that have one, and the group of
    /// `torch.optim.SGD(params, lr, momentum, weight_decay=...)`.
    fn state_dict(&self) -> Value {
        let state = self
            .momentum_buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let b = b.as_ref()?;
                let entry =
                    Value::Dict(vec![(Value::str("momentum_buffer"), Value::Tensor(b.detach().copy()))]);
                Some((Value::Int(i as i64), entry))
            })
            .collect();
        let c = self.config;
        let mut group = vec![
            (Value::str("lr"), Value::Float(c.lr)),
            (Value::str("momentum"), Value::Float(c.momentum)),
            (Value::str("dampening"), Value::Int(0)),
            (Value::str("weight_decay"), Value::Float(c.weight_decay)),
            (Value::str("nesterov"), Value::Bool(false)),
            (Value::str("maximize"), Value::Bool(false)),
            (Value::str("foreach"), Value::None),
            (Value::str("differentiable"), Value::Bool(false)),
            (Value::str("fused"), Value::None),
        ];
        group_tail(&mut group, self.initial_lr, self.params.len());
        Value::Dict(vec![
            (Value::str("state"), Value::Dict(state)),
            (Value::str("param_groups"), Value::List(vec![Value::Dict(group)])),
        ])
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let super::SavedGroup { group, per_param: entries } = single_group(state, self.params.len())?;
        let what = "the SGD group";
        let config = SgdConfig {
            lr: number(entry(group, "lr", what)?, "lr")?,
            momentum: number(entry(group, "momentum", what)?, "momentum")?,
            weight_decay: number(entry(group, "weight_decay", what)?, "weight_decay")?,
        };
        if number(entry(group, "dampening", what)?, "dampening")? != 0.0 {
            return Err(bad("dampening is not 0; not supported here"));
        }
        refuse_flag(group, "nesterov")?;
        refuse_flag(group, "maximize")?;
        let initial_lr = group.get("initial_lr").map(|v| number(v, "initial_lr")).transpose()?;
        let mut buffers: Vec<Option<Tensor>> = self.params.iter().map(|_| None).collect();
        for (i, e) in entries {
            if e.get("momentum_buffer").is_some_and(|b| !matches!(b, Value::None)) {
                buffers[i] = Some(state_tensor(e, "momentum_buffer", i, &self.params[i])?);
            }
        }
        self.config = config;
        self.initial_lr = initial_lr;
        self.momentum_buffers = buffers;
        Ok(())
    }
}
