//! The layers every model composes, each holding its tensors under PyTorch's names so that
//! `state_dict()` keys and shapes map 1:1 between this crate and `torch.nn`.
//!
//! - [`Conv2d`], [`ConvTranspose2d`], [`Linear`]: `nn.Conv2d` (any kernel, stride, padding,
//!   dilation, groups, padding mode, optional bias), `nn.ConvTranspose2d`, `nn.Linear`.
//! - [`BatchNorm2d`] (with split-batch statistics), [`ParamFreeBatchNorm2d`] (`affine=False`),
//!   [`InstanceNorm2d`], [`GroupNorm`].
//! - [`SpectralNorm`]: `torch.nn.utils.spectral_norm` around any of the weighted layers.
//! - [`upsample_nearest`], [`upsample_bilinear`], [`leaky_relu`]: functions, as in
//!   `torch.nn.functional`.
//!
//! The naming rule: a layer's [`StateDict::push_tensors`] lists its own parameters, its own
//! buffers, then its children under their attribute names, exactly as `nn.Module.state_dict()`
//! orders them; a model's key is the dotted path of attribute names PyTorch would give it.
mod conv;
mod linear;
mod norm;
mod spectral_norm;
mod upsample;

use tch::Tensor;

pub use conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, PaddingMode, WeightInit};
pub use linear::Linear;
pub use norm::{BatchNorm2d, GroupNorm, InstanceNorm2d, NormOptions, ParamFreeBatchNorm2d};
pub use spectral_norm::{SpectralNorm, Weighted};
pub use upsample::{Resize, upsample_bilinear, upsample_nearest};

/// A layer configuration PyTorch would reject, found before any tensor is made.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("{layer}: {problem}")]
    Config { layer: &'static str, problem: String },
}

impl NnError {
    fn config(layer: &'static str, problem: impl Into<String>) -> Self {
        Self::Config { layer, problem: problem.into() }
    }
}

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

/// The dotted name of `name` under `prefix` (`""` for a root module).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// Appends one entry (a shallow clone, sharing storage with the module's tensor).
pub fn push(out: &mut Vec<NamedTensor>, prefix: &str, name: &str, t: &Tensor, role: TensorRole) {
    out.push(NamedTensor { name: join(prefix, name), tensor: t.shallow_clone(), role });
}

/// `F.leaky_relu(xs, negative_slope)`, ATen's own kernel (tch's `leaky_relu` fixes the slope at
/// 0.01); the gradient at 0 is `negative_slope`, as PyTorch's.
pub fn leaky_relu(xs: &Tensor, negative_slope: f64) -> Tensor {
    crate::ffi::leaky_relu(xs, negative_slope).expect("libtorch leaky_relu")
}
