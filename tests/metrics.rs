//! Metrics against their reference implementations: AUROC and ROC curves against
//! scikit-learn, on seeded cases with tied scores and rare positives.
mod common;

use chess::metrics::{RocError, mean_auroc, roc_auc, roc_curve};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| if x == "inf" { f64::INFINITY } else { x.as_f64().unwrap() })
        .collect()
}

#[test]
fn roc_curves_and_auroc_equal_scikit_learn() {
    let cases: Value =
        serde_json::from_str(&common::run_python("auroc_reference.py", Vec::<String>::new())).unwrap();
    for (n, case) in cases.as_array().unwrap().iter().enumerate() {
        let scores = floats(&case["scores"]);
        let labels: Vec<bool> =
            case["labels"].as_array().unwrap().iter().map(|l| l.as_bool().unwrap()).collect();
        let auc = roc_auc(&scores, &labels).unwrap();
        let expected = case["auc"].as_f64().unwrap();
        eprintln!("case {n}: {} images, AUROC {auc:.12} (scikit-learn {expected:.12})", scores.len());
        // Sums of the same terms in another order: 1e-12.
        assert!((auc - expected).abs() < 1e-12, "case {n}: {auc} vs {expected}");
        for (key, drop) in [("drop", true), ("full", false)] {
            let curve = roc_curve(&scores, &labels, drop).unwrap();
            // The same points: thresholds exactly; rates are count ratios, which ours computes
            // exactly rounded and scikit-learn's come out up to 1 ulp off (44/179 in case 1).
            assert_eq!(curve.thresholds, floats(&case[key]["thresholds"]), "case {n} {key}: thresholds");
            for (name, ours, theirs) in [
                ("fpr", &curve.fpr, floats(&case[key]["fpr"])),
                ("tpr", &curve.tpr, floats(&case[key]["tpr"])),
            ] {
                assert_eq!(ours.len(), theirs.len(), "case {n} {key}: {name} points");
                let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst <= 1e-15, "case {n} {key}: {name} differs by {worst:e}");
            }
        }
    }
}

#[test]
fn auroc_is_undefined_for_one_class_and_masked_labels_are_left_out() {
    assert_eq!(roc_auc(&[0.1, 0.9], &[true, true]), Err(RocError::OneClass { which: "positive", count: 2 }));
    assert!(matches!(roc_auc(&[0.1, f64::NAN], &[true, false]), Err(RocError::NotFinite { index: 1, .. })));
    // Label 0: perfect on the two counted images (the masked one would spoil it); label 1: one
    // class only, so the mean is label 0's.
    let scores = vec![vec![0.9, 0.2], vec![0.1, 0.4], vec![0.95, 0.3]];
    let targets = vec![vec![true, true], vec![false, true], vec![false, true]];
    let mask = vec![vec![true, true], vec![true, true], vec![false, true]];
    let (per_label, mean) = mean_auroc(&scores, &targets, &mask);
    assert_eq!(per_label, [Some(1.0), None]);
    assert_eq!(mean, Some(1.0));
}
