//! The bone-suppression networks against PyTorch: `chess::model::Unet` against
//! `segmentation_models_pytorch.Unet` (smp 0.6.0) and `chess::model::ResNetBs` against the
//! PyTorch definition in `tests/python/unet_reference.py`.
//!
//! Weights travel both ways as `torch.save` files: PyTorch's `state_dict()` is read with
//! `chess::checkpoint::load` and loaded by name (the key sets, shapes and order must be equal),
//! and our `save_state_dict` file is loaded by PyTorch with `load_state_dict(strict=True)`.
//! With the same weights and inputs, outputs, input gradients, parameter gradients (every one for
//! ResNet-BS; 11 across encoder, decoder and head for the U-Net) and every buffer after each step
//! (BatchNorm running statistics) agree to 1e-5 (max |diff| / max |ref|), in training and
//! evaluation mode and with the encoder frozen. Both sides run one intra-op thread; the measured
//! differences are 0 (the same libtorch kernels in the same order).
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use chess::checkpoint::{self, EncoderWeights, LoadOptions};
use chess::model::{self, Arch, Encoder, EncoderConfig, HeadSpec, ResNetBs, ResNetBsConfig, StateDict};
use chess::model::{TensorRole, Unet, UnetConfig};
use rstest::rstest;
use tch::{Device, Kind, Tensor, nn};

/// max |ours - torch| / max |torch| of every compared tensor.
const TOL: f64 = 1e-5;

/// What the reference script wrote into a fixture folder.
struct Reference {
    /// `state.pt` as read by our loader, name -> tensor.
    state: Vec<(String, Tensor)>,
    /// `steps.pt`: inputs, outputs, gradients and states per step.
    steps: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn reference(dir: &Path, args: &[&str]) -> Reference {
    let stdout = common::run_python("unet_reference.py", args);
    let meta: serde_json::Value = serde_json::from_str(&stdout).expect("reference metadata");
    let state = checkpoint::load(dir.join("state.pt")).expect("reading state.pt").tensors();
    let steps =
        checkpoint::load(dir.join("steps.pt")).expect("reading steps.pt").tensors().into_iter().collect();
    Reference { state, steps, meta }
}

/// Names and shapes in order: ours, the reference's printed `state_dict()`, and the file's.
fn assert_same_names(module: &dyn StateDict, reference: &Reference) {
    let ours: Vec<(String, Vec<i64>)> =
        module.named_tensors("").into_iter().map(|t| (t.name, t.tensor.size())).collect();
    let printed: Vec<(String, Vec<i64>)> = reference.meta["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            (e[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    let file: Vec<(String, Vec<i64>)> = reference.state.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let ours_set: BTreeSet<_> = ours.iter().collect();
    let theirs_set: BTreeSet<_> = printed.iter().collect();
    let only_ours: Vec<_> = ours_set.difference(&theirs_set).take(5).collect();
    let only_theirs: Vec<_> = theirs_set.difference(&ours_set).take(5).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only ours: {only_ours:?}; only PyTorch's: {only_theirs:?}"
    );
    assert_eq!(ours, printed, "state_dict order");
    assert_eq!(file, printed, "state.pt as read by chess::checkpoint::load");
}

/// Worst relative difference seen, by kind of quantity.
#[derive(Default, Debug)]
struct Worst {
    output: f64,
    input_grad: f64,
    param_grad: (f64, String),
    grads_compared: usize,
    state: (f64, String),
}

fn diff(what: &str, ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    if matches!(ours.kind(), Kind::Int64) {
        assert_eq!(ours, &theirs.to_kind(Kind::Int64), "{what}");
        return 0.0;
    }
    let d = common::rel_diff(ours, theirs);
    assert!(d <= TOL, "{what}: max|diff|/max|ref| = {d:.3e} > {TOL:.0e}");
    d
}

fn worse(slot: &mut (f64, String), d: f64, name: &str) {
    if d > slot.0 {
        *slot = (d, name.to_string());
    }
}

/// Runs every reference step on `module` (its weights already loaded): forward in the step's
/// mode, backward of sum(y * g), then the output, the input gradient, the gradients of the
/// reference's chosen parameters and every buffer against PyTorch's.
fn replay(
    reference: &Reference,
    module: &dyn StateDict,
    forward: &dyn Fn(&Tensor, bool) -> Tensor,
    freeze: &dyn Fn(),
) -> Worst {
    let get = |k: String| reference.steps.get(&k).unwrap_or_else(|| panic!("reference lacks {k}"));
    let named = module.named_tensors("");
    let chosen: Vec<&str> =
        reference.meta["grads"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let mut worst = Worst::default();
    for (i, step) in reference.meta["steps"].as_array().unwrap().iter().enumerate() {
        let train = step["mode"] == "train";
        if step["frozen"] == true {
            freeze();
        }
        let s = format!("step{i}");
        let x = get(format!("{s}.x")).copy().set_requires_grad(true);
        let y = forward(&x, train);
        worst.output = worst.output.max(diff(&format!("{s} output"), &y, get(format!("{s}.y"))));
        (&y * get(format!("{s}.g"))).sum(y.kind()).backward();
        let d = diff(&format!("{s} input gradient"), &x.grad(), get(format!("{s}.grad.input")));
        worst.input_grad = worst.input_grad.max(d);
        for t in named.iter().filter(|t| t.role == TensorRole::Parameter) {
            let mut grad = t.tensor.grad();
            if chosen.contains(&t.name.as_str()) {
                match reference.steps.get(&format!("{s}.grad.{}", t.name)) {
                    Some(theirs) => {
                        let d = diff(&format!("{s} gradient of {}", t.name), &grad, theirs);
                        worse(&mut worst.param_grad, d, &t.name);
                        worst.grads_compared += 1;
                    }
                    // Frozen in PyTorch (no .grad): no gradient may reach it here either.
                    None => assert!(
                        !grad.defined() || grad.abs().max().double_value(&[]) == 0.0,
                        "{s}: {} has a gradient, PyTorch's has none",
                        t.name
                    ),
                }
            }
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        for t in named.iter().filter(|t| t.role == TensorRole::Buffer) {
            let theirs = get(format!("{s}.state.{}", t.name));
            let d = diff(&format!("{s} buffer {}", t.name), &t.tensor.detach(), theirs);
            worse(&mut worst.state, d, &t.name);
        }
    }
    worst
}

/// One intra-op thread, as the reference uses: the tests run side by side, and equal thread
/// counts keep the summation order (and so float32 rounding) the same on both sides.
fn single_threaded() {
    tch::set_num_threads(1);
}

/// Our state dict, written by `save_state_dict`, loads into the PyTorch model with
/// `strict=True` and equals PyTorch's own final state.
fn check_reverse(dir: &Path, module: &dyn StateDict, command: &str, extra: &[&str], last_step: usize) {
    let ours = dir.join("rust_state.pt");
    checkpoint::save_state_dict(&ours, module).unwrap();
    let prefix = format!("step{last_step}.state.");
    let mut args = vec![command, ours.to_str().unwrap(), dir.to_str().unwrap(), "--prefix", &prefix];
    args.extend(extra);
    let stdout = common::run_python("unet_reference.py", &args);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let max_abs = report["max_abs"].as_f64().unwrap();
    eprintln!(
        "{command}: strict load of {} tensors, max |diff| to PyTorch's state {max_abs:.2e}",
        report["loaded"]
    );
    assert_eq!(report["loaded"].as_u64().unwrap() as usize, module.named_tensors("").len());
    assert!(max_abs <= TOL, "state loaded in PyTorch differs by {max_abs:.3e}");
}

/// ResNet-18 in float32 also runs its second step at 72x80, a size not divisible by 32 (smp
/// 0.6.0 upsamples to each skip's exact size), and loads its encoder from a MoCo checkpoint.
/// ResNet-50 covers the bottleneck encoder, in float64: in float32, training-mode BatchNorm over
/// batch 2 at layer4's 2x2 maps amplifies summation-order rounding (1.5e-5 measured between
/// PyTorch on 1 thread and on 2), which is no difference of implementation.
#[rstest]
#[case::resnet18("resnet18", "float32", Some((72, 80)), true)]
#[case::resnet50("resnet50", "float64", None, false)]
fn unet_matches_smp(
    #[case] arch: &str,
    #[case] dtype: &str,
    #[case] odd_size: Option<(i64, i64)>,
    #[case] moco: bool,
) {
    single_threaded();
    let dir = common::fixture_dir(&format!("unet_{arch}"));
    let mut args: Vec<String> = [
        "unet",
        dir.to_str().unwrap(),
        "--arch",
        arch,
        "--height",
        "64",
        "--width",
        "64",
        "--batch",
        "2",
        "--dtype",
        dtype,
    ]
    .map(String::from)
    .into();
    if let Some((h, w)) = odd_size {
        args.extend(["--odd-height".into(), h.to_string(), "--odd-width".into(), w.to_string()]);
    }
    if moco {
        args.push("--moco".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reference = reference(&dir, &args);
    let config = UnetConfig { encoder: arch.parse().unwrap(), ..UnetConfig::default() };
    let mut vs = nn::VarStore::new(Device::Cpu);
    let unet = Unet::new(&vs.root(), config).unwrap();
    if dtype == "float64" {
        vs.double();
    }
    assert_same_names(&unet, &reference);
    let state: HashMap<String, Tensor> =
        reference.state.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    model::load_state(&unet, "", &state).unwrap();

    let worst = replay(&reference, &unet, &|x, train| unet.forward_t(x, train), &|| unet.freeze_encoder());
    eprintln!(
        "{arch}: output {:.2e}, input grad {:.2e}, param grad {:.2e} ({}) over {} gradients, buffers {:.2e} ({})",
        worst.output,
        worst.input_grad,
        worst.param_grad.0,
        worst.param_grad.1,
        worst.grads_compared,
        worst.state.0,
        worst.state.1
    );
    // 11 chosen parameters in the three unfrozen steps, the 6 outside the encoder when frozen.
    assert_eq!(worst.grads_compared, 3 * 11 + 6);
    assert!(unet.encoder_frozen());
    let n_params = unet.parameters().len();
    let n_encoder = unet.encoder().parameters().len();
    assert_eq!(unet.trainable_parameters().len(), n_params - n_encoder);
    check_reverse(&dir, &unet, "check-unet", &["--arch", arch], 3);
    unet.unfreeze_encoder();
    assert_eq!(unet.trainable_parameters().len(), n_params);

    if !moco {
        return;
    }
    // A CheSS-style MoCo checkpoint's query encoder loads into `encoder.*`; the key encoder,
    // the MLP head and the queue are left out, and the decoder keeps its values.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let fresh = Unet::new(&vs2.root(), config).unwrap();
    let before = model::state_dict(&fresh, "");
    let weights = EncoderWeights::from_checkpoint(&checkpoint::load(dir.join("moco.pt")).unwrap()).unwrap();
    let report = fresh.load_encoder(&weights, LoadOptions::default()).unwrap();
    eprintln!("{arch}: load_encoder: {report}");
    assert_eq!(report.prefix, "module.encoder_q.");
    assert_eq!(report.loaded, fresh.encoder().named_tensors("").len());
    assert!(report.missing.is_empty());
    for (name, t) in model::state_dict(&fresh, "") {
        let expected = if name.starts_with("encoder.") {
            &state[&name]
        } else {
            &before.iter().find(|(n, _)| *n == name).unwrap().1
        };
        assert_eq!(&t, expected, "{name} after load_encoder");
    }
}

#[test]
fn resnet_bs_matches_pytorch() {
    single_threaded();
    let dir = common::fixture_dir("resnet_bs");
    let reference = reference(
        &dir,
        &[
            "resnet-bs",
            dir.to_str().unwrap(),
            "--blocks",
            "3",
            "--channels",
            "64",
            "--height",
            "32",
            "--width",
            "40",
        ],
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ResNetBsConfig { blocks: 3, ..ResNetBsConfig::default() };
    let net = ResNetBs::new(&vs.root(), config).unwrap();
    assert_same_names(&net, &reference);
    let state: HashMap<String, Tensor> =
        reference.state.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    model::load_state(&net, "", &state).unwrap();
    let worst = replay(&reference, &net, &|x, _| net.forward(x), &|| {});
    eprintln!(
        "resnet-bs: output {:.2e}, input grad {:.2e}, param grad {:.2e} ({}) over {} gradients",
        worst.output, worst.input_grad, worst.param_grad.0, worst.param_grad.1, worst.grads_compared
    );
    assert_eq!(worst.grads_compared, 2 * 18, "every parameter's gradient in both steps");

    // The comparison is live: the same weights with residual scaling 0.2 are caught.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let other = ResNetBs::new(&vs2.root(), ResNetBsConfig { scaling: 0.2, ..config }).unwrap();
    model::load_state(&other, "", &state).unwrap();
    let y = tch::no_grad(|| other.forward(&reference.steps["step0.x"]));
    let d = common::rel_diff(&y, &reference.steps["step0.y"]);
    assert!(d > 100.0 * TOL, "scaling 0.2 should differ, max rel diff {d:.2e}");
    check_reverse(&dir, &net, "check-resnet-bs", &["--blocks", "3", "--channels", "64"], 1);
}

/// Names, counts and the pieces that need no PyTorch: the paper's ResNet-BS, smp's ResNet-50
/// U-Net, arch checks on encoder loading, and configuration errors.
#[test]
fn structure_and_errors() {
    single_threaded();
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let bs = ResNetBs::new(&(&root / "bs"), ResNetBsConfig::default()).unwrap();
    let names: Vec<String> = bs.named_tensors("").into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 2 + 16 * 4 + 2 + 2);
    assert_eq!(&names[..4], ["head.weight", "head.bias", "body.0.conv1.weight", "body.0.conv1.bias"]);
    assert_eq!(&names[names.len() - 4..], ["body_conv.weight", "body_conv.bias", "tail.weight", "tail.bias"]);
    let y = tch::no_grad(|| bs.forward(&Tensor::rand([1, 1, 24, 20], (Kind::Float, Device::Cpu))));
    assert_eq!(y.size(), [1, 1, 24, 20]);
    assert!(y.min().double_value(&[]) > 0.0 && y.max().double_value(&[]) < 1.0);

    let unet = Unet::new(&(&root / "unet"), UnetConfig::default()).unwrap();
    let named = unet.named_tensors("");
    // smp.Unet("resnet50", in_channels=1, classes=1): 320 - 2 (fc) encoder entries, 5 blocks of
    // 2 x (conv + 5 BN entries), 2 head entries.
    assert_eq!(named.len(), 318 + 60 + 2);
    let shape = |n: &str| named.iter().find(|t| t.name == n).unwrap().tensor.size();
    assert_eq!(shape("encoder.conv1.weight"), [64, 1, 7, 7]);
    assert_eq!(shape("decoder.blocks.0.conv1.0.weight"), [256, 2048 + 1024, 3, 3]);
    assert_eq!(shape("decoder.blocks.4.conv1.0.weight"), [16, 32, 3, 3]);
    assert_eq!(shape("segmentation_head.0.weight"), [1, 16, 3, 3]);
    let y = tch::no_grad(|| unet.forward_t(&Tensor::rand([1, 1, 64, 64], (Kind::Float, Device::Cpu)), false));
    assert_eq!(y.size(), [1, 1, 64, 64]);
    // smp's init: conv1 U(+-1/sqrt(fan_in)) (patch_first_conv without weights), decoder convs
    // Kaiming-uniform U(+-sqrt(6/fan_in)), head Xavier-uniform U(+-sqrt(6/(fan_in+fan_out))) and
    // zero bias, BatchNorm ones and zeros.
    let get = |n: &str| named.iter().find(|t| t.name == n).unwrap().tensor.detach();
    let bound = |t: &Tensor, b: f64| {
        let m = t.abs().max().double_value(&[]);
        assert!(m <= b && m > 0.95 * b, "max |w| {m} for a U(+-{b}) draw");
    };
    bound(&get("encoder.conv1.weight"), 1.0 / 49f64.sqrt());
    bound(&get("decoder.blocks.1.conv1.0.weight"), (6.0f64 / (768.0 * 9.0)).sqrt());
    bound(&get("segmentation_head.0.weight"), (6.0f64 / (16.0 * 9.0 + 9.0)).sqrt());
    assert_eq!(get("segmentation_head.0.bias").abs().max().double_value(&[]), 0.0);
    assert_eq!(get("decoder.blocks.0.conv1.1.weight").min().double_value(&[]), 1.0);

    // A ResNet-18 checkpoint does not go into a ResNet-34 U-Net, and does into a ResNet-18 one.
    let dir = common::fixture_dir("unet_structure");
    let enc = Encoder::new(
        &(&root / "enc"),
        EncoderConfig {
            arch: Arch::ResNet18,
            in_channels: 3,
            head: HeadSpec::Linear { out: 10 },
            bn_splits: 1,
        },
    );
    checkpoint::save_state_dict(&dir.join("r18.pt"), &enc).unwrap();
    let weights = EncoderWeights::from_checkpoint(&checkpoint::load(dir.join("r18.pt")).unwrap()).unwrap();
    let r34 =
        Unet::new(&(&root / "r34"), UnetConfig { encoder: Arch::ResNet34, ..UnetConfig::default() }).unwrap();
    let err = r34.load_encoder(&weights, LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("resnet18"), "{err}");
    let r18 =
        Unet::new(&(&root / "r18"), UnetConfig { encoder: Arch::ResNet18, ..UnetConfig::default() }).unwrap();
    let report = r18.load_encoder(&weights, LoadOptions::default()).unwrap();
    assert_eq!(report.conv1_adapted, Some((3, 1)));
    assert_eq!(report.loaded, r18.encoder().named_tensors("").len());

    let bad = UnetConfig { decoder_channels: [256, 128, 0, 32, 16], ..UnetConfig::default() };
    assert!(Unet::new(&(&root / "bad"), bad).is_err());
    assert!(
        ResNetBs::new(&(&root / "bad_bs"), ResNetBsConfig { channels: 0, ..ResNetBsConfig::default() })
            .is_err()
    );
}
