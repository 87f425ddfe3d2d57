//! One and three MoCo v2 training steps against an independent PyTorch implementation:
//! same initial weights, queue and views; loss, weights, BN statistics and queue compared.
mod common;

use chess::model::{self, Arch, Moco, MocoConfig, MocoTrainer, StepOptions};
use chess::{Precision, SgdConfig};
use rstest::rstest;
use tch::{Cuda, Device};

/// A parity scenario; tolerances are max |diff| / max |ref| (relative for the loss).
#[derive(Debug, Clone, Copy)]
struct Case {
    arch: &'static str,
    batch: i64,
    size: i64,
    queue: i64,
    splits: i64,
    mlp: bool,
    precision: Precision,
    channels_last: bool,
    loss_tol: f64,
    state_tol: f64,
}

const F32: Case = Case {
    arch: "resnet50",
    batch: 8,
    size: 64,
    queue: 64,
    splits: 1,
    mlp: true,
    precision: Precision::F32,
    channels_last: false,
    loss_tol: 1e-5,
    state_tol: 1e-4,
};

const STEPS: i64 = 3;

/// The split-BN shuffle draws from libtorch's global generator, which test threads share:
/// steps run one case at a time (the PyTorch references still run in parallel).
static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(case: Case, device: Device) {
    let s = |v: i64| v.to_string();
    let (batch, size, queue, splits) = (s(case.batch), s(case.size), s(case.queue), s(case.splits));
    let mlp = s(case.mlp as i64);
    let precision = case.precision.to_string();
    let cl = s(case.channels_last as i64);
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    let steps = s(STEPS);
    let reference = common::reference(&[
        "steps",
        "--arch",
        case.arch,
        "--batch",
        &batch,
        "--size",
        &size,
        "--queue",
        &queue,
        "--splits",
        &splits,
        "--mlp",
        &mlp,
        "--precision",
        &precision,
        "--channels-last",
        &cl,
        "--device",
        dev,
        "--steps",
        &steps,
    ]);

    let _rng = GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let config = MocoConfig {
        arch: case.arch.parse::<Arch>().unwrap(),
        queue_size: case.queue,
        bn_splits: case.splits,
        mlp: case.mlp,
        ..MocoConfig::default()
    };
    let moco = Moco::new(config, device).unwrap();
    model::load_state(&moco, "", &common::strip(&reference, "init.")).unwrap();
    let sgd = SgdConfig { lr: 0.03, momentum: 0.9, weight_decay: 1e-4 };
    let options = StepOptions { precision: case.precision, channels_last: case.channels_last };
    let mut trainer = MocoTrainer::new(moco, sgd, options).unwrap();
    if device.is_cuda() {
        // The reference turns off autotuning and TF32 too: both sides then run the same kernels.
        chess::device::set_exact_cuda_math(true).unwrap();
    }

    for i in 1..=STEPS {
        let lr = reference[&format!("lr.{i}")].double_value(&[0]);
        tch::manual_seed(1000 + i); // as the reference, for the split-BN shuffle
        let stats =
            trainer.step(&reference[&format!("im_q.{i}")], &reference[&format!("im_k.{i}")], lr).unwrap();
        let ours = stats.values();
        let theirs = reference[&format!("loss.{i}")].double_value(&[0]);
        let d_loss = (ours.loss - theirs).abs() / theirs.abs();
        let after = common::strip(&reference, &format!("after.{i}."));
        let mut line = format!("{case:?} {dev} step {i}: loss {:.6} rel diff {d_loss:.2e}", ours.loss);
        // Measure everything first and print it, then assert: a failure shows the whole picture.
        let mut failures = Vec::new();
        if !after.is_empty() {
            let state = model::state_dict(&trainer.model, "");
            for part in ["encoder_q.", "encoder_k.", "queue"] {
                let sub: Vec<_> = state
                    .iter()
                    .filter(|(n, _)| n.starts_with(part))
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                let (d, worst) = common::worst_diff(&sub, &after);
                line += &format!(", {part} {d:.2e} (worst {worst})");
                if d > case.state_tol {
                    failures.push(format!("step {i}: {worst} differs by {d:.3e} > {:.0e}", case.state_tol));
                }
            }
            // The pointer is exact.
            assert_eq!(
                trainer.model.queue_ptr().int64_value(&[0]),
                after["queue_ptr"].int64_value(&[0]),
                "queue_ptr after step {i}"
            );
        }
        eprintln!("{line}");
        assert!(failures.is_empty(), "{}", failures.join("; "));
        assert!(d_loss <= case.loss_tol, "step {i}: loss {} vs {theirs}: {d_loss:.3e}", ours.loss);
    }
}

#[rstest]
#[case::resnet50(F32)]
#[case::resnet50_split_bn_4(Case { splits: 4, ..F32 })]
#[case::resnet50_queue_wraps(Case { queue: 20, ..F32 })]
#[case::resnet18_linear_head(Case { arch: "resnet18", mlp: false, ..F32 })]
#[case::resnet18_channels_last(Case { arch: "resnet18", channels_last: true, ..F32 })]
#[case::resnet18_bf16_autocast(Case {
    arch: "resnet18",
    precision: Precision::Bf16,
    loss_tol: 1e-3,
    state_tol: 1e-3,
    ..F32
})]
fn moco_steps_match_pytorch_cpu(#[case] case: Case) {
    run(case, Device::Cpu);
}

/// The same comparison on a GPU: needs one, so it is ignored by `cargo test`;
/// `benches/gpu.sh` runs it with `--ignored` on the GPU machine.
#[rstest]
#[case::resnet50_split_bn_4(Case { splits: 4, loss_tol: 1e-4, state_tol: 1e-3, ..F32 })]
#[case::resnet50_bf16_channels_last(Case {
    precision: Precision::Bf16,
    channels_last: true,
    loss_tol: 1e-2,
    state_tol: 1e-2,
    ..F32
})]
#[ignore = "needs a CUDA device: run by benches/gpu.sh"]
fn moco_steps_match_pytorch_cuda(#[case] case: Case) {
    assert!(Cuda::is_available(), "no CUDA device");
    run(case, Device::Cuda(0));
}
