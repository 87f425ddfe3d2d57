//! Predictions over a set of images and everything judged from them: AUROC per label with
//! bootstrap intervals, threshold metrics at 0.5 and at the validation's Youden threshold,
//! subgroups, accuracy and confusion for N-class; `metrics.json`, `predictions.csv`, `roc.png`,
//! `confusion.png`.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor};

use super::args::{EvalArgs, LabelArgs};
use super::data::{Labelled, Layout, csv_field};
use super::model::{Classifier, ModelCard};
use crate::Precision;
use crate::data::dataset::CsvTable;
use crate::data::{Dataset, DecodeCache, Loader, LoaderConfig, Skipped};
use crate::metrics::{
    Interval, RocCurve, accuracy, bootstrap_auroc, bootstrap_indices, confusion_matrix, mean_auroc,
    roc_curve, threshold_metrics, youden_threshold,
};
use crate::plot::{Series, confusion_chart, roc_chart};
use crate::training::TaskError;

/// How predictions are computed.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub image_size: i64,
    pub batch_size: usize,
    pub workers: usize,
    pub precision: Precision,
    pub channels_last: bool,
    pub device: Device,
    pub cache: Option<Arc<DecodeCache>>,
}

/// Probabilities of the readable images of a set, in input order.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// Dataset index of each row.
    pub rows: Vec<usize>,
    /// `[row][output]`.
    pub probs: Vec<Vec<f64>>,
    /// Files that could not be read (no row).
    pub skipped: Vec<Skipped>,
}

/// Runs the model in eval mode over `dataset`. An unreadable file gets no row and is listed in
/// `skipped` (the loader's stand-in image for it is predicted under its own index only).
pub fn predict(model: &Classifier, dataset: &Dataset, cfg: &EvalConfig) -> Result<Predictions, TaskError> {
    let config = LoaderConfig::in_order(cfg.image_size, cfg.batch_size, cfg.workers);
    // Targets are not needed here: a plain dataset decodes the images alone.
    let plain = Dataset {
        samples: dataset.samples.iter().map(|s| crate::data::Sample { target: None, ..s.clone() }).collect(),
    };
    let mut loader = Loader::new(Arc::new(plain), config);
    if let Some(cache) = &cfg.cache {
        loader = loader.with_cache(cache.clone());
    }
    let mut found: Vec<Option<Vec<f64>>> = vec![None; dataset.len()];
    let mut iter = loader.epoch(0, 0);
    for batch in iter.by_ref() {
        let good = batch.samples.len();
        if good == 0 {
            continue;
        }
        let x = crate::data::normalize(&batch.images.narrow(0, 0, good as i64)).to_device(cfg.device);
        let x = if cfg.channels_last { crate::device::to_channels_last(&x)? } else { x };
        let probs = tch::no_grad(|| -> Result<Tensor, TaskError> {
            let logits =
                crate::device::autocast(cfg.device, cfg.precision, || model.logits(&x, false, false))?;
            Ok(model.probabilities(&logits).to_device(Device::Cpu).to_kind(Kind::Double))
        })?;
        let flat = Vec::<f64>::try_from(probs.flatten(0, -1))?;
        let width = flat.len() / good;
        for (row, &idx) in batch.samples.iter().enumerate() {
            found[idx].get_or_insert_with(|| flat[row * width..(row + 1) * width].to_vec());
        }
    }
    let (rows, probs, skipped) =
        crate::data::loader::gather_by_index(found, dataset, iter.skipped().to_vec());
    Ok(Predictions { rows, probs, skipped })
}

/// How reports are computed.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Bootstrap resamples of the confidence intervals (0: none).
    pub resamples: usize,
    pub seed: u64,
    /// Interval level (0.95).
    pub level: f64,
    /// CSV columns whose values form subgroups (`Sex`, `AP/PA`), read from `source`.
    pub by: Vec<String>,
    /// The label CSV the set was read from, for `by`.
    pub source: Option<PathBuf>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { resamples: 1000, seed: 0, level: 0.95, by: Vec::new(), source: None }
    }
}

/// The judged predictions of a set.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub labels: Vec<String>,
    pub auroc: Vec<Option<f64>>,
    pub mean_auroc: Option<f64>,
    /// Youden thresholds on this set (what validation hands on to eval and test).
    pub youden: Vec<Option<f64>>,
    pub curves: Vec<Option<RocCurve>>,
    pub warnings: Vec<String>,
    pub json: Json,
}

/// Per-output (scores, truth, counted) columns of the predicted rows.
struct Columns {
    scores: Vec<Vec<f64>>,
    truth: Vec<Vec<bool>>,
    counted: Vec<Vec<bool>>,
}

fn columns(data: &Labelled, pred: &Predictions, rows: &[usize]) -> Columns {
    let targets = data.target_rows();
    let mut c = Columns { scores: Vec::new(), truth: Vec::new(), counted: Vec::new() };
    for &r in rows {
        let (t, m) = &targets[pred.rows[r]];
        c.scores.push(pred.probs[r].clone());
        c.truth.push(t.iter().map(|&v| v > 0.5).collect());
        c.counted.push(m.iter().map(|&v| v > 0.5).collect());
    }
    c
}

/// One output's counted (scores, truth).
fn label_column(c: &Columns, l: usize) -> (Vec<f64>, Vec<bool>) {
    (0..c.scores.len()).filter(|&i| c.counted[i][l]).map(|i| (c.scores[i][l], c.truth[i][l])).unzip()
}

fn interval(i: &Option<Interval>) -> Json {
    i.as_ref().map_or(Json::Null, |i| json!([i.low, i.high]))
}

/// Threshold metrics of every output at `thresholds`, as `{label: {...}}`.
fn at_thresholds(c: &Columns, labels: &[String], thresholds: &[Option<f64>]) -> Json {
    let mut out = serde_json::Map::new();
    for (l, name) in labels.iter().enumerate() {
        let Some(t) = thresholds.get(l).copied().flatten() else {
            out.insert(name.clone(), Json::Null);
            continue;
        };
        let (s, y) = label_column(c, l);
        out.insert(name.clone(), serde_json::to_value(threshold_metrics(&s, &y, t)).unwrap_or(Json::Null));
    }
    Json::Object(out)
}

/// AUROC, positives and threshold metrics of the rows `rows` (the core of a report; subgroups
/// get this alone).
fn core(c: &Columns, labels: &[String], youden: &[Option<f64>]) -> (Json, Vec<Option<f64>>, Option<f64>) {
    let (auroc, mean) = mean_auroc(&c.scores, &c.truth, &c.counted);
    let mut positives = serde_json::Map::new();
    let mut by_label = serde_json::Map::new();
    for (l, name) in labels.iter().enumerate() {
        let (_, y) = label_column(c, l);
        positives.insert(name.clone(), json!(y.iter().filter(|&&v| v).count()));
        by_label.insert(name.clone(), auroc[l].map_or(Json::Null, |v| json!(v)));
    }
    let half = vec![Some(0.5); labels.len()];
    let j = json!({
        "labels": labels,
        "auroc": by_label,
        "mean_auroc": mean,
        "n": c.scores.len(),
        "positives": positives,
        "at_0.5": at_thresholds(c, labels, &half),
        "at_youden": at_thresholds(c, labels, youden),
    });
    (j, auroc, mean)
}

/// Judges `pred` against the targets of `data`. `thresholds`: the validation's Youden
/// thresholds (None on the validation set itself, where they are chosen).
pub fn evaluate(
    data: &Labelled,
    pred: &Predictions,
    thresholds: Option<&[Option<f64>]>,
    opts: &ReportOptions,
) -> Result<Evaluation, TaskError> {
    let labels = data.layout.names().to_vec();
    if pred.rows.is_empty() {
        let first = pred.skipped.first().map_or(String::new(), |s| format!("; first: {s}"));
        return Err(format!("no image could be read ({} skipped{first})", pred.skipped.len()).into());
    }
    if let Some(p) = pred.probs.first()
        && p.len() != labels.len()
    {
        return Err(format!("the model has {} outputs, the data {} labels", p.len(), labels.len()).into());
    }
    let all: Vec<usize> = (0..pred.rows.len()).collect();
    let c = columns(data, pred, &all);
    let mut warnings = Vec::new();
    let mut youden = Vec::new();
    let mut curves = Vec::new();
    for (l, name) in labels.iter().enumerate() {
        let (s, y) = label_column(&c, l);
        match roc_curve(&s, &y, true) {
            Ok(curve) => {
                curves.push(Some(curve));
                youden.push(youden_threshold(&s, &y).ok());
            }
            Err(e) => {
                warnings.push(format!("{name}: AUROC undefined ({e}); left out of the mean"));
                curves.push(None);
                youden.push(None);
            }
        }
    }
    let applied: Vec<Option<f64>> = thresholds.map_or_else(|| youden.clone(), <[Option<f64>]>::to_vec);
    let (mut j, auroc, mean) = core(&c, &labels, &applied);
    let obj = j.as_object_mut().expect("an object");
    obj.insert(
        "youden_thresholds_from".into(),
        json!(if thresholds.is_some() { "validation" } else { "this set" }),
    );
    if opts.resamples > 0 && !c.scores.is_empty() {
        let indices = bootstrap_indices(c.scores.len(), opts.resamples, opts.seed);
        let b = bootstrap_auroc(&c.scores, &c.truth, &c.counted, &indices, opts.level);
        let ci: serde_json::Map<String, Json> =
            labels.iter().zip(&b.per_label).map(|(n, i)| (n.clone(), interval(i))).collect();
        obj.insert("auroc_ci".into(), Json::Object(ci));
        obj.insert("mean_auroc_ci".into(), interval(&b.mean));
        obj.insert(
            "bootstrap".into(),
            json!({"resamples": opts.resamples, "seed": opts.seed, "level": opts.level, "method": "percentile"}),
        );
    }
    if let Layout::Classes(_) = data.layout {
        let truth: Vec<usize> = c.truth.iter().map(|t| t.iter().position(|&v| v).unwrap_or(0)).collect();
        let predicted: Vec<usize> = c.scores.iter().map(|s| argmax(s)).collect();
        obj.insert("accuracy".into(), json!(accuracy(&truth, &predicted)));
        obj.insert("confusion".into(), json!(confusion_matrix(&truth, &predicted, labels.len())));
    }
    if !opts.by.is_empty() {
        obj.insert("by".into(), subgroups(data, pred, &c, &labels, &applied, opts)?);
    }
    if !pred.skipped.is_empty() {
        obj.insert("skipped".into(), json!(pred.skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    }
    if !warnings.is_empty() {
        obj.insert("warnings".into(), json!(warnings));
    }
    Ok(Evaluation { labels, auroc, mean_auroc: mean, youden, curves, warnings, json: j })
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// The same metrics per value of each `by` column of the source CSV.
fn subgroups(
    data: &Labelled,
    pred: &Predictions,
    c: &Columns,
    labels: &[String],
    thresholds: &[Option<f64>],
    opts: &ReportOptions,
) -> Result<Json, TaskError> {
    let Some(source) = opts.source.as_ref().filter(|p| p.is_file()) else {
        return Err("--by needs a label CSV (the columns are read from it)".into());
    };
    let table = CsvTable::read(source)?;
    let path_col = table.column("Path").unwrap_or(0);
    // A row's path cell is a suffix of the sample's resolved path.
    let by_cell: HashMap<PathBuf, usize> =
        table.rows.iter().enumerate().map(|(i, r)| (PathBuf::from(&r.fields[path_col]), i)).collect();
    let row_of = |p: &Path| {
        let parts: Vec<_> = p.components().collect();
        (1..=parts.len())
            .find_map(|k| by_cell.get(&parts[parts.len() - k..].iter().collect::<PathBuf>()).copied())
    };
    let mut out = serde_json::Map::new();
    for column in &opts.by {
        let col = table.column(column).ok_or_else(|| {
            format!(
                "{}: no column `{column}` for --by (columns: {})",
                source.display(),
                table.header.fields.join(", ")
            )
        })?;
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (r, &idx) in pred.rows.iter().enumerate() {
            let value = row_of(&data.dataset.samples[idx].path)
                .map(|i| table.rows[i].fields[col].clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "(blank)".into());
            groups.entry(value).or_default().push(r);
        }
        let mut per = serde_json::Map::new();
        for (value, rows) in groups {
            let sub = Columns {
                scores: rows.iter().map(|&r| c.scores[r].clone()).collect(),
                truth: rows.iter().map(|&r| c.truth[r].clone()).collect(),
                counted: rows.iter().map(|&r| c.counted[r].clone()).collect(),
            };
            per.insert(value, core(&sub, labels, thresholds).0);
        }
        out.insert(column.clone(), Json::Object(per));
    }
    Ok(Json::Object(out))
}

/// `metrics.json`, `predictions.csv`, `roc.png` and (N-class) `confusion.png` in `dir`.
pub fn write_report(
    dir: &Path,
    data: &Labelled,
    pred: &Predictions,
    eval: &Evaluation,
) -> Result<(), TaskError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(&eval.json)?;
    crate::atomic::write(&dir.join("metrics.json"), text.as_bytes())?;
    write_predictions(&dir.join("predictions.csv"), &data.dataset, pred, &eval.labels)?;
    let series: Vec<Series> = eval
        .labels
        .iter()
        .zip(&eval.curves)
        .zip(&eval.auroc)
        .filter_map(|((name, curve), auc)| {
            let curve = curve.as_ref()?;
            Some(Series {
                name: format!("{name} (AUROC {:.3})", auc.unwrap_or(f64::NAN)),
                points: curve.fpr.iter().copied().zip(curve.tpr.iter().copied()).collect(),
            })
        })
        .collect();
    let title = match eval.mean_auroc {
        Some(m) => format!("ROC, {} images, mean AUROC {m:.3}", pred.rows.len()),
        None => format!("ROC, {} images", pred.rows.len()),
    };
    roc_chart(&dir.join("roc.png"), &title, &series)?;
    if let Some(matrix) =
        eval.json.get("confusion").and_then(|m| serde_json::from_value::<Vec<Vec<u64>>>(m.clone()).ok())
    {
        confusion_chart(&dir.join("confusion.png"), &eval.labels, &matrix)?;
    }
    Ok(())
}

/// `Path` then one probability column per output, rows in input order.
pub fn write_predictions(
    path: &Path,
    dataset: &Dataset,
    pred: &Predictions,
    labels: &[String],
) -> Result<(), TaskError> {
    let mut text = String::from("Path");
    for l in labels {
        text.push(',');
        text.push_str(&csv_field(l));
    }
    text.push('\n');
    for (&idx, probs) in pred.rows.iter().zip(&pred.probs) {
        text.push_str(&csv_field(&dataset.samples[idx].path.to_string_lossy()));
        for p in probs {
            text.push_str(&format!(",{p}"));
        }
        text.push('\n');
    }
    crate::atomic::write(path, text.as_bytes())?;
    Ok(())
}

/// One line per output: `label  AUROC [low, high]  n+`, then the mean.
pub fn summary_lines(eval: &Evaluation) -> Vec<String> {
    let ci = eval.json.get("auroc_ci");
    let fmt_ci = |v: Option<&Json>| match v.and_then(Json::as_array) {
        Some(a) if a.len() == 2 => {
            format!(" [{:.3}, {:.3}]", a[0].as_f64().unwrap_or(f64::NAN), a[1].as_f64().unwrap_or(f64::NAN))
        }
        _ => String::new(),
    };
    let width = eval.labels.iter().map(String::len).max().unwrap_or(4).max(10);
    let mut lines = Vec::new();
    for (l, name) in eval.labels.iter().enumerate() {
        let value = eval.auroc[l].map_or("   n/a".to_string(), |v| format!("{v:.4}"));
        let interval = fmt_ci(ci.and_then(|c| c.get(name)));
        lines.push(format!("  {name:<width$}  AUROC {value}{interval}"));
    }
    let mean = eval.mean_auroc.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    lines.push(format!("  {:<width$}  AUROC {mean}{}", "mean", fmt_ci(eval.json.get("mean_auroc_ci"))));
    if let Some(acc) = eval.json.get("accuracy").and_then(Json::as_f64) {
        lines.push(format!("  {:<width$}  {acc:.4}", "accuracy"));
    }
    lines
}

/// Predicts `data`, judges it with the card's thresholds (the validation's Youden points) and
/// writes the report to `dir`; skipped files and warnings go to stderr.
pub fn judge(
    model: &Classifier,
    card: &ModelCard,
    data: &Labelled,
    cfg: &EvalConfig,
    report: &ReportOptions,
    dir: &Path,
) -> Result<Evaluation, TaskError> {
    let pred = predict(model, &data.dataset, cfg)?;
    for s in &pred.skipped {
        eprintln!("skipped {s}");
    }
    let eval = evaluate(data, &pred, card.thresholds.as_deref(), report)?;
    for w in &eval.warnings {
        eprintln!("warning: {w}");
    }
    write_report(dir, data, &pred, &eval)?;
    Ok(eval)
}

/// `classify eval`: a saved model on a labelled set, its report in `--out`. Returns the
/// evaluation and the number of images.
pub fn evaluate_model(args: &EvalArgs) -> Result<(Evaluation, usize), TaskError> {
    let cfg = args.runtime.eval_config(0)?;
    let (model, card, data) = load_labelled(&args.model, &args.data, &args.labels, cfg.device)?;
    let cfg = EvalConfig { image_size: card.image_size, ..cfg };
    let eval = judge(&model, &card, &data, &cfg, &args.report.options(&args.data), &args.out)?;
    Ok((eval, data.len()))
}

/// A saved model and the labelled set to judge it on, read with the model's own labels.
pub fn load_labelled(
    model: &Path,
    data: &Path,
    labels: &LabelArgs,
    device: Device,
) -> Result<(Classifier, ModelCard, Labelled), TaskError> {
    let (classifier, card) = Classifier::load(model, device)?;
    let opts = labels.options(card.multi_label.then_some(card.labels.as_slice()))?;
    let set = Labelled::read(data, &opts, (!card.multi_label).then_some(card.labels.as_slice()))?;
    if set.layout.is_multi_label() != card.multi_label {
        let (kind, data_kind) =
            if card.multi_label { ("multi-label", "class folders") } else { ("N-class", "a label CSV") };
        return Err(format!(
            "{}: {data_kind}, but the model is {kind} ({})",
            data.display(),
            card.labels.join(", ")
        )
        .into());
    }
    Ok((classifier, card, set))
}

/// `RUN/best.pth` for a run folder, the path itself for a model file.
pub fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() { p.join("best.pth") } else { p.to_path_buf() }
}
