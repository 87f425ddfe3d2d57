//! Threshold metrics, the Youden threshold, confusion matrix, accuracy and bootstrap AUROC
//! intervals against scikit-learn and NumPy. The cases (seeded, with tied scores, rare
//! positives and a label with one class in some resamples) and the resample indices are made
//! here and handed to tests/python/classification_reference.py as JSON, so both sides compute
//! on the very same numbers.
mod common;

use chess::data::Rng;
use chess::metrics::{
    Interval, accuracy, bootstrap_auroc, bootstrap_indices, confusion_matrix, mean_auroc,
    paired_bootstrap_difference, percentile_interval, threshold_metrics, youden_threshold,
};
use serde_json::{Value, json};

/// Runs the reference on `input` (written to a temporary file) and returns its output.
fn reference(input: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_string(input).unwrap()).unwrap();
    serde_json::from_str(&common::run_python("classification_reference.py", [&path])).unwrap()
}

fn labels_with(rng: &mut Rng, n: usize, p: f64) -> Vec<bool> {
    (0..n).map(|_| rng.chance(p)).collect()
}

/// Scores on a grid of `levels` steps (ties, as rounded probabilities give), shifted up for
/// positives so that the AUROC is informative.
fn grid_scores(rng: &mut Rng, labels: &[bool], levels: f64, shift: f64) -> Vec<f64> {
    labels.iter().map(|&l| (rng.unit() * levels).round() / levels + if l { shift } else { 0.0 }).collect()
}

fn opt(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn assert_opt_close(what: &str, ours: Option<f64>, theirs: Option<f64>, worst: &mut f64) {
    match (ours, theirs) {
        (Some(a), Some(b)) => {
            *worst = worst.max((a - b).abs());
            assert!((a - b).abs() <= 1e-12, "{what}: {a} vs {b}");
        }
        (None, None) => {}
        _ => panic!("{what}: {ours:?} vs {theirs:?}"),
    }
}

fn interval_of(v: &Value) -> Option<Interval> {
    v.as_array().map(|a| Interval { low: a[0].as_f64().unwrap(), high: a[1].as_f64().unwrap() })
}

fn assert_interval_close(what: &str, ours: Option<Interval>, theirs: Option<Interval>, worst: &mut f64) {
    assert_opt_close(&format!("{what} low"), ours.map(|i| i.low), theirs.map(|i| i.low), worst);
    assert_opt_close(&format!("{what} high"), ours.map(|i| i.high), theirs.map(|i| i.high), worst);
}

#[test]
fn threshold_metrics_youden_confusion_and_accuracy_equal_scikit_learn() {
    let mut rng = Rng::new(15);
    // (images, positive rate, score levels): ties on coarse grids, rare positives, one class.
    let specs = [
        (12, 0.5, 4.0),
        (200, 0.05, 10.0),
        (500, 0.3, 1000.0),
        (60, 0.7, 2.0),
        (40, 0.0, 5.0),
        (15, 1.0, 3.0),
    ];
    let mut binary = Vec::new();
    for &(n, p, levels) in &specs {
        let labels = labels_with(&mut rng, n, p);
        let scores = grid_scores(&mut rng, &labels, levels, 0.25);
        // Every distinct score (cuts exactly at ties), one above all, one below all.
        let mut thresholds: Vec<f64> = scores.clone();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        thresholds.extend([2.0, -1.0, 0.5]);
        binary.push((scores, labels, thresholds));
    }
    // Inverted scores: every finite threshold has J <= 0, so numpy's argmax over the whole
    // curve would pick the infinite threshold; ours must fall back to a finite one.
    binary.push((vec![0.9, 0.8, 0.3, 0.1], vec![false, false, true, true], vec![0.9, 0.1]));
    // J = 0.5 at both 0.9 and 0.7 (exactly, in floats too): the first, higher one wins.
    binary.push((vec![0.9, 0.8, 0.7, 0.1], vec![true, false, true, false], vec![0.9, 0.7]));
    let multiclass: Vec<(Vec<usize>, Vec<usize>, usize)> = [(50, 3), (300, 5), (1, 2)]
        .iter()
        .map(|&(n, classes)| {
            // Class `classes - 1` never occurs in the truth: its row must be zeros.
            let truth: Vec<usize> =
                (0..n).map(|_| (rng.next_u64() % (classes as u64 - 1)) as usize).collect();
            let predicted = truth
                .iter()
                .map(|&t| if rng.chance(0.6) { t } else { (rng.next_u64() % classes as u64) as usize })
                .collect();
            (truth, predicted, classes)
        })
        .collect();
    let input = json!({
        "binary": binary.iter().map(|(s, l, t)| json!({"scores": s, "labels": l, "thresholds": t})).collect::<Vec<_>>(),
        "multiclass": multiclass.iter().map(|(t, p, c)| json!({"truth": t, "predicted": p, "classes": c})).collect::<Vec<_>>(),
    });
    let out = reference(&input);

    let mut worst = 0.0f64;
    let mut nones = [0usize; 4];
    for (n, ((scores, labels, thresholds), expected)) in
        binary.iter().zip(out["binary"].as_array().unwrap()).enumerate()
    {
        for (t, e) in thresholds.iter().zip(expected["at"].as_array().unwrap()) {
            let m = threshold_metrics(scores, labels, *t);
            let what = format!("case {n} at {t}");
            assert_eq!(
                [m.tp, m.fp, m.tn, m.fn_],
                ["tp", "fp", "tn", "fn"].map(|k| e[k].as_u64().unwrap()),
                "{what}: counts"
            );
            for (k, (name, ours)) in
                [("sensitivity", m.sensitivity), ("specificity", m.specificity), ("ppv", m.ppv), ("f1", m.f1)]
                    .into_iter()
                    .enumerate()
            {
                nones[k] += usize::from(ours.is_none());
                assert_opt_close(&format!("{what}: {name}"), ours, opt(&e[name]), &mut worst);
            }
        }
        let youden = youden_threshold(scores, labels).ok();
        let (theirs, exact) = (opt(&expected["youden"]), opt(&expected["youden_exact"]));
        eprintln!(
            "case {n}: {} images, {} positives, Youden threshold {youden:?} (scikit-learn {theirs:?}, \
             integer-exact J {exact:?})",
            scores.len(),
            labels.iter().filter(|&&l| l).count()
        );
        assert_eq!(youden, theirs, "case {n}: Youden threshold");
        assert!(youden.is_none_or(f64::is_finite), "case {n}: infinite threshold");
    }
    eprintln!(
        "threshold metrics: worst difference {worst:e}; undefined (None) sensitivity/specificity/PPV/F1: \
         {nones:?}"
    );
    // Every None path was exercised.
    assert!(nones.iter().all(|&k| k > 0), "{nones:?}");
    assert_eq!(youden_threshold(&[0.9, 0.8, 0.3, 0.1], &[false, false, true, true]), Ok(0.1));
    assert_eq!(youden_threshold(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]), Ok(0.9));

    for (n, ((truth, predicted, classes), expected)) in
        multiclass.iter().zip(out["multiclass"].as_array().unwrap()).enumerate()
    {
        let theirs: Vec<Vec<u64>> = serde_json::from_value(expected["confusion"].clone()).unwrap();
        let m = confusion_matrix(truth, predicted, *classes);
        eprintln!("multiclass case {n}: confusion {m:?}, accuracy {}", accuracy(truth, predicted));
        assert_eq!(m, theirs, "multiclass case {n}: confusion matrix");
        assert_eq!(accuracy(truth, predicted), expected["accuracy"].as_f64().unwrap(), "case {n}: accuracy");
    }
}

#[test]
fn percentile_interval_equals_numpy() {
    let mut rng = Rng::new(7);
    let random: Vec<f64> = (0..101).map(|_| rng.unit()).collect();
    let tied: Vec<f64> = (0..37).map(|_| (rng.unit() * 5.0).round() / 5.0).collect();
    let cases: Vec<(Vec<f64>, f64)> = vec![
        (vec![0.7], 0.95),
        (vec![0.2, 0.9], 0.95),
        (vec![0.5, 0.1, 0.3, 0.9, 0.7], 0.9),
        (random.clone(), 0.95),
        (random[..40].to_vec(), 0.5),
        (tied.clone(), 0.95),
        (tied, 0.8),
        (random.clone(), 1.0),
        (random, 0.0),
    ];
    let input = json!({
        "percentile": cases.iter().map(|(v, l)| json!({"values": v, "level": l})).collect::<Vec<_>>(),
    });
    let out = reference(&input);
    let mut worst = 0.0f64;
    for (n, ((values, level), expected)) in
        cases.iter().zip(out["percentile"].as_array().unwrap()).enumerate()
    {
        let ours = percentile_interval(values, *level);
        eprintln!("case {n}: {} values at {level}: {ours:?} (numpy {expected})", values.len());
        assert_interval_close(&format!("case {n}"), ours, interval_of(expected), &mut worst);
    }
    eprintln!("percentile intervals: worst difference {worst:e}");
    assert_eq!(percentile_interval(&[], 0.95), None);
}

#[test]
fn bootstrap_intervals_equal_numpy_and_scikit_learn() {
    let (images, resamples, level) = (80, 400, 0.95);
    let mut rng = Rng::new(2024);
    // [label][image]: balanced with ties; rare (2 positives, so ~13% of resamples have none);
    // half masked; one class among the masked images (undefined on the full set); continuous.
    let columns_t = vec![
        labels_with(&mut rng, images, 0.5),
        (0..images).map(|i| i == 10 || i == 57).collect(),
        labels_with(&mut rng, images, 0.3),
        labels_with(&mut rng, images, 0.4),
        labels_with(&mut rng, images, 0.2),
    ];
    let mut columns_m = vec![
        vec![true; images],
        vec![true; images],
        (0..images).map(|_| rng.chance(0.5)).collect(),
        vec![true; images],
        vec![true; images],
    ];
    // Label 3: only its negatives count.
    columns_m[3] = columns_t[3].iter().map(|&t| !t).collect();
    let levels = [10.0, 4.0, 20.0, 10.0, 1000.0];
    let columns_a: Vec<Vec<f64>> =
        columns_t.iter().zip(levels).map(|(t, lv)| grid_scores(&mut rng, t, lv, 0.3)).collect();
    // Model B: A with noise, so the paired differences vary.
    let columns_b: Vec<Vec<f64>> = columns_a
        .iter()
        .zip(levels)
        .map(|(c, lv)| c.iter().map(|&s| ((s + rng.uniform(-0.3, 0.3)) * lv).round() / lv).collect())
        .collect();
    let rows = |cols: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        (0..images).map(|i| cols.iter().map(|c| c[i]).collect()).collect()
    };
    let rows_b = |cols: &Vec<Vec<bool>>| -> Vec<Vec<bool>> {
        (0..images).map(|i| cols.iter().map(|c| c[i]).collect()).collect()
    };
    let (scores_a, scores_b, targets, mask) =
        (rows(&columns_a), rows(&columns_b), rows_b(&columns_t), rows_b(&columns_m));
    let indices = bootstrap_indices(images, resamples, 99);

    let single = bootstrap_auroc(&scores_a, &targets, &mask, &indices, level);
    let paired = paired_bootstrap_difference(&scores_a, &scores_b, &targets, &mask, &indices, level);
    let out = reference(&json!({"bootstrap": {
        "scores_a": scores_a, "scores_b": scores_b, "targets": targets, "mask": mask,
        "indices": indices, "level": level,
    }}));
    let (e_single, e_paired) = (&out["bootstrap"]["single"], &out["bootstrap"]["paired"]);

    let (observed, observed_mean) = mean_auroc(&scores_a, &targets, &mask);
    let mut worst = 0.0f64;
    for j in 0..5 {
        eprintln!(
            "label {j}: AUROC {:?}, interval {:?} from {} resamples; A - B interval {:?} from {}",
            observed[j],
            single.per_label[j],
            single.resamples_used[j],
            paired.per_label[j],
            paired.resamples_used[j]
        );
        assert_interval_close(
            &format!("label {j}"),
            single.per_label[j],
            interval_of(&e_single["per_label"][j]),
            &mut worst,
        );
        assert_eq!(single.resamples_used[j] as u64, e_single["used"][j].as_u64().unwrap(), "label {j} used");
        let theirs = &e_paired["per_label"][j];
        assert_opt_close(
            &format!("label {j} diff"),
            paired.per_label[j].map(|p| p.0),
            opt(&theirs[0]),
            &mut worst,
        );
        assert_interval_close(
            &format!("label {j} diff"),
            paired.per_label[j].map(|p| p.1),
            interval_of(&theirs[1]),
            &mut worst,
        );
        assert_eq!(
            paired.resamples_used[j] as u64,
            e_paired["used"][j].as_u64().unwrap(),
            "label {j} paired used"
        );
    }
    eprintln!(
        "mean: AUROC {observed_mean:?}, interval {:?} from {} resamples; A - B {:?} from {}",
        single.mean, single.mean_resamples_used, paired.mean, paired.mean_resamples_used
    );
    assert_interval_close("mean", single.mean, interval_of(&e_single["mean"]), &mut worst);
    assert_eq!(single.mean_resamples_used as u64, e_single["mean_used"].as_u64().unwrap());
    assert_opt_close("mean diff", paired.mean.map(|p| p.0), opt(&e_paired["mean"][0]), &mut worst);
    assert_interval_close(
        "mean diff",
        paired.mean.map(|p| p.1),
        interval_of(&e_paired["mean"][1]),
        &mut worst,
    );
    assert_eq!(paired.mean_resamples_used as u64, e_paired["mean_used"].as_u64().unwrap());
    eprintln!("bootstrap: worst difference {worst:e}");

    // The cases did what they are for: label 3 undefined, label 1 (and so the mean) left out
    // of some resamples, the others in all.
    assert_eq!(single.per_label[3], None);
    assert_eq!(single.resamples_used[3], 0);
    assert!(single.resamples_used[1] < resamples && single.resamples_used[1] > resamples / 2);
    assert_eq!(single.mean_resamples_used, single.resamples_used[1]);
    assert_eq!([0, 2, 4].map(|j| single.resamples_used[j]), [resamples; 3]);
    assert_eq!(paired.resamples_used, single.resamples_used);
    let mean = single.mean.unwrap();
    assert!(mean.low <= observed_mean.unwrap() && observed_mean.unwrap() <= mean.high);
}

#[test]
fn bootstrap_indices_are_seeded_uniform_and_in_range() {
    let a = bootstrap_indices(37, 50, 1);
    assert_eq!(a, bootstrap_indices(37, 50, 1), "same seed, same resamples");
    assert_ne!(a, bootstrap_indices(37, 50, 2), "another seed, other resamples");
    assert_eq!(a.len(), 50);
    assert!(a.iter().all(|r| r.len() == 37 && r.iter().all(|&i| i < 37)));
    // More resamples from the same seed keep the first ones.
    assert_eq!(bootstrap_indices(37, 80, 1)[..50], a[..]);
    assert!(a[1..].iter().all(|r| r != &a[0]), "resamples differ from each other");
    assert_eq!(bootstrap_indices(0, 3, 1), vec![Vec::<usize>::new(); 3]);
    assert_eq!(bootstrap_indices(1, 2, 1), vec![vec![0], vec![0]]);
    // Uniform: 7 bins (not a power of two, where a biased method shows), 70,000 draws; each
    // count within 5 standard deviations of 10,000, and every index drawn.
    let counts = bootstrap_indices(7, 10_000, 3).iter().flatten().fold([0usize; 7], |mut c, &i| {
        c[i] += 1;
        c
    });
    let sd = (70_000.0f64 * (1.0 / 7.0) * (6.0 / 7.0)).sqrt();
    eprintln!("counts of 0..7 over 70000 draws: {counts:?} (sd {sd:.1})");
    assert!(counts.iter().all(|&c| (c as f64 - 10_000.0).abs() < 5.0 * sd), "{counts:?}");
    let big = bootstrap_indices(100_000, 1, 4);
    let distinct = big[0].iter().collect::<std::collections::HashSet<_>>().len();
    // With replacement: about 1 - 1/e = 63.2% of the images appear.
    eprintln!("distinct indices in a resample of 100000: {distinct}");
    assert!((62_500..64_000).contains(&distinct), "{distinct}");
}
