//! chess::losses against PyTorch: SSIM and MS-SSIM losses against pytorch-msssim 1.0.0, and the
//! perceptual loss against the same computation on a torchvision ResNet-18, on real radiographs
//! (values and gradients wrt the output image); plus the loss specs, the MS-SSIM size limit, the
//! frozen encoder and float32 under autocast.
mod common;

use std::collections::HashMap;

use chess::losses::{self, Distance, LossError, Normalisation, PerceptualLoss, Stage, Term, WeightedLoss};
use chess::model::{Arch, StateDict};
use chess::{Precision, device};
use tch::{Device, Kind, Tensor};

/// max |ours - torch| / max |torch|, for values and for gradients (whose entries are ~1e-5, so
/// an absolute bound would say nothing).
const TOL: f64 = 1e-5;

struct Reference {
    /// Keeps the state dicts the script wrote while the test reads them.
    dir: tempfile::TempDir,
    tensors: HashMap<String, Tensor>,
    cases: Vec<serde_json::Value>,
}

impl Reference {
    fn run(mode: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = common::data_dir();
        let stdout = common::run_python(
            "losses_reference.py",
            [mode, data.to_str().unwrap(), dir.path().to_str().unwrap()],
        );
        let ckpt = chess::checkpoint::load(dir.path().join("reference.pt")).expect("reading the reference");
        let cases = serde_json::from_str::<serde_json::Value>(&stdout).expect("reference cases");
        Self { tensors: ckpt.tensors().into_iter().collect(), cases: cases.as_array().unwrap().clone(), dir }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("reference lacks {key}"))
    }
}

/// Worst relative and absolute differences seen.
#[derive(Default)]
struct Worst {
    rel: f64,
    abs: f64,
}

impl Worst {
    fn check(&mut self, what: &str, ours: &Tensor, theirs: &Tensor) {
        assert_eq!(ours.kind(), Kind::Float, "{what}: computed in float32");
        let rel = common::rel_diff(ours, theirs);
        let abs = (ours.to_kind(Kind::Double) - theirs.to_kind(Kind::Double)).abs().max().double_value(&[]);
        eprintln!("{what}: max rel diff {rel:.2e}, max abs diff {abs:.2e}");
        assert!(rel <= TOL, "{what}: max|diff|/max|ref| = {rel:.3e} > {TOL:.0e}");
        self.rel = self.rel.max(rel);
        self.abs = self.abs.max(abs);
    }
}

/// A loss of x (a leaf requiring grad) and its gradient.
fn value_and_grad(x: &Tensor, f: impl FnOnce(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let x = x.copy().set_requires_grad(true);
    let loss = f(&x);
    loss.backward();
    (loss.detach(), x.grad())
}

#[test]
fn ssim_and_ms_ssim_match_pytorch_msssim() {
    let reference = Reference::run("ssim");
    let mut worst = Worst::default();
    for case in &reference.cases {
        let name = case["name"].as_str().unwrap();
        let data_range = case["data_range"].as_f64().unwrap();
        let x = reference.get(&format!("{name}.x"));
        let y = reference.get(&format!("{name}.y"));
        let (v, g) = value_and_grad(x, |x| losses::ssim_loss(x, y, data_range).unwrap());
        worst.check(&format!("{name} {:?} SSIM loss", x.size()), &v, reference.get(&format!("{name}.ssim")));
        worst.check(&format!("{name} SSIM gradient"), &g, reference.get(&format!("{name}.ssim.grad")));
        if case["ms_ssim"].as_bool().unwrap() {
            let (v, g) = value_and_grad(x, |x| losses::ms_ssim_loss(x, y, data_range).unwrap());
            worst.check(&format!("{name} MS-SSIM loss"), &v, reference.get(&format!("{name}.ms_ssim")));
            worst.check(
                &format!("{name} MS-SSIM gradient"),
                &g,
                reference.get(&format!("{name}.ms_ssim.grad")),
            );
        } else {
            assert!(matches!(losses::ms_ssim_loss(x, y, data_range), Err(LossError::TooSmall { .. })));
        }
    }
    eprintln!("SSIM/MS-SSIM overall: max rel diff {:.2e}, max abs diff {:.2e}", worst.rel, worst.abs);

    // Under bf16 autocast and with bf16 inputs the losses still run in float32: the same numbers.
    let x = reference.get("square255.x");
    let y = reference.get("square255.y");
    let plain = losses::ms_ssim_loss(x, y, 255.0).unwrap();
    let autocast =
        device::autocast(Device::Cpu, Precision::Bf16, || losses::ms_ssim_loss(x, y, 255.0).unwrap())
            .unwrap();
    assert_eq!(autocast.kind(), Kind::Float);
    assert_eq!(plain.double_value(&[]), autocast.double_value(&[]), "MS-SSIM under bf16 autocast");
    let xb = x.to_kind(Kind::BFloat16);
    let yb = y.to_kind(Kind::BFloat16);
    let from_bf16 = losses::ssim_loss(&xb, &yb, 255.0).unwrap();
    let expected = losses::ssim_loss(&xb.to_kind(Kind::Float), &yb.to_kind(Kind::Float), 255.0).unwrap();
    assert_eq!(from_bf16.kind(), Kind::Float);
    assert_eq!(from_bf16.double_value(&[]), expected.double_value(&[]), "SSIM of bf16 images");
}

#[test]
fn ms_ssim_needs_more_than_160_pixels() {
    let x = Tensor::rand([1, 1, 160, 300], (Kind::Float, Device::Cpu));
    let err = losses::ms_ssim_loss(&x, &x, 1.0).unwrap_err();
    assert!(matches!(err, LossError::TooSmall { height: 160, width: 300, min: 160, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("160x300") && message.contains("exceeds 160"), "{message}");
    let x = Tensor::rand([1, 1, 161, 161], (Kind::Float, Device::Cpu));
    let loss = losses::ms_ssim_loss(&x, &x, 1.0).unwrap().double_value(&[]);
    assert!(loss.abs() < 1e-6, "MS-SSIM loss of an image with itself: {loss}");
    // Shapes: 4-d and equal.
    let y = Tensor::rand([1, 1, 161, 162], (Kind::Float, Device::Cpu));
    assert!(matches!(losses::ssim_loss(&x, &y, 1.0), Err(LossError::Shape { .. })));
    assert!(matches!(
        losses::ssim_loss(&x.view([1, 161, 161]), &x.view([1, 161, 161]), 1.0),
        Err(LossError::Shape { .. })
    ));
}

#[test]
fn perceptual_loss_matches_pytorch() {
    let reference = Reference::run("perceptual");
    let x = reference.get("perceptual.x");
    let y = reference.get("perceptual.y");
    let mut worst = Worst::default();
    // One encoder per (file, normalisation); the cases switch the distance.
    let mut encoders: HashMap<(String, Normalisation), PerceptualLoss> = HashMap::new();
    for case in &reference.cases {
        let name = case["name"].as_str().unwrap();
        let normalisation: Normalisation = case["normalisation"].as_str().unwrap().parse().unwrap();
        let file = case["weights"].as_str().unwrap().to_string();
        let loss = encoders.entry((file.clone(), normalisation)).or_insert_with(|| {
            let loss =
                PerceptualLoss::from_file(reference.dir.path().join(&file), normalisation, Device::Cpu)
                    .unwrap();
            eprintln!("{file} for {normalisation:?}: {}", loss.source());
            loss
        });
        loss.distance = case["distance"].as_str().unwrap().parse().unwrap();
        assert_eq!(loss.stages, PerceptualLoss::spade_weights());
        assert_eq!(loss.encoder().trunk().in_channels(), normalisation.in_channels());
        let (v, g) = value_and_grad(x, |x| loss.forward(x, y));
        worst.check(&format!("{name} perceptual loss"), &v, reference.get(&format!("{name}.perceptual")));
        worst.check(
            &format!("{name} perceptual gradient"),
            &g,
            reference.get(&format!("{name}.perceptual.grad")),
        );
        assert_frozen(loss);
    }
    eprintln!("perceptual overall: max rel diff {:.2e}, max abs diff {:.2e}", worst.rel, worst.abs);

    // bf16 autocast around the call changes nothing: the loss runs in float32.
    let loss = &encoders[&("resnet18_1ch.pt".to_string(), Normalisation::Chess)];
    let plain = loss.forward(x, y);
    let autocast = device::autocast(Device::Cpu, Precision::Bf16, || loss.forward(x, y)).unwrap();
    assert_eq!(autocast.kind(), Kind::Float);
    assert_eq!(plain.double_value(&[]), autocast.double_value(&[]), "perceptual loss under bf16 autocast");
}

/// No variable of the encoder requires or received a gradient.
fn assert_frozen(loss: &PerceptualLoss) {
    let named = loss.encoder().named_tensors("");
    assert!(!named.is_empty());
    for t in &named {
        assert!(!t.tensor.requires_grad(), "{} requires grad", t.name);
        assert!(!t.tensor.grad().defined(), "{} received a gradient", t.name);
    }
    for t in loss.var_store().variables().values() {
        assert!(!t.requires_grad());
    }
}

#[test]
fn random_perceptual_loss_is_seeded_frozen_and_labelled() {
    let a = PerceptualLoss::random(Arch::ResNet18, 3, Device::Cpu);
    let b = PerceptualLoss::random(Arch::ResNet18, 3, Device::Cpu);
    let c = PerceptualLoss::random(Arch::ResNet18, 4, Device::Cpu);
    assert!(a.source().contains("random"), "{}", a.source());
    assert_eq!(a.normalisation(), Normalisation::Chess);
    let weight = |l: &PerceptualLoss| l.encoder().trunk().named_tensors("")[0].tensor.copy();
    assert!(weight(&a).equal(&weight(&b)), "same seed, same weights");
    assert!(!weight(&a).equal(&weight(&c)), "other seed, other weights");
    let y = Tensor::rand([1, 1, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
    let x = (&y + Tensor::randn([1, 1, 64, 64], (Kind::Float, Device::Cpu)) * 10.0).set_requires_grad(true);
    let mut loss = a;
    loss.stages = vec![(Stage::Stem, 1.0), (Stage::Layer2, 0.5)];
    loss.distance = Distance::Mse;
    let value = loss.forward(&x, &y);
    value.backward();
    assert!(value.double_value(&[]) > 0.0);
    assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "x receives a gradient");
    assert_frozen(&loss);
    assert_eq!(loss.forward(&y, &y).double_value(&[]), 0.0);
}

#[test]
fn loss_specs_parse_and_combine() {
    let spec: WeightedLoss = "l1=0.16, ms-ssim=0.84,perceptual=1".parse().unwrap();
    assert_eq!(spec.terms, vec![(Term::L1, 0.16), (Term::MsSsim, 0.84), (Term::Perceptual, 1.0)]);
    assert_eq!(spec.to_string(), "l1=0.16,ms-ssim=0.84,perceptual=1");
    assert!(spec.needs_perceptual());
    let bare: WeightedLoss = "MSE,ssim=2".parse().unwrap();
    assert_eq!(bare.terms, vec![(Term::Mse, 1.0), (Term::Ssim, 2.0)]);
    assert!(!bare.needs_perceptual());
    assert_eq!("ms_ssim".parse::<Term>().unwrap(), Term::MsSsim);
    for bad in ["", "l1=", "l1=x", "l1=-1", "l1=inf", "l1,l1=2", "vgg=1", "l1=1,,ssim"] {
        let err = bad.parse::<WeightedLoss>().unwrap_err();
        eprintln!("{bad:?}: {err}");
        assert!(matches!(err, LossError::Spec { .. } | LossError::UnknownTerm(_)), "{bad:?}: {err:?}");
    }
    assert!("l2".parse::<Distance>().is_ok() && "cos".parse::<Distance>().is_err());
    assert!("ImageNet".parse::<Normalisation>().is_ok() && "rgb".parse::<Normalisation>().is_err());

    let y = Tensor::rand([2, 1, 176, 176], (Kind::Float, Device::Cpu));
    let x = (&y + Tensor::randn([2, 1, 176, 176], (Kind::Float, Device::Cpu)) * 0.05).clamp(0.0, 1.0);
    let x = x.set_requires_grad(true);
    assert!(matches!(spec.combine(&x, &y, 1.0, None), Err(LossError::NoPerceptual)));
    let mut perceptual = PerceptualLoss::random(Arch::ResNet18, 0, Device::Cpu);
    perceptual.stages = vec![(Stage::Layer1, 1.0)];
    let values = spec.combine(&x, &y, 1.0, Some(&perceptual)).unwrap();
    let names: Vec<&str> = values.terms.iter().map(|(t, _)| t.name()).collect();
    assert_eq!(names, ["l1", "ms-ssim", "perceptual"]);
    let expected = [
        losses::l1(&x, &y),
        losses::ms_ssim_loss(&x, &y, 1.0).unwrap(),
        perceptual.forward(&(&x * 255.0), &(&y * 255.0)),
    ];
    let mut sum = 0.0;
    for ((term, value), (expected, (_, weight))) in values.terms.iter().zip(expected.iter().zip(&spec.terms))
    {
        assert!(!value.requires_grad(), "{term}: logged values are detached");
        let (v, e) = (value.double_value(&[]), expected.double_value(&[]));
        assert!((v - e).abs() <= 1e-6 * e.abs().max(1.0), "{term}: {v} vs {e}");
        sum += weight * v;
    }
    let total = values.total.double_value(&[]);
    assert!((total - sum).abs() <= 1e-5 * sum, "total {total} vs {sum}");
    values.total.backward();
    assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Pixel losses are plain means.
    let a = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]).view([1, 1, 2, 2]);
    let b = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(losses::l1(&a, &b).double_value(&[]), 1.5);
    assert_eq!(losses::mse(&a, &b).double_value(&[]), 3.5);
}
