//! Optimisers and learning-rate schedules against PyTorch 2.11 (`tests/python/optim_reference.py`):
//! the same arithmetic on the same inputs, state dicts of PyTorch's layout that PyTorch loads
//! (`torch.load(weights_only=True)`, `load_state_dict`) and continues from equally, and the
//! reverse. On CPU both sides run the same libtorch kernels with the same scalars, so results
//! are expected bit for bit; the asserted bound is the brief's 1e-6 (relative to the largest
//! reference value), and the measured differences are printed.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chess::checkpoint::{self, Value};
use chess::optim::{
    Adam, AdamConfig, CosineAnnealingLr, LinearDecayLr, LinearDecayRule, LrScheduler, MultiStepLr,
    OptimError, Optimizer, PlateauConfig, PlateauMode, ReduceLrOnPlateau, Sgd, SgdConfig, StepLr,
    ThresholdMode,
};
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-6;
const STEPS: usize = 5;
const SPLIT: usize = 3;

struct Fixtures {
    dir: PathBuf,
    schedules: Json,
}

/// PyTorch's runs, made once per test binary.
fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = common::fixture_dir("optim");
        let d = dir.to_str().unwrap();
        common::run_python("optim_reference.py", ["adam", d]);
        let out = common::run_python("optim_reference.py", ["schedules", d]);
        let schedules = serde_json::from_str(&out).expect("schedules JSON");
        Fixtures { dir, schedules }
    })
}

fn load(path: &Path) -> Value {
    checkpoint::load(path).unwrap_or_else(|e| panic!("{e}")).root
}

fn tensors(v: &Value) -> Vec<Tensor> {
    let Value::List(items) = v else { panic!("not a list: {}", v.type_name()) };
    items.iter().map(|t| t.as_tensor().expect("tensor").shallow_clone()).collect()
}

/// The Adam cases of the Python script, with the same arguments.
fn adam_cases() -> Vec<(&'static str, AdamConfig)> {
    let (adam, adamw) = (AdamConfig::adam(), AdamConfig::adamw());
    vec![
        ("adam", AdamConfig { lr: 1e-2, ..adam }),
        ("adam_weight_decay", AdamConfig { lr: 1e-2, weight_decay: 0.1, ..adam }),
        ("adam_gan_betas", AdamConfig { lr: 2e-4, betas: (0.0, 0.9), ..adam }),
        ("adam_amsgrad", AdamConfig { lr: 1e-2, weight_decay: 0.05, amsgrad: true, ..adam }),
        ("adamw", AdamConfig { lr: 1e-2, weight_decay: 0.1, ..adamw }),
        ("adamw_gan_betas", AdamConfig { lr: 1e-3, betas: (0.0, 0.9), ..adamw }),
        (
            "adamw_amsgrad",
            AdamConfig { lr: 1e-2, betas: (0.5, 0.999), weight_decay: 0.01, amsgrad: true, ..adamw },
        ),
    ]
}

/// Initial parameters and, per step, each parameter's gradient (`None`: no gradient).
struct Inputs {
    params: Vec<Tensor>,
    grads: Vec<Vec<Option<Tensor>>>,
}

fn inputs() -> Inputs {
    let root = load(&fixtures().dir.join("inputs.pth"));
    let params = tensors(root.get("params").unwrap());
    let Value::List(steps) = root.get("grads").unwrap() else { panic!("grads") };
    let grads = steps
        .iter()
        .map(|s| {
            let Value::List(gs) = s else { panic!("grads of a step") };
            gs.iter().map(|g| g.as_tensor().map(Tensor::shallow_clone)).collect()
        })
        .collect();
    Inputs { params, grads }
}

fn leaf_params(values: &[Tensor]) -> Vec<Tensor> {
    values.iter().map(|p| p.detach().copy().set_requires_grad(true)).collect()
}

/// Gives each parameter the step's gradient exactly (a first gradient through backward of
/// `sum(p * g)`, whose gradient is `g` bit for bit; later ones copied in).
fn set_grads(params: &[Tensor], grads: &[Option<Tensor>]) {
    for (p, g) in params.iter().zip(grads) {
        let Some(g) = g else { continue };
        let current = p.grad();
        if current.defined() {
            tch::no_grad(|| {
                let mut current = current;
                current.copy_(g);
            });
        } else {
            (p * g).sum(Kind::Float).backward();
        }
    }
}

fn run(opt: &mut dyn Optimizer, inputs: &Inputs, steps: std::ops::Range<usize>) {
    for step in steps {
        set_grads(opt.params(), &inputs.grads[step]);
        opt.step().unwrap();
    }
}

/// Largest difference between two tensors relative to the reference's largest magnitude.
fn diff(what: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    assert_eq!(ours.kind(), reference.kind(), "{what}: dtype");
    common::rel_diff(ours, reference)
}

/// Compares two state dicts: the same keys in the same order, equal numbers (a Python int and
/// float of one value count as equal), tensors of one shape and dtype within `TOLERANCE`.
/// Returns the worst tensor difference.
fn compare(path: &str, ours: &Value, theirs: &Value) -> f64 {
    let num = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    match (ours, theirs) {
        (Value::Tensor(a), Value::Tensor(b)) => {
            let d = diff(path, a, b);
            assert!(d <= TOLERANCE, "{path}: {d:.3e}");
            d
        }
        (a, b) if num(a).is_some() && num(b).is_some() => {
            let (x, y) = (num(a).unwrap(), num(b).unwrap());
            assert!(x == y || (x - y).abs() <= TOLERANCE * y.abs(), "{path}: {x} vs {y}");
            0.0
        }
        (Value::Dict(a) | Value::OrderedDict(a), Value::Dict(b) | Value::OrderedDict(b)) => {
            let keys = |d: &[(Value, Value)]| d.iter().map(|(k, _)| format!("{k:?}")).collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "{path}: keys");
            a.iter()
                .zip(b)
                .map(|((k, x), (_, y))| compare(&format!("{path}.{k:?}"), x, y))
                .fold(0.0, f64::max)
        }
        (Value::List(a), Value::List(b)) | (Value::Tuple(a), Value::Tuple(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: length");
            a.iter()
                .zip(b)
                .enumerate()
                .map(|(i, (x, y))| compare(&format!("{path}[{i}]"), x, y))
                .fold(0.0, f64::max)
        }
        (Value::None, Value::None) => 0.0,
        (Value::Bool(a), Value::Bool(b)) => {
            assert_eq!(a, b, "{path}");
            0.0
        }
        (Value::Str(a), Value::Str(b)) => {
            assert_eq!(a, b, "{path}");
            0.0
        }
        (a, b) => panic!("{path}: ours is a {}, PyTorch's a {}", a.type_name(), b.type_name()),
    }
}

fn compare_params(what: &str, ours: &[Tensor], theirs: &[Tensor]) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = diff(&format!("{what} param {i}"), &a.detach(), b);
        assert!(d <= TOLERANCE, "{what} param {i}: {d:.3e}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn adam_and_adamw_equal_pytorch_over_five_steps() {
    let inputs = inputs();
    for (name, config) in adam_cases() {
        let reference = load(&fixtures().dir.join(format!("{name}.pth")));
        let mut adam = Adam::new(leaf_params(&inputs.params), config);
        run(&mut adam, &inputs, 0..STEPS);
        let dp = compare_params(name, adam.params(), &tensors(reference.get("params").unwrap()));
        let ds = compare(name, &adam.state_dict(), reference.get("state").unwrap());
        eprintln!("{name}: max relative difference, parameters {dp:.3e}, state {ds:.3e}");
        // Same kernels with the same scalars in the same order: equal bit for bit on CPU.
        assert_eq!((dp, ds), (0.0, 0.0), "{name}: not bit-identical to PyTorch");
    }
}

#[test]
fn adam_continues_from_a_pytorch_state_dict() {
    let inputs = inputs();
    for (name, config) in adam_cases() {
        let reference = load(&fixtures().dir.join(format!("{name}.pth")));
        let mid = reference.get("mid").unwrap();
        // Made with another lr and no amsgrad: the state dict brings back PyTorch's.
        let wrong = AdamConfig { lr: 123.0, amsgrad: false, ..config };
        let mut adam = Adam::new(leaf_params(&tensors(mid.get("params").unwrap())), wrong);
        adam.load_state_dict(mid.get("state").unwrap()).unwrap();
        assert_eq!(adam.config(), config, "{name}: hyper-parameters restored");
        run(&mut adam, &inputs, SPLIT..STEPS);
        let dp = compare_params(name, adam.params(), &tensors(reference.get("params").unwrap()));
        let ds = compare(name, &adam.state_dict(), reference.get("state").unwrap());
        eprintln!("{name} resumed from PyTorch: parameters {dp:.3e}, state {ds:.3e}");
    }
}

#[test]
fn pytorch_continues_from_an_adam_state_dict_written_here() {
    let inputs = inputs();
    let dir = &fixtures().dir;
    let mut finals = HashMap::new();
    for (name, config) in adam_cases() {
        let mut adam = Adam::new(leaf_params(&inputs.params), config);
        run(&mut adam, &inputs, 0..SPLIT);
        let params = Value::List(adam.params().iter().map(|p| Value::Tensor(p.detach().copy())).collect());
        let saved =
            Value::Dict(vec![(Value::str("params"), params), (Value::str("state"), adam.state_dict())]);
        checkpoint::save(dir.join(format!("rust_{name}.pth")), &saved).unwrap();
        run(&mut adam, &inputs, SPLIT..STEPS);
        finals.insert(name, adam);
    }
    common::run_python("optim_reference.py", ["continue-adam", dir.to_str().unwrap()]);
    for (name, _) in adam_cases() {
        let theirs = load(&dir.join(format!("py_cont_{name}.pth")));
        let ours = &finals[name];
        let dp = compare_params(name, ours.params(), &tensors(theirs.get("params").unwrap()));
        let ds = compare(name, &ours.state_dict(), theirs.get("state").unwrap());
        eprintln!("{name} resumed in PyTorch: parameters {dp:.3e}, state {ds:.3e}");
    }
}

#[test]
fn sgd_state_dict_is_pytorchs_and_round_trips() {
    let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut sgd = Sgd::new(vec![p.shallow_clone()], SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 });
    (&p * 2.0).sum(Kind::Float).backward();
    Optimizer::step(&mut sgd).unwrap();
    let sd = sgd.state_dict();
    let group = &sd.get("param_groups").map(|g| match g {
        Value::List(g) => g[0].clone(),
        _ => panic!(),
    });
    let keys: Vec<_> =
        group.as_ref().unwrap().as_dict().unwrap().iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "lr",
            "momentum",
            "dampening",
            "weight_decay",
            "nesterov",
            "maximize",
            "foreach",
            "differentiable",
            "fused",
            "params"
        ]
    );
    let mut other = Sgd::new(vec![p.detach().copy().set_requires_grad(true)], SgdConfig::default());
    other.load_state_dict(&sd).unwrap();
    assert_eq!(other.config(), sgd.config());
    assert_eq!(other.momentum_buffers()[0].as_ref().unwrap(), sgd.momentum_buffers()[0].as_ref().unwrap());
}

#[test]
fn mismatched_state_dicts_fail_clearly() {
    let p = || Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut adam = Adam::new(vec![p(), p()], AdamConfig::adam());
    set_grads(adam.params(), &[Some(Tensor::ones([2, 3], (Kind::Float, Device::Cpu))), None]);
    adam.step().unwrap();
    let sd = adam.state_dict();

    let mut fewer = Adam::new(vec![p()], AdamConfig::adam());
    let e = fewer.load_state_dict(&sd).unwrap_err();
    assert!(matches!(e, OptimError::StateDict(_)), "{e}");
    assert!(e.to_string().contains("holds 2 parameters, this optimiser 1"), "{e}");

    let other_shape = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut shaped = Adam::new(vec![other_shape, p()], AdamConfig::adam());
    let e = shaped.load_state_dict(&sd).unwrap_err();
    assert!(e.to_string().contains("'exp_avg' of parameter 0 has shape [2, 3], the parameter [3, 2]"), "{e}");

    let mut sgd = Sgd::new(vec![p(), p()], SgdConfig::default());
    let e = sgd.load_state_dict(&sd).unwrap_err();
    assert!(e.to_string().contains("has no 'momentum'"), "{e}");

    let mut cosine_src = Sgd::new(vec![p()], SgdConfig::default());
    let cosine = CosineAnnealingLr::new(&mut cosine_src, 10, 0.0).unwrap();
    let mut step = StepLr::new(&mut cosine_src, 2, 0.5).unwrap();
    let e = step.load_state_dict(&cosine.state_dict()).unwrap_err();
    assert!(e.to_string().contains("has no 'step_size'"), "{e}");
    assert!(matches!(StepLr::new(&mut cosine_src, 0, 0.5), Err(OptimError::Invalid(_))));
    let plateau = PlateauConfig { factor: 1.0, ..PlateauConfig::default() };
    assert!(matches!(ReduceLrOnPlateau::new(&mut cosine_src, plateau), Err(OptimError::Invalid(_))));
}

// ---- learning-rate schedules ----

fn schedule_cases() -> Vec<(String, Json)> {
    let Json::Object(cases) = &fixtures().schedules else { panic!("schedules JSON") };
    cases.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A float the Python script wrote as its repr string (parsed exactly, unlike JSON numbers).
fn float(v: &Json) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a float string: {v}"))
}

fn f(case: &Json, key: &str) -> f64 {
    float(&case[key])
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(float).collect()
}

fn i(case: &Json, key: &str) -> i64 {
    case[key].as_i64().unwrap_or_else(|| panic!("{key} in {case}"))
}

/// The optimiser and scheduler of a case, as the Python script makes them.
fn make_schedule(case: &Json) -> (Sgd, Box<dyn LrScheduler>) {
    let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = Sgd::new(vec![p], SgdConfig { lr: f(case, "base_lr"), momentum: 0.9, weight_decay: 0.0 });
    let s: Box<dyn LrScheduler> = match case["kind"].as_str().unwrap() {
        "cosine" => Box::new(CosineAnnealingLr::new(&mut opt, i(case, "t_max"), f(case, "eta_min")).unwrap()),
        "step" => Box::new(StepLr::new(&mut opt, i(case, "step_size"), f(case, "gamma")).unwrap()),
        "multistep" => {
            let ms: Vec<i64> =
                case["milestones"].as_array().unwrap().iter().map(|m| m.as_i64().unwrap()).collect();
            Box::new(MultiStepLr::new(&mut opt, &ms, f(case, "gamma")).unwrap())
        }
        "linear" => {
            let rule =
                if case["rule"] == "spade" { LinearDecayRule::Spade } else { LinearDecayRule::Pix2pix };
            Box::new(
                LinearDecayLr::new(&mut opt, i(case, "n_epochs"), i(case, "n_epochs_decay"), rule).unwrap(),
            )
        }
        "plateau" => {
            let a = &case["args"];
            let config = PlateauConfig {
                mode: if a["mode"] == "max" { PlateauMode::Max } else { PlateauMode::Min },
                factor: f(a, "factor"),
                patience: i(a, "patience"),
                threshold: f(a, "threshold"),
                threshold_mode: if a["threshold_mode"] == "abs" {
                    ThresholdMode::Abs
                } else {
                    ThresholdMode::Rel
                },
                cooldown: i(a, "cooldown"),
                min_lr: f(a, "min_lr"),
                eps: if a["eps"].is_null() { 1e-8 } else { f(a, "eps") },
            };
            Box::new(ReduceLrOnPlateau::new(&mut opt, config).unwrap())
        }
        other => panic!("unknown schedule {other}"),
    };
    (opt, s)
}

fn epochs(case: &Json) -> usize {
    match case["metrics"].as_array() {
        Some(m) => m.len(),
        None => i(case, "epochs") as usize,
    }
}

/// The lrs after each of `epochs`, stepping as the Python script does.
fn step_epochs(
    opt: &mut Sgd,
    s: &mut dyn LrScheduler,
    case: &Json,
    epochs: std::ops::Range<usize>,
) -> Vec<f64> {
    epochs
        .map(|e| {
            let metric = case["metrics"].as_array().map(|m| float(&m[e]));
            s.step_optimizer(opt, metric)
        })
        .collect()
}

fn lrs(case: &Json) -> Vec<f64> {
    floats(&case["lrs"])
}

fn max_rel(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max)
}

#[test]
fn schedules_equal_pytorch() {
    for (name, case) in schedule_cases() {
        let (mut opt, mut s) = make_schedule(&case);
        let mut ours = vec![Optimizer::lr(&opt)];
        ours.extend(step_epochs(&mut opt, s.as_mut(), &case, 0..epochs(&case)));
        let d = max_rel(&ours, &lrs(&case));
        eprintln!("{name}: {} epochs, max relative lr difference {d:.3e}", epochs(&case));
        assert!(d <= TOLERANCE, "{name}: ours {ours:?}\nPyTorch {:?}", lrs(&case));
        assert_eq!(s.lr(), *ours.last().unwrap());
    }
}

#[test]
fn schedules_continue_from_pytorch_state_dicts() {
    for (name, case) in schedule_cases() {
        let saved = load(&fixtures().dir.join(format!("py_sched_{name}.pth")));
        let (mut opt, mut s) = make_schedule(&case);
        let split = i(&case, "split") as usize;
        // Ours, stepped to the same epoch, has PyTorch's state dict exactly.
        let (mut twin_opt, mut twin) = make_schedule(&case);
        step_epochs(&mut twin_opt, twin.as_mut(), &case, 0..split);
        compare(&name, &twin.state_dict(), saved.get("scheduler").unwrap());
        compare(
            &name,
            &twin_opt.state_dict().get("param_groups").unwrap().clone(),
            saved.get("optimizer").unwrap().get("param_groups").unwrap(),
        );

        opt.load_state_dict(saved.get("optimizer").unwrap()).unwrap();
        s.load_state_dict(saved.get("scheduler").unwrap()).unwrap();
        let mut ours = vec![Optimizer::lr(&opt)];
        ours.extend(step_epochs(&mut opt, s.as_mut(), &case, split..epochs(&case)));
        let d = max_rel(&ours, &lrs(&case)[split..]);
        eprintln!("{name} resumed from PyTorch at epoch {split}: max relative lr difference {d:.3e}");
        assert!(d <= TOLERANCE, "{name}: ours {ours:?}\nPyTorch {:?}", &lrs(&case)[split..]);
    }
}

#[test]
fn pytorch_continues_from_schedule_state_dicts_written_here() {
    let dir = &fixtures().dir;
    let mut tails = HashMap::new();
    for (name, case) in schedule_cases() {
        let (mut opt, mut s) = make_schedule(&case);
        let split = i(&case, "split") as usize;
        step_epochs(&mut opt, s.as_mut(), &case, 0..split);
        let saved = Value::Dict(vec![
            (Value::str("optimizer"), opt.state_dict()),
            (Value::str("scheduler"), s.state_dict()),
        ]);
        checkpoint::save(dir.join(format!("rust_sched_{name}.pth")), &saved).unwrap();
        let mut tail = vec![Optimizer::lr(&opt)];
        tail.extend(step_epochs(&mut opt, s.as_mut(), &case, split..epochs(&case)));
        tails.insert(name, tail);
    }
    let out = common::run_python("optim_reference.py", ["continue-schedules", dir.to_str().unwrap()]);
    let theirs: Json = serde_json::from_str(&out).unwrap();
    for (name, ours) in &tails {
        let t = floats(&theirs[name]);
        let d = max_rel(ours, &t);
        eprintln!("{name} resumed in PyTorch: max relative lr difference {d:.3e}");
        assert!(d <= TOLERANCE, "{name}: ours {ours:?}\nPyTorch {t:?}");
    }
}
