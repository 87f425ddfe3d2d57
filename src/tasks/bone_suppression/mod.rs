//! Bone suppression: a radiograph in, the same radiograph without ribs and clavicles out (the
//! soft-tissue image of dual-energy subtraction), trained on pairs. Two models: a U-Net on the
//! 1-channel ResNet (named as `segmentation_models_pytorch.Unet`, so a CheSS encoder starts it)
//! and the residual ResNet-BS baseline of the bone-suppression literature. Losses are weighted
//! terms from the command line (L1, MSE, 1 - SSIM, 1 - MS-SSIM, perceptual); the best model is
//! chosen by validation PSNR on 8-bit outputs, as the images are saved and scored.
//!
//! - [`args`]: the subcommands' flags.
//! - [`model`]: the networks and their card.
//! - [`train`](mod@train): `bone_suppression train`, from the flags to `best.pth`.
//! - [`evaluate`](mod@evaluate): scoring a model on pairs, and any tool's images against targets.
//! - [`predict`]: suppressed images (PNG, and DICOM for DICOM inputs).
pub mod args;
pub mod evaluate;
pub mod model;
pub mod predict;
pub mod train;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor};

pub use args::{EvalArgs, PredictArgs, RuntimeArgs, ScoreArgs, SsimKind, TrainArgs};
pub use evaluate::{
    Evaluated, PairEval, PairScores, evaluate_model, mean_scores, quantise, score_folders, score_pairs,
    scores_csv,
};
pub use model::{BoneArch, BoneCard, BoneNet};
pub use predict::predict_files;
pub use train::{Trained, train};

use crate::Precision;
use crate::checkpoint::{Checkpoint, StateReader, StateWriter, Value};
use crate::data::{Batch, Dataset, MEAN, STD};
use crate::distributed::DataParallel;
use crate::losses::{PerceptualLoss, WeightedLoss};
use crate::optim::{Adam, AdamConfig, LrScheduler, Optimizer, PlateauConfig, PlateauMode, ReduceLrOnPlateau};
use crate::training::selection::finite;
use crate::training::{
    EpochMeans, MetricsLog, RunState, Selection, StepAt, StepOutput, Task, TaskError, plot_curves,
    train_loss_and_validation,
};

/// Grey 0..255 inputs and 0..1 targets of a batch (augmented jointly when the loader does).
pub(crate) fn batch_pair(batch: &Batch, device: Device) -> Result<(Tensor, Tensor), TaskError> {
    match &batch.joint {
        Some(j) => {
            let grey = (&j.input * STD + MEAN) * 255.0;
            let target = j.target.as_ref().ok_or("the joint view has no target image")?;
            Ok((grey.to_device(device), target.to_device(device) / 255.0))
        }
        None => {
            let target = batch.targets.as_ref().ok_or("the batches carry no target images")?;
            Ok((batch.images.to_device(device), target.to_device(device) / 255.0))
        }
    }
}

/// Settings of a bone-suppression run's task.
pub struct BoneTaskConfig {
    pub adam: AdamConfig,
    pub plateau_factor: f64,
    pub plateau_patience: i64,
    pub loss: WeightedLoss,
    pub perceptual: Option<PerceptualLoss>,
    pub precision: Precision,
    /// NHWC weights and inputs in training.
    pub channels_last: bool,
    pub eval: PairEval,
    pub out: PathBuf,
    pub is_main: bool,
    pub card: BoneCard,
    pub val_every: u64,
    pub epochs: u64,
}

/// (epoch, training loss, validation PSNR, SSIM); None where not finite.
type HistoryPoint = (u64, Option<f64>, Option<f64>, Option<f64>);

/// The training task of `bone_suppression train`.
pub struct BoneSuppression<'a> {
    pub net: BoneNet,
    optimizer: Adam,
    scheduler: ReduceLrOnPlateau,
    dp: Option<DataParallel>,
    val: &'a Dataset,
    config: BoneTaskConfig,
    /// The best model so far and the curves, kept across a resume.
    progress: Selection<HistoryPoint>,
}

impl<'a> BoneSuppression<'a> {
    pub fn new(net: BoneNet, val: &'a Dataset, config: BoneTaskConfig) -> Result<Self, TaskError> {
        if config.channels_last {
            let mut tensors = net.state();
            crate::device::set_channels_last(tensors.iter_mut())?;
        }
        let mut optimizer = Adam::new(net.parameters(), config.adam);
        let plateau = PlateauConfig {
            mode: PlateauMode::Max,
            factor: config.plateau_factor,
            patience: config.plateau_patience,
            ..PlateauConfig::default()
        };
        let scheduler = ReduceLrOnPlateau::new(&mut optimizer, plateau)?;
        Ok(Self { net, optimizer, scheduler, dp: None, val, config, progress: Selection::default() })
    }

    pub fn with_data_parallel(
        mut self,
        group: Arc<crate::distributed::ProcessGroup>,
    ) -> Result<Self, TaskError> {
        let params: Vec<Tensor> = self.optimizer.params().iter().map(Tensor::shallow_clone).collect();
        self.dp = Some(DataParallel::new(group, &params, &self.net.state())?);
        Ok(self)
    }

    pub fn best(&self) -> Option<(u64, f64)> {
        self.progress.best()
    }

    fn validate(&mut self, epoch: u64, loss: f64) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let scores = score_pairs(&self.net, self.val, &self.config.eval, |_, _, _, _| Ok(()))?;
        let means = scores.means();
        let psnr = means.map(|m| m.psnr);
        self.scheduler.step_optimizer(&mut self.optimizer, psnr);
        let psnr = psnr.and_then(finite);
        let point = (epoch + 1, finite(loss), psnr, means.map(|m| m.ssim).and_then(finite));
        let improved = self.progress.record(epoch + 1, psnr, point);
        if self.config.is_main {
            if improved {
                let best = self.config.out.join("best.pth");
                self.net.save(&best)?;
                let card = BoneCard {
                    epoch: Some(epoch + 1),
                    val_psnr: psnr,
                    val_ssim: means.map(|m| m.ssim),
                    ..self.config.card.clone()
                };
                card.write(&best)?;
            }
            self.plot_curves()?;
            let best = self.progress.best_text(3, " dB");
            eprintln!(
                "validation after epoch {}: PSNR {}, SSIM {}, RMSE {} (best {best}); training loss {loss:.5}",
                epoch + 1,
                means.map_or("n/a".into(), |m| format!("{:.3} dB", m.psnr)),
                means.map_or("n/a".into(), |m| format!("{:.4}", m.ssim)),
                means.map_or("n/a".into(), |m| format!("{:.3}", m.rmse)),
            );
        }
        Ok(vec![
            ("val_psnr", json!(psnr)),
            ("val_ssim", json!(means.map(|m| m.ssim))),
            ("val_rmse", json!(means.map(|m| m.rmse))),
            ("val_n", json!(scores.rows.len())),
            ("next_lr", json!(self.optimizer.lr())),
            ("best_epoch", json!(self.progress.best_epoch)),
        ])
    }

    /// `curves.png`: training loss and validation PSNR per epoch.
    fn plot_curves(&self) -> Result<(), TaskError> {
        let points: Vec<_> = self.progress.history.iter().map(|p| (p.0, p.1, p.2)).collect();
        plot_curves(&self.config.out.join("curves.png"), &points, "PSNR", "dB")
    }
}

impl Task for BoneSuppression<'_> {
    type Batch = Batch;

    fn step(&mut self, batch: Batch, _at: StepAt) -> Result<StepOutput, TaskError> {
        if batch.samples.is_empty() {
            return Err(format!(
                "batch {}: no readable pair after {} failed reads",
                batch.index,
                batch.skipped.len()
            )
            .into());
        }
        let device = self.config.eval.device;
        let (grey, target) = batch_pair(&batch, device)?;
        let grey = if self.config.channels_last { crate::device::to_channels_last(&grey)? } else { grey };
        let out = crate::device::autocast(device, self.config.precision, || self.net.forward(&grey, true))?;
        // Losses in fp32, outside autocast (the loss functions see to it).
        let values = self.config.loss.combine(
            &out.to_kind(Kind::Float),
            &target,
            1.0,
            self.config.perceptual.as_ref(),
        )?;
        self.optimizer.zero_grad();
        match &self.dp {
            Some(dp) => dp.backward(&values.total)?,
            None => values.total.backward(),
        }
        Optimizer::step(&mut self.optimizer)?;
        if let Some(dp) = &self.dp {
            dp.average_buffers(&self.net.state())?;
        }
        let total = values.total.detach();
        let mut out_values = vec![("loss", total)];
        for (term, v) in values.terms {
            out_values.push((term.name(), v));
        }
        Ok(StepOutput { values: out_values, extra: vec![("lr", json!(self.optimizer.lr()))] })
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
        let mut root: Value = StateWriter::new()
            .model("model", self.net.module())
            .optimizer("optimizer", &self.optimizer)
            .scheduler("scheduler", &self.scheduler)
            .finish(state);
        self.progress.save_into(&mut root, "bone_suppression")?;
        Ok(root)
    }

    fn restore(&mut self, ckpt: &Checkpoint, _batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let reader = StateReader::new(ckpt)?;
        reader.model("model", self.net.module())?;
        reader.optimizer("optimizer", &mut self.optimizer)?;
        reader.scheduler("scheduler", &mut self.scheduler)?;
        if let Some(progress) = Selection::load_from(ckpt, "bone_suppression")? {
            self.progress = progress;
        }
        Ok(reader.run()?)
    }
}
