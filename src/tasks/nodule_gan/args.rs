//! The flags of `nodule_gan`'s subcommands.
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::training::{DeviceArgs, InferenceArgs, RunArgs};

#[derive(Args, Debug, Serialize)]
pub struct TrainArgs {
    /// Radiographs, paired with --masks by file name.
    #[arg(long, required_unless_present_any = ["pairs", "nodules"])]
    pub images: Option<PathBuf>,
    /// Nodule masks (0 background, non-zero nodule; 0/255 PNGs read as 0/1).
    #[arg(long, requires = "images")]
    pub masks: Option<PathBuf>,
    /// Or a CSV with `image,mask` columns.
    #[arg(long, conflicts_with_all = ["images", "nodules"])]
    pub pairs: Option<PathBuf>,
    /// Or a nodule list, `image,x,y,diameter_mm[,pixel_spacing]`: circular masks are drawn
    /// (spacing from the column, else the DICOM's).
    #[arg(long, conflicts_with = "images")]
    pub nodules: Option<PathBuf>,
    /// Image side (`crop_size`), a multiple of 32; CheSS: 512.
    #[arg(long, default_value_t = 512)]
    pub image_size: i64,
    /// Generator width (`ngf`; also the encoder's).
    #[arg(long, default_value_t = 64)]
    pub ngf: i64,
    /// Discriminator width (`ndf`).
    #[arg(long, default_value_t = 64)]
    pub ndf: i64,
    #[arg(long, default_value_t = 256)]
    pub z_dim: i64,
    /// Side the VAE encoder resizes to (NVlabs: 256); a power of two.
    #[arg(long, default_value_t = 256)]
    pub encoder_size: i64,
    /// batch | instance: SPADE's parameter-free norm.
    #[arg(long, default_value = "batch")]
    pub norm: String,
    #[arg(long, default_value_t = 2)]
    pub d_scales: i64,
    #[arg(long, default_value_t = 4)]
    pub d_layers: i64,
    #[arg(long, default_value_t = 0.05)]
    pub kld_weight: f64,
    /// Discriminator feature matching with this weight (pix2pixHD/SPADE: 10); off by default,
    /// as CheSS ran (`--no_ganFeat_loss`).
    #[arg(long)]
    pub feat_weight: Option<f64>,
    /// Encoder weights of the perceptual loss (a CheSS/MoCo checkpoint, torchvision weights,
    /// any encoder the mapping reads), or `random` (a randomly initialised ResNet-18, labelled
    /// so). Without it, no perceptual term.
    #[arg(long)]
    pub perceptual_weights: Option<String>,
    #[arg(long, default_value_t = 10.0)]
    pub perceptual_weight: f64,
    /// chess | imagenet: how images are fed to the perceptual encoder.
    #[arg(long, default_value = "chess")]
    pub perceptual_norm: String,
    #[arg(long, default_value_t = 1e-4)]
    pub lr_g: f64,
    #[arg(long, default_value_t = 4e-4)]
    pub lr_d: f64,
    /// Epochs in all; the last --decay-epochs decay linearly to 0 (SPADE: 100 + 100).
    #[arg(long, default_value_t = 200)]
    pub epochs: u64,
    #[arg(long, default_value_t = 100)]
    pub decay_epochs: u64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Random horizontal flips of image and mask together (NVlabs flips by default).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub flip: bool,
    /// A sample grid (masks, real, generated) every N epochs, and after the last.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A trained generator: a run folder, its `latest_net_G.pth`, or a training checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Masks to generate from (one image per mask; 0 background, non-zero nodule).
    #[arg(long)]
    pub masks: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Latent codes from this seed's prior draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: InferenceArgs<8>,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum, Serialize, PartialEq, Eq)]
pub enum Blend {
    Difference,
    Replace,
}

#[derive(Args, Debug)]
pub struct InsertArgs {
    /// A trained run: its folder (with `latest_net_G.pth`, `latest_net_E.pth`, `model.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// The radiograph (DICOM, PNG, JPEG, ...).
    pub image: PathBuf,
    /// Nodule centre `x,y` in pixels of the image.
    #[arg(long)]
    pub at: String,
    #[arg(long)]
    pub diameter_mm: f64,
    /// mm per pixel (`row,column` or one value); required for PNG/JPEG, else the DICOM's.
    #[arg(long)]
    pub pixel_spacing: Option<String>,
    /// Width of the blend's soft edge, in pixels of the image (default: a fifth of the
    /// diameter, at least 3).
    #[arg(long)]
    pub feather: Option<f64>,
    /// difference: add what the generator draws with the mask minus without it (the image's
    /// own texture kept); replace: the generated pixels themselves, blended in.
    #[arg(long, value_enum, default_value = "difference")]
    pub blend: Blend,
    /// Output file (`.dcm` for DICOM inputs, else PNG); the mask and a JSON of the bounding
    /// box are written beside it.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct FidArgs {
    pub dir_a: PathBuf,
    pub dir_b: PathBuf,
    /// inception (pytorch-fid's network) | chess (pooled CheSS ResNet features, 2048-d).
    #[arg(long, default_value = "inception")]
    pub features: String,
    /// Inception feature block: 64 | 192 | 768 | 2048.
    #[arg(long, default_value_t = 2048)]
    pub dims: i64,
    /// pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Encoder weights for `--features chess` (a CheSS/MoCo checkpoint or extracted encoder).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// `--features chess`: the side every image is resized to (default: that of folder A's
    /// first image).
    #[arg(long)]
    pub size: Option<i64>,
    /// Also the kernel Inception distance (torch-fidelity's: subsets of up to 1000, 100 of them).
    #[arg(long)]
    pub kid: bool,
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}
