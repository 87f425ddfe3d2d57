//! chess::nn against torch.nn: the same weights (written by PyTorch, loaded by name through our
//! state dicts) and the same inputs give the same outputs, input gradients, parameter gradients
//! and state after each step; state-dict keys and shapes are PyTorch's, in PyTorch's order.
mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use chess::model;
use chess::nn::{
    self as layers, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, GroupNorm, InstanceNorm2d,
    Linear, NormOptions, PaddingMode, ParamFreeBatchNorm2d, Resize, SpectralNorm, StateDict, TensorRole,
};
use tch::{Device, Kind, Tensor, nn};

/// max |ours - torch| / max |torch| over every compared tensor. In float64 the two sides do the
/// same arithmetic up to summation order, so the measured differences are ~1e-15; the float32
/// run holds to the same bound.
const TOL: f64 = 1e-5;

/// Tests that draw from libtorch's global generator (module construction, seeded init) take
/// this lock, so that a seeded draw is not interleaved with another test's.
static RNG: Mutex<()> = Mutex::new(());

struct Reference {
    tensors: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

/// Runs the reference script in `dtype` and reads what it wrote.
fn reference(dtype: &str) -> Reference {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("layers.pt");
    let stdout = common::run_python("layers_reference.py", [path.to_str().unwrap(), "--dtype", dtype]);
    let ckpt = chess::checkpoint::load(&path).expect("reading the reference");
    Reference {
        tensors: ckpt.tensors().into_iter().collect(),
        meta: serde_json::from_str(&stdout).expect("reference metadata"),
    }
}

/// A forward in training (`true`) or evaluation mode.
type Forward<'a> = Box<dyn Fn(&Tensor, bool) -> Tensor + 'a>;

/// A layer under test: its state and its forward.
struct Case<'a> {
    name: &'static str,
    module: &'a dyn StateDict,
    forward: Forward<'a>,
}

/// Worst (relative, absolute) differences of one case.
#[derive(Default, Debug, Clone, Copy)]
struct Worst {
    rel: f64,
    abs: f64,
}

impl Worst {
    fn add(&mut self, what: &str, ours: &Tensor, theirs: &Tensor) {
        assert_eq!(ours.size(), theirs.size(), "{what}: shape");
        if ours.kind() == Kind::Int64 {
            assert_eq!(ours, &theirs.to_kind(Kind::Int64), "{what}");
            return;
        }
        let rel = common::rel_diff(ours, theirs);
        let abs = (ours.to_kind(Kind::Double) - theirs.to_kind(Kind::Double)).abs().max().double_value(&[]);
        assert!(rel <= TOL, "{what}: max|diff|/max|ref| = {rel:.3e} > {TOL:.0e}");
        self.rel = self.rel.max(rel);
        self.abs = self.abs.max(abs);
    }
}

/// Keys and shapes, loading, then every step of the reference: forward, backward, state.
fn check(reference: &Reference, case: Case) -> Worst {
    let name = case.name;
    let meta = &reference.meta[name];
    let theirs: Vec<(String, Vec<i64>)> = meta["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no reference for {name}"))
        .iter()
        .map(|e| {
            let shape = e[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            (e[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    let named = case.module.named_tensors("");
    let ours: Vec<(String, Vec<i64>)> = named.iter().map(|t| (t.name.clone(), t.tensor.size())).collect();
    assert_eq!(ours, theirs, "{name}: state_dict keys and shapes (in order)");

    model::load_state(case.module, "", &common::strip(&reference.tensors, &format!("{name}.state.")))
        .unwrap();
    let get = |key: String| reference.tensors.get(&key).unwrap_or_else(|| panic!("reference lacks {key}"));
    let mut worst = Worst::default();
    for (i, mode) in meta["modes"].as_array().unwrap().iter().enumerate() {
        let train = mode == "train";
        let step = format!("{name}.step{i}");
        let x = get(format!("{step}.x")).copy().set_requires_grad(true);
        let y = (case.forward)(&x, train);
        worst.add(&format!("{step} output"), &y, get(format!("{step}.y")));
        (&y * get(format!("{step}.g"))).sum(y.kind()).backward();
        worst.add(&format!("{step} input gradient"), &x.grad(), get(format!("{step}.grad.input")));
        for t in named.iter().filter(|t| t.role == TensorRole::Parameter) {
            let mut grad = t.tensor.grad();
            worst.add(
                &format!("{step} gradient of {}", t.name),
                &grad,
                get(format!("{step}.grad.{}", t.name)),
            );
            let _ = grad.zero_();
        }
        for t in &named {
            worst.add(
                &format!("{step} state {}", t.name),
                &t.tensor.detach(),
                get(format!("{step}.state.{}", t.name)),
            );
        }
    }
    eprintln!("{name}: max rel diff {:.2e}, max abs diff {:.2e}", worst.rel, worst.abs);
    worst
}

/// Builds every layer as the reference script does and checks it.
fn all_layers_match(dtype: &str) {
    let reference = &reference(dtype);
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let conv_general = Conv2d::with_config(
        &root / "conv_general",
        4,
        6,
        Conv2dConfig {
            kernel: [3, 5],
            stride: [2, 1],
            padding: [1, 2],
            dilation: [2, 1],
            groups: 2,
            ..Conv2dConfig::new(3)
        },
    )
    .unwrap();
    let conv_reflect = Conv2d::with_config(
        &root / "conv_reflect",
        3,
        4,
        Conv2dConfig {
            stride: [2, 2],
            padding: [1, 2],
            padding_mode: PaddingMode::Reflect,
            ..Conv2dConfig::new(3)
        },
    )
    .unwrap();
    let conv_no_bias = Conv2d::new(&root / "conv_no_bias", 3, 4, 3, 2, 1);
    let conv_transpose = ConvTranspose2d::new(
        &root / "conv_transpose",
        4,
        6,
        ConvTranspose2dConfig {
            kernel: [3, 4],
            stride: [2, 3],
            padding: [1, 2],
            output_padding: [1, 2],
            groups: 2,
            dilation: [1, 2],
            ..ConvTranspose2dConfig::new(3)
        },
    )
    .unwrap();
    let group_norm = GroupNorm::new(&root / "group_norm", 3, 6, 1e-5, true).unwrap();
    let group_norm_plain = GroupNorm::new(&root / "group_norm_plain", 2, 6, 1e-5, false).unwrap();
    let affine_tracked =
        NormOptions { affine: true, track_running_stats: true, ..NormOptions::instance_norm() };
    let in_tracked = InstanceNorm2d::new(&root / "in_tracked", 5, affine_tracked).unwrap();
    let in_plain = InstanceNorm2d::new(&root / "in_plain", 5, NormOptions::instance_norm()).unwrap();
    let bn_free = ParamFreeBatchNorm2d::new(&root / "bn_free", 5, true).unwrap();
    let sn_conv = {
        let p = &root / "sn_conv";
        let conv = Conv2d::with_config(
            p.clone(),
            3,
            8,
            Conv2dConfig { stride: [2, 2], padding: [2, 2], ..Conv2dConfig::new(4) },
        );
        SpectralNorm::new(p, conv.unwrap())
    };
    let sn_conv_transpose = {
        let p = &root / "sn_conv_transpose";
        let config =
            ConvTranspose2dConfig { stride: [2, 2], padding: [1, 1], ..ConvTranspose2dConfig::new(4) };
        SpectralNorm::new(p.clone(), ConvTranspose2d::new(p, 6, 4, config).unwrap())
    };
    let sn_linear = {
        let p = &root / "sn_linear";
        SpectralNorm::new(p.clone(), Linear::new(p, 7, 5))
    };
    drop(guard);
    if dtype == "float64" {
        vs.double();
    }

    struct Nothing;
    impl StateDict for Nothing {
        fn push_tensors(&self, _: &str, _: &mut Vec<layers::NamedTensor>) {}
    }
    let function = |name: &'static str, f: Box<dyn Fn(&Tensor) -> Tensor>| Case {
        name,
        module: &Nothing,
        forward: Box::new(move |x, _| f(x)),
    };
    let cases = vec![
        Case {
            name: "conv_general",
            module: &conv_general,
            forward: Box::new(|x, _| conv_general.forward(x)),
        },
        Case {
            name: "conv_reflect",
            module: &conv_reflect,
            forward: Box::new(|x, _| conv_reflect.forward(x)),
        },
        Case {
            name: "conv_no_bias",
            module: &conv_no_bias,
            forward: Box::new(|x, _| conv_no_bias.forward(x)),
        },
        Case {
            name: "conv_transpose",
            module: &conv_transpose,
            forward: Box::new(|x, _| conv_transpose.forward(x)),
        },
        Case { name: "group_norm", module: &group_norm, forward: Box::new(|x, _| group_norm.forward(x)) },
        Case {
            name: "group_norm_plain",
            module: &group_norm_plain,
            forward: Box::new(|x, _| group_norm_plain.forward(x)),
        },
        Case {
            name: "instance_norm_affine_tracked",
            module: &in_tracked,
            forward: Box::new(|x, t| in_tracked.forward_t(x, t)),
        },
        Case {
            name: "instance_norm_plain",
            module: &in_plain,
            forward: Box::new(|x, t| in_plain.forward_t(x, t)),
        },
        Case {
            name: "batch_norm_param_free",
            module: &bn_free,
            forward: Box::new(|x, t| bn_free.forward_t(x, t)),
        },
        Case { name: "sn_conv", module: &sn_conv, forward: Box::new(|x, t| sn_conv.forward_t(x, t)) },
        Case {
            name: "sn_conv_transpose",
            module: &sn_conv_transpose,
            forward: Box::new(|x, t| sn_conv_transpose.forward_t(x, t)),
        },
        Case { name: "sn_linear", module: &sn_linear, forward: Box::new(|x, t| sn_linear.forward_t(x, t)) },
        function("up_nearest_x2", Box::new(|x| layers::upsample_nearest(x, Resize::scale(2.0)))),
        function("up_nearest_s1_5", Box::new(|x| layers::upsample_nearest(x, Resize::scale(1.5)))),
        function("up_nearest_size", Box::new(|x| layers::upsample_nearest(x, Resize::Size([8, 11])))),
        function("up_bilinear_x2", Box::new(|x| layers::upsample_bilinear(x, Resize::scale(2.0), false))),
        function(
            "up_bilinear_s0_5_1_5",
            Box::new(|x| layers::upsample_bilinear(x, Resize::Scale([0.5, 1.5]), false)),
        ),
        function(
            "up_bilinear_corners_size",
            Box::new(|x| layers::upsample_bilinear(x, Resize::Size([9, 13]), true)),
        ),
        function("leaky_relu", Box::new(|x| layers::leaky_relu(x, 0.2))),
    ];
    let tested: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let expected: Vec<&str> = reference.meta.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = tested.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every reference case is tested");
    let mut overall = Worst::default();
    for case in cases {
        let w = check(reference, case);
        overall.rel = overall.rel.max(w.rel);
        overall.abs = overall.abs.max(w.abs);
    }
    eprintln!("{dtype}: all layers, max rel diff {:.2e}, max abs diff {:.2e}", overall.rel, overall.abs);
}

#[test]
fn layers_match_torch_nn_in_float64() {
    all_layers_match("float64");
}

#[test]
fn layers_match_torch_nn_in_float32() {
    all_layers_match("float32");
}

/// Under the same seed, PyTorch's default init and spectral norm's `u`, `v` draw the same
/// numbers (the bounds are computed with PyTorch's arithmetic, the draws are libtorch's).
#[test]
fn init_draws_equal_pytorch_under_the_same_seed() {
    let reference = &reference("float32");
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let compare = |name: &str, module: &dyn StateDict| {
        let named = module.named_tensors("");
        assert!(!named.is_empty());
        for t in named {
            let key = format!("init.{name}.{}", t.name);
            let theirs = &reference.tensors[&key];
            assert_eq!(&t.tensor.detach(), theirs, "{key} differs from PyTorch's draw");
        }
    };
    tch::manual_seed(7);
    let conv = Conv2d::with_config(
        &root / "a",
        4,
        6,
        Conv2dConfig { kernel: [3, 5], groups: 2, ..Conv2dConfig::new(3) },
    );
    compare("conv", &conv.unwrap());
    tch::manual_seed(7);
    let convt = ConvTranspose2d::new(
        &root / "b",
        4,
        6,
        ConvTranspose2dConfig { kernel: [3, 4], groups: 2, ..ConvTranspose2dConfig::new(3) },
    );
    compare("conv_transpose", &convt.unwrap());
    tch::manual_seed(7);
    let p = &root / "c";
    let sn = SpectralNorm::new(p.clone(), Conv2d::with_config(p, 3, 8, Conv2dConfig::new(4)).unwrap());
    compare("sn_conv", &sn);
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let err = Conv2d::with_config(&root / "a", 4, 6, Conv2dConfig { groups: 4, ..Conv2dConfig::new(3) })
        .unwrap_err();
    assert!(err.to_string().contains("groups 4 must divide"), "{err}");
    let config =
        ConvTranspose2dConfig { stride: [2, 2], output_padding: [2, 0], ..ConvTranspose2dConfig::new(3) };
    assert!(ConvTranspose2d::new(&root / "b", 4, 6, config).is_err());
    assert!(GroupNorm::new(&root / "c", 4, 6, 1e-5, true).is_err());
    assert!(InstanceNorm2d::new(&root / "d", 0, NormOptions::instance_norm()).is_err());
    assert!(ParamFreeBatchNorm2d::new(&root / "f", -1, true).is_err());
    let linear = Linear::new(&root / "e", 3, 2);
    assert!(SpectralNorm::with_options(&root / "e", linear, 1, 1e-12, 2).is_err());
}

/// The ResNet convolution keeps its recipe bit for bit: no bias, and the same single draw as
/// before the move to `chess::nn` (`N(0, 2 / fan_out)` through the var store).
#[test]
fn resnet_conv_keeps_its_draw() {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let conv = Conv2d::new(vs.root() / "conv", 64, 128, 3, 1, 1);
    let names: Vec<String> = conv.named_tensors("").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["weight"]);
    assert!(conv.bias.is_none());
    tch::manual_seed(3);
    let stdev = (2.0 / (128 * 3 * 3) as f64).sqrt();
    let recipe = vs.root().var("recipe", &[128, 64, 3, 3], nn::Init::Randn { mean: 0.0, stdev });
    assert_eq!(conv.weight.detach(), recipe.detach());
}

/// The comparison is live: spectral norm without its power iteration (u and v never updated)
/// fails it.
#[test]
fn a_layer_that_differs_is_caught() {
    let reference = &reference("float64");
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root() / "sn_conv";
    let config = Conv2dConfig { stride: [2, 2], padding: [2, 2], ..Conv2dConfig::new(4) };
    let conv = Conv2d::with_config(p.clone(), 3, 8, config).unwrap();
    let frozen = SpectralNorm::with_options(p, conv, 0, 1e-12, 0).unwrap();
    vs.double();
    let case = Case { name: "sn_conv", module: &frozen, forward: Box::new(|x, t| frozen.forward_t(x, t)) };
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(reference, case)));
    let message = caught.expect_err("a frozen u, v must not match PyTorch");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("sn_conv.step0 output"), "{message}");
}
