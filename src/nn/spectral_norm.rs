//! `torch.nn.utils.spectral_norm`: the hook-based version NVlabs SPADE uses, whose state dict
//! holds `weight_orig`, `weight_u` and `weight_v` in place of `weight`.
use tch::Tensor;
use tch::nn::Path;

use super::{Conv2d, ConvTranspose2d, Linear, NamedTensor, NnError, StateDict, TensorRole, join, push};

/// A layer whose weight spectral norm can replace: conv, conv-transpose, linear.
pub trait Weighted: StateDict {
    /// The weight dimension of the outputs, which spectral norm keeps as matrix rows: 1 for a
    /// transposed convolution, 0 otherwise (`spectral_norm`'s default `dim`).
    fn output_dim(&self) -> i64;
    /// The layer's own (learned) weight.
    fn weight(&self) -> &Tensor;
    /// The layer's forward with `weight` in place of its own.
    fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor;
}

impl Weighted for Conv2d {
    fn output_dim(&self) -> i64 {
        0
    }
    fn weight(&self) -> &Tensor {
        &self.weight
    }
    fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        Conv2d::forward_with_weight(self, xs, weight)
    }
}

impl Weighted for ConvTranspose2d {
    fn output_dim(&self) -> i64 {
        1
    }
    fn weight(&self) -> &Tensor {
        &self.weight
    }
    fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        ConvTranspose2d::forward_with_weight(self, xs, weight)
    }
}

impl Weighted for Linear {
    fn output_dim(&self) -> i64 {
        0
    }
    fn weight(&self) -> &Tensor {
        &self.weight
    }
    fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        Linear::forward_with_weight(self, xs, weight)
    }
}

/// `spectral_norm(layer)`: the layer's weight (named `weight_orig`) divided by its largest
/// singular value, estimated by power iteration on the buffers `weight_u`, `weight_v`.
///
/// Each training forward runs `n_power_iterations` steps that update `u` and `v` in place
/// (without gradient); evaluation reuses them. The gradient flows through `sigma = u·(W v)`.
#[derive(Debug)]
pub struct SpectralNorm<L> {
    pub layer: L,
    pub weight_u: Tensor,
    pub weight_v: Tensor,
    dim: i64,
    n_power_iterations: i64,
    eps: f64,
}

impl<L: Weighted> SpectralNorm<L> {
    /// `spectral_norm(layer)`: one power iteration per training forward, eps 1e-12. `p` is the
    /// path the layer was built under, where `weight_u` and `weight_v` join it.
    pub fn new(p: Path, layer: L) -> Self {
        let dim = layer.output_dim();
        Self::build(p, layer, 1, 1e-12, dim)
    }

    /// `spectral_norm(layer, n_power_iterations, eps, dim)`.
    pub fn with_options(
        p: Path,
        layer: L,
        n_power_iterations: i64,
        eps: f64,
        dim: i64,
    ) -> Result<Self, NnError> {
        let ndim = layer.weight().dim() as i64;
        if n_power_iterations < 0 {
            return Err(NnError::config(
                "spectral_norm",
                format!("n_power_iterations {n_power_iterations} < 0"),
            ));
        }
        if !(0..ndim).contains(&dim) {
            return Err(NnError::config(
                "spectral_norm",
                format!("dim {dim} out of range for a {ndim}-d weight"),
            ));
        }
        if eps.is_nan() || eps <= 0.0 {
            return Err(NnError::config("spectral_norm", format!("eps must be positive, got {eps}")));
        }
        Ok(Self::build(p, layer, n_power_iterations, eps, dim))
    }

    fn build(p: Path, layer: L, n_power_iterations: i64, eps: f64, dim: i64) -> Self {
        let weight = layer.weight();
        let (u, v) = tch::no_grad(|| {
            let mat = matrix(weight, dim);
            let (h, w) = (mat.size()[0], mat.size()[1]);
            // Drawn in PyTorch's order (u, then v), normal then normalised.
            let u = normalize(&Tensor::randn([h], (weight.kind(), weight.device())), eps);
            let v = normalize(&Tensor::randn([w], (weight.kind(), weight.device())), eps);
            (u, v)
        });
        let weight_u = p.add("weight_u", u, false);
        let weight_v = p.add("weight_v", v, false);
        Self { layer, weight_u, weight_v, dim, n_power_iterations, eps }
    }

    /// `weight_orig / sigma`, after the power iteration when `train`.
    pub fn weight_t(&self, train: bool) -> Tensor {
        let weight = self.layer.weight();
        let mat = matrix(weight, self.dim);
        let (u, v) = if train && self.n_power_iterations > 0 {
            tch::no_grad(|| {
                let (mut u, mut v) = (self.weight_u.shallow_clone(), self.weight_v.shallow_clone());
                for _ in 0..self.n_power_iterations {
                    v.copy_(&normalize(&mat.transpose(0, 1).mv(&u), self.eps));
                    u.copy_(&normalize(&mat.mv(&v), self.eps));
                }
                // Copies, so that a later in-place update cannot touch this step's graph.
                (u.copy(), v.copy())
            })
        } else {
            (self.weight_u.shallow_clone(), self.weight_v.shallow_clone())
        };
        let sigma = u.dot(&mat.mv(&v));
        weight / sigma
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.layer.forward_with_weight(xs, &self.weight_t(train))
    }
}

impl<L: Weighted> StateDict for SpectralNorm<L> {
    /// The layer's parameters without `weight`, then `weight_orig` (re-registered last, as
    /// PyTorch does), its buffers, then `weight_u`, `weight_v`.
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        let weight_name = join(prefix, "weight");
        let (params, buffers): (Vec<NamedTensor>, Vec<NamedTensor>) = self
            .layer
            .named_tensors(prefix)
            .into_iter()
            .filter(|t| t.name != weight_name)
            .partition(|t| t.role == TensorRole::Parameter);
        out.extend(params);
        push(out, prefix, "weight_orig", self.layer.weight(), TensorRole::Parameter);
        out.extend(buffers);
        push(out, prefix, "weight_u", &self.weight_u, TensorRole::Buffer);
        push(out, prefix, "weight_v", &self.weight_v, TensorRole::Buffer);
    }
}

/// `reshape_weight_to_matrix`: `dim` first, the rest flattened.
fn matrix(weight: &Tensor, dim: i64) -> Tensor {
    let w = if dim != 0 {
        let order: Vec<i64> =
            std::iter::once(dim).chain((0..weight.dim() as i64).filter(|&d| d != dim)).collect();
        weight.permute(order)
    } else {
        weight.shallow_clone()
    };
    let rows = w.size()[0];
    w.reshape([rows, -1])
}

/// `F.normalize(x, dim=0, eps)`.
fn normalize(x: &Tensor, eps: f64) -> Tensor {
    x / x.norm_scalaropt_dim(2, [0], true).clamp_min(eps)
}
