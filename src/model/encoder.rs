//! A ResNet trunk with the head that sits at `fc`: none, one linear layer, or MoCo v2's MLP.
use std::fmt;

use tch::{Tensor, nn};

use super::layers::{Linear, NamedTensor, StateDict, join};
use super::resnet::{Arch, ResNet};

/// What sits on top of the pooled features: what an encoder is built with, and what the
/// weight mapping finds in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSpec {
    /// Pooled features are the output.
    None,
    /// `fc = Linear(feature_dim, out)`: a classifier, or MoCo v1/v2 without MLP.
    Linear { out: i64 },
    /// `fc = Sequential(Linear(feature_dim, hidden), ReLU, Linear(hidden, out))`: MoCo v2.
    Mlp { hidden: i64, out: i64 },
}

impl fmt::Display for HeadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::Linear { out } => write!(f, "single fc (-> {out})"),
            Self::Mlp { hidden, out } => write!(f, "MLP fc.0/fc.2 (-> {hidden} -> {out})"),
        }
    }
}

/// Everything that fixes an encoder's tensors and their shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    pub arch: Arch,
    pub in_channels: i64,
    pub head: HeadSpec,
    pub bn_splits: i64,
}

impl Default for EncoderConfig {
    /// The CheSS query encoder: 1-channel ResNet-50 with the MoCo v2 MLP head to 128-d.
    fn default() -> Self {
        Self {
            arch: Arch::ResNet50,
            in_channels: 1,
            head: HeadSpec::Mlp { hidden: 2048, out: 128 },
            bn_splits: 1,
        }
    }
}

#[derive(Debug)]
enum Head {
    None,
    Linear(Linear),
    Mlp(Linear, Linear),
}

/// A ResNet with its head, named like a torchvision model (`conv1.weight`, ..., `fc.0.weight`).
#[derive(Debug)]
pub struct Encoder {
    config: EncoderConfig,
    trunk: ResNet,
    head: Head,
}

impl Encoder {
    pub fn new(p: &nn::Path, config: EncoderConfig) -> Self {
        let trunk = ResNet::new(p, config.arch, config.in_channels, config.bn_splits);
        let features = config.arch.feature_dim();
        let fc = p / "fc";
        let head = match config.head {
            HeadSpec::None => Head::None,
            HeadSpec::Linear { out } => Head::Linear(Linear::new(fc, features, out)),
            HeadSpec::Mlp { hidden, out } => {
                Head::Mlp(Linear::new(&fc / "0", features, hidden), Linear::new(&fc / "2", hidden, out))
            }
        };
        Self { config, trunk, head }
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    pub fn trunk(&self) -> &ResNet {
        &self.trunk
    }

    /// Pooled trunk features, before the head.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.trunk.forward_t(xs, train)
    }

    /// The head applied to pooled features.
    pub fn head_forward(&self, features: &Tensor) -> Tensor {
        match &self.head {
            Head::None => features.shallow_clone(),
            Head::Linear(fc) => fc.forward(features),
            Head::Mlp(fc0, fc2) => fc2.forward(&fc0.forward(features).relu()),
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head_forward(&self.features_t(xs, train))
    }
}

impl nn::ModuleT for Encoder {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Encoder::forward_t(self, xs, train)
    }
}

impl StateDict for Encoder {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.trunk.push_tensors(prefix, out);
        match &self.head {
            Head::None => {}
            Head::Linear(fc) => fc.push_tensors(&join(prefix, "fc"), out),
            Head::Mlp(fc0, fc2) => {
                fc0.push_tensors(&join(prefix, "fc.0"), out);
                fc2.push_tensors(&join(prefix, "fc.2"), out);
            }
        }
    }
}
