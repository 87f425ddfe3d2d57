//! The flags of `classify`'s subcommands, so that another program (or a user's own binary)
//! reads labels, reports and devices the same way (`#[command(flatten)]`).
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};
use serde::Serialize;

use super::data::DataOptions;
use super::evaluate::{EvalConfig, ReportOptions};
use crate::data::{BlankPolicy, LabelPolicy, LabelSet, UncertainPolicy, ViewFilter};
use crate::training::{InferenceArgs, RunArgs, TaskError};

/// How labels are read (train, eval and compare alike).
#[derive(Args, Debug, Clone, Serialize)]
pub struct LabelArgs {
    /// chexpert (the 14), chexpert5 (the competition's 5) or column names `A,B,...`; ignored
    /// for class folders (the folder names are the classes).
    #[arg(long, default_value = "chexpert")]
    pub labels: String,
    /// Uncertain (-1) labels: ones | zeros | ignore (masked out of the loss and the metrics).
    #[arg(long, default_value = "ones")]
    pub uncertain: String,
    /// Per-label exceptions: `Edema=ones,Cardiomegaly=zeros`.
    #[arg(long, default_value = "")]
    pub uncertain_per_label: String,
    /// Blank labels: zeros | ignore.
    #[arg(long, default_value = "zeros")]
    pub blank: String,
    /// all | frontal | pa | ap, from the CSV's view columns.
    #[arg(long, default_value = "all")]
    pub views: String,
    /// A regex whose first group (or whole match) in a file's path names the patient
    /// (e.g. `person\d+|NORMAL2-IM-\d+|IM-\d+`); otherwise `--patient-column`, CheXpert's `patientNNNNN`, or
    /// the DICOM PatientID.
    #[arg(long)]
    pub patient_id: Option<String>,
    /// A CSV column naming the patient.
    #[arg(long)]
    pub patient_column: Option<String>,
}

impl LabelArgs {
    pub fn options(&self, labels: Option<&[String]>) -> Result<DataOptions, TaskError> {
        let policy = LabelPolicy {
            uncertain: self.uncertain.parse::<UncertainPolicy>()?,
            blank: self.blank.parse::<BlankPolicy>()?,
            overrides: Vec::new(),
        }
        .with_overrides(&self.uncertain_per_label)?;
        let labels = match labels {
            Some(names) => LabelSet::Columns(names.to_vec()),
            None => self.labels.parse::<LabelSet>()?,
        };
        let patient_regex = match &self.patient_id {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| format!("--patient-id {re}: {e}"))?),
            None => None,
        };
        Ok(DataOptions {
            labels: Some(labels),
            policy,
            views: self.views.parse::<ViewFilter>()?,
            patient_column: self.patient_column.clone(),
            patient_regex,
        })
    }
}

/// Bootstrap and subgroup settings of reports.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ReportArgs {
    /// Bootstrap resamples of the 95 % intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 0)]
    pub bootstrap_seed: u64,
    /// CSV columns whose values form subgroups with their own metrics (`Sex,AP/PA`).
    #[arg(long, value_delimiter = ',')]
    pub by: Vec<String>,
}

impl ReportArgs {
    pub fn options(&self, source: &Path) -> ReportOptions {
        ReportOptions {
            resamples: self.bootstrap,
            seed: self.bootstrap_seed,
            level: 0.95,
            by: self.by.clone(),
            source: Some(source.to_path_buf()),
        }
    }
}

#[derive(Args, Debug, Serialize)]
pub struct TrainArgs {
    /// Training images: a label CSV (CheXpert layout) or a folder per class.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation images (the best model is chosen here); without it, `--val-split` of the
    /// training patients.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Test images, evaluated once with the best model after training.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Share of the training patients held out for validation when `--val` is not given.
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// Seed of the validation split (kept apart from `--seed`, so every fraction and seed
    /// validates on the same patients).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Train on this share of the training images, drawn as whole patients with `--seed`,
    /// keeping at least one positive of every label.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub labels: LabelArgs,
    /// `scratch`, or weights to start from: a CheSS/MoCo checkpoint, torchvision ImageNet
    /// weights (conv1 summed to 1 channel), an extracted encoder, a safetensors file.
    #[arg(long, default_value = "scratch")]
    pub init: String,
    /// finetune (everything trains) | linear (frozen encoder in eval mode, the head alone).
    #[arg(long, default_value = "finetune")]
    pub mode: String,
    /// resnet18 | resnet34 | resnet50.
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    #[arg(long, default_value_t = 512)]
    pub image_size: i64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 100)]
    pub epochs: u64,
    /// A budget of optimisation steps instead of `--epochs`: epochs = steps / batches per epoch,
    /// rounded up to whole epochs (so at least N steps; config.json records the epochs), which
    /// keeps runs on 1 % and on 100 % of the labels about equally long.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// SGD learning rate (default: 1e-3 fine-tuning, 30 linear).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    pub wd: f64,
    /// Validate (and step the plateau schedule) after every N epochs and after the last: for
    /// tiny training sets whose epochs are a step or two.
    #[arg(long, default_value_t = 1)]
    pub val_every: u64,
    /// ReduceLROnPlateau on the validation mean AUROC: factor and patience (validations).
    #[arg(long, default_value_t = 0.5)]
    pub plateau_factor: f64,
    #[arg(long, default_value_t = 10)]
    pub plateau_patience: i64,
    /// Weight positives by their rarity (`auto`: negatives/positives per label; N-class:
    /// balanced class weights), or `none`.
    #[arg(long, default_value = "none", value_parser = ["none", "auto"])]
    pub pos_weight: String,
    /// Light geometric augmentation of the training images (affine warp on half of them).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub augment: bool,
    /// Memory-mapped cache of decoded, resized images (decoded once, not per epoch).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

/// Where and how a saved model runs (eval, predict, compare): batches of 32.
pub type RuntimeArgs = InferenceArgs<32>;

impl RuntimeArgs {
    pub fn eval_config(&self, image_size: i64) -> Result<EvalConfig, TaskError> {
        let device = self.device()?;
        Ok(EvalConfig {
            image_size,
            batch_size: self.batch_size,
            workers: self.workers(),
            precision: self.precision(device)?,
            channels_last: false,
            device,
            cache: None,
        })
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model saved by `train` (`RUN/best.pth`, with `best.json` beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled images: a label CSV or a folder per class.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: metrics.json, predictions.csv, roc.png (confusion.png for classes).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Images: files (DICOM, PNG, JPEG, TIFF), folders, or list files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The predictions CSV: `Path` then one probability column per label.
    #[arg(long)]
    pub out: PathBuf,
    /// Write a Grad-CAM overlay per image here (for its top label, or `--cam-label`).
    #[arg(long)]
    pub cam: Option<PathBuf>,
    #[arg(long, requires = "cam")]
    pub cam_label: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Run folder (or model file) A.
    pub run_a: PathBuf,
    /// Run folder (or model file) B.
    pub run_b: PathBuf,
    /// Labelled images both are judged on.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the comparison here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
