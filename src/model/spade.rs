//! SPADE (Park et al. 2019, semantic image synthesis) as CheSS uses it for nodule generation:
//! a 1-channel generator driven by a label map (background / nodule), its VAE image encoder and
//! the multi-scale PatchGAN discriminator, each named tensor for tensor as NVlabs SPADE's
//! `net_G`, `net_E` and `net_D` state dicts name them, so their files load either way.
//!
//! - [`Spade`]: `out = norm(x) * (1 + gamma(seg)) + beta(seg)`, a parameter-free norm (batch or
//!   instance) and 128-channel convs on the nearest-resized label map
//!   (`param_free_norm`, `mlp_shared.0`, `mlp_gamma`, `mlp_beta`).
//! - [`SpadeResnetBlock`]: SPADE, LeakyReLU 0.2 and a spectral-normed 3x3 conv, twice, middle
//!   channels `min(in, out)`, a learned 1x1 shortcut (`norm_s`, `conv_s`) where channels change.
//! - [`SpadeGenerator`]: `fc` (z to a `16 ngf` map of `crop / 32`), `head_0`, `G_middle_0`,
//!   `G_middle_1`, `up_0`..`up_3` with nearest 2x upsampling (five in all), LeakyReLU, `conv_img`,
//!   tanh.
//! - [`ConvEncoder`]: the image (bilinearly resized to 256, NVlabs' fixed size) through stride-2
//!   3x3 convs (spectral norm, instance norm) down to 4 x 4, then `fc_mu` and `fc_var` of `z`.
//! - [`MultiscaleDiscriminator`]: `discriminator_0`, `discriminator_1`, ... on the label map
//!   concatenated with the image, each input average-pooled (3, stride 2, padding excluded) for
//!   the next; each an [`NLayerDiscriminator`] returning every layer's output (the last is the
//!   patch prediction; the others feed the feature-matching loss).
//!
//! Initialisation is NVlabs' default (`init_type="xavier"`, `init_variance=0.02`): Xavier-normal
//! weights with gain 0.02 and zero biases on every conv and linear layer.
use tch::{Kind, Tensor, nn::Path};

use super::ModelError;
use crate::nn::{
    Conv2d, Conv2dConfig, InstanceNorm2d, Linear, NamedTensor, NormOptions, ParamFreeBatchNorm2d, Resize,
    SpectralNorm, StateDict, WeightInit, join, leaky_relu, upsample_bilinear, upsample_nearest,
};

/// NVlabs' `init_variance`: the gain of the Xavier-normal init.
pub const INIT_GAIN: f64 = 0.02;

/// The parameter-free normalisation inside SPADE (`--norm_G spectralspade{batch,instance}3x3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpadeNorm {
    /// `BatchNorm2d(affine=False)`, NVlabs' default (sync-batch norm, one device being plain
    /// batch norm); running statistics are kept and used in evaluation.
    Batch,
    /// `InstanceNorm2d(affine=False)`: per image, nothing kept.
    Instance,
}

impl std::str::FromStr for SpadeNorm {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "batch" | "syncbatch" => Ok(Self::Batch),
            "instance" => Ok(Self::Instance),
            _ => Err(ModelError::Config(format!("SPADE norm `{s}`: expected batch or instance"))),
        }
    }
}

/// Everything that fixes the three networks' tensors. [`SpadeConfig::default`] is CheSS's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpadeConfig {
    /// Label-map channels (`semantic_nc`): 2, background and nodule.
    pub label_nc: i64,
    /// Image channels: 1 for radiographs.
    pub image_nc: i64,
    /// Generator width (`ngf`); also the encoder's (NVlabs builds `netE` with `ngf`).
    pub ngf: i64,
    /// Discriminator width (`ndf`).
    pub ndf: i64,
    pub z_dim: i64,
    /// Output side in pixels (`crop_size`), a multiple of 32: the generator starts at `crop / 32`.
    pub crop_size: i64,
    /// Side the encoder resizes its input to: 256 in NVlabs (six stride-2 convs to 4 x 4); a
    /// power of two from 8, smaller for tiny test models.
    pub encoder_size: i64,
    pub norm: SpadeNorm,
    /// Layers per discriminator (`n_layers_D`).
    pub d_layers: i64,
    /// Discriminator scales (`num_D`).
    pub d_scales: i64,
}

impl Default for SpadeConfig {
    fn default() -> Self {
        Self {
            label_nc: 2,
            image_nc: 1,
            ngf: 64,
            ndf: 64,
            z_dim: 256,
            crop_size: 512,
            encoder_size: 256,
            norm: SpadeNorm::Batch,
            d_layers: 4,
            d_scales: 2,
        }
    }
}

impl SpadeConfig {
    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.crop_size < 32 || self.crop_size % 32 != 0 {
            return bad(format!(
                "crop size {}: a multiple of 32 is needed (the generator starts at crop / 32)",
                self.crop_size
            ));
        }
        if self.encoder_size < 8 || !(self.encoder_size as u64).is_power_of_two() {
            return bad(format!("encoder size {}: a power of two from 8", self.encoder_size));
        }
        for (name, v) in [
            ("label_nc", self.label_nc),
            ("image_nc", self.image_nc),
            ("ngf", self.ngf),
            ("ndf", self.ndf),
            ("z_dim", self.z_dim),
            ("d_scales", self.d_scales),
        ] {
            if v <= 0 {
                return bad(format!("{name} {v}: must be positive"));
            }
        }
        if self.d_layers < 1 {
            return bad(format!("d_layers {}: at least 1", self.d_layers));
        }
        Ok(())
    }

    /// The generator's start side (`crop / 32`).
    pub fn start_size(&self) -> i64 {
        self.crop_size / 32
    }

    /// Stride-2 convs of the encoder: `log2(encoder_size / 4)`.
    pub fn encoder_layers(&self) -> i64 {
        (self.encoder_size / 4).trailing_zeros() as i64
    }
}

fn conv(
    p: Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> Result<Conv2d, ModelError> {
    let config = Conv2dConfig {
        stride: [stride, stride],
        padding: [padding, padding],
        bias,
        init: WeightInit::XavierNormal { gain: INIT_GAIN },
        ..Conv2dConfig::new(kernel)
    };
    Ok(Conv2d::with_config(p, c_in, c_out, config)?)
}

fn sn_conv(
    p: Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> Result<SpectralNorm<Conv2d>, ModelError> {
    let layer = conv(p.clone(), c_in, c_out, kernel, stride, padding, bias)?;
    Ok(SpectralNorm::new(p, layer))
}

/// `nn.Linear` with the Xavier-normal init.
fn linear(p: Path, c_in: i64, c_out: i64) -> Linear {
    let l = Linear::new(p, c_in, c_out);
    let std = INIT_GAIN * (2.0 / (c_in + c_out) as f64).sqrt();
    tch::no_grad(|| {
        let _ = l.weight.shallow_clone().normal_(0.0, std);
        let _ = l.bias.shallow_clone().zero_();
    });
    l
}

#[derive(Debug)]
enum ParamFreeNorm {
    Batch(ParamFreeBatchNorm2d),
    Instance(InstanceNorm2d),
}

impl ParamFreeNorm {
    fn new(p: Path, channels: i64, norm: SpadeNorm) -> Result<Self, ModelError> {
        Ok(match norm {
            SpadeNorm::Batch => Self::Batch(ParamFreeBatchNorm2d::new(p, channels, true)?),
            SpadeNorm::Instance => {
                Self::Instance(InstanceNorm2d::new(p, channels, NormOptions::instance_norm())?)
            }
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Self::Batch(n) => n.forward_t(x, train),
            Self::Instance(n) => n.forward_t(x, train),
        }
    }

    fn as_state(&self) -> &dyn StateDict {
        match self {
            Self::Batch(n) => n,
            Self::Instance(n) => n,
        }
    }
}

/// Hidden channels of SPADE's shared conv (`nhidden`).
pub const SPADE_HIDDEN: i64 = 128;

/// Spatially-adaptive denormalisation: the label map sets a per-pixel scale and shift.
#[derive(Debug)]
pub struct Spade {
    param_free_norm: ParamFreeNorm,
    mlp_shared: Conv2d,
    mlp_gamma: Conv2d,
    mlp_beta: Conv2d,
}

impl Spade {
    pub fn new(p: &Path, channels: i64, label_nc: i64, norm: SpadeNorm) -> Result<Self, ModelError> {
        Ok(Self {
            param_free_norm: ParamFreeNorm::new(p / "param_free_norm", channels, norm)?,
            mlp_shared: conv(p / "mlp_shared" / "0", label_nc, SPADE_HIDDEN, 3, 1, 1, true)?,
            mlp_gamma: conv(p / "mlp_gamma", SPADE_HIDDEN, channels, 3, 1, 1, true)?,
            mlp_beta: conv(p / "mlp_beta", SPADE_HIDDEN, channels, 3, 1, 1, true)?,
        })
    }

    pub fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> Tensor {
        let normalized = self.param_free_norm.forward_t(x, train);
        let size = x.size();
        let seg = upsample_nearest(seg, Resize::Size([size[2], size[3]]));
        let actv = self.mlp_shared.forward(&seg).relu();
        let gamma = self.mlp_gamma.forward(&actv);
        let beta = self.mlp_beta.forward(&actv);
        normalized * (gamma + 1.0) + beta
    }
}

impl StateDict for Spade {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.param_free_norm.as_state().push_tensors(&join(prefix, "param_free_norm"), out);
        self.mlp_shared.push_tensors(&join(prefix, "mlp_shared.0"), out);
        self.mlp_gamma.push_tensors(&join(prefix, "mlp_gamma"), out);
        self.mlp_beta.push_tensors(&join(prefix, "mlp_beta"), out);
    }
}

/// SPADE's residual block.
#[derive(Debug)]
pub struct SpadeResnetBlock {
    conv_0: SpectralNorm<Conv2d>,
    conv_1: SpectralNorm<Conv2d>,
    conv_s: Option<SpectralNorm<Conv2d>>,
    norm_0: Spade,
    norm_1: Spade,
    norm_s: Option<Spade>,
}

impl SpadeResnetBlock {
    pub fn new(p: &Path, fin: i64, fout: i64, label_nc: i64, norm: SpadeNorm) -> Result<Self, ModelError> {
        let fmiddle = fin.min(fout);
        let learned = fin != fout;
        Ok(Self {
            conv_0: sn_conv(p / "conv_0", fin, fmiddle, 3, 1, 1, true)?,
            conv_1: sn_conv(p / "conv_1", fmiddle, fout, 3, 1, 1, true)?,
            conv_s: if learned { Some(sn_conv(p / "conv_s", fin, fout, 1, 1, 0, false)?) } else { None },
            norm_0: Spade::new(&(p / "norm_0"), fin, label_nc, norm)?,
            norm_1: Spade::new(&(p / "norm_1"), fmiddle, label_nc, norm)?,
            norm_s: if learned { Some(Spade::new(&(p / "norm_s"), fin, label_nc, norm)?) } else { None },
        })
    }

    pub fn forward_t(&self, x: &Tensor, seg: &Tensor, train: bool) -> Tensor {
        let x_s = match (&self.conv_s, &self.norm_s) {
            (Some(c), Some(n)) => c.forward_t(&n.forward_t(x, seg, train), train),
            _ => x.shallow_clone(),
        };
        let dx = self.conv_0.forward_t(&leaky_relu(&self.norm_0.forward_t(x, seg, train), 0.2), train);
        let dx = self.conv_1.forward_t(&leaky_relu(&self.norm_1.forward_t(&dx, seg, train), 0.2), train);
        x_s + dx
    }
}

impl StateDict for SpadeResnetBlock {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv_0.push_tensors(&join(prefix, "conv_0"), out);
        self.conv_1.push_tensors(&join(prefix, "conv_1"), out);
        if let Some(c) = &self.conv_s {
            c.push_tensors(&join(prefix, "conv_s"), out);
        }
        self.norm_0.push_tensors(&join(prefix, "norm_0"), out);
        self.norm_1.push_tensors(&join(prefix, "norm_1"), out);
        if let Some(n) = &self.norm_s {
            n.push_tensors(&join(prefix, "norm_s"), out);
        }
    }
}

/// The generator's blocks in NVlabs' order, with (in, out) as multiples of `ngf`.
const G_BLOCKS: [(&str, i64, i64); 7] = [
    ("head_0", 16, 16),
    ("G_middle_0", 16, 16),
    ("G_middle_1", 16, 16),
    ("up_0", 16, 8),
    ("up_1", 8, 4),
    ("up_2", 4, 2),
    ("up_3", 2, 1),
];

/// The SPADE generator with the VAE's `fc` start (`--use_vae`).
#[derive(Debug)]
pub struct SpadeGenerator {
    pub config: SpadeConfig,
    fc: Linear,
    blocks: Vec<SpadeResnetBlock>,
    conv_img: Conv2d,
}

impl SpadeGenerator {
    pub fn new(p: &Path, config: SpadeConfig) -> Result<Self, ModelError> {
        config.check()?;
        let (nf, s) = (config.ngf, config.start_size());
        let fc = linear(p / "fc", config.z_dim, 16 * nf * s * s);
        let blocks = G_BLOCKS
            .iter()
            .map(|&(name, fin, fout)| {
                SpadeResnetBlock::new(&(p / name), fin * nf, fout * nf, config.label_nc, config.norm)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conv_img = conv(p / "conv_img", nf, config.image_nc, 3, 1, 1, true)?;
        Ok(Self { config, fc, blocks, conv_img })
    }

    /// An image in -1..1 `[N, image_nc, crop, crop]` from one-hot label maps `seg`
    /// `[N, label_nc, H, W]` (any size: each SPADE resizes it) and latent codes `z` `[N, z_dim]`.
    pub fn forward_t(&self, seg: &Tensor, z: &Tensor, train: bool) -> Tensor {
        let (nf, s) = (self.config.ngf, self.config.start_size());
        let mut x = self.fc.forward(z).view([-1, 16 * nf, s, s]);
        for (i, block) in self.blocks.iter().enumerate() {
            // NVlabs upsamples before every block but the head ("normal": five times).
            if i > 0 && i != 2 {
                x = upsample_nearest(&x, Resize::scale(2.0));
            }
            x = block.forward_t(&x, seg, train);
        }
        self.conv_img.forward(&leaky_relu(&x, 0.2)).tanh()
    }
}

impl StateDict for SpadeGenerator {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.fc.push_tensors(&join(prefix, "fc"), out);
        for (block, (name, _, _)) in self.blocks.iter().zip(G_BLOCKS) {
            block.push_tensors(&join(prefix, name), out);
        }
        self.conv_img.push_tensors(&join(prefix, "conv_img"), out);
    }
}

/// NVlabs' `ConvEncoder`: an image to the mean and log-variance of its latent code.
#[derive(Debug)]
pub struct ConvEncoder {
    pub config: SpadeConfig,
    layers: Vec<(SpectralNorm<Conv2d>, InstanceNorm2d)>,
    fc_mu: Linear,
    fc_var: Linear,
}

impl ConvEncoder {
    pub fn new(p: &Path, config: SpadeConfig) -> Result<Self, ModelError> {
        config.check()?;
        let ndf = config.ngf;
        let mut layers = Vec::new();
        let mut c_in = config.image_nc;
        for i in 0..config.encoder_layers() {
            let c_out = ndf * [1, 2, 4, 8][(i as usize).min(3)];
            let lp = p / format!("layer{}", i + 1) / "0";
            let c = sn_conv(lp.clone(), c_in, c_out, 3, 2, 1, false)?;
            let n = InstanceNorm2d::new(
                p / format!("layer{}", i + 1) / "1",
                c_out,
                NormOptions::instance_norm(),
            )?;
            layers.push((c, n));
            c_in = c_out;
        }
        let flat = c_in * 4 * 4;
        Ok(Self {
            config,
            layers,
            fc_mu: linear(p / "fc_mu", flat, config.z_dim),
            fc_var: linear(p / "fc_var", flat, config.z_dim),
        })
    }

    /// `(mu, logvar)` of images in -1..1.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let e = self.config.encoder_size;
        let size = x.size();
        let mut x = if size[2] != e || size[3] != e {
            upsample_bilinear(x, Resize::Size([e, e]), false)
        } else {
            x.shallow_clone()
        };
        for (i, (c, n)) in self.layers.iter().enumerate() {
            if i > 0 {
                x = leaky_relu(&x, 0.2);
            }
            x = n.forward_t(&c.forward_t(&x, train), train);
        }
        let x = leaky_relu(&x, 0.2).flatten(1, -1);
        (self.fc_mu.forward(&x), self.fc_var.forward(&x))
    }
}

impl StateDict for ConvEncoder {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (i, (c, n)) in self.layers.iter().enumerate() {
            let name = join(prefix, &format!("layer{}", i + 1));
            c.push_tensors(&join(&name, "0"), out);
            n.push_tensors(&join(&name, "1"), out);
        }
        self.fc_mu.push_tensors(&join(prefix, "fc_mu"), out);
        self.fc_var.push_tensors(&join(prefix, "fc_var"), out);
    }
}

/// `z = mu + eps * exp(logvar / 2)`, `eps` standard normal.
pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> Tensor {
    eps * (logvar * 0.5).exp() + mu
}

#[derive(Debug)]
enum DLayer {
    Plain(Conv2d),
    Normed(SpectralNorm<Conv2d>, InstanceNorm2d),
}

/// One PatchGAN: `model0` (conv, no norm), `model1..` (spectral norm and instance norm, stride
/// 1 on the last of them), then a 1-channel conv; LeakyReLU 0.2 between.
#[derive(Debug)]
pub struct NLayerDiscriminator {
    layers: Vec<DLayer>,
}

impl NLayerDiscriminator {
    pub fn new(p: &Path, input_nc: i64, ndf: i64, n_layers: i64) -> Result<Self, ModelError> {
        let mut layers = vec![DLayer::Plain(conv(p / "model0" / "0", input_nc, ndf, 4, 2, 2, true)?)];
        let mut nf = ndf;
        for n in 1..n_layers {
            let nf_prev = nf;
            nf = (nf * 2).min(512);
            let stride = if n == n_layers - 1 { 1 } else { 2 };
            let mp = p / format!("model{n}") / "0";
            let c = sn_conv(&mp / "0", nf_prev, nf, 4, stride, 2, false)?;
            let norm = InstanceNorm2d::new(&mp / "1", nf, NormOptions::instance_norm())?;
            layers.push(DLayer::Normed(c, norm));
        }
        layers.push(DLayer::Plain(conv(p / format!("model{n_layers}") / "0", nf, 1, 4, 1, 2, true)?));
        Ok(Self { layers })
    }

    /// Every layer's output, the patch prediction last.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let last = self.layers.len() - 1;
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let input = outs.last().unwrap_or(x);
            let y = match layer {
                DLayer::Plain(c) => c.forward(input),
                DLayer::Normed(c, n) => n.forward_t(&c.forward_t(input, train), train),
            };
            outs.push(if i < last { leaky_relu(&y, 0.2) } else { y });
        }
        outs
    }
}

impl StateDict for NLayerDiscriminator {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (i, layer) in self.layers.iter().enumerate() {
            let name = join(prefix, &format!("model{i}.0"));
            match layer {
                DLayer::Plain(c) => c.push_tensors(&name, out),
                DLayer::Normed(c, n) => {
                    c.push_tensors(&join(&name, "0"), out);
                    n.push_tensors(&join(&name, "1"), out);
                }
            }
        }
    }
}

/// PatchGANs at successively halved resolutions.
#[derive(Debug)]
pub struct MultiscaleDiscriminator {
    scales: Vec<NLayerDiscriminator>,
}

impl MultiscaleDiscriminator {
    pub fn new(p: &Path, config: SpadeConfig) -> Result<Self, ModelError> {
        config.check()?;
        let input_nc = config.label_nc + config.image_nc;
        let scales = (0..config.d_scales)
            .map(|i| {
                NLayerDiscriminator::new(
                    &(p / format!("discriminator_{i}")),
                    input_nc,
                    config.ndf,
                    config.d_layers,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { scales })
    }

    /// Per scale, every layer's output (the prediction last) for `[label map, image]` inputs.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Vec<Tensor>> {
        let mut input = x.shallow_clone();
        let mut out = Vec::with_capacity(self.scales.len());
        for (i, d) in self.scales.iter().enumerate() {
            out.push(d.forward_t(&input, train));
            if i + 1 < self.scales.len() {
                input = input.avg_pool2d([3, 3], [2, 2], [1, 1], false, false, None::<i64>);
            }
        }
        out
    }
}

impl StateDict for MultiscaleDiscriminator {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (i, d) in self.scales.iter().enumerate() {
            d.push_tensors(&join(prefix, &format!("discriminator_{i}")), out);
        }
    }
}

/// A `[N, 1, H, W]` class-index map (0 background, 1 nodule, ...) as a one-hot
/// `[N, label_nc, H, W]` float map (NVlabs' `scatter_`).
pub fn one_hot(labels: &Tensor, label_nc: i64) -> Tensor {
    let idx = labels.to_kind(Kind::Int64).clamp(0, label_nc - 1);
    let size = idx.size();
    Tensor::zeros([size[0], label_nc, size[2], size[3]], (Kind::Float, labels.device()))
        .scatter_value(1, &idx, 1.0)
}
