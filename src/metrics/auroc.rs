//! ROC curves and the area under them, as scikit-learn computes them (`roc_curve`,
//! `roc_auc_score`): the metric CheXpert-style classification is judged by, per label and as
//! the mean over labels.

/// Why an AUROC cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RocError {
    #[error("{scores} scores for {labels} labels")]
    Length { scores: usize, labels: usize },
    #[error("score {index} is {value}, not a finite number")]
    NotFinite { index: usize, value: f64 },
    /// Undefined, as scikit-learn says: only one class among the labels.
    #[error("only {which} labels ({count}): the ROC curve is undefined")]
    OneClass { which: &'static str, count: usize },
}

/// Points of a ROC curve: false and true positive rates at each threshold (a point is "score >=
/// threshold"), from (0, 0) at an infinite threshold to (1, 1).
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

impl RocCurve {
    /// Area under the curve by the trapezoidal rule.
    pub fn area(&self) -> f64 {
        self.fpr.windows(2).zip(self.tpr.windows(2)).map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0).sum()
    }
}

/// `sklearn.metrics.roc_curve(labels, scores, drop_intermediate=...)`: one point per distinct
/// score (tied scores move together), in decreasing order; with `drop_intermediate`, points on
/// a straight line between their neighbours are left out (the curve and its area are the same).
pub fn roc_curve(scores: &[f64], labels: &[bool], drop_intermediate: bool) -> Result<RocCurve, RocError> {
    if scores.len() != labels.len() {
        return Err(RocError::Length { scores: scores.len(), labels: labels.len() });
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(RocError::NotFinite { index, value });
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 {
        return Err(RocError::OneClass { which: "negative", count: negatives });
    }
    if negatives == 0 {
        return Err(RocError::OneClass { which: "positive", count: positives });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Cumulative counts at the last index of each run of equal scores.
    let (mut tps, mut fps, mut thresholds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0usize, 0usize);
    for (i, &k) in order.iter().enumerate() {
        if labels[k] {
            tp += 1
        } else {
            fp += 1
        }
        if order.get(i + 1).is_none_or(|&next| scores[next] != scores[k]) {
            tps.push(tp as f64);
            fps.push(fp as f64);
            thresholds.push(scores[k]);
        }
    }
    if drop_intermediate && tps.len() > 2 {
        // Keep the ends and every point where the slope changes (a non-zero second difference).
        let keep: Vec<usize> = (0..tps.len())
            .filter(|&i| {
                i == 0
                    || i == tps.len() - 1
                    || fps[i + 1] - 2.0 * fps[i] + fps[i - 1] != 0.0
                    || tps[i + 1] - 2.0 * tps[i] + tps[i - 1] != 0.0
            })
            .collect();
        tps = keep.iter().map(|&i| tps[i]).collect();
        fps = keep.iter().map(|&i| fps[i]).collect();
        thresholds = keep.iter().map(|&i| thresholds[i]).collect();
    }
    let mut curve = RocCurve { fpr: vec![0.0], tpr: vec![0.0], thresholds: vec![f64::INFINITY] };
    curve.fpr.extend(fps.iter().map(|f| f / negatives as f64));
    curve.tpr.extend(tps.iter().map(|t| t / positives as f64));
    curve.thresholds.extend(thresholds);
    Ok(curve)
}

/// `sklearn.metrics.roc_auc_score(labels, scores)` for one binary label.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64, RocError> {
    Ok(roc_curve(scores, labels, true)?.area())
}

/// Per-label AUROC of multi-label scores (`scores[i][j]`: image i, label j) where `mask[i][j]`
/// says the target counts (uncertain or blank labels may be ignored), and the mean over the
/// labels where it is defined (a label with one class among the counted images has none).
pub fn mean_auroc(
    scores: &[Vec<f64>],
    targets: &[Vec<bool>],
    mask: &[Vec<bool>],
) -> (Vec<Option<f64>>, Option<f64>) {
    let labels = scores.first().map_or(0, Vec::len);
    let per_label: Vec<Option<f64>> = (0..labels)
        .map(|j| {
            let (mut s, mut t) = (Vec::new(), Vec::new());
            for i in 0..scores.len() {
                if mask[i][j] {
                    s.push(scores[i][j]);
                    t.push(targets[i][j]);
                }
            }
            roc_auc(&s, &t).ok()
        })
        .collect();
    let defined: Vec<f64> = per_label.iter().flatten().copied().collect();
    let mean = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    (per_label, mean)
}
