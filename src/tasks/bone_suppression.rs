//! Bone suppression: a radiograph in, the same radiograph without ribs and clavicles out (the
//! soft-tissue image of dual-energy subtraction), trained on pairs. Two models: a U-Net on the
//! 1-channel ResNet (named as `segmentation_models_pytorch.Unet`, so a CheSS encoder starts it)
//! and the residual ResNet-BS baseline of the bone-suppression literature. Losses are weighted
//! terms from the command line (L1, MSE, 1 - SSIM, 1 - MS-SSIM, perceptual); the best model is
//! chosen by validation PSNR on 8-bit outputs, as the images are saved and scored.
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor, nn};

use crate::Precision;
use crate::checkpoint::{self, Checkpoint, CheckpointError, StateReader, StateWriter, Value};
use crate::data::{Batch, Dataset, Loader, LoaderConfig, MEAN, STD, Skipped};
use crate::distributed::DataParallel;
use crate::losses::{PerceptualLoss, WeightedLoss};
use crate::metrics::image_quality::{ImageScores, SsimWindow, score_images};
use crate::model::{Arch, ResNetBs, ResNetBsConfig, StateDict, Unet, UnetConfig};
use crate::optim::{Adam, AdamConfig, LrScheduler, Optimizer, PlateauConfig, PlateauMode, ReduceLrOnPlateau};
use crate::plot::{Panel, Series, line_chart};
use crate::training::{MetricsLog, RunState, StepAt, StepOutput, Task, TaskError};

/// Which network: `unet-resnet18|34|50` or `resnet-bs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoneArch {
    Unet(#[serde(with = "arch_name")] Arch),
    ResNetBs { blocks: i64, channels: i64 },
}

mod arch_name {
    use crate::model::Arch;
    pub fn serialize<S: serde::Serializer>(a: &Arch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl BoneArch {
    /// `unet-resnet18`, `unet-resnet34`, `unet-resnet50` or `resnet-bs` (with `blocks` and
    /// `channels`).
    pub fn parse(name: &str, blocks: i64, channels: i64) -> Result<Self, String> {
        match name {
            "resnet-bs" => Ok(Self::ResNetBs { blocks, channels }),
            other => match other.strip_prefix("unet-") {
                Some(arch) => Ok(Self::Unet(Arch::from_str(arch).map_err(|e| e.to_string())?)),
                None => {
                    Err(format!("--arch {other}: unet-resnet18, unet-resnet34, unet-resnet50 or resnet-bs"))
                }
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Unet(a) => format!("unet-{}", a.name()),
            Self::ResNetBs { .. } => "resnet-bs".into(),
        }
    }
}

/// What a saved model is, beside its weights (`best.pth` -> `best.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoneCard {
    pub arch: BoneArch,
    pub image_size: i64,
    pub epoch: Option<u64>,
    pub val_psnr: Option<f64>,
    pub val_ssim: Option<f64>,
    pub loss: String,
    pub init: String,
    pub perceptual: Option<String>,
}

impl BoneCard {
    pub fn read(model: &Path) -> Result<Self, CheckpointError> {
        let path = model.with_extension("json");
        let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::Io(e).in_file(&path))?;
        serde_json::from_str(&text).map_err(|e| CheckpointError::Mapping(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, model: &Path) -> Result<(), CheckpointError> {
        let path = model.with_extension("json");
        let text = serde_json::to_string_pretty(self).expect("a card serialises");
        crate::atomic::write(&path, text.as_bytes()).map_err(|e| CheckpointError::Io(e).in_file(&path))
    }
}

enum Net {
    Unet(Unet),
    ResNetBs(ResNetBs),
}

/// The bone-suppression network and its variables. Input: grey 0..255; output: 0..1.
pub struct BoneNet {
    pub vs: nn::VarStore,
    net: Net,
    pub arch: BoneArch,
}

impl std::fmt::Debug for BoneNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoneNet").field("arch", &self.arch).finish()
    }
}

impl BoneNet {
    /// PyTorch's initialisation, from libtorch's generator (seed it first).
    pub fn new(arch: BoneArch, device: Device) -> Result<Self, TaskError> {
        let vs = nn::VarStore::new(device);
        let net = match arch {
            BoneArch::Unet(encoder) => {
                let config = UnetConfig { encoder, ..UnetConfig::default() };
                Net::Unet(Unet::new(&vs.root(), config)?)
            }
            BoneArch::ResNetBs { blocks, channels } => {
                let config = ResNetBsConfig { blocks, channels, ..ResNetBsConfig::default() };
                Net::ResNetBs(ResNetBs::new(&vs.root(), config)?)
            }
        };
        Ok(Self { vs, net, arch })
    }

    /// A saved model (`best.pth` and its card).
    pub fn load(model: &Path, device: Device) -> Result<(Self, BoneCard), TaskError> {
        let card = BoneCard::read(model)?;
        let net = Self::new(card.arch, device)?;
        let ckpt = checkpoint::load(model)?;
        let tensors: std::collections::HashMap<String, Tensor> = ckpt.root.flatten().into_iter().collect();
        crate::model::load_state(net.module(), "", &tensors)
            .map_err(|e| format!("{}: {e}", model.display()))?;
        Ok((net, card))
    }

    fn module(&self) -> &dyn StateDict {
        match &self.net {
            Net::Unet(u) => u,
            Net::ResNetBs(r) => r,
        }
    }

    /// Starts the U-Net's encoder from CheSS, MoCo, torchvision or extracted weights.
    pub fn init_encoder(&self, path: &Path) -> Result<String, TaskError> {
        let Net::Unet(unet) = &self.net else {
            return Err("--init applies to the U-Net's encoder; ResNet-BS has none".into());
        };
        let weights = crate::tasks::classify::model::load_weights(path)?;
        let report = unet
            .load_encoder(&weights, checkpoint::LoadOptions::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(report.to_string())
    }

    pub fn freeze_encoder(&self) -> Result<(), TaskError> {
        match &self.net {
            Net::Unet(u) => {
                u.freeze_encoder();
                Ok(())
            }
            Net::ResNetBs(_) => Err("--freeze-encoder applies to the U-Net".into()),
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        match &self.net {
            Net::Unet(u) => u.trainable_parameters(),
            Net::ResNetBs(_) => self
                .module()
                .named_tensors("")
                .into_iter()
                .map(|t| t.tensor)
                .filter(Tensor::requires_grad)
                .collect(),
        }
    }

    pub fn state(&self) -> Vec<Tensor> {
        self.module().named_tensors("").into_iter().map(|t| t.tensor).collect()
    }

    /// The suppressed image in 0..1 from grey 0..255: the U-Net sees CheSS-normalised input
    /// (what its encoder was pretrained on) and ends in a sigmoid; ResNet-BS sees x / 255 and
    /// has its own sigmoid.
    pub fn forward(&self, grey: &Tensor, train: bool) -> Tensor {
        match &self.net {
            Net::Unet(u) => u.forward_t(&((grey / 255.0 - MEAN) / STD), train).sigmoid(),
            Net::ResNetBs(r) => r.forward(&(grey / 255.0)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        checkpoint::save_state_dict(path, self.module())
    }
}

/// Grey 0..255 inputs and 0..1 targets of a batch (augmented jointly when the loader does).
fn batch_pair(batch: &Batch, device: Device) -> Result<(Tensor, Tensor), TaskError> {
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

/// Model outputs as saved: 8-bit, 0..255.
pub fn quantise(out01: &Tensor) -> Tensor {
    (out01.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0).round()
}

/// Per-image scores of a set, in input order.
#[derive(Debug, Clone, Default)]
pub struct PairScores {
    pub rows: Vec<usize>,
    pub scores: Vec<ImageScores>,
    pub skipped: Vec<Skipped>,
}

impl PairScores {
    pub fn means(&self) -> Option<ImageScores> {
        let n = self.scores.len() as f64;
        (n > 0.0).then(|| ImageScores {
            psnr: self.scores.iter().map(|s| s.psnr).sum::<f64>() / n,
            ssim: self.scores.iter().map(|s| s.ssim).sum::<f64>() / n,
            rmse: self.scores.iter().map(|s| s.rmse).sum::<f64>() / n,
        })
    }
}

/// How a set of pairs is run through a model.
#[derive(Debug, Clone)]
pub struct PairEval {
    pub image_size: i64,
    pub batch_size: usize,
    pub workers: usize,
    pub precision: Precision,
    pub device: Device,
    pub window: SsimWindow,
}

/// Runs `net` on every pair of `pairs` and scores the 8-bit outputs against the targets (both at
/// the model's size). `visit(index, input, output, target)` sees each image (0..255, `[S, S]`).
pub fn score_pairs(
    net: &BoneNet,
    pairs: &Dataset,
    cfg: &PairEval,
    mut visit: impl FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<(), TaskError>,
) -> Result<PairScores, TaskError> {
    let config = LoaderConfig {
        image_size: cfg.image_size,
        batch_size: cfg.batch_size.max(1),
        workers: cfg.workers.max(1),
        prefetch: 2,
        seed: 0,
        shuffle: false,
        drop_last: false,
    };
    let loader = Loader::new(Arc::new(pairs.clone()), config);
    let mut found: Vec<Option<ImageScores>> = vec![None; pairs.len()];
    let mut iter = loader.epoch(0, 0);
    let size = cfg.image_size as usize;
    for batch in iter.by_ref() {
        let good = batch.samples.len() as i64;
        if good == 0 {
            continue;
        }
        let (grey, target) = batch_pair(&batch, cfg.device)?;
        let out = tch::no_grad(|| {
            crate::device::autocast(cfg.device, cfg.precision, || {
                net.forward(&grey.narrow(0, 0, good), false)
            })
        })?;
        let out = quantise(&out).to_device(Device::Cpu);
        let target = (target.narrow(0, 0, good) * 255.0).to_device(Device::Cpu);
        let grey = grey.narrow(0, 0, good).to_device(Device::Cpu);
        for (j, &idx) in batch.samples.iter().enumerate() {
            if found[idx].is_some() {
                continue;
            }
            let (o, t) = (out.get(j as i64).squeeze(), target.get(j as i64).squeeze());
            let ov = Vec::<f64>::try_from(o.to_kind(Kind::Double).flatten(0, -1))?;
            let tv = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))?;
            found[idx] = Some(score_images(&ov, &tv, size, size, 255.0, cfg.window)?);
            visit(idx, &grey.get(j as i64).squeeze(), &o, &t)?;
        }
    }
    let (rows, scores, skipped) = crate::data::loader::gather_by_index(found, pairs, iter.skipped().to_vec());
    Ok(PairScores { rows, scores, skipped })
}

/// `name,psnr,ssim,rmse` rows.
pub fn scores_csv(names: &[String], scores: &[ImageScores]) -> String {
    let mut text = String::from("name,psnr,ssim,rmse\n");
    for (n, s) in names.iter().zip(scores) {
        text += &format!("{},{},{},{}\n", crate::tasks::classify::data::csv_field(n), s.psnr, s.ssim, s.rmse);
    }
    text
}

/// Settings of a bone-suppression run's task.
pub struct BoneTaskConfig {
    pub adam: AdamConfig,
    pub plateau_factor: f64,
    pub plateau_patience: i64,
    pub loss: WeightedLoss,
    pub perceptual: Option<PerceptualLoss>,
    pub precision: Precision,
    pub eval: PairEval,
    pub out: PathBuf,
    pub is_main: bool,
    pub card: BoneCard,
    pub val_every: u64,
    pub epochs: u64,
}

/// (epoch, training loss, validation PSNR, SSIM); None where not finite.
type HistoryPoint = (u64, Option<f64>, Option<f64>, Option<f64>);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    best_epoch: Option<u64>,
    best_psnr: Option<f64>,
    history: Vec<HistoryPoint>,
}

/// The training task of `bone_suppression train`.
pub struct BoneSuppression<'a> {
    pub net: BoneNet,
    optimizer: Adam,
    scheduler: ReduceLrOnPlateau,
    dp: Option<DataParallel>,
    val: &'a Dataset,
    config: BoneTaskConfig,
    progress: Progress,
    loss_sum: Option<Tensor>,
    loss_steps: u64,
}

impl<'a> BoneSuppression<'a> {
    pub fn new(net: BoneNet, val: &'a Dataset, config: BoneTaskConfig) -> Result<Self, TaskError> {
        let mut optimizer = Adam::new(net.parameters(), config.adam);
        let plateau = PlateauConfig {
            mode: PlateauMode::Max,
            factor: config.plateau_factor,
            patience: config.plateau_patience,
            ..PlateauConfig::default()
        };
        let scheduler = ReduceLrOnPlateau::new(&mut optimizer, plateau)?;
        Ok(Self {
            net,
            optimizer,
            scheduler,
            dp: None,
            val,
            config,
            progress: Progress::default(),
            loss_sum: None,
            loss_steps: 0,
        })
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
        self.progress.best_epoch.zip(self.progress.best_psnr)
    }

    fn validate(&mut self, epoch: u64, loss: f64) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let scores = score_pairs(&self.net, self.val, &self.config.eval, |_, _, _, _| Ok(()))?;
        let means = scores.means();
        let psnr = means.map(|m| m.psnr);
        self.scheduler.step_optimizer(&mut self.optimizer, psnr);
        // A NaN or infinite PSNR (a broken or a perfect output) is no basis for a choice, and
        // JSON cannot hold it across a resume.
        let finite = |v: f64| v.is_finite().then_some(v);
        let psnr = psnr.and_then(finite);
        let improved = match (psnr, self.progress.best_psnr) {
            (Some(p), Some(b)) => p > b,
            (Some(_), None) => true,
            _ => false,
        };
        self.progress.history.push((epoch + 1, finite(loss), psnr, means.map(|m| m.ssim).and_then(finite)));
        if improved {
            self.progress.best_epoch = Some(epoch + 1);
            self.progress.best_psnr = psnr;
        }
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
            let best = self.best().map_or("none".into(), |(e, p)| format!("{p:.3} dB after epoch {e}"));
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

    fn plot_curves(&self) -> Result<(), TaskError> {
        let h = &self.progress.history;
        let series = |name: &str, f: &dyn Fn(&HistoryPoint) -> f64| Series {
            name: name.into(),
            points: h.iter().map(|p| (p.0 as f64, f(p))).collect(),
        };
        let panel = |title: &str, y: &str, s: Series| Panel {
            title: title.into(),
            x_label: "epoch".into(),
            y_label: y.into(),
            series: vec![s],
            y_range: None,
        };
        line_chart(
            &self.config.out.join("curves.png"),
            &[
                panel("Training loss", "loss", series("training loss", &|p| p.1.unwrap_or(f64::NAN))),
                panel("Validation PSNR", "dB", series("validation PSNR", &|p| p.2.unwrap_or(f64::NAN))),
            ],
        )?;
        Ok(())
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
        self.loss_sum = Some(match self.loss_sum.take() {
            Some(s) => s + &total,
            None => total.shallow_clone(),
        });
        self.loss_steps += 1;
        let mut out_values = vec![("loss", total)];
        for (term, v) in values.terms {
            out_values.push((term.name(), v));
        }
        Ok(StepOutput { values: out_values, extra: vec![("lr", json!(self.optimizer.lr()))] })
    }

    fn end_epoch(
        &mut self,
        epoch: u64,
        _log: &mut MetricsLog,
    ) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let loss =
            self.loss_sum.take().map_or(f64::NAN, |s| s.double_value(&[]) / self.loss_steps.max(1) as f64);
        self.loss_steps = 0;
        let mut entries = vec![("train_loss", json!(loss))];
        if (epoch + 1).is_multiple_of(self.config.val_every.max(1)) || epoch + 1 >= self.config.epochs {
            entries.extend(self.validate(epoch, loss)?);
        }
        Ok(entries)
    }

    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError> {
        let mut root = StateWriter::new()
            .model("model", self.net.module())
            .optimizer("optimizer", &self.optimizer)
            .scheduler("scheduler", &self.scheduler)
            .finish(state);
        if let Value::Dict(entries) = &mut root {
            entries
                .push((Value::str("bone_suppression"), Value::Str(serde_json::to_string(&self.progress)?)));
        }
        Ok(root)
    }

    fn restore(&mut self, ckpt: &Checkpoint, _batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let reader = StateReader::new(ckpt)?;
        reader.model("model", self.net.module())?;
        reader.optimizer("optimizer", &mut self.optimizer)?;
        reader.scheduler("scheduler", &mut self.scheduler)?;
        if let Some(text) = ckpt.root.get("bone_suppression").and_then(Value::as_str) {
            self.progress = serde_json::from_str(text)?;
        }
        Ok(reader.run()?)
    }
}
