//! `classify predict`: probabilities for unlabelled images, and Grad-CAM overlays that show
//! where the model looked for its top label (or the label asked).
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::args::PredictArgs;
use super::evaluate::{EvalConfig, Predictions, predict, write_predictions};
use super::model::{Classifier, ModelCard};
use crate::data::{Dataset, Loader, LoaderConfig, output_names};
use crate::training::TaskError;

/// A model's predictions for a set of images, kept for the Grad-CAM overlays.
pub struct Predicted {
    pub model: Classifier,
    pub card: ModelCard,
    pub dataset: Dataset,
    pub predictions: Predictions,
    pub config: EvalConfig,
}

/// `classify predict`: the predictions CSV for the images the flags name. A `--cam-label` the
/// model does not have is refused before anything runs.
pub fn predict_files(args: &PredictArgs) -> Result<Predicted, TaskError> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (model, card) = Classifier::load(&args.model, cfg0.device)?;
    if let Some(l) = &args.cam_label {
        label_index(&card, l)?;
    }
    let config = EvalConfig { image_size: card.image_size, ..cfg0 };
    let dataset = Dataset::from_sources(&args.images)?;
    let predictions = predict(&model, &dataset, &config)?;
    for s in &predictions.skipped {
        eprintln!("skipped {s}");
    }
    write_predictions(&args.out, &dataset, &predictions, &card.labels)?;
    Ok(Predicted { model, card, dataset, predictions, config })
}

impl Predicted {
    /// Grad-CAM overlays of these predictions in `dir` (see [`write_grad_cams`]).
    pub fn write_grad_cams(&self, dir: &Path, label: Option<&str>) -> Result<usize, TaskError> {
        write_grad_cams(&self.model, &self.card, &self.dataset, &self.predictions, &self.config, dir, label)
    }
}

fn label_index(card: &ModelCard, label: &str) -> Result<usize, TaskError> {
    card.labels
        .iter()
        .position(|c| c.eq_ignore_ascii_case(label))
        .ok_or_else(|| format!("--cam-label {label}: not one of {}", card.labels.join(", ")).into())
}

/// `DIR/<name>_cam_<label>.png` for every readable image: the Grad-CAM of `label` (else the
/// image's most probable one) over the image as the model saw it. Returns how many.
pub fn write_grad_cams(
    model: &Classifier,
    card: &ModelCard,
    dataset: &Dataset,
    pred: &Predictions,
    cfg: &EvalConfig,
    dir: &Path,
    label: Option<&str>,
) -> Result<usize, TaskError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let asked = match label {
        Some(l) => Some(label_index(card, l)?),
        None => None,
    };
    let loader_cfg = LoaderConfig::in_order(card.image_size, 8, cfg.workers);
    let loader = Loader::new(Arc::new(dataset.clone()), loader_cfg);
    let row_of: HashMap<usize, usize> = pred.rows.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    let names = output_names(dataset);
    let mut written = HashSet::new();
    for batch in loader.epoch(0, 0) {
        let good = batch.samples.len() as i64;
        if good == 0 {
            continue;
        }
        let grey = batch.images.narrow(0, 0, good);
        let classes: Vec<i64> = batch
            .samples
            .iter()
            .map(|i| asked.unwrap_or_else(|| row_of.get(i).map_or(0, |&r| argmax(&pred.probs[r]))) as i64)
            .collect();
        let x = crate::data::normalize(&grey).to_device(cfg.device);
        let cams = crate::model::gradcam::grad_cam(&model.net, &x, &classes).to_device(tch::Device::Cpu);
        let size = card.image_size as u32;
        for (j, &idx) in batch.samples.iter().enumerate() {
            if !written.insert(idx) {
                continue;
            }
            let g = Vec::<f32>::try_from(grey.get(j as i64).flatten(0, -1))?;
            let h = Vec::<f32>::try_from(cams.get(j as i64).flatten(0, -1).to_kind(tch::Kind::Float))?;
            let overlay = crate::plot::heatmap_overlay(&g, size, size, &h, 0.4);
            let label = sanitize(&card.labels[classes[j] as usize]);
            let path = dir.join(format!("{}_cam_{label}.png", names[idx]));
            overlay.save(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(written.len())
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// A label as part of a file name.
fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}
