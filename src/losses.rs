//! Image losses for bone suppression (an image-to-image generator trained on radiograph pairs):
//! L1 and MSE on pixels, SSIM and MS-SSIM exactly as pytorch-msssim 1.0.0 computes them (the
//! numbers of the published recipes), a perceptual loss on a frozen encoder (CheSS, ImageNet or
//! random features), and a weighted sum of them given on the command line
//! (`l1=0.16,ms-ssim=0.84,perceptual=1`).
//!
//! Every loss runs in float32 (float64 inputs stay float64 where the loss has no weights), with
//! autocast neutralised, whatever precision the generator ran in: SSIM divides differences of
//! blurred squares, which bf16/fp16 cannot resolve, and a loss is a few ops next to the
//! generator.
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use tch::{Device, Kind, Reduction, Tensor, nn};

use crate::checkpoint::{self, CheckpointError, EncoderWeights, LoadOptions};
use crate::ffi;
use crate::model::{Arch, Encoder, EncoderConfig, HeadSpec, StateDict, TensorRole};

/// Errors of the losses: bad inputs, specs and encoder weights.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("{what} needs two [N, C, H, W] images of the same shape; got {x:?} and {y:?}")]
    Shape { what: &'static str, x: Vec<i64>, y: Vec<i64> },
    #[error(
        "MS-SSIM needs images whose smaller side exceeds {min} px (an {win}-px window after 4 \
         halvings); got {height}x{width}"
    )]
    TooSmall { height: i64, width: i64, min: i64, win: i64 },
    #[error("unknown loss term '{0}': expected l1, mse, ssim, ms-ssim or perceptual")]
    UnknownTerm(String),
    #[error("bad loss spec '{spec}': {why} (expected e.g. l1=0.16,ms-ssim=0.84,perceptual=1)")]
    Spec { spec: String, why: String },
    #[error("unknown {what} '{value}': expected {expected}")]
    Parse { what: &'static str, value: String, expected: &'static str },
    #[error("the loss has a perceptual term but no perceptual loss (encoder) was given")]
    NoPerceptual,
    #[error("perceptual loss weights: {0}")]
    Weights(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Side of the Gaussian window of pytorch-msssim (`win_size`).
pub const WIN_SIZE: i64 = 11;
/// Standard deviation of that window (`win_sigma`).
pub const WIN_SIGMA: f64 = 1.5;
/// SSIM's stabilising constants (`K`), scaled by the data range.
pub const K: (f64, f64) = (0.01, 0.03);
/// pytorch-msssim's default weights of the five MS-SSIM scales (Wang et al. 2003).
pub const MS_SSIM_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
/// The smaller image side must exceed this for MS-SSIM: `(WIN_SIZE - 1) * 2^4`.
pub const MS_SSIM_MIN_SIDE: i64 = (WIN_SIZE - 1) * 16;

/// Runs `f` with autocast neutralised on the CPU and, when there is one, CUDA: the autocast
/// target dtype is set to float32, so ops autocast would run in bf16/fp16 run in float32 (and
/// half inputs are promoted). The crate's shim can only enter autocast and tch's switch covers
/// CUDA alone; a float32 target is the same arithmetic as no autocast on float32 tensors (the
/// parity tests check it bit for bit under CPU bf16 autocast).
fn in_fp32<T>(f: impl FnOnce() -> T) -> T {
    const FLOAT: i32 = 6; // c10::ScalarType::Float
    struct Restore(Vec<ffi::AutocastState>);
    impl Drop for Restore {
        fn drop(&mut self) {
            while let Some(state) = self.0.pop() {
                let _ = ffi::autocast_exit(state);
            }
        }
    }
    let mut restore = Restore(Vec::with_capacity(2));
    for cuda in [false, true] {
        if cuda && !tch::Cuda::is_available() {
            continue;
        }
        restore.0.push(ffi::autocast_enter(cuda, FLOAT).expect("setting the autocast dtype to float32"));
    }
    f()
}

/// Half and bfloat16 (and integer) images as float32; float64 stays float64.
fn to_float(t: &Tensor) -> Tensor {
    match t.kind() {
        Kind::Double | Kind::Float => t.shallow_clone(),
        _ => t.to_kind(Kind::Float),
    }
}

fn check_pair(what: &'static str, x: &Tensor, y: &Tensor) -> Result<(), LossError> {
    let (xs, ys) = (x.size(), y.size());
    if xs.len() != 4 || xs != ys {
        return Err(LossError::Shape { what, x: xs, y: ys });
    }
    Ok(())
}

/// Mean absolute difference (`F.l1_loss`), in float32.
pub fn l1(x: &Tensor, y: &Tensor) -> Tensor {
    in_fp32(|| to_float(x).l1_loss(&to_float(y), Reduction::Mean))
}

/// Mean squared difference (`F.mse_loss`), in float32.
pub fn mse(x: &Tensor, y: &Tensor) -> Tensor {
    in_fp32(|| to_float(x).mse_loss(&to_float(y), Reduction::Mean))
}

/// pytorch-msssim's 1-d Gaussian, computed as it does (in float32), as `[C, 1, 1, WIN_SIZE]`.
fn gaussian_window(channels: i64, like: &Tensor) -> Tensor {
    let coords = Tensor::arange(WIN_SIZE, (Kind::Float, Device::Cpu)) - WIN_SIZE / 2;
    let g = (-coords.pow_tensor_scalar(2) / (2.0 * WIN_SIGMA.powi(2))).exp();
    let g = &g / g.sum(Kind::Float);
    g.view([1, 1, 1, WIN_SIZE]).repeat([channels, 1, 1, 1]).to_kind(like.kind()).to_device(like.device())
}

/// Valid (unpadded) separable Gaussian blur per channel, along H then W; like pytorch-msssim,
/// a side shorter than the window is not blurred.
fn gaussian_filter(x: &Tensor, win: &Tensor) -> Tensor {
    let size = x.size();
    let channels = size[1];
    let mut out = x.shallow_clone();
    for (i, &side) in size[2..].iter().enumerate() {
        if side >= WIN_SIZE {
            let w = if i == 0 { win.transpose(2, 3) } else { win.shallow_clone() };
            out = out.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels);
        }
    }
    out
}

/// pytorch-msssim's `_ssim`: SSIM and contrast-structure per image and channel, `[N, C]` each.
fn ssim_parts(x: &Tensor, y: &Tensor, data_range: f64, win: &Tensor) -> (Tensor, Tensor) {
    let c1 = (K.0 * data_range).powi(2);
    let c2 = (K.1 * data_range).powi(2);
    let mu1 = gaussian_filter(x, win);
    let mu2 = gaussian_filter(y, win);
    let mu1_sq = mu1.pow_tensor_scalar(2);
    let mu2_sq = mu2.pow_tensor_scalar(2);
    let mu1_mu2 = &mu1 * &mu2;
    let sigma1_sq = gaussian_filter(&(x * x), win) - &mu1_sq;
    let sigma2_sq = gaussian_filter(&(y * y), win) - &mu2_sq;
    let sigma12 = gaussian_filter(&(x * y), win) - &mu1_mu2;
    let cs_map = (sigma12 * 2.0 + c2) / (sigma1_sq + sigma2_sq + c2);
    let ssim_map = ((mu1_mu2 * 2.0 + c1) / (mu1_sq + mu2_sq + c1)) * &cs_map;
    let mean = |t: Tensor| t.flatten(2, -1).mean_dim(-1, false, None::<Kind>);
    (mean(ssim_map), mean(cs_map))
}

/// `1 - ssim(x, y, data_range)` of pytorch-msssim 1.0.0 (`size_average=True`, 11-px Gaussian
/// window of sigma 1.5, `K=(0.01, 0.03)`): the mean over images and channels. `x` and `y` are
/// `[N, C, H, W]` with values in `0..=data_range` (1 or 255 usually).
pub fn ssim_loss(x: &Tensor, y: &Tensor, data_range: f64) -> Result<Tensor, LossError> {
    check_pair("SSIM", x, y)?;
    Ok(in_fp32(|| {
        let (x, y) = (to_float(x), to_float(y));
        let win = gaussian_window(x.size()[1], &x);
        let (ssim, _) = ssim_parts(&x, &y, data_range, &win);
        1.0 - ssim.mean(None::<Kind>)
    }))
}

/// `1 - ms_ssim(x, y, data_range)` of pytorch-msssim 1.0.0 with its default scale weights
/// ([`MS_SSIM_WEIGHTS`]): contrast-structure (ReLU'd) at the four finer scales and SSIM at the
/// coarsest, images halved by 2x2 average pooling (padded by one on odd sides) between scales.
/// The smaller side must exceed [`MS_SSIM_MIN_SIDE`] (160 px), else [`LossError::TooSmall`].
pub fn ms_ssim_loss(x: &Tensor, y: &Tensor, data_range: f64) -> Result<Tensor, LossError> {
    check_pair("MS-SSIM", x, y)?;
    let size = x.size();
    let (height, width) = (size[2], size[3]);
    if height.min(width) <= MS_SSIM_MIN_SIDE {
        return Err(LossError::TooSmall { height, width, min: MS_SSIM_MIN_SIDE, win: WIN_SIZE });
    }
    Ok(in_fp32(|| {
        let (mut x, mut y) = (to_float(x), to_float(y));
        let win = gaussian_window(size[1], &x);
        let weights = Tensor::from_slice(&MS_SSIM_WEIGHTS).to_kind(x.kind()).to_device(x.device());
        let levels = MS_SSIM_WEIGHTS.len();
        let mut factors = Vec::with_capacity(levels);
        for level in 0..levels {
            let (ssim, cs) = ssim_parts(&x, &y, data_range, &win);
            if level + 1 < levels {
                factors.push(cs.relu());
                let s = x.size();
                let padding = [s[2] % 2, s[3] % 2];
                x = x.avg_pool2d([2, 2], [2, 2], padding, false, true, None);
                y = y.avg_pool2d([2, 2], [2, 2], padding, false, true, None);
            } else {
                factors.push(ssim.relu());
            }
        }
        let ms_ssim =
            Tensor::stack(&factors, 0).pow(&weights.view([-1, 1, 1])).prod_dim_int(0, false, None::<Kind>);
        1.0 - ms_ssim.mean(None::<Kind>)
    }))
}

/// Where a perceptual loss reads the encoder: its stem (`relu(bn1(conv1(x)))`, before the
/// max-pool, at half resolution) or the output of a residual stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Stem,
    Layer1,
    Layer2,
    Layer3,
    Layer4,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Stem, Stage::Layer1, Stage::Layer2, Stage::Layer3, Stage::Layer4];

    /// Position in [`crate::model::ResNet::forward_stages`]' output.
    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ["stem", "layer1", "layer2", "layer3", "layer4"][self.index()]
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How two feature maps are compared: mean absolute (`F.l1_loss`, SPADE's and pix2pixHD's
/// choice) or mean squared difference (`F.mse_loss`, Johnson et al.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Distance {
    #[default]
    L1,
    Mse,
}

impl FromStr for Distance {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "l1" => Ok(Self::L1),
            "mse" | "l2" => Ok(Self::Mse),
            _ => Err(LossError::Parse { what: "distance", value: s.to_string(), expected: "l1 or mse" }),
        }
    }
}

/// How 0..255 grey images are fed to the encoder: as CheSS was trained (one channel,
/// `(x/255 - 0.658)/0.221`) or as torchvision's ImageNet models expect (grey repeated to RGB,
/// `(x/255 - mean)/std` per channel). The encoder has 1 or 3 input channels accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Normalisation {
    #[default]
    Chess,
    ImageNet,
}

/// torchvision's ImageNet channel means and standard deviations.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalisation {
    /// Input channels of the encoder this normalisation feeds.
    pub fn in_channels(self) -> i64 {
        match self {
            Self::Chess => 1,
            Self::ImageNet => 3,
        }
    }

    /// Encoder input from `[N, 1, H, W]` images in 0..255 (ImageNet also takes `[N, 3, H, W]`),
    /// in float32.
    pub fn apply(self, x: &Tensor) -> Tensor {
        let channels = x.size()[1];
        match self {
            Self::Chess => {
                assert_eq!(channels, 1, "CheSS normalisation takes grey [N, 1, H, W] images");
                crate::data::normalize(x)
            }
            Self::ImageNet => {
                assert!(channels == 1 || channels == 3, "ImageNet normalisation takes 1 or 3 channels");
                let x = x.to_kind(Kind::Float);
                let x = if channels == 1 { x.repeat([1, 3, 1, 1]) } else { x };
                let device = x.device();
                let per_channel = |v: &[f32; 3]| Tensor::from_slice(v).to_device(device).view([1, 3, 1, 1]);
                (x / 255.0 - per_channel(&IMAGENET_MEAN)) / per_channel(&IMAGENET_STD)
            }
        }
    }
}

impl FromStr for Normalisation {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chess" => Ok(Self::Chess),
            "imagenet" => Ok(Self::ImageNet),
            _ => Err(LossError::Parse {
                what: "normalisation",
                value: s.to_string(),
                expected: "chess or imagenet",
            }),
        }
    }
}

/// `sum_s w_s * dist(f_s(x), f_s(y))` over stages `s` of a frozen ResNet: the generator output
/// `x` should have the target's features, not only its pixels. The encoder is in evaluation
/// mode (BatchNorm on running statistics) with every variable frozen in its own `VarStore`, so
/// gradients reach `x` only and the encoder's `.grad` stays undefined; the target's features
/// are computed without a graph.
#[derive(Debug)]
pub struct PerceptualLoss {
    /// Stages read and their weights; [`PerceptualLoss::spade_weights`] by default.
    pub stages: Vec<(Stage, f64)>,
    /// [`Distance::L1`] by default.
    pub distance: Distance,
    normalisation: Normalisation,
    encoder: Encoder,
    vs: nn::VarStore,
    source: String,
}

impl PerceptualLoss {
    /// The weights of pix2pixHD/SPADE's VGG loss (1/32 ... 1 from the finest map to the
    /// coarsest), put on the stem and four stages of a ResNet.
    pub fn spade_weights() -> Vec<(Stage, f64)> {
        Stage::ALL.into_iter().zip([1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0, 1.0 / 4.0, 1.0]).collect()
    }

    fn build(arch: Arch, normalisation: Normalisation, device: Device) -> (nn::VarStore, Encoder) {
        let vs = nn::VarStore::new(device);
        let config = EncoderConfig {
            arch,
            in_channels: normalisation.in_channels(),
            head: HeadSpec::None,
            bn_splits: 1,
        };
        let encoder = Encoder::new(&vs.root(), config);
        (vs, encoder)
    }

    fn frozen(mut vs: nn::VarStore, encoder: Encoder, normalisation: Normalisation, source: String) -> Self {
        vs.freeze();
        Self {
            stages: Self::spade_weights(),
            distance: Distance::default(),
            normalisation,
            encoder,
            vs,
            source,
        }
    }

    /// The encoder of a weights file: a CheSS/MoCo checkpoint, a torchvision state dict or an
    /// extracted encoder (see [`EncoderWeights`]). The encoder gets the channels
    /// `normalisation` needs; `conv1` is adapted when the file has the other count (RGB summed
    /// to grey, grey spread over RGB), as [`EncoderWeights::load_into`] does.
    pub fn from_file(
        path: impl AsRef<Path>,
        normalisation: Normalisation,
        device: Device,
    ) -> Result<Self, LossError> {
        let path = path.as_ref();
        let weights = EncoderWeights::from_checkpoint(&checkpoint::load(path)?)?;
        Self::from_weights(&weights, &path.display().to_string(), normalisation, device)
    }

    /// As [`PerceptualLoss::from_file`], from weights already read; `name` labels them.
    pub fn from_weights(
        weights: &EncoderWeights,
        name: &str,
        normalisation: Normalisation,
        device: Device,
    ) -> Result<Self, LossError> {
        let arch = weights.arch.ok_or_else(|| {
            LossError::Weights(format!("{name}: not a ResNet-18, -34 or -50 (cannot tell the architecture)"))
        })?;
        let (vs, encoder) = Self::build(arch, normalisation, device);
        let report = weights.load_into(&encoder, LoadOptions::default())?;
        Ok(Self::frozen(vs, encoder, normalisation, format!("{arch} from {name} ({report})")))
    }

    /// A randomly initialised 1-channel encoder (CheSS normalisation): torchvision's init (He
    /// normal, fan-out, for convs; BatchNorm the identity), drawn from a private generator
    /// seeded with `seed`. A baseline for ablations, labelled as such in
    /// [`PerceptualLoss::source`]; building it still advances libtorch's global generator, as
    /// any module construction does.
    pub fn random(arch: Arch, seed: u64, device: Device) -> Self {
        let (vs, encoder) = Self::build(arch, Normalisation::Chess, device);
        tch::no_grad(|| {
            let params = encoder.named_tensors("");
            for (i, t) in
                params.iter().filter(|t| t.role == TensorRole::Parameter && t.tensor.dim() == 4).enumerate()
            {
                let size = t.tensor.size();
                let fan_out = (size[0] * size[2] * size[3]) as f64;
                let std = (2.0 / fan_out).sqrt();
                let draw_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
                let values = ffi::seeded_randn(t.tensor.numel() as i64, draw_seed, &t.tensor)
                    .expect("libtorch randn with a private generator");
                t.tensor.shallow_clone().copy_(&(values.view(size.as_slice()) * std));
            }
        });
        Self::frozen(
            vs,
            encoder,
            Normalisation::Chess,
            format!("random {arch} (seed {seed}), not pretrained"),
        )
    }

    pub fn normalisation(&self) -> Normalisation {
        self.normalisation
    }

    /// The frozen encoder (a trunk without head).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// What the encoder is, for logs: architecture, file and load report, or `random ...`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Stem and stage outputs of 0..255 images, in float32.
    fn features(&self, x: &Tensor) -> Vec<Tensor> {
        self.encoder.trunk().forward_stages(&self.normalisation.apply(x), false)
    }

    /// The loss of output `x` against target `y`, both `[N, 1, H, W]` in 0..255 (map them
    /// there first), as a float32 scalar: `sum_s w_s * dist(f_s(x), f_s(y).detach())`, each
    /// distance a mean over elements. Runs in float32 with autocast neutralised.
    pub fn forward(&self, x: &Tensor, y: &Tensor) -> Tensor {
        in_fp32(|| {
            let fx = self.features(x);
            let fy = tch::no_grad(|| self.features(y));
            let mut total: Option<Tensor> = None;
            for &(stage, weight) in &self.stages {
                let (a, b) = (&fx[stage.index()], &fy[stage.index()]);
                let d = match self.distance {
                    Distance::L1 => a.l1_loss(b, Reduction::Mean),
                    Distance::Mse => a.mse_loss(b, Reduction::Mean),
                };
                let term = d * weight;
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
            }
            total.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, x.device())))
        })
    }
}

/// One term of a weighted loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Term {
    L1,
    Mse,
    Ssim,
    MsSsim,
    Perceptual,
}

impl Term {
    /// The name in specs and logs: `l1`, `mse`, `ssim`, `ms-ssim`, `perceptual`.
    pub fn name(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::Mse => "mse",
            Self::Ssim => "ssim",
            Self::MsSsim => "ms-ssim",
            Self::Perceptual => "perceptual",
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Term {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "l1" => Ok(Self::L1),
            "mse" | "l2" => Ok(Self::Mse),
            "ssim" => Ok(Self::Ssim),
            "ms-ssim" | "msssim" => Ok(Self::MsSsim),
            "perceptual" => Ok(Self::Perceptual),
            _ => Err(LossError::UnknownTerm(s.to_string())),
        }
    }
}

/// A weighted sum of loss terms, as written on the command line: `l1=0.16,ms-ssim=0.84`
/// (Zhao et al.'s mix), `l1,perceptual=0.5` (a bare name weighs 1). Each term at most once;
/// weights finite and non-negative.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedLoss {
    pub terms: Vec<(Term, f64)>,
}

/// One evaluation of a [`WeightedLoss`].
#[derive(Debug)]
pub struct LossValues {
    /// The weighted sum, to back-propagate.
    pub total: Tensor,
    /// Each term unweighted and detached, in spec order, for logging (`term.name()`).
    pub terms: Vec<(Term, Tensor)>,
}

impl FromStr for WeightedLoss {
    type Err = LossError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| LossError::Spec { spec: spec.to_string(), why };
        let mut terms: Vec<(Term, f64)> = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad("empty term".into()));
            }
            let (name, weight) = match part.split_once('=') {
                Some((name, w)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("weight '{}' is not a number", w.trim())))?;
                    (name, w)
                }
                None => (part, 1.0),
            };
            let term: Term = name.parse()?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(bad(format!("weight of {term} must be finite and >= 0")));
            }
            if terms.iter().any(|&(t, _)| t == term) {
                return Err(bad(format!("{term} given twice")));
            }
            terms.push((term, weight));
        }
        Ok(Self { terms })
    }
}

impl fmt::Display for WeightedLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (term, weight)) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{term}={weight}")?;
        }
        Ok(())
    }
}

impl WeightedLoss {
    /// Whether a [`PerceptualLoss`] must be built for [`WeightedLoss::combine`].
    pub fn needs_perceptual(&self) -> bool {
        self.terms.iter().any(|&(t, _)| t == Term::Perceptual)
    }

    /// `sum_t w_t * loss_t(x, y)` for output `x` and target `y`, `[N, C, H, W]` with values in
    /// `0..=data_range`: L1 and MSE on those values (so their scale follows `data_range`),
    /// SSIM and MS-SSIM with that range, the perceptual loss on the images scaled to 0..255.
    pub fn combine(
        &self,
        x: &Tensor,
        y: &Tensor,
        data_range: f64,
        perceptual: Option<&PerceptualLoss>,
    ) -> Result<LossValues, LossError> {
        let mut total: Option<Tensor> = None;
        let mut terms = Vec::with_capacity(self.terms.len());
        for &(term, weight) in &self.terms {
            let value = match term {
                Term::L1 => l1(x, y),
                Term::Mse => mse(x, y),
                Term::Ssim => ssim_loss(x, y, data_range)?,
                Term::MsSsim => ms_ssim_loss(x, y, data_range)?,
                Term::Perceptual => {
                    let p = perceptual.ok_or(LossError::NoPerceptual)?;
                    if data_range == 255.0 {
                        p.forward(x, y)
                    } else {
                        let scale = 255.0 / data_range;
                        p.forward(&(to_float(x) * scale), &(to_float(y) * scale))
                    }
                }
            };
            let weighted = &value * weight;
            total = Some(match total {
                Some(t) => t + weighted,
                None => weighted,
            });
            terms.push((term, value.detach()));
        }
        let total =
            total.ok_or_else(|| LossError::Spec { spec: self.to_string(), why: "no terms".into() })?;
        Ok(LossValues { total, terms })
    }
}

// ---------------------------------------------------------------------------------------------
// GAN losses (SPADE's, as NVlabs computes them)
// ---------------------------------------------------------------------------------------------

/// The hinge loss of a multi-scale discriminator's predictions (one `[N, 1, h, w]` map per
/// scale): `mean relu(1 - p)` for real and `mean relu(1 + p)` for fake inputs, averaged over
/// scales. float32, outside autocast.
pub fn hinge_discriminator(preds: &[Tensor], real: bool) -> Tensor {
    in_fp32(|| {
        let sign = if real { -1.0 } else { 1.0 };
        let terms: Vec<Tensor> =
            preds.iter().map(|p| (p.to_kind(Kind::Float) * sign + 1.0).relu().mean(Kind::Float)).collect();
        Tensor::stack(&terms, 0).sum(Kind::Float) / terms.len() as f64
    })
}

/// The generator's hinge loss: `-mean p` of the fake images' predictions, averaged over scales.
pub fn hinge_generator(preds: &[Tensor]) -> Tensor {
    in_fp32(|| {
        let terms: Vec<Tensor> = preds.iter().map(|p| -p.to_kind(Kind::Float).mean(Kind::Float)).collect();
        Tensor::stack(&terms, 0).sum(Kind::Float) / terms.len() as f64
    })
}

/// The VAE's KL divergence from the standard normal, summed over the batch and the code:
/// `-0.5 * sum(1 + logvar - mu^2 - exp(logvar))` (SPADE's `KLDLoss`, before its weight).
pub fn kld(mu: &Tensor, logvar: &Tensor) -> Tensor {
    in_fp32(|| {
        let (mu, logvar) = (mu.to_kind(Kind::Float), logvar.to_kind(Kind::Float));
        ((&logvar + 1.0) - mu.square() - logvar.exp()).sum(Kind::Float) * -0.5
    })
}

/// pix2pixHD's discriminator feature matching: the L1 distance between the intermediate
/// outputs (all layers but the prediction) on fake and real inputs, the real ones detached,
/// summed over layers and averaged over scales (before its weight, 10 in SPADE).
pub fn feature_matching(fake: &[Vec<Tensor>], real: &[Vec<Tensor>]) -> Tensor {
    in_fp32(|| {
        let mut total = Tensor::zeros([], (Kind::Float, fake[0][0].device()));
        for (f, r) in fake.iter().zip(real) {
            for (a, b) in f.iter().zip(r).take(f.len().saturating_sub(1)) {
                total += a.to_kind(Kind::Float).l1_loss(&b.to_kind(Kind::Float).detach(), Reduction::Mean);
            }
        }
        total / fake.len() as f64
    })
}
