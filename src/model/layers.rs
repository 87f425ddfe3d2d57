//! The building blocks, each holding its tensors under torchvision's names so that
//! `state_dict()` keys map 1:1 between this crate and PyTorch.
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Whether a named tensor is learned (a parameter) or only tracked (a buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Parameter,
    Buffer,
}

/// One entry of a module's state, in PyTorch's `state_dict()` order.
#[derive(Debug)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
    pub role: TensorRole,
}

/// Modules list their tensors the way `nn.Module.state_dict()` does: own parameters, own buffers,
/// then children in registration order. Parameter order is also PyTorch's optimiser order.
pub trait StateDict {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>);

    fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        self.push_tensors(prefix, &mut out);
        out
    }

    /// Parameters in `module.parameters()` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_tensors("")
            .into_iter()
            .filter(|t| t.role == TensorRole::Parameter)
            .map(|t| t.tensor)
            .collect()
    }
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

pub(crate) fn push(out: &mut Vec<NamedTensor>, prefix: &str, name: &str, t: &Tensor, role: TensorRole) {
    out.push(NamedTensor { name: join(prefix, name), tensor: t.shallow_clone(), role });
}

/// `nn.Conv2d(..., bias=False)` with Kaiming-normal (fan_out, ReLU) init, as torchvision's ResNet.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        let fan_out = (c_out * kernel * kernel) as f64;
        let init = Init::Randn { mean: 0.0, stdev: (2.0 / fan_out).sqrt() };
        let weight = p.var("weight", &[c_out, c_in, kernel, kernel], init);
        Self { weight, stride, padding }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(
            &self.weight,
            None::<&Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

impl StateDict for Conv2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
    }
}

/// `nn.Linear` with PyTorch's default init: weight and bias uniform in +-1/sqrt(fan_in).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let bound = 1.0 / (c_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = p.var("weight", &[c_out, c_in], init);
        let bias = p.var("bias", &[c_out], init);
        Self { weight, bias }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

impl StateDict for Linear {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
        push(out, prefix, "bias", &self.bias, TensorRole::Parameter);
    }
}

/// `nn.BatchNorm2d` including `num_batches_tracked`, with optional split-batch statistics.
///
/// With `splits > 1`, training mode normalises each of `splits` sub-batches (consecutive chunks
/// of the batch) with its own statistics and keeps the running statistics as the mean over
/// sub-batches: the single-device stand-in for MoCo's shuffle-BN.
/// Evaluation mode uses the running statistics and ignores `splits`.
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
    pub fn new(p: nn::Path, channels: i64, splits: i64) -> Self {
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
