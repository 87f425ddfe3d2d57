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

/// What `predict` wrote.
#[derive(Debug)]
pub struct Predicted {
    pub images: usize,
    pub skipped: usize,
    pub cams: Option<usize>,
}

/// Predictions CSV (and overlays) for the images the flags name.
pub fn predict_files(args: &PredictArgs) -> Result<Predicted, TaskError> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (model, card) = Classifier::load(&args.model, cfg0.device)?;
    let cfg = EvalConfig { image_size: card.image_size, ..cfg0 };
    let dataset = Dataset::from_sources(&args.images)?;
    let pred = predict(&model, &dataset, &cfg)?;
    for s in &pred.skipped {
        eprintln!("skipped {s}");
    }
    write_predictions(&args.out, &dataset, &pred, &card.labels)?;
    let cams = match &args.cam {
        Some(dir) => {
            Some(write_grad_cams(&model, &card, &dataset, &pred, &cfg, dir, args.cam_label.as_deref())?)
        }
        None => None,
    };
    Ok(Predicted { images: pred.rows.len(), skipped: pred.skipped.len(), cams })
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
        Some(l) => Some(
            card.labels
                .iter()
                .position(|c| c.eq_ignore_ascii_case(l))
                .ok_or_else(|| format!("--cam-label {l}: not one of {}", card.labels.join(", ")))?,
        ),
        None => None,
    };
    let loader_cfg = LoaderConfig {
        image_size: card.image_size,
        batch_size: 8,
        workers: cfg.workers,
        prefetch: 2,
        seed: 0,
        shuffle: false,
        drop_last: false,
    };
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
