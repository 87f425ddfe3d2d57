//! ResNet encoders against torchvision: same weights, same input, same outputs.
mod common;

use std::collections::BTreeSet;

use chess::model::{self, Arch, Encoder, EncoderConfig, HeadSpec, StateDict};
use rstest::rstest;
use tch::{Device, nn};

/// Forward tolerance of the issue: max |diff| / max |ref|.
const TOL: f64 = 1e-5;

#[rstest]
#[case::resnet50_1ch_mlp("resnet50", 1, "mlp", 224)]
#[case::resnet18_3ch_linear("resnet18", 3, "linear", 96)]
#[case::resnet34_1ch_no_head("resnet34", 1, "none", 96)]
fn forward_matches_torchvision(
    #[case] arch: &str,
    #[case] in_channels: i64,
    #[case] head: &str,
    #[case] size: i64,
) {
    let (ch, sz) = (in_channels.to_string(), size.to_string());
    let reference = common::reference(&[
        "forward",
        "--arch",
        arch,
        "--in-channels",
        &ch,
        "--head",
        head,
        "--size",
        &sz,
        "--batch",
        "4",
    ]);
    let arch: Arch = arch.parse().unwrap();
    let head = match head {
        "mlp" => HeadSpec::Mlp { hidden: arch.feature_dim(), out: 128 },
        "linear" => HeadSpec::Linear { out: 128 },
        _ => HeadSpec::None,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&vs.root(), EncoderConfig { arch, in_channels, head, bn_splits: 1 });

    // Names are torchvision's, one for one, num_batches_tracked included.
    let state = common::strip(&reference, "state.");
    let ours: BTreeSet<String> = encoder.named_tensors("").into_iter().map(|t| t.name).collect();
    let theirs: BTreeSet<String> = state.keys().cloned().collect();
    assert_eq!(ours, theirs, "state_dict keys differ from torchvision's");
    model::load_state(&encoder, "", &state).unwrap();

    let x = &reference["input"];
    let eval = tch::no_grad(|| encoder.forward_t(x, false));
    let d_eval = common::rel_diff(&eval, &reference["eval.output"]);
    let train = tch::no_grad(|| encoder.forward_t(x, true));
    let d_train = common::rel_diff(&train, &reference["train.output"]);
    let (d_buffers, worst) =
        common::worst_diff(&model::state_dict(&encoder, ""), &common::strip(&reference, "train.state."));
    eprintln!(
        "{arch} {in_channels}ch: eval {d_eval:.2e}, train {d_train:.2e}, buffers after train {d_buffers:.2e} ({worst})"
    );
    assert!(d_eval <= TOL, "eval output differs: {d_eval:.3e}");
    assert!(d_train <= TOL, "train output differs: {d_train:.3e}");
    assert!(d_buffers <= TOL, "state after a train forward differs at {worst}: {d_buffers:.3e}");
}

#[test]
fn init_follows_the_recipe() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&vs.root(), EncoderConfig::default());
    let named = encoder.named_tensors("");
    // torchvision ResNet-50 has 320 state entries (267 + 53 num_batches_tracked); the MLP head
    // replaces fc's 2 with 4.
    assert_eq!(named.len(), 322);
    let get = |n: &str| named.iter().find(|t| t.name == n).unwrap().tensor.shallow_clone();
    assert_eq!(get("conv1.weight").size(), [64, 1, 7, 7]);
    // Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out * k * k)).
    let w = get("layer3.0.conv2.weight");
    let expected = (2.0 / (256.0 * 9.0f64)).sqrt();
    let std = w.std(true).double_value(&[]);
    assert!((std / expected - 1.0).abs() < 0.02, "conv std {std} vs {expected}");
    assert_eq!(get("layer1.0.bn1.weight").mean(tch::Kind::Float).double_value(&[]), 1.0);
    assert_eq!(get("layer1.0.bn1.bias").abs().max().double_value(&[]), 0.0);
    assert_eq!(get("bn1.num_batches_tracked").int64_value(&[]), 0);
    // Linear layers: uniform in +-1/sqrt(fan_in).
    let fc = get("fc.2.weight");
    let bound = 1.0 / 2048f64.sqrt();
    assert!(fc.abs().max().double_value(&[]) <= bound);
    assert_eq!(fc.size(), [128, 2048]);
}

#[test]
fn pooled_features_have_the_architecture_width() {
    let vs = nn::VarStore::new(Device::Cpu);
    for (arch, dim) in [(Arch::ResNet18, 512), (Arch::ResNet34, 512), (Arch::ResNet50, 2048)] {
        let cfg = EncoderConfig { arch, in_channels: 1, head: HeadSpec::None, bn_splits: 1 };
        let enc = Encoder::new(&vs.root().sub(arch.name()), cfg);
        let x = tch::Tensor::randn([2, 1, 64, 64], (tch::Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| enc.features_t(&x, false));
        assert_eq!(f.size(), [2, dim], "{arch}");
        let stages = tch::no_grad(|| enc.trunk().forward_stages(&x, false));
        assert_eq!(stages.len(), 5);
        assert_eq!(stages[0].size()[2], 32, "stem output is 1/2 resolution");
        assert_eq!(stages[4].size()[2], 2, "layer4 output is 1/32 resolution");
    }
}
