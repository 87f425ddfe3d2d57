//! Optimisers whose state is plain tensors, so checkpoints can store and restore it in
//! PyTorch's layout (tch's libtorch optimisers keep their state out of reach).
use tch::{Kind, Tensor};

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
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Self {
        let momentum_buffers = params.iter().map(|_| None).collect();
        Self { params, momentum_buffers, config }
    }

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

    /// One update with learning rate `lr`; parameters without a gradient are skipped.
    /// Uses PyTorch's own arithmetic: the per-tensor loop on CPU, multi-tensor kernels on CUDA.
    pub fn step(&mut self, lr: f64) -> Result<(), String> {
        let SgdConfig { momentum, weight_decay, .. } = self.config;
        let foreach = self.params.first().is_some_and(|p| p.device().is_cuda());
        crate::ffi::sgd_step(&self.params, &mut self.momentum_buffers, lr, momentum, weight_decay, foreach)
    }
}

/// Dynamic loss scaling for fp16, as `torch.amp.GradScaler` with its defaults: start at 2^16,
/// halve and skip the step on inf/NaN gradients, double after 2000 clean steps.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_tracker: i64,
    pub growth_interval: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self { scale: 65536.0, growth_tracker: 0, growth_interval: 2000 }
    }
}

impl GradScaler {
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Unscales the gradients in place; returns whether all are finite. Updates the scale.
    pub fn unscale_and_update(&mut self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let finite = tch::no_grad(|| {
            let mut all_finite = true;
            let mut checks = Vec::with_capacity(grads.len());
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(inv);
                checks.push(g.isfinite().all());
            }
            if !checks.is_empty() {
                all_finite = Tensor::stack(&checks, 0).all().to_kind(Kind::Int64).int64_value(&[]) == 1;
            }
            all_finite
        });
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        }
        finite
    }
}
