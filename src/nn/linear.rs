//! `nn.Linear`.
use tch::Tensor;
use tch::nn::{Init, Path};

use super::{NamedTensor, StateDict, TensorRole, push};

/// `nn.Linear` with PyTorch's default init: weight and bias uniform in +-1/sqrt(fan_in).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: Path, c_in: i64, c_out: i64) -> Self {
        let bound = 1.0 / (c_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = p.var("weight", &[c_out, c_in], init);
        let bias = p.var("bias", &[c_out], init);
        Self { weight, bias }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_with_weight(xs, &self.weight)
    }

    pub(crate) fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        xs.linear(weight, Some(&self.bias))
    }
}

impl StateDict for Linear {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
        push(out, prefix, "bias", &self.bias, TensorRole::Parameter);
    }
}
