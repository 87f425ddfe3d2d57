//! "By how much?": two models' AUROC on the same images, and the paired bootstrap interval of
//! their difference (both judged on the same resamples, so the images' own difficulty cancels).
use std::path::PathBuf;

use serde_json::{Value as Json, json};

use super::args::CompareArgs;
use super::evaluate::{EvalConfig, ReportOptions, evaluate, load_labelled, model_path, predict};
use super::model::Classifier;
use crate::metrics::{Interval, bootstrap_indices, paired_bootstrap_difference};
use crate::tasks::refuse;
use crate::training::TaskError;

/// The comparison of model A with model B.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub data: PathBuf,
    pub images: usize,
    pub labels: Vec<String>,
    pub auroc_a: Vec<Option<f64>>,
    pub auroc_b: Vec<Option<f64>>,
    /// A - B per label with its interval; None where a label is undefined in some resample.
    pub difference: Vec<Option<(f64, Interval)>>,
    pub mean_a: Option<f64>,
    pub mean_b: Option<f64>,
    pub mean_difference: Option<(f64, Interval)>,
    pub resamples: usize,
    pub seed: u64,
    pub level: f64,
}

/// Judges the best models of two runs (or two model files) on `--data`.
pub fn compare(args: &CompareArgs) -> Result<Comparison, TaskError> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (path_a, path_b) = (model_path(&args.run_a), model_path(&args.run_b));
    let (model_a, card_a, data) = load_labelled(&path_a, &args.data, &args.labels, cfg0.device)?;
    let (model_b, card_b) = Classifier::load(&path_b, cfg0.device)?;
    if card_a.labels != card_b.labels || card_a.multi_label != card_b.multi_label {
        refuse!("{} and {} predict different labels", path_a.display(), path_b.display());
    }
    if args.report.bootstrap == 0 {
        refuse!("compare needs bootstrap resamples for its intervals (--bootstrap 1000)");
    }
    let pa = predict(&model_a, &data.dataset, &EvalConfig { image_size: card_a.image_size, ..cfg0.clone() })?;
    let pb = predict(&model_b, &data.dataset, &EvalConfig { image_size: card_b.image_size, ..cfg0 })?;
    if pa.rows != pb.rows {
        refuse!("the two models read different images of {}", args.data.display());
    }
    if pa.rows.is_empty() {
        refuse!("no image of {} could be read", args.data.display());
    }
    let targets = data.target_rows();
    let truth: Vec<Vec<bool>> =
        pa.rows.iter().map(|&i| targets[i].0.iter().map(|&v| v > 0.5).collect()).collect();
    let mask: Vec<Vec<bool>> =
        pa.rows.iter().map(|&i| targets[i].1.iter().map(|&v| v > 0.5).collect()).collect();
    let level = 0.95;
    let indices = bootstrap_indices(pa.rows.len(), args.report.bootstrap, args.report.bootstrap_seed);
    let diff = paired_bootstrap_difference(&pa.probs, &pb.probs, &truth, &mask, &indices, level);
    let opts = ReportOptions { resamples: 0, ..ReportOptions::default() };
    let ea = evaluate(&data, &pa, None, &opts)?;
    let eb = evaluate(&data, &pb, None, &opts)?;
    Ok(Comparison {
        a: path_a,
        b: path_b,
        data: args.data.clone(),
        images: pa.rows.len(),
        labels: card_a.labels,
        auroc_a: ea.auroc,
        auroc_b: eb.auroc,
        difference: diff.per_label,
        mean_a: ea.mean_auroc,
        mean_b: eb.mean_auroc,
        mean_difference: diff.mean,
        resamples: indices.len(),
        seed: args.report.bootstrap_seed,
        level,
    })
}

impl Comparison {
    /// The table: a row per label and the mean, A, B, A - B and its interval.
    pub fn lines(&self) -> Vec<String> {
        let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:.4}"));
        let fmt_diff = |d: &Option<(f64, Interval)>| match d {
            Some((d, i)) => (format!("{d:+.4}"), format!("[{:+.4}, {:+.4}]", i.low, i.high)),
            None => ("n/a".into(), String::new()),
        };
        let mut lines = vec![
            format!("A = {}", self.a.display()),
            format!("B = {}", self.b.display()),
            format!("{} images of {}", self.images, self.data.display()),
        ];
        let width = self.labels.iter().map(String::len).max().unwrap_or(4).max(8);
        let level = self.level * 100.0;
        lines.push(format!(
            "  {:<width$}  {:>7}  {:>7}  {:>8}  {level} % paired bootstrap interval",
            "label", "A", "B", "A - B"
        ));
        for (l, name) in self.labels.iter().enumerate() {
            let (d, ci) = fmt_diff(&self.difference[l]);
            lines.push(format!(
                "  {name:<width$}  {:>7}  {:>7}  {d:>8}  {ci}",
                fmt(self.auroc_a[l]),
                fmt(self.auroc_b[l])
            ));
        }
        let (d, ci) = fmt_diff(&self.mean_difference);
        lines.push(format!(
            "  {:<width$}  {:>7}  {:>7}  {d:>8}  {ci}",
            "mean",
            fmt(self.mean_a),
            fmt(self.mean_b)
        ));
        lines
    }

    /// The comparison as JSON, written atomically.
    pub fn write(&self, path: &std::path::Path) -> Result<(), TaskError> {
        let text = serde_json::to_string_pretty(&self.to_json())?;
        crate::atomic::write(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(())
    }

    pub fn to_json(&self) -> Json {
        let entry = |a: Option<f64>, b: Option<f64>, d: &Option<(f64, Interval)>| {
            json!({"a": a, "b": b, "difference": d.as_ref().map(|x| x.0),
                   "ci": d.as_ref().map(|x| [x.1.low, x.1.high])})
        };
        let per_label: serde_json::Map<String, Json> = self
            .labels
            .iter()
            .enumerate()
            .map(|(l, name)| (name.clone(), entry(self.auroc_a[l], self.auroc_b[l], &self.difference[l])))
            .collect();
        json!({
            "a": self.a, "b": self.b, "data": self.data, "n": self.images,
            "labels": self.labels, "per_label": per_label,
            "mean_auroc": entry(self.mean_a, self.mean_b, &self.mean_difference),
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "level": self.level, "paired": true},
        })
    }
}
