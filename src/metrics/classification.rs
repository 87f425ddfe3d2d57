//! Metrics of hard decisions, as scikit-learn computes them: sensitivity, specificity, PPV and
//! F1 of a binary label cut at a threshold, the Youden threshold that a report cuts at when no
//! clinical operating point is given, and the confusion matrix and accuracy of single-label
//! (multi-class) predictions.
use serde::Serialize;

use super::auroc::{RocError, roc_curve};

/// The confusion counts of a binary label cut at `threshold` and the rates a clinical report
/// quotes. A rate is `None` where its denominator is 0 (scikit-learn warns and returns its
/// `zero_division` value instead), so that a report shows "undefined" rather than a made-up 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdMetrics {
    pub threshold: f64,
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
    /// TP / (TP + FN): recall of the positive class.
    pub sensitivity: Option<f64>,
    /// TN / (TN + FP): recall of the negative class.
    pub specificity: Option<f64>,
    /// TP / (TP + FP): precision.
    pub ppv: Option<f64>,
    /// 2TP / (2TP + FP + FN), which is scikit-learn's `f1_score` and, unlike the harmonic mean
    /// of PPV and sensitivity, is defined when only one of them is.
    pub f1: Option<f64>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Metrics of predicting positive where `score >= threshold`: the same side of the cut as the
/// thresholds of [`roc_curve`], so a threshold taken from the curve reproduces its point. A NaN
/// score is predicted negative (as `nan >= t` is false in NumPy).
///
/// # Panics
/// If `scores` and `labels` differ in length.
pub fn threshold_metrics(scores: &[f64], labels: &[bool], threshold: f64) -> ThresholdMetrics {
    assert_eq!(scores.len(), labels.len(), "{} scores for {} labels", scores.len(), labels.len());
    let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for (&s, &l) in scores.iter().zip(labels) {
        match (s >= threshold, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    ThresholdMetrics {
        threshold,
        tp,
        fp,
        tn,
        fn_,
        sensitivity: ratio(tp, tp + fn_),
        specificity: ratio(tn, tn + fp),
        ppv: ratio(tp, tp + fp),
        f1: ratio(2 * tp, 2 * tp + fp + fn_),
    }
}

/// The threshold maximising Youden's J = sensitivity + specificity - 1 = TPR - FPR: the
/// operating point that weighs a missed positive and a false alarm alike, used when no
/// clinical target (e.g. a sensitivity to reach) is given.
///
/// Candidates are the thresholds of `roc_curve(scores, labels, false)`, one per distinct score
/// (scikit-learn's `roc_curve(drop_intermediate=False)`), so the result is always a score that
/// occurs and [`threshold_metrics`] at it reproduces that curve point. J is computed in floating
/// point as `tpr[i] - fpr[i]`, and ties go to the first, highest threshold (the fewer positive
/// calls): `thresholds[argmax(tpr - fpr)]` exactly as NumPy picks it, rounding included.
/// The curve's first point, at an infinite threshold (nothing positive, J = 0), is never
/// returned: it is left out of the search, so when no threshold beats J = 0 the answer is the
/// highest threshold with the best J among the rest (at worst the lowest score, which calls
/// everything positive, also J = 0).
///
/// # Errors
/// As [`roc_curve`]: lengths differ, a score is not finite, or only one class is present.
pub fn youden_threshold(scores: &[f64], labels: &[bool]) -> Result<f64, RocError> {
    let curve = roc_curve(scores, labels, false)?;
    // Two classes present: at least one finite threshold after the infinite one.
    let mut best = 1;
    let mut best_j = curve.tpr[1] - curve.fpr[1];
    for i in 2..curve.thresholds.len() {
        let j = curve.tpr[i] - curve.fpr[i];
        if j > best_j {
            (best, best_j) = (i, j);
        }
    }
    Ok(curve.thresholds[best])
}

/// `sklearn.metrics.confusion_matrix(truth, predicted, labels=range(classes))`: `m[t][p]` counts
/// the images of true class `t` predicted as `p` (rows are the truth). Every class gets its row
/// and column, present or not, so matrices of different sets line up.
///
/// # Panics
/// If the lengths differ or a class is not below `classes`.
pub fn confusion_matrix(truth: &[usize], predicted: &[usize], classes: usize) -> Vec<Vec<u64>> {
    assert_eq!(truth.len(), predicted.len(), "{} truths for {} predictions", truth.len(), predicted.len());
    let mut m = vec![vec![0u64; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        assert!(t < classes && p < classes, "class {t} or {p} out of 0..{classes}");
        m[t][p] += 1;
    }
    m
}

/// `sklearn.metrics.accuracy_score(truth, predicted)`: the share of predictions equal to the
/// truth, as a fraction (not percent). NaN for no images (0 / 0; scikit-learn raises), so an
/// empty set shows as undefined rather than as 0.
///
/// # Panics
/// If the lengths differ.
pub fn accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    assert_eq!(truth.len(), predicted.len(), "{} truths for {} predictions", truth.len(), predicted.len());
    let hits = truth.iter().zip(predicted).filter(|(t, p)| t == p).count();
    hits as f64 / truth.len() as f64
}
