//! Nodule generation: SPADE synthesising chest radiographs from label maps (background /
//! nodule), trained with a CheSS perceptual loss, as in the CheSS paper's fourth downstream task;
//! then new nodules put where a user asks, and FID/KID to judge the images.
//!
//! - [`gan`]: the three networks, their optimisers and the G and D steps.
//! - [`args`]: the subcommands' flags.
//! - [`train`](mod@train): `nodule_gan train`, from the flags to `latest_net_{G,E,D}.pth`.
//! - [`generate`]: images from masks, and [`generate::insert`]: a nodule into a radiograph.
//! - [`fid`]: FID (and KID) of two folders, on Inception or CheSS features.
pub mod args;
pub mod fid;
pub mod gan;
pub mod generate;
pub mod train;

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor};

pub use args::{FidArgs, GenerateArgs, InsertArgs, TrainArgs};
pub use gan::{GanError, LossWeights, SpadeGan, adam_configs};
pub use train::{Trained, train};

use crate::checkpoint::{Checkpoint, StateReader, StateWriter, Value, save_state_dict};
use crate::data::Batch;
use crate::model::SpadeConfig;
use crate::model::spade::one_hot;
use crate::optim::{LinearDecayLr, LinearDecayRule, LrScheduler, Optimizer};
use crate::training::{EpochMeans, MetricsLog, RunState, StepAt, StepOutput, Task, TaskError};

/// What a trained generator is: written as `model.json` beside `latest_net_G.pth`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GanCard {
    pub config: SpadeConfig,
    pub weights: LossWeights,
    /// The perceptual loss's encoder, as its source describes it.
    pub perceptual: Option<String>,
    pub epoch: u64,
}

impl GanCard {
    pub fn write(&self, dir: &Path) -> Result<(), TaskError> {
        let path = dir.join("model.json");
        crate::atomic::write(&path, serde_json::to_string_pretty(self)?.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(())
    }

    /// The run folder of `model` (the folder itself, or the folder of a `latest_net_*.pth`).
    pub fn folder(model: &Path) -> PathBuf {
        if model.is_dir() {
            model.to_path_buf()
        } else {
            model.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
    }

    pub fn read(dir: &Path) -> Result<Self, TaskError> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e} (a nodule_gan run folder has model.json)", path.display()))?;
        Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
    }
}

/// A trained generator and encoder from a run folder (`model.json`, `latest_net_G.pth`,
/// `latest_net_E.pth`), in evaluation mode.
pub fn load_gan(model: &Path, device: Device) -> Result<(SpadeGan, GanCard), TaskError> {
    let dir = GanCard::folder(model);
    let card = GanCard::read(&dir)?;
    let gan = SpadeGan::new(card.config, device, adam_configs(0.0, 0.0), card.weights, None)?;
    for (name, net) in [("G", &gan.g as &dyn crate::model::StateDict), ("E", &gan.e)] {
        let path = dir.join(format!("latest_net_{name}.pth"));
        let tensors = crate::checkpoint::load(&path)?.tensors().into_iter().collect();
        crate::model::load_state(net, "", &tensors).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((gan, card))
}

/// Settings of a nodule-GAN run's task.
pub struct GanTaskConfig {
    pub out: PathBuf,
    pub is_main: bool,
    /// This process's rank under torchrun (0 alone), and the run's seed: the random draws of a
    /// step differ between ranks.
    pub rank: usize,
    pub seed: u64,
    pub epochs: u64,
    pub decay_epochs: u64,
    pub flip: bool,
    pub sample_every: u64,
    /// Label maps and real images of the sample grid (`[k, 1, S, S]` classes and 0..255).
    pub sample_batch: Option<(Tensor, Tensor)>,
    pub card: GanCard,
}

/// The training task of `nodule_gan train`.
pub struct NoduleGan {
    pub gan: SpadeGan,
    sched_g: LinearDecayLr,
    sched_d: LinearDecayLr,
    config: GanTaskConfig,
}

/// `[N, 1, S, S]` 0..255 images and class maps to (one-hot maps, images in -1..1), on `device`.
pub fn gan_inputs(images: &Tensor, labels: &Tensor, label_nc: i64, device: Device) -> (Tensor, Tensor) {
    let seg = one_hot(&labels.to_device(device), label_nc);
    let real = images.to_device(device).to_kind(Kind::Float) / 127.5 - 1.0;
    (seg, real)
}

impl NoduleGan {
    pub fn new(mut gan: SpadeGan, config: GanTaskConfig) -> Result<Self, TaskError> {
        let constant = config.epochs.saturating_sub(config.decay_epochs) as i64;
        let decay = config.decay_epochs.max(1) as i64;
        let sched_g = LinearDecayLr::new(&mut gan.opt_g, constant, decay, LinearDecayRule::Spade)?;
        let sched_d = LinearDecayLr::new(&mut gan.opt_d, constant, decay, LinearDecayRule::Spade)?;
        Ok(Self { gan, sched_g, sched_d, config })
    }

    /// `latest_net_{G,E,D}.pth` (NVlabs' names) and `model.json`.
    fn save_latest(&self, epoch: u64) -> Result<(), TaskError> {
        let out = &self.config.out;
        save_state_dict(&out.join("latest_net_G.pth"), &self.gan.g)?;
        save_state_dict(&out.join("latest_net_E.pth"), &self.gan.e)?;
        save_state_dict(&out.join("latest_net_D.pth"), &self.gan.d)?;
        GanCard { epoch, ..self.config.card.clone() }.write(out)
    }

    /// `samples/epoch_NNNN.png`: per row a sample's mask, the real image, the image generated
    /// from the real one's code, and one from a prior draw.
    fn write_samples(&self, epoch: u64) -> Result<(), TaskError> {
        let Some((labels, images)) = &self.config.sample_batch else { return Ok(()) };
        let device = self.gan.device;
        let (seg, real) = gan_inputs(images, labels, self.gan.config.label_nc, device);
        let zero = Tensor::zeros([real.size()[0], self.gan.config.z_dim], (Kind::Float, device));
        let encoded = self.gan.generate(&seg, Some(&real), Some(&zero))?;
        // The same draws at every epoch; the run reseeds libtorch's generator before each step.
        tch::manual_seed(0x5EED);
        let prior = self.gan.generate(&seg, None, None)?;
        let to255 = |t: &Tensor| ((t + 1.0) * 127.5).clamp(0.0, 255.0).to_device(Device::Cpu);
        let columns = [
            labels.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0,
            images.shallow_clone(),
            to255(&encoded),
            to255(&prior),
        ];
        let dir = self.config.out.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_grid(&dir.join(format!("epoch_{epoch:04}.png")), &columns)
    }
}

/// A grid of `[k, 1, S, S]` 0..255 tensors: one column per tensor, one row per image.
pub fn write_grid(path: &Path, columns: &[Tensor]) -> Result<(), TaskError> {
    let rows: Vec<Tensor> = columns.iter().map(|c| c.to_device(Device::Cpu).to_kind(Kind::Float)).collect();
    // [k, 1, S, S] each -> [k*S, cols*S]
    let grid = Tensor::cat(&rows, 3); // [k, 1, S, cols*S]
    let size = grid.size();
    let grid = grid.view([size[0] * size[2], size[3]]);
    let (h, w) = (grid.size()[0] as u32, grid.size()[1] as u32);
    let px: Vec<u8> = Vec::<f32>::try_from(grid.round().clamp(0.0, 255.0).flatten(0, -1))?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let img = image::GrayImage::from_raw(w, h, px).ok_or("grid size")?;
    crate::plot::write_png(path, &img)?;
    Ok(())
}

impl Task for NoduleGan {
    type Batch = Batch;

    fn step(&mut self, batch: Batch, at: StepAt) -> Result<StepOutput, TaskError> {
        if self.config.rank > 0 {
            // The run seeds every rank alike; each rank's flips and codes are its own draws (rank
            // 0 keeps the run's, so one process draws as before).
            let seed = self.config.seed ^ (self.config.rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tch::manual_seed(crate::training::step_seed(seed, at.global_step));
        }
        if batch.samples.is_empty() {
            return Err(format!(
                "batch {}: no readable image after {} failed reads",
                batch.index,
                batch.skipped.len()
            )
            .into());
        }
        let labels = batch.targets.as_ref().ok_or("the batches carry no masks")?;
        let device = self.gan.device;
        let (mut seg, mut real) = gan_inputs(&batch.images, labels, self.gan.config.label_nc, device);
        if self.config.flip {
            // Drawn from libtorch's generator, which the run seeds per step: a resume repeats it.
            let flip = Tensor::rand([real.size()[0], 1, 1, 1], (Kind::Float, device)).lt(0.5);
            real = real.flip([3]).where_self(&flip, &real);
            seg = seg.flip([3]).where_self(&flip, &seg);
        }
        let (_, mut values) = self.gan.generator_step(&seg, &real, None)?;
        values.extend(self.gan.discriminator_step(&seg, &real, None)?);
        let get = |name: &str| values.iter().find(|(n, _)| *n == name).map(|(_, t)| t.shallow_clone());
        let g_total = get("g_total").ok_or("no generator loss")?;
        let d_total = get("d_fake").ok_or("no D loss")? + get("d_real").ok_or("no D loss")?;
        let mut out = vec![("loss", g_total), ("d_loss", d_total)];
        out.extend(values.into_iter().filter(|(n, _)| *n != "g_total"));
        Ok(StepOutput {
            values: out,
            extra: vec![("lr_g", json!(self.gan.opt_g.lr())), ("lr_d", json!(self.gan.opt_d.lr()))],
        })
    }

    fn end_epoch(
        &mut self,
        epoch: u64,
        means: &EpochMeans,
        _log: &mut MetricsLog,
    ) -> Result<Vec<(&'static str, Json)>, TaskError> {
        let (g, d) = (means.get("loss"), means.get("d_loss"));
        self.sched_g.step_optimizer(&mut self.gan.opt_g, None);
        self.sched_d.step_optimizer(&mut self.gan.opt_d, None);
        if self.config.is_main {
            self.save_latest(epoch + 1)?;
            let last = epoch + 1 == self.config.epochs;
            if last || (self.config.sample_every > 0 && (epoch + 1).is_multiple_of(self.config.sample_every))
            {
                self.write_samples(epoch + 1)?;
            }
        }
        Ok(vec![
            ("train_g_loss", json!(g)),
            ("train_d_loss", json!(d)),
            ("next_lr_g", json!(self.gan.opt_g.lr())),
            ("next_lr_d", json!(self.gan.opt_d.lr())),
        ])
    }

    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError> {
        Ok(StateWriter::new()
            .model("net_G", &self.gan.g)
            .model("net_E", &self.gan.e)
            .model("net_D", &self.gan.d)
            .optimizer("optimizer_G", &self.gan.opt_g)
            .optimizer("optimizer_D", &self.gan.opt_d)
            .scheduler("scheduler_G", &self.sched_g)
            .scheduler("scheduler_D", &self.sched_d)
            .finish(state))
    }

    fn restore(&mut self, ckpt: &Checkpoint, _batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let reader = StateReader::new(ckpt)?;
        reader.model("net_G", &self.gan.g)?;
        reader.model("net_E", &self.gan.e)?;
        reader.model("net_D", &self.gan.d)?;
        reader.optimizer("optimizer_G", &mut self.gan.opt_g)?;
        reader.optimizer("optimizer_D", &mut self.gan.opt_d)?;
        reader.scheduler("scheduler_G", &mut self.sched_g)?;
        reader.scheduler("scheduler_D", &mut self.sched_d)?;
        Ok(reader.run()?)
    }
}
