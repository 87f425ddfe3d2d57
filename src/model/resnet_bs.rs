//! ResNet-BS, the residual bone-suppression baseline of Rajaraman et al. 2021 (EDSR-style, no
//! BatchNorm): a 3x3 conv to `channels` (`head`), `blocks` residual blocks
//! `x + scaling * conv2(relu(conv1(x)))` (`body.{i}`), a 3x3 conv (`body_conv`) whose output is
//! added to the head's features (the global skip), and a 3x3 conv to the output channels
//! (`tail`) followed by a sigmoid. Every conv is 3x3, stride 1, padding 1, with bias, and
//! PyTorch's default init.
//!
//! The PyTorch module with the same `state_dict()` (names, shapes and order):
//!
//! ```python
//! class ResBlock(nn.Module):
//!     def __init__(self, channels, scaling):
//!         super().__init__()
//!         self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
//!         self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
//!         self.scaling = scaling
//!
//!     def forward(self, x):
//!         return x + self.scaling * self.conv2(F.relu(self.conv1(x)))
//!
//! class ResNetBS(nn.Module):
//!     def __init__(self, in_channels=1, out_channels=1, channels=64, blocks=16, scaling=0.1):
//!         super().__init__()
//!         self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
//!         self.body = nn.Sequential(*[ResBlock(channels, scaling) for _ in range(blocks)])
//!         self.body_conv = nn.Conv2d(channels, channels, 3, padding=1)
//!         self.tail = nn.Conv2d(channels, out_channels, 3, padding=1)
//!
//!     def forward(self, x):
//!         h = self.head(x)
//!         return torch.sigmoid(self.tail(h + self.body_conv(self.body(h))))
//! ```
//!
//! (`tests/python/unet_reference.py` holds this definition; `tests/unet.rs` checks the two agree.)
use tch::{Tensor, nn};

use super::ModelError;
use super::layers::{Conv2d, NamedTensor, StateDict, join};
use crate::nn::Conv2dConfig;

/// Width, depth and residual scaling of a ResNet-BS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetBsConfig {
    /// Residual blocks (16 in the paper; a few for CPU runs).
    pub blocks: i64,
    /// Feature channels of every block (64 in the paper).
    pub channels: i64,
    /// Factor on each block's residual branch (0.1 in the paper).
    pub scaling: f64,
    pub in_channels: i64,
    pub out_channels: i64,
}

impl Default for ResNetBsConfig {
    /// The paper's model: 16 blocks of 64 channels, scaling 0.1, grey in and out.
    fn default() -> Self {
        Self { blocks: 16, channels: 64, scaling: 0.1, in_channels: 1, out_channels: 1 }
    }
}

fn conv3x3(p: nn::Path, c_in: i64, c_out: i64) -> Result<Conv2d, ModelError> {
    Ok(Conv2d::with_config(p, c_in, c_out, Conv2dConfig { padding: [1, 1], ..Conv2dConfig::new(3) })?)
}

/// `x + scaling * conv2(relu(conv1(x)))`.
#[derive(Debug)]
struct ResBlock {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl StateDict for ResBlock {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv1.push_tensors(&join(prefix, "conv1"), out);
        self.conv2.push_tensors(&join(prefix, "conv2"), out);
    }
}

/// The ResNet-BS network; see the module documentation.
#[derive(Debug)]
pub struct ResNetBs {
    config: ResNetBsConfig,
    head: Conv2d,
    body: Vec<ResBlock>,
    body_conv: Conv2d,
    tail: Conv2d,
}

impl ResNetBs {
    /// Builds the network under `p`. Errors on a negative block count, non-positive channel
    /// counts or a non-finite scaling.
    pub fn new(p: &nn::Path, config: ResNetBsConfig) -> Result<Self, ModelError> {
        if config.blocks < 0 || !config.scaling.is_finite() {
            return Err(ModelError::Config(format!(
                "ResNet-BS needs blocks >= 0 and a finite scaling, got {} and {}",
                config.blocks, config.scaling
            )));
        }
        let c = config.channels;
        let head = conv3x3(p / "head", config.in_channels, c)?;
        let body = (0..config.blocks)
            .map(|i| {
                let q = p / "body" / i;
                Ok(ResBlock { conv1: conv3x3(&q / "conv1", c, c)?, conv2: conv3x3(&q / "conv2", c, c)? })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let body_conv = conv3x3(p / "body_conv", c, c)?;
        let tail = conv3x3(p / "tail", c, config.out_channels)?;
        Ok(Self { config, head, body, body_conv, tail })
    }

    pub fn config(&self) -> ResNetBsConfig {
        self.config
    }

    /// The output before the sigmoid, `[N, out_channels, H, W]` (for a loss on logits).
    pub fn forward_logits(&self, xs: &Tensor) -> Tensor {
        let h = self.head.forward(xs);
        let mut ys = h.shallow_clone();
        for block in &self.body {
            let r = block.conv2.forward(&block.conv1.forward(&ys).relu());
            // Not `+=`: that would add in place into `h`, the global skip (and a saved input).
            ys = &ys + r * self.config.scaling;
        }
        self.tail.forward(&(self.body_conv.forward(&ys) + h))
    }

    /// The bone-suppressed image in `(0, 1)`: `sigmoid(forward_logits(xs))`. Any input size
    /// works (every layer keeps the size); there is no BatchNorm, so training and evaluation
    /// are the same.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_logits(xs).sigmoid()
    }
}

impl nn::Module for ResNetBs {
    fn forward(&self, xs: &Tensor) -> Tensor {
        ResNetBs::forward(self, xs)
    }
}

impl StateDict for ResNetBs {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.head.push_tensors(&join(prefix, "head"), out);
        for (i, block) in self.body.iter().enumerate() {
            block.push_tensors(&join(prefix, &format!("body.{i}")), out);
        }
        self.body_conv.push_tensors(&join(prefix, "body_conv"), out);
        self.tail.push_tensors(&join(prefix, "tail"), out);
    }
}
