//! The U-Net of segmentation_models_pytorch (smp 0.6.0) on the crate's ResNet: layer for layer
//! and name for name `smp.Unet(encoder_name="resnet18" | "resnet34" | "resnet50",
//! encoder_weights=None, in_channels, classes)` with its defaults (decoder channels
//! `(256, 128, 64, 32, 16)`, batch norm in the decoder, no attention, nearest upsampling, no
//! activation), so that `state_dict()` keys, shapes and order are smp's:
//!
//! - `encoder.<torchvision name>`: the ResNet trunk without `fc` (`encoder.conv1.weight`,
//!   `encoder.bn1.*`, `encoder.layer1.0.conv1.weight`, ...). A CheSS encoder (the `encoder_q.`
//!   part of a MoCo checkpoint) or torchvision weights load into it with [`Unet::load_encoder`].
//! - `decoder.blocks.{0..4}.conv{1,2}.0.weight` (3x3 conv, no bias) and
//!   `decoder.blocks.{i}.conv{1,2}.1.{weight, bias, running_mean, running_var,
//!   num_batches_tracked}` (its BatchNorm); smp's center block is `nn.Identity` for ResNets.
//! - `segmentation_head.0.{weight, bias}`: the 3x3 output conv.
//!
//! Forward: the encoder's features `[x, relu(bn1(conv1(x))), layer1 (after the max-pool),
//! layer2, layer3, layer4]`; decoder block `i` upsamples (nearest, to the exact size of the
//! next-finer feature, as smp 0.6.0 does) and concatenates that feature as the skip (none for the
//! last block, which returns to the input size), then conv-BN-ReLU twice; the head gives logits.
//! Any input size works, as in smp 0.6.0 (`Unet.requires_divisible_input_shape = False`); sizes
//! divisible by 32 keep every skip exactly twice the coarser map.
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Tensor, nn};

use super::ModelError;
use super::encoder::{Encoder, EncoderConfig, HeadSpec};
use super::layers::{BatchNorm2d, Conv2d, NamedTensor, StateDict, TensorRole, join};
use super::resnet::Arch;
use crate::checkpoint::{CheckpointError, EncoderWeights, LoadOptions, LoadReport};
use crate::nn::{Conv2dConfig, Resize, upsample_nearest};

/// Everything that fixes a U-Net's tensors and their shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetConfig {
    /// The ResNet of `encoder_name`.
    pub encoder: Arch,
    /// Input channels (1 for radiographs; 3 for RGB).
    pub in_channels: i64,
    /// Output channels of the segmentation head (`classes`).
    pub classes: i64,
    /// Output channels of the five decoder blocks, coarsest first (smp's `decoder_channels`).
    pub decoder_channels: [i64; 5],
}

impl Default for UnetConfig {
    /// A 1-channel-in, 1-channel-out U-Net on the CheSS encoder (ResNet-50, the architecture
    /// CheSS weights exist for; smp's own default encoder is ResNet-34), smp's default decoder.
    fn default() -> Self {
        Self { encoder: Arch::ResNet50, in_channels: 1, classes: 1, decoder_channels: [256, 128, 64, 32, 16] }
    }
}

impl UnetConfig {
    /// Channels of the encoder's six features (`smp`'s `encoder.out_channels`): the input,
    /// the stem, then layer1..layer4.
    pub fn encoder_channels(&self) -> [i64; 6] {
        let e = if self.encoder.bottleneck() { 4 } else { 1 };
        [self.in_channels, 64, 64 * e, 128 * e, 256 * e, 512 * e]
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.in_channels <= 0 || self.classes <= 0 {
            return Err(ModelError::Config(format!(
                "U-Net in_channels {} and classes {} must be positive",
                self.in_channels, self.classes
            )));
        }
        if self.decoder_channels.iter().any(|&c| c <= 0) {
            return Err(ModelError::Config(format!(
                "U-Net decoder_channels {:?} must be positive",
                self.decoder_channels
            )));
        }
        Ok(())
    }
}

/// Fills `t` with `U(-bound, bound)` (in place, outside autograd).
fn uniform(t: &Tensor, bound: f64) {
    tch::no_grad(|| {
        let _ = t.shallow_clone().uniform_(-bound, bound);
    });
}

/// `(fan_in, fan_out)` of a conv weight `[out, in, kh, kw]`.
fn fans(w: &Tensor) -> (f64, f64) {
    let s = w.size();
    let k = (s[2] * s[3]) as f64;
    (s[1] as f64 * k, s[0] as f64 * k)
}

/// smp's `md.Conv2dReLU` with batch norm: `0` = 3x3 conv (padding 1, no bias), `1` = BatchNorm2d,
/// then ReLU. Conv init as smp's `initialize_decoder`: Kaiming-uniform (fan_in, ReLU gain).
#[derive(Debug)]
struct Conv2dReLU {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Conv2dReLU {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Result<Self, ModelError> {
        let config = Conv2dConfig { padding: [1, 1], bias: false, ..Conv2dConfig::new(3) };
        let conv = Conv2d::with_config(&p / "0", c_in, c_out, config)?;
        let (fan_in, _) = fans(&conv.weight);
        uniform(&conv.weight, (6.0 / fan_in).sqrt());
        let bn = BatchNorm2d::new(&p / "1", c_out, 1);
        Ok(Self { conv, bn })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.bn.forward_t(&self.conv.forward(xs), train);
        let _ = ys.relu_();
        ys
    }
}

impl StateDict for Conv2dReLU {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv.push_tensors(&join(prefix, "0"), out);
        self.bn.push_tensors(&join(prefix, "1"), out);
    }
}

/// smp's `UnetDecoderBlock` without attention: upsample, concatenate the skip, two Conv2dReLU.
#[derive(Debug)]
struct DecoderBlock {
    conv1: Conv2dReLU,
    conv2: Conv2dReLU,
}

impl DecoderBlock {
    fn forward_t(&self, xs: &Tensor, size: [i64; 2], skip: Option<&Tensor>, train: bool) -> Tensor {
        let up = upsample_nearest(xs, Resize::Size(size));
        let ys = match skip {
            Some(skip) => Tensor::cat(&[&up, skip], 1),
            None => up,
        };
        self.conv2.forward_t(&self.conv1.forward_t(&ys, train), train)
    }
}

impl StateDict for DecoderBlock {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv1.push_tensors(&join(prefix, "conv1"), out);
        self.conv2.push_tensors(&join(prefix, "conv2"), out);
    }
}

/// `smp.Unet` with a ResNet encoder; see the module documentation for names and forward.
///
/// Initialisation follows smp: encoder as torchvision's ResNet (with `in_channels != 3`,
/// `conv1` gets PyTorch's default conv init, as smp's `patch_first_conv` without pretrained
/// weights), decoder convs Kaiming-uniform (fan_in, ReLU), BatchNorms ones and zeros, head
/// Xavier-uniform with zero bias. The draws are libtorch's, not equal to smp's under a seed.
#[derive(Debug)]
pub struct Unet {
    config: UnetConfig,
    encoder: Encoder,
    blocks: Vec<DecoderBlock>,
    head: Conv2d,
    encoder_frozen: AtomicBool,
}

impl Unet {
    /// Builds the U-Net under `p` (its tensors are `p`'s `encoder.*`, `decoder.*`,
    /// `segmentation_head.*`). Errors on non-positive channel counts.
    pub fn new(p: &nn::Path, config: UnetConfig) -> Result<Self, ModelError> {
        config.check()?;
        let encoder = Encoder::new(
            &(p / "encoder"),
            EncoderConfig {
                arch: config.encoder,
                in_channels: config.in_channels,
                head: HeadSpec::None,
                bn_splits: 1,
            },
        );
        if config.in_channels != 3 {
            // nn.Conv2d.reset_parameters(): kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
            if let Some(w) = encoder.named_tensors("").into_iter().find(|t| t.name == "conv1.weight") {
                uniform(&w.tensor, 1.0 / fans(&w.tensor).0.sqrt());
            }
        }
        // smp's UnetDecoder: in = [head, d0..d3], skip = [layer3, layer2, layer1, stem, none].
        let enc = config.encoder_channels();
        let dec = config.decoder_channels;
        let ins = [enc[5], dec[0], dec[1], dec[2], dec[3]];
        let skips = [enc[4], enc[3], enc[2], enc[1], 0];
        let bp = p / "decoder" / "blocks";
        let blocks = (0..5)
            .map(|i| {
                let q = &bp / i;
                Ok(DecoderBlock {
                    conv1: Conv2dReLU::new(&q / "conv1", ins[i] + skips[i], dec[i])?,
                    conv2: Conv2dReLU::new(&q / "conv2", dec[i], dec[i])?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let head = Conv2d::with_config(
            p / "segmentation_head" / "0",
            dec[4],
            config.classes,
            Conv2dConfig { padding: [1, 1], ..Conv2dConfig::new(3) },
        )?;
        let (fan_in, fan_out) = fans(&head.weight);
        uniform(&head.weight, (6.0 / (fan_in + fan_out)).sqrt());
        if let Some(bias) = &head.bias {
            tch::no_grad(|| {
                let _ = bias.shallow_clone().zero_();
            });
        }
        Ok(Self { config, encoder, blocks, head, encoder_frozen: AtomicBool::new(false) })
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// The encoder: a torchvision-named ResNet without head (its names here carry `encoder.`).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Loads encoder weights found by [`EncoderWeights::from_checkpoint`] (a CheSS MoCo
    /// checkpoint's `encoder_q.`/`module.encoder_q.` part, a torchvision or extracted ResNet)
    /// into `encoder.*`, as [`EncoderWeights::load_into`] does for an [`Encoder`]: every trunk
    /// tensor must be present with its shape (unless `options.partial`), `conv1` is adapted
    /// between 3 and 1 input channels, `fc` tensors of the source are ignored. The decoder and
    /// head keep their values. The report's `loaded` counts encoder tensors.
    pub fn load_encoder(
        &self,
        weights: &EncoderWeights,
        options: LoadOptions,
    ) -> Result<LoadReport, CheckpointError> {
        if let Some(arch) = weights.arch
            && arch != self.config.encoder
        {
            return Err(CheckpointError::Mapping(format!(
                "the checkpoint holds a {arch} encoder, the U-Net has a {}",
                self.config.encoder
            )));
        }
        weights.load_into(&self.encoder, options)
    }

    /// smp's `freeze_encoder()`: encoder parameters stop requiring gradients and the encoder's
    /// BatchNorms stay in evaluation mode (running statistics used, not updated) even when
    /// [`Unet::forward_t`] is called with `train = true`. Optimisers should be given
    /// [`Unet::trainable_parameters`].
    pub fn freeze_encoder(&self) {
        self.set_encoder_trainable(false);
    }

    /// smp's `unfreeze_encoder()`: undoes [`Unet::freeze_encoder`].
    pub fn unfreeze_encoder(&self) {
        self.set_encoder_trainable(true);
    }

    pub fn encoder_frozen(&self) -> bool {
        self.encoder_frozen.load(Ordering::Relaxed)
    }

    fn set_encoder_trainable(&self, trainable: bool) {
        for t in self.encoder.named_tensors("") {
            if t.role == TensorRole::Parameter {
                let _ = t.tensor.shallow_clone().requires_grad_(trainable);
            }
        }
        self.encoder_frozen.store(!trainable, Ordering::Relaxed);
    }

    /// Parameters that require gradients, in `parameters()` order (all of them unless the
    /// encoder is frozen).
    pub fn trainable_parameters(&self) -> Vec<Tensor> {
        self.parameters().into_iter().filter(Tensor::requires_grad).collect()
    }

    /// Logits `[N, classes, H, W]` for `xs` `[N, in_channels, H, W]`: no output activation (smp's
    /// `activation=None`); a program maps them itself (the bone-suppression program, for one,
    /// applies its own output mapping). `train` selects batch or running statistics in every
    /// BatchNorm (the encoder's stay in evaluation mode while it is frozen).
    ///
    /// # Panics
    /// If `xs` is not 4-D with `in_channels` channels.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let size = xs.size();
        assert!(
            size.len() == 4 && size[1] == self.config.in_channels,
            "U-Net input must be [N, {}, H, W], got {size:?}",
            self.config.in_channels
        );
        let encoder_train = train && !self.encoder_frozen();
        let mut features = vec![xs.shallow_clone()];
        features.extend(self.encoder.trunk().forward_stages(xs, encoder_train));
        let mut ys = features[5].shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let target = &features[4 - i];
            let hw = target.size();
            let skip = (i < 4).then_some(target);
            ys = block.forward_t(&ys, [hw[2], hw[3]], skip, train);
        }
        self.head.forward(&ys)
    }
}

impl nn::ModuleT for Unet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Unet::forward_t(self, xs, train)
    }
}

impl StateDict for Unet {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.encoder.push_tensors(&join(prefix, "encoder"), out);
        for (i, block) in self.blocks.iter().enumerate() {
            block.push_tensors(&join(prefix, &format!("decoder.blocks.{i}")), out);
        }
        self.head.push_tensors(&join(prefix, "segmentation_head.0"), out);
    }
}
