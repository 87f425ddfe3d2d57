//! torchvision's ResNet (v1.5: stride in the 3x3 conv of a bottleneck), with 1 or 3 input
//! channels and split-batch BatchNorm as an option. Tensor names equal torchvision's.
use std::fmt;
use std::str::FromStr;

use tch::{Tensor, nn};

use super::ModelError;
use super::layers::{BatchNorm2d, Conv2d, NamedTensor, StateDict, join};

/// The encoder architectures CheSS users train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    ResNet18,
    ResNet34,
    #[default]
    ResNet50,
}

impl Arch {
    /// Blocks per stage.
    pub fn blocks(self) -> [i64; 4] {
        match self {
            Self::ResNet18 => [2, 2, 2, 2],
            Self::ResNet34 | Self::ResNet50 => [3, 4, 6, 3],
        }
    }

    pub fn bottleneck(self) -> bool {
        matches!(self, Self::ResNet50)
    }

    /// Width of the pooled features (the input of `fc`).
    pub fn feature_dim(self) -> i64 {
        if self.bottleneck() { 2048 } else { 512 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ResNet18 => "resnet18",
            Self::ResNet34 => "resnet34",
            Self::ResNet50 => "resnet50",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "resnet18" => Ok(Self::ResNet18),
            "resnet34" => Ok(Self::ResNet34),
            "resnet50" => Ok(Self::ResNet50),
            _ => Err(ModelError::UnknownArch(s.to_string())),
        }
    }
}

/// A basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) residual block.
#[derive(Debug)]
struct Block {
    /// `conv{i}`/`bn{i}` pairs; ReLU after each but the last, which is added to the identity.
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(p: nn::Path, bottleneck: bool, c_in: i64, width: i64, stride: i64, splits: i64) -> Self {
        let expansion = if bottleneck { 4 } else { 1 };
        let c_out = width * expansion;
        // (c_in, c_out, kernel, stride, padding) of each conv.
        let shapes: Vec<(i64, i64, i64, i64, i64)> = if bottleneck {
            vec![(c_in, width, 1, 1, 0), (width, width, 3, stride, 1), (width, c_out, 1, 1, 0)]
        } else {
            vec![(c_in, width, 3, stride, 1), (width, width, 3, 1, 1)]
        };
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s, pad))| {
                let conv = Conv2d::new(&p / format!("conv{}", i + 1), ci, co, k, s, pad);
                let bn = BatchNorm2d::new(&p / format!("bn{}", i + 1), co, splits);
                (conv, bn)
            })
            .collect();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            (Conv2d::new(&d / "0", c_in, c_out, 1, stride, 0), BatchNorm2d::new(&d / "1", c_out, splits))
        });
        Self { convs, downsample }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            ys = bn.forward_t(&conv.forward(&ys), train);
            if i < last {
                let _ = ys.relu_();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(xs), train),
            None => xs.shallow_clone(),
        };
        // In place, as torchvision does (`out += identity`, `relu(inplace=True)`).
        let _ = ys.g_add_(&identity);
        let _ = ys.relu_();
        ys
    }
}

impl StateDict for Block {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            conv.push_tensors(&join(prefix, &format!("conv{}", i + 1)), out);
            bn.push_tensors(&join(prefix, &format!("bn{}", i + 1)), out);
        }
        if let Some((conv, bn)) = &self.downsample {
            conv.push_tensors(&join(prefix, "downsample.0"), out);
            bn.push_tensors(&join(prefix, "downsample.1"), out);
        }
    }
}

/// The convolutional trunk up to global average pooling (no `fc`).
#[derive(Debug)]
pub struct ResNet {
    arch: Arch,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    /// `in_channels` is 1 for CheSS (grey radiographs) or 3 for ImageNet-style inputs;
    /// `bn_splits` > 1 turns every BatchNorm into split-batch BN in training mode.
    pub fn new(p: &nn::Path, arch: Arch, in_channels: i64, bn_splits: i64) -> Self {
        let conv1 = Conv2d::new(p / "conv1", in_channels, 64, 7, 2, 3);
        let bn1 = BatchNorm2d::new(p / "bn1", 64, bn_splits);
        let bottleneck = arch.bottleneck();
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, (&count, width)) in arch.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            let lp = p / format!("layer{}", stage + 1);
            let stride = if stage == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(count as usize);
            for b in 0..count {
                let s = if b == 0 { stride } else { 1 };
                blocks.push(Block::new(&lp / b, bottleneck, c_in, width, s, bn_splits));
                c_in = width * expansion;
            }
            layers.push(blocks);
        }
        Self { arch, conv1, bn1, layers }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Input channels of `conv1`.
    pub fn in_channels(&self) -> i64 {
        self.conv1.weight.size()[1]
    }

    /// `relu(bn1(conv1(x)))`, before the max-pool.
    fn stem(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut stem = self.bn1.forward_t(&self.conv1.forward(xs), train);
        let _ = stem.relu_();
        stem
    }

    /// Stem and the four stages' outputs (used by perceptual losses).
    pub fn forward_stages(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let stem = self.stem(xs, train);
        let mut ys = stem.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut outs = vec![stem];
        for blocks in &self.layers {
            for block in blocks {
                ys = block.forward_t(&ys, train);
            }
            outs.push(ys.shallow_clone());
        }
        outs
    }

    /// Globally pooled features `[N, feature_dim]`. Each activation is freed as soon as the
    /// next is computed when no graph is kept (inference: extract, kNN), unlike
    /// [`ResNet::forward_stages`], which holds every stage's output (about 48 MB per 512 px
    /// image for a ResNet-50).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.stem(xs, train).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in self.layers.iter().flatten() {
            ys = block.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl StateDict for ResNet {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv1.push_tensors(&join(prefix, "conv1"), out);
        self.bn1.push_tensors(&join(prefix, "bn1"), out);
        for (stage, blocks) in self.layers.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                block.push_tensors(&join(prefix, &format!("layer{}.{b}", stage + 1)), out);
            }
        }
    }
}
