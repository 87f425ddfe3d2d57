//! What every supervised task does around its validations: when to validate, the best model so
//! far by a validation score (higher is better: mean AUROC, PSNR), the curves, and how that progress rides in the checkpoint so that a resumed run keeps them.
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskError;
use crate::checkpoint::{Checkpoint, Value};
use crate::plot::{Panel, Series, line_chart};

/// The epoch record entries of a supervised task: `train_loss` (the epoch's mean `loss`) and,
/// when [`validation_due`], those of `validate(train_loss)`.
pub fn train_loss_and_validation(
    epoch: u64,
    means: &super::EpochMeans,
    (every, epochs): (u64, u64),
    validate: impl FnOnce(f64) -> Result<Vec<(&'static str, serde_json::Value)>, TaskError>,
) -> Result<Vec<(&'static str, serde_json::Value)>, TaskError> {
    let loss = means.get("loss");
    let mut entries = vec![("train_loss", serde_json::json!(loss))];
    if validation_due(epoch, every, epochs) {
        entries.extend(validate(loss)?);
    }
    Ok(entries)
}

/// Whether the `epoch`-th epoch (0-based) ends with a validation: every `every` epochs and after
/// the last of `epochs`.
pub fn validation_due(epoch: u64, every: u64, epochs: u64) -> bool {
    (epoch + 1).is_multiple_of(every.max(1)) || epoch + 1 >= epochs
}

/// The best validation so far and the history of validations (`P`: a task's curve point).
/// Only a finite score can be the best: NaN or infinity (a broken or a perfect output) is no
/// basis for choosing a model, and JSON cannot carry it across a resume.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Selection<P> {
    pub best_epoch: Option<u64>,
    /// Older checkpoints named it after the score.
    #[serde(alias = "best_mean_auroc", alias = "best_psnr")]
    pub best_score: Option<f64>,
    pub history: Vec<P>,
}

impl<P> Default for Selection<P> {
    fn default() -> Self {
        Self { best_epoch: None, best_score: None, history: Vec::new() }
    }
}

/// `Some(v)` for a finite `v`.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl<P: Serialize + DeserializeOwned> Selection<P> {
    /// Records the validation after `epoch` (1-based) and says whether its score is the best yet.
    pub fn record(&mut self, epoch: u64, score: Option<f64>, point: P) -> bool {
        self.history.push(point);
        let score = score.and_then(finite);
        let improved = match (score, self.best_score) {
            (Some(s), Some(b)) => s > b,
            (Some(_), None) => true,
            _ => false,
        };
        if improved {
            self.best_epoch = Some(epoch);
            self.best_score = score;
        }
        improved
    }

    /// (epoch, score) of the best validation.
    pub fn best(&self) -> Option<(u64, f64)> {
        self.best_epoch.zip(self.best_score)
    }

    /// "0.9123 after epoch 4", or "none".
    pub fn best_text(&self, digits: usize, unit: &str) -> String {
        self.best().map_or("none".into(), |(e, s)| format!("{s:.digits$}{unit} after epoch {e}"))
    }

    /// Adds this progress to a checkpoint's top-level dict under `key` (as JSON text; the
    /// original keys stay as they are, so the file still loads in Python).
    pub fn save_into(&self, root: &mut Value, key: &str) -> Result<(), TaskError> {
        if let Value::Dict(entries) = root {
            entries.push((Value::str(key), Value::Str(serde_json::to_string(self)?)));
        }
        Ok(())
    }

    /// The progress saved under `key`, if the checkpoint has it.
    pub fn load_from(ckpt: &Checkpoint, key: &str) -> Result<Option<Self>, TaskError> {
        match ckpt.root.get(key).and_then(Value::as_str) {
            Some(text) => Ok(Some(serde_json::from_str(text)?)),
            None => Ok(None),
        }
    }
}

/// (epoch, training loss, validation score), None where not finite.
pub type CurvePoint = (u64, Option<f64>, Option<f64>);

/// `curves.png`: the training loss and a validation score per epoch, side by side.
pub fn plot_curves(
    path: &Path,
    points: &[CurvePoint],
    score_name: &str,
    score_unit: &str,
) -> Result<(), TaskError> {
    let series = |name: &str, f: &dyn Fn(&CurvePoint) -> Option<f64>| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.0 as f64, f(p).unwrap_or(f64::NAN))).collect(),
    };
    let panel = |title: String, y: &str, s: Series| Panel {
        title,
        x_label: "epoch".into(),
        y_label: y.into(),
        series: vec![s],
        y_range: None,
    };
    let score = format!("validation {score_name}");
    line_chart(
        path,
        &[
            panel("Training loss".into(), "loss", series("training loss", &|p| p.1)),
            panel(format!("Validation {score_name}"), score_unit, series(&score, &|p| p.2)),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_better_scores_are_chosen() {
        let mut s = Selection::<u64>::default();
        assert!(!s.record(1, None, 1));
        assert!(!s.record(2, Some(f64::NAN), 2));
        assert!(s.record(3, Some(0.7), 3));
        assert!(!s.record(4, Some(0.7), 4));
        assert!(!s.record(5, Some(f64::INFINITY), 5));
        assert!(s.record(6, Some(0.8), 6));
        assert_eq!(s.best(), Some((6, 0.8)));
        assert_eq!(s.history, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn reads_the_older_field_names() {
        let s: Selection<u64> =
            serde_json::from_str(r#"{"best_epoch":2,"best_mean_auroc":0.9,"history":[]}"#).unwrap();
        assert_eq!(s.best(), Some((2, 0.9)));
        let s: Selection<u64> =
            serde_json::from_str(r#"{"best_epoch":3,"best_psnr":30.5,"history":[]}"#).unwrap();
        assert_eq!(s.best(), Some((3, 30.5)));
    }

    #[test]
    fn validates_every_n_epochs_and_after_the_last() {
        let due: Vec<u64> = (0..7).filter(|&e| validation_due(e, 3, 7)).collect();
        assert_eq!(due, vec![2, 5, 6]);
    }
}
