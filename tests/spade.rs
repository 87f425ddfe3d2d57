//! SPADE against PyTorch (`tests/python/spade_reference.py`, written from the published design):
//! with the same initial weights (PyTorch's state dicts loaded by name: keys, shapes and order
//! must be NVlabs'), the same radiographs, label maps and reparameterisation noise, two
//! iterations of a generator step then a discriminator step (hinge, KLD 0.05, perceptual 10 on
//! a frozen 1-channel ResNet-18, feature matching in one case; Adam G 1e-4, D 4e-4, betas
//! (0, 0.9)) give the same fakes, encoder outputs, predictions, loss terms and every tensor of
//! the three networks afterwards (parameters and their gradients, spectral-norm vectors, running
//! statistics), and the generator agrees in evaluation mode, to 1e-5 (max |diff| / max |ref|). Both sides run one
//! intra-op thread; the measured differences are 0 (the same kernels in the same order: the KLD
//! sums its terms in PyTorch's order, as Adam with beta1 = 0 turns any round-off in a gradient that
//! cancels to about 0 into a step of up to lr).
mod common;

use std::collections::HashMap;
use std::path::Path;

use chess::checkpoint;
use chess::losses::{Normalisation, PerceptualLoss};
use chess::model::spade::{SpadeConfig, SpadeNorm};
use chess::model::{StateDict, load_state};
use chess::tasks::nodule_gan::{LossWeights, SpadeGan, adam_configs};
use rstest::rstest;
use tch::{Device, Tensor};

const TOL: f64 = 1e-5;

fn load(path: &Path) -> HashMap<String, Tensor> {
    checkpoint::load(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .tensors()
        .into_iter()
        .collect()
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let d = common::rel_diff(ours, theirs);
    assert!(d <= TOL, "{what}: max|diff|/max|ref| = {d:.3e} > {TOL:.0e}");
    d
}

fn keys_of(meta: &serde_json::Value) -> Vec<(String, Vec<i64>)> {
    meta.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            (e[0].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

#[rstest]
#[case::batch_norm("batch", false)]
#[case::instance_norm_feature_matching("instance", true)]
fn gan_steps_match_pytorch(#[case] norm: &str, #[case] feat: bool) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir();
    let mut args = vec![dir.path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--norm", norm];
    if feat {
        args.push("--feat");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&common::run_python("spade_reference.py", &args)).unwrap();
    let config = SpadeConfig {
        ngf: 4,
        ndf: 8,
        z_dim: 16,
        crop_size: 64,
        norm: norm.parse::<SpadeNorm>().unwrap(),
        ..SpadeConfig::default()
    };
    let perceptual =
        PerceptualLoss::from_file(dir.path().join("perceptual.pt"), Normalisation::Chess, Device::Cpu)
            .unwrap();
    let weights = LossWeights { feat: feat.then_some(10.0), ..LossWeights::default() };
    let mut gan =
        SpadeGan::new(config, Device::Cpu, adam_configs(1e-4, 4e-4), weights, Some(perceptual)).unwrap();
    let nets: [(&str, &dyn StateDict); 3] = [("G", &gan.g), ("E", &gan.e), ("D", &gan.d)];
    for (name, net) in nets {
        let ours: Vec<(String, Vec<i64>)> =
            net.named_tensors("").into_iter().map(|t| (t.name, t.tensor.size())).collect();
        assert_eq!(ours, keys_of(&meta["keys"][name]), "net_{name}: state_dict keys and shapes, in order");
        load_state(net, "", &load(&dir.path().join(format!("net_{name}.pt")))).unwrap();
    }
    let steps = load(&dir.path().join("steps.pt"));
    let (seg, real) = (&steps["seg"], &steps["real"]);
    let mut worst = 0f64;
    for i in 0..2 {
        let (out, g_terms) = gan.generator_step(seg, real, Some(&steps[&format!("eps.{i}.g")])).unwrap();
        worst = worst.max(assert_close("fake", &out.fake, &steps[&format!("step{i}.fake")]));
        worst = worst.max(assert_close("mu", &out.mu, &steps[&format!("step{i}.mu")]));
        worst = worst.max(assert_close("logvar", &out.logvar, &steps[&format!("step{i}.logvar")]));
        for (s, p) in out.pred_fake.iter().enumerate() {
            worst = worst.max(assert_close(
                &format!("pred_fake{s}"),
                p,
                &steps[&format!("step{i}.pred_fake{s}")],
            ));
        }
        let d_terms = gan.discriminator_step(seg, real, Some(&steps[&format!("eps.{i}.d")])).unwrap();
        let losses = &meta["losses"][i];
        let names = [
            ("g_total", "g_total"),
            ("g_gan", "gan"),
            ("g_kld", "kld"),
            ("g_perceptual", "perceptual"),
            ("g_feat", "feat"),
            ("d_fake", "d_fake"),
            ("d_real", "d_real"),
        ];
        for (ours_name, value) in g_terms.iter().chain(&d_terms) {
            let key = names.iter().find(|(o, _)| o == ours_name).unwrap().1;
            let theirs = losses[key].as_f64().unwrap_or_else(|| panic!("reference lacks {key}"));
            let ours = value.double_value(&[]);
            let rel = (ours - theirs).abs() / theirs.abs().max(1e-12);
            eprintln!("iteration {i}: {ours_name} ours {ours:.7} torch {theirs:.7}");
            assert!(rel <= TOL, "iteration {i}: {ours_name} {ours} vs {theirs}");
        }
        assert_eq!(g_terms.len() + d_terms.len(), if feat { 7 } else { 6 });
        let nets: [(&str, &dyn StateDict); 3] = [("G", &gan.g), ("E", &gan.e), ("D", &gan.d)];
        for (name, net) in nets {
            for t in
                net.named_tensors("").into_iter().filter(|t| t.role == chess::model::TensorRole::Parameter)
            {
                let theirs = &steps[&format!("grad{i}.{name}.{}", t.name)];
                let what = format!("gradient of {name}.{} in iteration {i}", t.name);
                worst = worst.max(assert_close(&what, &t.tensor.grad(), theirs));
            }
        }
        for (name, net) in nets {
            for t in net.named_tensors("") {
                let theirs = &steps[&format!("after{i}.{name}.{}", t.name)];
                if t.tensor.kind() == tch::Kind::Int64 {
                    assert_eq!(t.tensor, *theirs, "{name}.{} after iteration {i}", t.name);
                } else {
                    worst = worst.max(assert_close(
                        &format!("{name}.{} after iteration {i}", t.name),
                        &t.tensor,
                        theirs,
                    ));
                }
            }
        }
    }
    let fake = gan.generate(seg, None, Some(&steps["eval.z"])).unwrap();
    worst = worst.max(assert_close("evaluation-mode generator", &fake, &steps["eval.fake"]));
    eprintln!("{norm}, feature matching {feat}: worst relative difference {worst:.3e}");
}
