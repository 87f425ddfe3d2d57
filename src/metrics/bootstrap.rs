//! Bootstrap confidence intervals of AUROC: how much a test set's AUROC would move with another
//! draw of images from the same population, per label, for the mean over labels, and for the
//! difference between two models scored on the same images (`classify compare`).
//!
//! The resamples are index lists drawn once from a seed ([`bootstrap_indices`]) and passed in,
//! so that two models, or a Rust run and a Python check, are judged on the very same resampled
//! sets. Intervals are percentile intervals as `numpy.percentile` computes them.
use serde::Serialize;

use super::auroc::roc_auc;
use crate::data::Rng;

/// Uniform in `0..n` (`n > 0`) without modulo bias: Lemire's multiply-and-reject, which spends
/// one draw per value except in the rare rejected case, so resampling a large set is cheap.
fn below(rng: &mut Rng, n: u64) -> u64 {
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as u64
}

/// `resamples` lists of `n` image indices, each drawn uniformly from `0..n` with replacement,
/// from the crate's seeded [`Rng`] so that a report's intervals can be reproduced from its seed.
/// Resample `r` is drawn after resamples `0..r` from one stream, so asking for more resamples
/// with the same seed and `n` keeps the first ones. `n = 0` gives empty lists.
pub fn bootstrap_indices(n: usize, resamples: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed);
    (0..resamples).map(|_| (0..n).map(|_| below(&mut rng, n as u64) as usize).collect()).collect()
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// `numpy.percentile(sorted, 100 * q)` with the default 'linear' method, for `q` in [0, 1],
/// reproducing NumPy's arithmetic (its lerp from the nearer end) so results agree to the ulp.
fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len() - 1;
    let virtual_index = last as f64 * q;
    if virtual_index >= last as f64 {
        return sorted[last];
    }
    if virtual_index < 0.0 {
        return sorted[0];
    }
    let previous = virtual_index.floor();
    let gamma = virtual_index - previous;
    let (a, b) = (sorted[previous as usize], sorted[previous as usize + 1]);
    let diff = b - a;
    if gamma >= 0.5 { b - diff * (1.0 - gamma) } else { a + diff * gamma }
}

/// The central `level` (e.g. 0.95) percentile interval of bootstrap `values`:
/// `numpy.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])`, linear method.
/// None for no values (every resample left out), so a report says "no interval" instead of
/// inventing one. Values are expected finite (AUROCs are); NaNs sort last.
///
/// # Panics
/// If `level` is not in [0, 1].
pub fn percentile_interval(values: &[f64], level: f64) -> Option<Interval> {
    assert!((0.0..=1.0).contains(&level), "confidence level {level} is not in [0, 1]");
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // The same operations as NumPy's on the same percents: percent / 100.
    let low = 100.0 * (1.0 - level) / 2.0 / 100.0;
    let high = 100.0 * (1.0 + level) / 2.0 / 100.0;
    Some(Interval { low: percentile_sorted(&sorted, low), high: percentile_sorted(&sorted, high) })
}

/// Bootstrap intervals of per-label and mean AUROC; see [`bootstrap_auroc`] for which
/// resamples count. `resamples_used` says how many resamples each interval rests on, so a
/// report can flag an interval built from few of them (a rare label).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AurocIntervals {
    pub per_label: Vec<Option<Interval>>,
    pub mean: Option<Interval>,
    /// Per label: resamples in which the label's AUROC was defined (0 for a label undefined on
    /// the full set).
    pub resamples_used: Vec<usize>,
    /// Resamples in which every label defined on the full set was defined.
    pub mean_resamples_used: usize,
}

/// AUROC of label `j` over `rows` (repeats count again), on the rows whose mask is set; None
/// where it is undefined (one class, or a non-finite score). `s` and `t` are scratch buffers.
fn label_auroc(
    scores: &[Vec<f64>],
    targets: &[Vec<bool>],
    mask: &[Vec<bool>],
    rows: &[usize],
    j: usize,
    s: &mut Vec<f64>,
    t: &mut Vec<bool>,
) -> Option<f64> {
    s.clear();
    t.clear();
    for &i in rows {
        if mask[i][j] {
            s.push(scores[i][j]);
            t.push(targets[i][j]);
        }
    }
    roc_auc(s, t).ok()
}

/// Per-label AUROC on the full set, and `[resample][label]` AUROCs on each resample (computed
/// only for labels defined on the full set: a resample of a one-class set is one-class too).
fn resampled_aurocs(
    scores: &[Vec<f64>],
    targets: &[Vec<bool>],
    mask: &[Vec<bool>],
    indices: &[Vec<usize>],
) -> (Vec<Option<f64>>, Vec<Vec<Option<f64>>>) {
    assert!(
        scores.len() == targets.len() && scores.len() == mask.len(),
        "{} score rows, {} target rows, {} mask rows",
        scores.len(),
        targets.len(),
        mask.len()
    );
    let labels = scores.first().map_or(0, Vec::len);
    assert!(
        scores.iter().all(|r| r.len() == labels)
            && targets.iter().all(|r| r.len() == labels)
            && mask.iter().all(|r| r.len() == labels),
        "rows of scores, targets and mask must all have {labels} labels"
    );
    let (mut s, mut t) = (Vec::new(), Vec::new());
    let all: Vec<usize> = (0..scores.len()).collect();
    let full: Vec<Option<f64>> =
        (0..labels).map(|j| label_auroc(scores, targets, mask, &all, j, &mut s, &mut t)).collect();
    let per_resample = indices
        .iter()
        .map(|rows| {
            (0..labels)
                .map(|j| full[j].and_then(|_| label_auroc(scores, targets, mask, rows, j, &mut s, &mut t)))
                .collect()
        })
        .collect();
    (full, per_resample)
}

/// Mean over the labels `defined`, or None when one of them is undefined in `aurocs`.
fn mean_over(aurocs: &[Option<f64>], defined: &[usize]) -> Option<f64> {
    let values: Option<Vec<f64>> = defined.iter().map(|&j| aurocs[j]).collect();
    values.map(|v| v.iter().sum::<f64>() / v.len() as f64)
}

/// Bootstrap `level` (e.g. 0.95) percentile intervals of each label's AUROC and of the mean
/// AUROC over labels, for scores, targets and mask laid out `[image][label]` as in
/// [`mean_auroc`](super::mean_auroc), over the resamples `indices` (image indices, e.g. from
/// [`bootstrap_indices`] with `n` = the number of images).
///
/// The rule, so that every number is an AUROC that [`mean_auroc`](super::mean_auroc) would give
/// on the resampled set:
/// - a label's AUROC in a resample is computed on the resampled images (repeats counted) whose
///   mask is true for that label; a resample in which the label has only one class among them
///   is left out of that label's interval (counted in `resamples_used`);
/// - the mean AUROC of a resample is the mean over the labels defined on the full set (both
///   classes among its masked images), and a resample is left out of the mean's interval when
///   any of those labels is undefined in it, so every mean averages the same labels (a mean
///   over whichever labels happen to be defined would mix different quantities);
/// - labels undefined on the full set get None, and do not enter the mean.
///
/// Leaving resamples out biases the interval of a rare label (the resamples kept are those
/// with positives); `resamples_used` shows how far.
///
/// # Panics
/// If the rows of scores, targets and mask differ in number or length, or an index is not an
/// image.
pub fn bootstrap_auroc(
    scores: &[Vec<f64>],
    targets: &[Vec<bool>],
    mask: &[Vec<bool>],
    indices: &[Vec<usize>],
    level: f64,
) -> AurocIntervals {
    let (full, per_resample) = resampled_aurocs(scores, targets, mask, indices);
    let defined: Vec<usize> = (0..full.len()).filter(|&j| full[j].is_some()).collect();
    let mut per_label = Vec::with_capacity(full.len());
    let mut resamples_used = Vec::with_capacity(full.len());
    for j in 0..full.len() {
        let values: Vec<f64> = per_resample.iter().filter_map(|r| r[j]).collect();
        resamples_used.push(values.len());
        per_label.push(percentile_interval(&values, level));
    }
    let means: Vec<f64> = if defined.is_empty() {
        Vec::new()
    } else {
        per_resample.iter().filter_map(|r| mean_over(r, &defined)).collect()
    };
    AurocIntervals {
        per_label,
        mean: percentile_interval(&means, level),
        resamples_used,
        mean_resamples_used: means.len(),
    }
}

/// AUROC of model A minus AUROC of model B, observed on the full set and with a bootstrap
/// interval: per label and for the mean over labels. An interval that excludes 0 says the
/// difference is not explained by which images happened to be in the test set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedDifference {
    /// Per label: (observed difference, interval); None where the label is undefined on the
    /// full set or in every resample.
    pub per_label: Vec<Option<(f64, Interval)>>,
    /// Difference of the mean AUROCs (mean of A minus mean of B, over the labels defined on the
    /// full set for both).
    pub mean: Option<(f64, Interval)>,
    /// Per label: resamples in which the label was defined for both models.
    pub resamples_used: Vec<usize>,
    /// Resamples in which every label of the mean was defined for both models.
    pub mean_resamples_used: usize,
}

/// Paired bootstrap of AUROC(A) - AUROC(B): both models' scores (`[image][label]`) against the
/// same targets and mask, each difference taken on the same resampled images, which cancels
/// the variation the two share (the hard and easy images) and gives a far narrower interval
/// than comparing two separate intervals.
///
/// The leave-out rule is that of [`bootstrap_auroc`], applied to both models: a label counts
/// in a resample where its AUROC is defined for both; the mean is over the labels defined on
/// the full set for both, and a resample counts for it only when all of them are defined for
/// both. With finite scores, whether an AUROC is defined depends on targets and mask alone, so
/// the two models leave out the same resamples.
///
/// # Panics
/// As [`bootstrap_auroc`], and if the two models' scores differ in shape.
pub fn paired_bootstrap_difference(
    scores_a: &[Vec<f64>],
    scores_b: &[Vec<f64>],
    targets: &[Vec<bool>],
    mask: &[Vec<bool>],
    indices: &[Vec<usize>],
    level: f64,
) -> PairedDifference {
    assert_eq!(
        scores_a.first().map_or(0, Vec::len),
        scores_b.first().map_or(0, Vec::len),
        "the two models score different numbers of labels"
    );
    let (full_a, per_resample_a) = resampled_aurocs(scores_a, targets, mask, indices);
    let (full_b, per_resample_b) = resampled_aurocs(scores_b, targets, mask, indices);
    let labels = full_a.len();
    let both = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let defined: Vec<usize> = (0..labels).filter(|&j| full_a[j].is_some() && full_b[j].is_some()).collect();
    let mut per_label = Vec::with_capacity(labels);
    let mut resamples_used = Vec::with_capacity(labels);
    for j in 0..labels {
        let diffs: Vec<f64> =
            per_resample_a.iter().zip(&per_resample_b).filter_map(|(a, b)| both(a[j], b[j])).collect();
        resamples_used.push(diffs.len());
        per_label.push(both(full_a[j], full_b[j]).zip(percentile_interval(&diffs, level)));
    }
    let (observed, diffs) = if defined.is_empty() {
        (None, Vec::new())
    } else {
        let observed = both(mean_over(&full_a, &defined), mean_over(&full_b, &defined));
        let diffs: Vec<f64> = per_resample_a
            .iter()
            .zip(&per_resample_b)
            .filter_map(|(a, b)| both(mean_over(a, &defined), mean_over(b, &defined)))
            .collect();
        (observed, diffs)
    };
    PairedDifference {
        per_label,
        mean: observed.zip(percentile_interval(&diffs, level)),
        resamples_used,
        mean_resamples_used: diffs.len(),
    }
}
