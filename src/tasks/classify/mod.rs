//! Classification fine-tuning and linear evaluation (the CheSS downstream recipe): a ResNet
//! classifier trained with BCE per label (or cross-entropy over classes), SGD, and
//! `ReduceLROnPlateau` on the validation mean AUROC; the best model by validation mean AUROC
//! saved as `best.pth` (a plain torchvision-named state dict) with its card `best.json`.
//!
//! - [`args`]: the subcommands' flags.
//! - [`data`]: label CSVs and class folders, patients, the validation split, label fractions.
//! - [`model`]: the classifier, its card, and weights from whatever a user brings.
//! - [`train`](mod@train): `classify train`, from the flags to `best.pth` and the test report.
//! - [`evaluate`](mod@evaluate): predictions and what is judged from them (`metrics.json`, `roc.png`, ...).
//! - [`compare`](mod@compare): two models on the same images, with paired bootstrap intervals.
//! - [`cam`]: predictions for unlabelled images and Grad-CAM overlays.
pub mod args;
pub mod cam;
pub mod compare;
pub mod data;
pub mod evaluate;
pub mod model;
pub mod train;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Reduction, Tensor};

pub use args::{CompareArgs, EvalArgs, LabelArgs, PredictArgs, ReportArgs, RuntimeArgs, TrainArgs};
pub use cam::{Predicted, predict_files, write_grad_cams};
pub use compare::{Comparison, compare};
pub use data::{ClassifyDataError, DataOptions, Labelled, Layout};
pub use evaluate::evaluate_model;
pub use evaluate::{
    EvalConfig, Evaluation, Predictions, ReportOptions, evaluate, judge, load_labelled, model_path, predict,
    write_report,
};
pub use model::{Classifier, ModelCard};
pub use train::{TestResult, Trained, train};

use crate::Precision;
use crate::checkpoint::{Checkpoint, StateReader, StateWriter, Value};
use crate::data::Batch;
pub use crate::data::augment::light_augment;
use crate::distributed::DataParallel;
use crate::optim::{
    GradScaler, LrScheduler, Optimizer, PlateauConfig, PlateauMode, ReduceLrOnPlateau, Sgd, SgdConfig,
};
use crate::training::selection::finite;
use crate::training::{
    EpochMeans, MetricsLog, RunState, Selection, StepAt, StepOutput, Task, TaskError, plot_curves,
    train_loss_and_validation,
};

/// Fine-tune everything, or train the head alone on a frozen encoder (linear evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Finetune,
    Linear,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "finetune" => Ok(Self::Finetune),
            "linear" => Ok(Self::Linear),
            _ => Err(format!("mode `{s}`: finetune or linear")),
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Finetune => "finetune",
            Self::Linear => "linear",
        }
    }

    /// (lr, momentum, weight decay): CheSS fine-tuning's SGD 1e-3, 0.9; MoCo's linear
    /// evaluation's SGD 30, 0.9, no weight decay.
    pub fn default_sgd(self) -> SgdConfig {
        match self {
            Self::Finetune => SgdConfig { lr: 1e-3, momentum: 0.9, weight_decay: 0.0 },
            Self::Linear => SgdConfig { lr: 30.0, momentum: 0.9, weight_decay: 0.0 },
        }
    }
}

/// `pos_weight` of BCE (multi-label: negatives / positives per label) or class weights of
/// cross-entropy (N-class: n / (classes * n_c), scikit-learn's "balanced"), from the counted
/// targets of the training set.
pub fn balancing_weights(train: &Labelled) -> Vec<f64> {
    let (pos, neg) = (train.positives(), train.negatives());
    match &train.layout {
        Layout::MultiLabel { .. } => {
            pos.iter().zip(&neg).map(|(&p, &n)| if p == 0 { 1.0 } else { n as f64 / p as f64 }).collect()
        }
        Layout::Classes(c) => {
            let total = train.len() as f64;
            pos.iter().map(|&p| if p == 0 { 1.0 } else { total / (c.len() as f64 * p as f64) }).collect()
        }
    }
}

/// One point of the training curves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochPoint {
    /// 1-based.
    pub epoch: u64,
    /// None when the loss was not finite (JSON has no NaN).
    pub loss: Option<f64>,
    pub val_mean_auroc: Option<f64>,
    pub lr: f64,
}

/// Settings of a classification run's task.
#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    pub mode: Mode,
    pub sgd: SgdConfig,
    pub plateau_factor: f64,
    pub plateau_patience: i64,
    /// `pos_weight` (multi-label) or class weights (N-class), per output.
    pub balance: Option<Vec<f64>>,
    pub precision: Precision,
    pub channels_last: bool,
    /// The validation's predictions and report.
    pub eval: EvalConfig,
    pub report: ReportOptions,
    /// The run folder: `best.pth`, `best.json`, `val/`, `curves.png`.
    pub out: PathBuf,
    pub is_main: bool,
    /// What the card records of the model.
    pub card: ModelCard,
    /// Validate after every N epochs (and after the last of `epochs`).
    pub val_every: u64,
    pub epochs: u64,
}

/// The training task of `classify train`.
pub struct Classification<'a> {
    pub model: Classifier,
    optimizer: Sgd,
    scheduler: ReduceLrOnPlateau,
    scaler: Option<GradScaler>,
    dp: Option<DataParallel>,
    balance: Option<Tensor>,
    val: &'a Labelled,
    config: ClassifyConfig,
    /// The best model so far and the curves, kept across a resume.
    progress: Selection<EpochPoint>,
}

impl<'a> Classification<'a> {
    /// The task around `model` (already initialised); in linear mode the encoder is frozen and
    /// the head reset as MoCo's linear evaluation does.
    pub fn new(mut model: Classifier, val: &'a Labelled, config: ClassifyConfig) -> Result<Self, TaskError> {
        let params = match config.mode {
            Mode::Finetune => model.parameters(),
            Mode::Linear => {
                model.reset_head();
                model.freeze_encoder()
            }
        };
        if config.channels_last {
            let mut tensors = model.state();
            crate::device::set_channels_last(tensors.iter_mut())?;
        }
        let mut optimizer = Sgd::new(params, config.sgd);
        let plateau = PlateauConfig {
            mode: PlateauMode::Max,
            factor: config.plateau_factor,
            patience: config.plateau_patience,
            ..PlateauConfig::default()
        };
        let scheduler = ReduceLrOnPlateau::new(&mut optimizer, plateau)?;
        let device = config.eval.device;
        let balance =
            config.balance.as_ref().map(|w| Tensor::from_slice(w).to_kind(Kind::Float).to_device(device));
        let scaler = (config.precision == Precision::Fp16).then(GradScaler::default);
        Ok(Self {
            model,
            optimizer,
            scheduler,
            scaler,
            dp: None,
            balance,
            val,
            config,
            progress: Selection::default(),
        })
    }

    /// Averages gradients (and BN statistics) over the ranks of `dp`'s group.
    pub fn with_data_parallel(
        mut self,
        group: std::sync::Arc<crate::distributed::ProcessGroup>,
    ) -> Result<Self, TaskError> {
        let params: Vec<Tensor> = self.optimizer.params().iter().map(Tensor::shallow_clone).collect();
        self.dp = Some(DataParallel::new(group, &params, &self.model.state())?);
        Ok(self)
    }

    pub fn best(&self) -> Option<(u64, f64)> {
        self.progress.best()
    }

    pub fn history(&self) -> &[EpochPoint] {
        &self.progress.history
    }

    fn frozen(&self) -> bool {
        self.config.mode == Mode::Linear
    }

    /// Masked mean BCE with logits (multi-label), or cross-entropy (N-class); fp32.
    fn loss(&self, logits: &Tensor, batch: &Batch, device: Device) -> Result<Tensor, TaskError> {
        let targets =
            batch.targets.as_ref().ok_or("the training batches carry no targets")?.to_device(device);
        let logits = logits.to_kind(Kind::Float);
        if self.model.multi_label {
            let mask = match &batch.target_mask {
                Some(m) => m.to_device(device),
                None => Tensor::ones_like(&targets),
            };
            let bce = logits.binary_cross_entropy_with_logits::<&Tensor>(
                &targets,
                None,
                self.balance.as_ref(),
                Reduction::None,
            );
            Ok((bce * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0))
        } else {
            Ok(logits.cross_entropy_loss::<&Tensor>(
                &targets.to_kind(Kind::Int64),
                self.balance.as_ref(),
                Reduction::Mean,
                -100,
                0.0,
            ))
        }
    }

    /// Validation: predictions, the report in `out/val/`, the plateau scheduler, `best.pth`
    /// when the mean AUROC improved, `curves.png`.
    fn validate(&mut self, epoch: u64, loss: f64) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let pred = predict(&self.model, &self.val.dataset, &self.config.eval)?;
        let eval = evaluate(self.val, &pred, None, &self.config.report)?;
        let mean = eval.mean_auroc;
        let lr_used = self.optimizer.lr();
        self.scheduler.step_optimizer(&mut self.optimizer, mean);
        let point = EpochPoint {
            epoch: epoch + 1,
            loss: finite(loss),
            val_mean_auroc: mean.and_then(finite),
            lr: lr_used,
        };
        let improved = self.progress.record(epoch + 1, mean, point);
        if self.config.is_main {
            let out = &self.config.out;
            write_report(&out.join("val"), self.val, &pred, &eval)?;
            if improved {
                let best = out.join("best.pth");
                self.model.save(&best)?;
                let card = ModelCard {
                    thresholds: Some(eval.youden.clone()),
                    epoch: Some(epoch + 1),
                    val_mean_auroc: mean,
                    ..self.config.card.clone()
                };
                card.write(&best)?;
                let text = serde_json::to_string_pretty(&eval.json)?;
                crate::atomic::write(&out.join("best_val_metrics.json"), text.as_bytes())?;
            }
            self.plot_curves()?;
            for w in &eval.warnings {
                eprintln!("warning: validation: {w}");
            }
            let best = self.progress.best_text(4, "");
            eprintln!(
                "validation after epoch {}: mean AUROC {} (best {best}); training loss {loss:.4}; next lr {}",
                epoch + 1,
                mean.map_or("n/a".into(), |m| format!("{m:.4}")),
                self.optimizer.lr()
            );
        }
        let per_label: serde_json::Map<String, Json> =
            eval.labels.iter().zip(&eval.auroc).map(|(n, a)| (n.clone(), json!(a))).collect();
        Ok(vec![
            ("val_mean_auroc", json!(mean)),
            ("val_auroc", Json::Object(per_label)),
            ("val_n", json!(pred.rows.len())),
            ("next_lr", json!(self.optimizer.lr())),
            ("best_epoch", json!(self.progress.best_epoch)),
        ])
    }

    /// `curves.png`: training loss and validation mean AUROC per epoch.
    fn plot_curves(&self) -> Result<(), TaskError> {
        let points: Vec<_> =
            self.progress.history.iter().map(|p| (p.epoch, p.loss, p.val_mean_auroc)).collect();
        plot_curves(&self.config.out.join("curves.png"), &points, "mean AUROC", "AUROC")
    }
}

impl Task for Classification<'_> {
    type Batch = Batch;

    fn step(&mut self, batch: Batch, _at: StepAt) -> Result<StepOutput, TaskError> {
        if batch.samples.is_empty() || (!self.frozen() && batch.samples.len() < 2) {
            return Err(format!(
                "batch {}: {} readable images after {} failed reads",
                batch.index,
                batch.samples.len(),
                batch.skipped.len()
            )
            .into());
        }
        let device = self.config.eval.device;
        let x = match &batch.joint {
            Some(j) => j.input.to_device(device),
            None => crate::data::normalize(&batch.images).to_device(device),
        };
        let x = if self.config.channels_last { crate::device::to_channels_last(&x)? } else { x };
        let frozen = self.frozen();
        let logits = crate::device::autocast(device, self.config.precision, || {
            self.model.logits(&x, !frozen, frozen)
        })?;
        let loss = self.loss(&logits, &batch, device)?;
        self.optimizer.zero_grad();
        let scaled = match &self.scaler {
            Some(s) => s.scale_loss(&loss),
            None => loss.shallow_clone(),
        };
        match &self.dp {
            Some(dp) => dp.backward(&scaled)?,
            None => scaled.backward(),
        }
        let apply = match &mut self.scaler {
            Some(s) => s.unscale_and_update(&self.optimizer.grads()),
            None => true,
        };
        if apply {
            Optimizer::step(&mut self.optimizer)?;
        }
        if let (Some(dp), false) = (&self.dp, frozen) {
            dp.average_buffers(&self.model.state())?;
        }
        let loss = loss.detach();
        Ok(StepOutput { values: vec![("loss", loss)], extra: vec![("lr", json!(self.optimizer.lr()))] })
    }

    fn end_epoch(
        &mut self,
        epoch: u64,
        means: &EpochMeans,
        _log: &mut MetricsLog,
    ) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let schedule = (self.config.val_every, self.config.epochs);
        train_loss_and_validation(epoch, means, schedule, |loss| self.validate(epoch, loss))
    }

    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError> {
        let mut writer = StateWriter::new()
            .model("model", &self.model.net)
            .optimizer("optimizer", &self.optimizer)
            .scheduler("scheduler", &self.scheduler);
        if let Some(s) = &self.scaler {
            writer = writer.scaler(s);
        }
        let mut root = writer.finish(state);
        self.progress.save_into(&mut root, "classify")?;
        Ok(root)
    }

    fn restore(&mut self, ckpt: &Checkpoint, _batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let reader = StateReader::new(ckpt)?;
        reader.model("model", &self.model.net)?;
        reader.optimizer("optimizer", &mut self.optimizer)?;
        reader.scheduler("scheduler", &mut self.scheduler)?;
        if let Some(s) = &mut self.scaler {
            reader.scaler(s)?;
        }
        if let Some(progress) = Selection::load_from(ckpt, "classify")? {
            self.progress = progress;
        }
        Ok(reader.run()?)
    }
}

/// The run folder's `best.pth`.
pub fn best_model(run: &Path) -> PathBuf {
    run.join("best.pth")
}
