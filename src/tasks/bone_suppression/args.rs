//! The flags of `bone_suppression`'s subcommands.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::metrics::image_quality::SsimWindow;
use crate::training::{InferenceArgs, RunArgs};

#[derive(Copy, Clone, Debug, ValueEnum, Serialize)]
pub enum SsimKind {
    /// scikit-image's default: 7 x 7 uniform window, sample covariance.
    Uniform,
    /// Wang et al. 2004: Gaussian sigma 1.5, population covariance.
    Gaussian,
}

impl SsimKind {
    pub fn window(self) -> SsimWindow {
        match self {
            Self::Uniform => SsimWindow::Uniform7,
            Self::Gaussian => SsimWindow::Gaussian,
        }
    }
}

#[derive(Args, Debug, Serialize)]
pub struct TrainArgs {
    /// Input images (with bones); paired with --target by file name.
    #[arg(long, required_unless_present = "pairs")]
    pub input: Option<PathBuf>,
    /// Target images (soft tissue).
    #[arg(long, requires = "input")]
    pub target: Option<PathBuf>,
    /// Or a CSV with `input,target` columns.
    #[arg(long, conflicts_with = "input")]
    pub pairs: Option<PathBuf>,
    /// Held-out validation pairs (folders); without them, --val-split of the pairs.
    #[arg(long, requires = "val_target")]
    pub val_input: Option<PathBuf>,
    #[arg(long, requires = "val_input")]
    pub val_target: Option<PathBuf>,
    /// Share of the pairs held out for validation when `--val-input` is not given.
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// Seed of the validation split (kept apart from `--seed`, so runs of every seed validate
    /// on the same pairs).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// unet-resnet18 | unet-resnet34 | unet-resnet50 | resnet-bs.
    #[arg(long, default_value = "unet-resnet50")]
    pub arch: String,
    /// ResNet-BS: residual blocks and channels (the paper: 16 and 64).
    #[arg(long, default_value_t = 16)]
    pub bs_blocks: i64,
    #[arg(long, default_value_t = 64)]
    pub bs_channels: i64,
    /// `scratch`, or encoder weights for the U-Net (CheSS/MoCo checkpoint, torchvision, extracted).
    #[arg(long, default_value = "scratch")]
    pub init: String,
    /// Keep the U-Net's encoder frozen (eval-mode BN).
    #[arg(long)]
    pub freeze_encoder: bool,
    /// Weighted loss terms: l1, mse, ssim, ms-ssim (1 - SSIM, 1 - MS-SSIM; MS-SSIM needs 161 px
    /// or more), perceptual. The literature's: `l1=0.16,ms-ssim=0.84`.
    #[arg(long, default_value = "l1=1")]
    pub loss: String,
    /// Encoder weights of the perceptual loss (CheSS, ImageNet, any encoder the mapping reads),
    /// or `random` (a randomly initialised ResNet-18, labelled so). Adds `perceptual=W` to the
    /// loss unless it names one.
    #[arg(long)]
    pub perceptual_weights: Option<String>,
    /// Weight of the perceptual term when `--loss` does not give one.
    #[arg(long, default_value_t = 1.0)]
    pub perceptual_weight: f64,
    /// Stages and their weights: `stem=0.03125,layer1=0.0625,...`; default SPADE/CheSS's
    /// [1/32, 1/16, 1/8, 1/4, 1] over stem, layer1..4.
    #[arg(long)]
    pub perceptual_stages: Option<String>,
    /// l1 | mse between features.
    #[arg(long, default_value = "l1")]
    pub perceptual_distance: String,
    /// chess ((x/255 - 0.658)/0.221, one channel) | imagenet (ImageNet mean/std, grey to 3 channels).
    #[arg(long, default_value = "chess")]
    pub perceptual_norm: String,
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 100)]
    pub epochs: u64,
    /// Adam learning rate (betas 0.9, 0.999).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// ReduceLROnPlateau on the validation PSNR.
    #[arg(long, default_value_t = 0.5)]
    pub plateau_factor: f64,
    #[arg(long, default_value_t = 5)]
    pub plateau_patience: i64,
    #[arg(long, default_value_t = 1)]
    pub val_every: u64,
    /// Geometric augmentation (affine warp on half the pairs), applied identically to both images.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub augment: bool,
    #[arg(long, value_enum, default_value = "uniform")]
    pub ssim: SsimKind,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

/// Where and how a saved model runs (eval, predict): batches of 8, for the U-Net at 512 px.
pub type RuntimeArgs = InferenceArgs<8>;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub target: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "uniform")]
    pub ssim: SsimKind,
    /// Side-by-side PNGs for at most this many pairs.
    #[arg(long, default_value_t = 16)]
    pub side_by_side: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Predicted images (any tool's), matched with --target by file name.
    #[arg(long)]
    pub pred: PathBuf,
    #[arg(long)]
    pub target: PathBuf,
    /// The scores CSV: name,psnr,ssim,rmse.
    #[arg(long)]
    pub out: PathBuf,
    /// The images' value range (default: 255 for 8-bit files, 65535 for 16-bit).
    #[arg(long)]
    pub data_range: Option<f64>,
    #[arg(long, value_enum, default_value = "uniform")]
    pub ssim: SsimKind,
}
