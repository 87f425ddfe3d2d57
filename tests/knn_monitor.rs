//! The kNN monitor against a NumPy implementation of weighted kNN from its definition.
mod common;

use chess::metrics::{KnnConfig, knn_predict, top1};
use rstest::rstest;
use tch::{Kind, Tensor};

#[rstest]
#[case::two_classes_k20(2, 20, 0.07)]
#[case::five_classes_k5(5, 5, 0.1)]
#[case::k_larger_than_bank(3, 500, 0.07)]
fn knn_predictions_match_numpy(#[case] classes: i64, #[case] k: i64, #[case] t: f64) {
    tch::manual_seed(classes * 100 + k);
    let (n, m, d) = (300, 120, 32);
    // Class-dependent means so the neighbours carry signal, plus noise.
    let centres = Tensor::randn([classes, d], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::randint(classes, [n], (Kind::Int64, tch::Device::Cpu));
    let truth = Tensor::randint(classes, [m], (Kind::Int64, tch::Device::Cpu));
    let bank =
        centres.index_select(0, &labels) + Tensor::randn([n, d], (Kind::Float, tch::Device::Cpu)) * 1.5;
    let query =
        centres.index_select(0, &truth) + Tensor::randn([m, d], (Kind::Float, tch::Device::Cpu)) * 1.5;

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let save = |name: &str, t: &Tensor| t.to_kind(Kind::Float).write_npy(path(name)).unwrap();
    save("bank.npy", &bank);
    save("labels.npy", &labels);
    save("query.npy", &query);
    let out = common::run_python(
        "knn_reference.py",
        [
            path("bank.npy").to_str().unwrap(),
            path("labels.npy").to_str().unwrap(),
            path("query.npy").to_str().unwrap(),
            &classes.to_string(),
            &k.to_string(),
            &t.to_string(),
        ],
    );
    let reference: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let theirs: Vec<i64> =
        reference["pred"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let margin: Vec<f64> =
        reference["margin"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    let ours = knn_predict(&bank, &labels, &query, classes, KnnConfig { k, temperature: t });
    let ours = Vec::<i64>::try_from(&ours).unwrap();
    // Equal wherever the vote is not a near tie (float32 here, float64 there).
    let mut near_ties = 0;
    for i in 0..m as usize {
        if margin[i] < 1e-4 {
            near_ties += 1;
            continue;
        }
        assert_eq!(ours[i], theirs[i], "query {i}: margin {}", margin[i]);
    }
    let acc = top1(&Tensor::from_slice(&ours), &truth);
    eprintln!(
        "classes {classes} k {k} T {t}: {m} predictions equal NumPy's ({near_ties} near ties), top-1 {acc:.1}%"
    );
    assert!(near_ties < 3);
}

#[test]
fn top1_counts_hits_in_percent() {
    let p = Tensor::from_slice(&[0i64, 1, 1, 0]);
    let t = Tensor::from_slice(&[0i64, 1, 0, 0]);
    assert_eq!(top1(&p, &t), 75.0);
}
