//! `nn.BatchNorm2d`, `nn.InstanceNorm2d` and `nn.GroupNorm`, affine or parameter-free, with
//! PyTorch's running-statistics buffers when they are tracked.
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::{NamedTensor, NnError, StateDict, TensorRole, push};

/// The constructor flags of `nn.InstanceNorm2d` (and of `_NormBase`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormOptions {
    /// Learned per-channel `weight` (ones) and `bias` (zeros); `false` is SPADE's
    /// `param_free_norm`.
    pub affine: bool,
    /// `running_mean`, `running_var` and `num_batches_tracked` buffers, used in evaluation.
    pub track_running_stats: bool,
    pub eps: f64,
    /// Weight of the new batch in the running statistics.
    pub momentum: f64,
}

impl NormOptions {
    /// `nn.InstanceNorm2d`'s defaults: neither affine nor tracked.
    pub fn instance_norm() -> Self {
        Self { affine: false, track_running_stats: false, eps: 1e-5, momentum: 0.1 }
    }

    fn check(&self, layer: &'static str, channels: i64) -> Result<(), NnError> {
        if channels <= 0 {
            return Err(NnError::config(layer, format!("num_features must be positive, got {channels}")));
        }
        if self.eps.is_nan() || self.eps < 0.0 || !self.momentum.is_finite() {
            return Err(NnError::config(
                layer,
                format!("bad eps {} or momentum {}", self.eps, self.momentum),
            ));
        }
        Ok(())
    }
}

/// The tensors of `_NormBase`, in its registration order.
#[derive(Debug)]
struct NormState {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Option<Tensor>,
    running_var: Option<Tensor>,
    num_batches_tracked: Option<Tensor>,
}

impl NormState {
    fn new(p: &Path, channels: i64, options: &NormOptions) -> Self {
        let (weight, bias) = if options.affine {
            (
                Some(p.var("weight", &[channels], Init::Const(1.0))),
                Some(p.var("bias", &[channels], Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        let (running_mean, running_var, num_batches_tracked) = if options.track_running_stats {
            (
                Some(p.zeros_no_train("running_mean", &[channels])),
                Some(p.ones_no_train("running_var", &[channels])),
                Some(p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false)),
            )
        } else {
            (None, None, None)
        };
        Self { weight, bias, running_mean, running_var, num_batches_tracked }
    }

    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        let entries = [
            ("weight", &self.weight, TensorRole::Parameter),
            ("bias", &self.bias, TensorRole::Parameter),
            ("running_mean", &self.running_mean, TensorRole::Buffer),
            ("running_var", &self.running_var, TensorRole::Buffer),
            ("num_batches_tracked", &self.num_batches_tracked, TensorRole::Buffer),
        ];
        for (name, tensor, role) in entries {
            if let Some(t) = tensor {
                push(out, prefix, name, t, role);
            }
        }
    }
}

/// `nn.BatchNorm2d` including `num_batches_tracked`, with optional split-batch statistics.
///
/// With `splits > 1`, training mode normalises each of `splits` sub-batches (consecutive chunks
/// of the batch) with its own statistics and keeps the running statistics as the mean over
/// sub-batches: the single-device stand-in for MoCo's shuffle-BN.
/// Evaluation mode uses the running statistics and ignores `splits`. SPADE's parameter-free
/// variant is [`ParamFreeBatchNorm2d`].
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    splits: i64,
    momentum: f64,
    eps: f64,
}

impl BatchNorm2d {
    /// `nn.BatchNorm2d(channels)`: affine and tracked.
    pub fn new(p: Path, channels: i64, splits: i64) -> Self {
        let weight = p.var("weight", &[channels], Init::Const(1.0));
        let bias = p.var("bias", &[channels], Init::Const(0.0));
        let running_mean = p.zeros_no_train("running_mean", &[channels]);
        let running_var = p.ones_no_train("running_var", &[channels]);
        let num_batches_tracked =
            p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false);
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            splits: splits.max(1),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    pub fn splits(&self) -> i64 {
        self.splits
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train {
            return xs.batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                false,
                self.momentum,
                self.eps,
                true,
            );
        }
        tch::no_grad(|| {
            let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
        });
        if self.splits == 1 {
            return xs.batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                true,
                self.momentum,
                self.eps,
                true,
            );
        }
        // Chunks of the batch, not a reshape to [N/s, C*s, H, W]: a reshape copies
        // channels_last activations back to NCHW (2x slower steps on a GPU).
        let mut means = Vec::with_capacity(self.splits as usize);
        let mut vars = Vec::with_capacity(self.splits as usize);
        let ys: Vec<Tensor> = xs
            .chunk(self.splits, 0)
            .iter()
            .map(|chunk| {
                let (mean, var) = tch::no_grad(|| (self.running_mean.copy(), self.running_var.copy()));
                let y = chunk.batch_norm(
                    Some(&self.weight),
                    Some(&self.bias),
                    Some(&mean),
                    Some(&var),
                    true,
                    self.momentum,
                    self.eps,
                    true,
                );
                means.push(mean);
                vars.push(var);
                y
            })
            .collect();
        tch::no_grad(|| {
            self.running_mean.shallow_clone().copy_(&Tensor::stack(&means, 0).mean_dim(0, false, None));
            self.running_var.shallow_clone().copy_(&Tensor::stack(&vars, 0).mean_dim(0, false, None));
        });
        Tensor::cat(&ys, 0)
    }
}

impl StateDict for BatchNorm2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
        push(out, prefix, "bias", &self.bias, TensorRole::Parameter);
        push(out, prefix, "running_mean", &self.running_mean, TensorRole::Buffer);
        push(out, prefix, "running_var", &self.running_var, TensorRole::Buffer);
        push(out, prefix, "num_batches_tracked", &self.num_batches_tracked, TensorRole::Buffer);
    }
}

/// `nn.BatchNorm2d(channels, affine=False)`: SPADE's `param_free_norm`, normalisation without
/// learned scale or shift. With `track_running_stats`, training updates `running_mean`,
/// `running_var` and `num_batches_tracked`, and evaluation uses them.
#[derive(Debug)]
pub struct ParamFreeBatchNorm2d {
    state: NormState,
    momentum: f64,
    eps: f64,
}

impl ParamFreeBatchNorm2d {
    /// PyTorch's eps (1e-5) and momentum (0.1).
    pub fn new(p: Path, channels: i64, track_running_stats: bool) -> Result<Self, NnError> {
        let options = NormOptions { affine: false, track_running_stats, eps: 1e-5, momentum: 0.1 };
        options.check("BatchNorm2d", channels)?;
        let state = NormState::new(&p, channels, &options);
        Ok(Self { state, momentum: options.momentum, eps: options.eps })
    }

    pub fn running_mean(&self) -> Option<&Tensor> {
        self.state.running_mean.as_ref()
    }

    pub fn running_var(&self) -> Option<&Tensor> {
        self.state.running_var.as_ref()
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let s = &self.state;
        let tracked = s.running_mean.is_some();
        if train && let Some(n) = &s.num_batches_tracked {
            tch::no_grad(|| {
                let _ = n.shallow_clone().g_add_scalar_(1);
            });
        }
        xs.batch_norm(
            None::<&Tensor>,
            None::<&Tensor>,
            s.running_mean.as_ref(),
            s.running_var.as_ref(),
            train || !tracked,
            self.momentum,
            self.eps,
            true,
        )
    }
}

impl StateDict for ParamFreeBatchNorm2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.state.push_tensors(prefix, out);
    }
}

/// `nn.InstanceNorm2d`: per-sample, per-channel statistics. Tracked running statistics are
/// updated in training and used in evaluation; `num_batches_tracked` exists but, as in PyTorch,
/// is never incremented.
#[derive(Debug)]
pub struct InstanceNorm2d {
    state: NormState,
    momentum: f64,
    eps: f64,
}

impl InstanceNorm2d {
    /// `nn.InstanceNorm2d(channels, eps, momentum, affine, track_running_stats)`.
    pub fn new(p: Path, channels: i64, options: NormOptions) -> Result<Self, NnError> {
        options.check("InstanceNorm2d", channels)?;
        let state = NormState::new(&p, channels, &options);
        Ok(Self { state, momentum: options.momentum, eps: options.eps })
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let s = &self.state;
        xs.instance_norm(
            s.weight.as_ref(),
            s.bias.as_ref(),
            s.running_mean.as_ref(),
            s.running_var.as_ref(),
            train || s.running_mean.is_none(),
            self.momentum,
            self.eps,
            true,
        )
    }
}

impl StateDict for InstanceNorm2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.state.push_tensors(prefix, out);
    }
}

/// `nn.GroupNorm`: statistics over groups of channels of each sample; the same in training and
/// evaluation.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    num_groups: i64,
    eps: f64,
}

impl GroupNorm {
    /// `nn.GroupNorm(num_groups, channels, eps, affine)`.
    pub fn new(p: Path, num_groups: i64, channels: i64, eps: f64, affine: bool) -> Result<Self, NnError> {
        if num_groups <= 0 || channels <= 0 || channels % num_groups != 0 {
            return Err(NnError::config(
                "GroupNorm",
                format!("num_groups {num_groups} must divide num_channels {channels}"),
            ));
        }
        let (weight, bias) = if affine {
            (
                Some(p.var("weight", &[channels], Init::Const(1.0))),
                Some(p.var("bias", &[channels], Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        Ok(Self { weight, bias, num_groups, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.group_norm(self.num_groups, self.weight.as_ref(), self.bias.as_ref(), self.eps, true)
    }
}

impl StateDict for GroupNorm {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            push(out, prefix, "weight", w, TensorRole::Parameter);
            push(out, prefix, "bias", b, TensorRole::Parameter);
        }
    }
}
