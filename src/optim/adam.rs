//! `torch.optim.Adam` and `torch.optim.AdamW`, with PyTorch's arithmetic and state layout.
use tch::{Kind, Tensor};

use super::{
    OptimError, Optimizer, bad, boolean, entry, group_tail, items, number, refuse_flag, single_group,
    state_tensor, step_tensor,
};
use crate::checkpoint::Value;

/// Adam's hyper-parameters; `decoupled_weight_decay` makes it AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    /// `(beta1, beta2)`; GANs (SPADE's TTUR, pix2pix) use `(0.0, 0.9)` or `(0.5, 0.999)`.
    pub betas: (f64, f64),
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam), or decay of the weights themselves by
    /// `lr * weight_decay` before the update (AdamW).
    pub weight_decay: f64,
    /// The AMSGrad variant: normalise by the running maximum of the second moment.
    pub amsgrad: bool,
    pub decoupled_weight_decay: bool,
}

impl AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn adam() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decoupled_weight_decay: false,
        }
    }

    /// `torch.optim.AdamW`'s defaults: as Adam's, with decoupled weight decay 1e-2.
    pub fn adamw() -> Self {
        Self { weight_decay: 1e-2, decoupled_weight_decay: true, ..Self::adam() }
    }
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self::adam()
    }
}

/// One parameter's state, under PyTorch's names.
#[derive(Debug)]
pub struct AdamState {
    /// Steps taken, a float32 scalar on the CPU as PyTorch keeps it (neither fused nor capturable).
    pub step: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Only with AMSGrad.
    pub max_exp_avg_sq: Option<Tensor>,
}

/// Adam or AdamW over one parameter group, computing what torch 2.11's default CPU path
/// (`_single_tensor_adam`) computes, op for op, so results equal PyTorch's bit for bit on CPU.
/// On CUDA the same per-tensor ops run; PyTorch would take its `foreach` path there, whose
/// rounding can differ in the last bit.
#[derive(Debug)]
pub struct Adam {
    params: Vec<Tensor>,
    state: Vec<Option<AdamState>>,
    config: AdamConfig,
    initial_lr: Option<f64>,
}

impl Adam {
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Self {
        let state = params.iter().map(|_| None).collect();
        Self { params, state, config, initial_lr: None }
    }

    pub fn config(&self) -> AdamConfig {
        self.config
    }

    /// State by parameter index; `None` until a parameter first gets a gradient.
    pub fn state(&self) -> &[Option<AdamState>] {
        &self.state
    }

    fn zeros_like(p: &Tensor) -> Tensor {
        tch::no_grad(|| p.zeros_like())
    }
}

impl Optimizer for Adam {
    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    fn step(&mut self) -> Result<(), OptimError> {
        let c = self.config;
        let mut params = Vec::new();
        let mut grads = Vec::new();
        let (mut exp_avgs, mut exp_avg_sqs, mut max_exp_avg_sqs, mut steps) =
            (vec![], vec![], vec![], vec![]);
        for (p, s) in self.params.iter().zip(&mut self.state) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if matches!(p.kind(), Kind::ComplexFloat | Kind::ComplexDouble | Kind::ComplexHalf) {
                return Err(OptimError::Step("complex parameters are not supported".into()));
            }
            let s = s.get_or_insert_with(|| AdamState {
                step: Tensor::from_slice(&[0f32]).view([0i64; 0]),
                exp_avg: Self::zeros_like(p),
                exp_avg_sq: Self::zeros_like(p),
                max_exp_avg_sq: c.amsgrad.then(|| Self::zeros_like(p)),
            });
            if c.amsgrad && s.max_exp_avg_sq.is_none() {
                s.max_exp_avg_sq = Some(Self::zeros_like(p));
            }
            params.push(p.shallow_clone());
            grads.push(g);
            exp_avgs.push(s.exp_avg.shallow_clone());
            exp_avg_sqs.push(s.exp_avg_sq.shallow_clone());
            steps.push(s.step.shallow_clone());
            if c.amsgrad {
                max_exp_avg_sqs.extend(s.max_exp_avg_sq.as_ref().map(Tensor::shallow_clone));
            }
        }
        if params.is_empty() {
            return Ok(());
        }
        let tensors = crate::ffi::AdamTensors {
            params: &params,
            grads: &grads,
            exp_avgs: &exp_avgs,
            exp_avg_sqs: &exp_avg_sqs,
            max_exp_avg_sqs: &max_exp_avg_sqs,
            steps: &steps,
        };
        let scalars = crate::ffi::AdamScalars {
            lr: c.lr,
            beta1: c.betas.0,
            beta2: c.betas.1,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
            decoupled_weight_decay: c.decoupled_weight_decay,
        };
        crate::ffi::adam_step(&tensors, &scalars).map_err(OptimError::Step)
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

    /// `{"state": {i: {"step", "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"]}}, "param_groups":
    /// [{"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable",
    /// "differentiable", "fused", "decoupled_weight_decay"[, "initial_lr"], "params"}]}`.
    fn state_dict(&self) -> Value {
        let t = |t: &Tensor| Value::Tensor(t.detach().copy());
        let state = self
            .state
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let mut e = vec![
                    (Value::str("step"), t(&s.step)),
                    (Value::str("exp_avg"), t(&s.exp_avg)),
                    (Value::str("exp_avg_sq"), t(&s.exp_avg_sq)),
                ];
                if let Some(m) = &s.max_exp_avg_sq {
                    e.push((Value::str("max_exp_avg_sq"), t(m)));
                }
                Some((Value::Int(i as i64), Value::Dict(e)))
            })
            .collect();
        let c = self.config;
        let mut group = vec![
            (Value::str("lr"), Value::Float(c.lr)),
            (Value::str("betas"), Value::Tuple(vec![Value::Float(c.betas.0), Value::Float(c.betas.1)])),
            (Value::str("eps"), Value::Float(c.eps)),
            (Value::str("weight_decay"), Value::Float(c.weight_decay)),
            (Value::str("amsgrad"), Value::Bool(c.amsgrad)),
            (Value::str("maximize"), Value::Bool(false)),
            (Value::str("foreach"), Value::None),
            (Value::str("capturable"), Value::Bool(false)),
            (Value::str("differentiable"), Value::Bool(false)),
            (Value::str("fused"), Value::None),
            (Value::str("decoupled_weight_decay"), Value::Bool(c.decoupled_weight_decay)),
        ];
        group_tail(&mut group, self.initial_lr, self.params.len());
        Value::Dict(vec![
            (Value::str("state"), Value::Dict(state)),
            (Value::str("param_groups"), Value::List(vec![Value::Dict(group)])),
        ])
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let super::SavedGroup { group, per_param: entries } = single_group(state, self.params.len())?;
        let what = "the Adam group";
        refuse_flag(group, "maximize")?;
        let betas = items(entry(group, "betas", what)?, "betas")?;
        let [b1, b2] = betas else {
            return Err(bad(format!("'betas' holds {} values, not 2", betas.len())));
        };
        let config = AdamConfig {
            lr: number(entry(group, "lr", what)?, "lr")?,
            betas: (number(b1, "betas")?, number(b2, "betas")?),
            eps: number(entry(group, "eps", what)?, "eps")?,
            weight_decay: number(entry(group, "weight_decay", what)?, "weight_decay")?,
            amsgrad: group.get("amsgrad").map(|v| boolean(v, "amsgrad")).transpose()?.unwrap_or(false),
            // Files of torch < 2.6 lack the key; their AdamW is the only decoupled kind and is
            // told apart only by the class, which a state dict does not record: keep ours then.
            decoupled_weight_decay: group
                .get("decoupled_weight_decay")
                .map(|v| boolean(v, "decoupled_weight_decay"))
                .transpose()?
                .unwrap_or(self.config.decoupled_weight_decay),
        };
        let initial_lr = group.get("initial_lr").map(|v| number(v, "initial_lr")).transpose()?;
        let mut restored: Vec<Option<AdamState>> = self.params.iter().map(|_| None).collect();
        for (i, e) in entries {
            let p = &self.params[i];
            let step = step_tensor(
                e.get("step").ok_or_else(|| bad(format!("state of parameter {i} has no 'step'")))?,
                i,
            )?;
            let max_exp_avg_sq =
                if config.amsgrad { Some(state_tensor(e, "max_exp_avg_sq", i, p)?) } else { None };
            restored[i] = Some(AdamState {
                step,
                exp_avg: state_tensor(e, "exp_avg", i, p)?,
                exp_avg_sq: state_tensor(e, "exp_avg_sq", i, p)?,
                max_exp_avg_sq,
            });
        }
        self.config = config;
        self.initial_lr = initial_lr;
        self.state = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_is_a_float32_cpu_scalar() {
        let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut adam = Adam::new(vec![p.shallow_clone()], AdamConfig::adam());
        p.sum(Kind::Float).backward();
        adam.step().unwrap();
        let s = adam.state()[0].as_ref().unwrap();
        assert_eq!((s.step.kind(), s.step.size()), (Kind::Float, vec![]));
        assert_eq!(s.step.double_value(&[]), 1.0);
        // First step: the update is lr * sign(g) up to eps.
        let moved = (Tensor::ones([3], (Kind::Float, tch::Device::Cpu)) - &p).abs().max().double_value(&[]);
        assert!((moved - 1e-3).abs() < 1e-6, "{moved}");
    }
}
