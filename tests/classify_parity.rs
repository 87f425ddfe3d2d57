//! The classifier's outputs against PyTorch: Grad-CAM maps of the same weights and images, and
//! the downloadable state dict loaded into torchvision's ResNet-18.
mod common;

use std::path::{Path, PathBuf};

use chess::checkpoint::{self, EncoderWeights, LoadOptions};
use chess::data;
use chess::model::{self, Arch, Encoder, EncoderConfig, HeadSpec, StateDict};
use tch::{Device, Kind, Tensor, nn};

/// Grad-CAM maps are in 0..1: max |diff|.
const CAM_TOL: f64 = 1e-4;
/// Probabilities: max |diff|.
const PROB_TOL: f64 = 1e-5;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn first_file(folder: &str) -> PathBuf {
    let dir = common::data_dir().join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set CHESS_DATA)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().next().unwrap_or_else(|| panic!("{} is empty", dir.display()))
}

fn write_inputs(path: &Path, tensors: &[(&str, &Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

fn read_outputs(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn resnet18(vs: &nn::VarStore, out: i64) -> Encoder {
    let config =
        EncoderConfig { arch: Arch::ResNet18, in_channels: 1, head: HeadSpec::Linear { out }, bn_splits: 1 };
    Encoder::new(&vs.root(), config)
}

#[test]
fn grad_cam_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, state, out) =
        (dir.path().join("in.safetensors"), dir.path().join("model.pt"), dir.path().join("out.safetensors"));

    // Two radiographs at 128 px, normalised as the classifier sees them, and two noise images of
    // a non-square size; each image with its own target class.
    let images: Vec<_> = ["cxr-pneumonia-224/test/NORMAL", "cxr-pneumonia-224/test/PNEUMONIA"]
        .iter()
        .map(|folder| data::decode_file(&first_file(folder)).unwrap())
        .collect();
    let x1 = data::batch(&images, 128, 1, Device::Cpu);
    let c1 = Tensor::from_slice(&[2i64, 0]);
    tch::manual_seed(11);
    let x2 = Tensor::randn([2, 1, 96, 80], (Kind::Float, Device::Cpu));
    let c2 = Tensor::from_slice(&[1i64, 2]);
    write_inputs(&inputs, &[("x1", &x1), ("c1", &c1), ("x2", &x2), ("c2", &c2)]);

    let info = common::run_python(
        "classify_reference.py",
        [
            "gradcam",
            "--inputs",
            inputs.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--classes",
            "3",
        ],
    );
    let info: serde_json::Value = serde_json::from_str(info.trim()).unwrap();
    let reference = read_outputs(&out);

    // The PyTorch state dict, through the checkpoint reader and the weight mapping.
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = resnet18(&vs, 3);
    let weights = EncoderWeights::from_checkpoint(&checkpoint::load(&state).unwrap()).unwrap();
    assert_eq!(weights.head, HeadSpec::Linear { out: 3 });
    let report = weights.load_into(&encoder, LoadOptions::default()).unwrap();
    assert_eq!(report.loaded, encoder.named_tensors("").len(), "{report}");
    assert!(report.missing.is_empty() && report.ignored == 0, "{report}");

    let state_before = model::state_dict(&encoder, "");
    for (i, (x, classes)) in [(&x1, [2i64, 0]), (&x2, [1, 2])].into_iter().enumerate() {
        let i = i + 1;
        let cam = model::grad_cam(&encoder, x, &classes);
        let theirs = &reference[&format!("cam{i}")];
        let size = x.size();
        assert_eq!(cam.size(), [size[0], size[2], size[3]]);
        assert_eq!(cam.kind(), Kind::Float);
        // Non-trivial maps: every reference map peaks at 1 (its raw maximum was positive).
        let peaks: Vec<f64> =
            info[format!("cam{i}.max")].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(peaks.iter().all(|&p| p > 0.0), "a reference map is all zero: {peaks:?}");
        let ours_max = cam.amax([1i64, 2].as_slice(), false);
        assert!(
            max_abs_diff(&ours_max, &Tensor::ones([size[0]], (Kind::Float, Device::Cpu))) < 1e-6,
            "maps not normalised to 1: {ours_max}"
        );
        assert!(cam.min().double_value(&[]) >= 0.0);
        let d = max_abs_diff(&cam, theirs);
        let nonzero = theirs.gt(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        eprintln!(
            "cam{i} {:?}, classes {classes:?}: max |diff| {d:.3e} (raw peaks {peaks:?}, {:.0}% of pixels > 0)",
            cam.size(),
            nonzero * 100.0
        );
        assert!(d <= CAM_TOL, "cam{i}: max |diff| {d:.3e} > {CAM_TOL:.0e}");

        let probs = model::predict_probabilities(&encoder, x, false);
        let dp = max_abs_diff(&probs, &reference[&format!("softmax{i}")]);
        eprintln!("softmax{i}: max |diff| {dp:.3e}");
        assert!(dp <= PROB_TOL, "softmax{i}: max |diff| {dp:.3e}");
    }

    // Nothing of the encoder changed: no parameter gradients, same outputs as before.
    for (name, t) in vs.variables() {
        assert!(!t.grad().defined(), "grad_cam left a gradient on {name}");
    }
    for ((name, before), (_, after)) in state_before.iter().zip(model::state_dict(&encoder, "")) {
        assert!(before.equal(&after), "grad_cam changed {name}");
    }
}

#[test]
fn saved_state_dict_loads_into_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, state, out) =
        (dir.path().join("in.safetensors"), dir.path().join("model.pt"), dir.path().join("out.safetensors"));
    const LABELS: i64 = 5;

    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = resnet18(&vs, LABELS);
    // Running statistics and num_batches_tracked away from their initial values.
    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = encoder.forward_t(&Tensor::randn([4, 1, 64, 64], (Kind::Float, Device::Cpu)), true);
        }
    });
    let x = Tensor::randn([3, 1, 64, 64], (Kind::Float, Device::Cpu));
    let probs = model::predict_probabilities(&encoder, &x, true);
    write_inputs(&inputs, &[("x", &x)]);

    checkpoint::save_state_dict(&state, &encoder).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "temporary file left: {names:?}");

    let info = common::run_python(
        "classify_reference.py",
        [
            "load",
            "--state",
            state.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--labels",
            &LABELS.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let info: serde_json::Value = serde_json::from_str(info.trim()).unwrap();
    assert_eq!(info["type"], "OrderedDict");
    assert_eq!(info["entries"].as_u64().unwrap() as usize, encoder.named_tensors("").len());
    assert_eq!(info["num_batches_tracked"], 2);
    let theirs = &read_outputs(&out)["probs"];
    let d = max_abs_diff(&probs, theirs);
    eprintln!(
        "state dict: {} entries, sigmoid probabilities {:?}: max |diff| {d:.3e}",
        info["entries"],
        probs.size()
    );
    assert!(d <= PROB_TOL, "probabilities: max |diff| {d:.3e} > {PROB_TOL:.0e}");

    // Our own reader takes the file back too, tensor for tensor.
    let ckpt = checkpoint::load(&state).unwrap();
    assert!(matches!(ckpt.root, checkpoint::Value::OrderedDict(_)));
    let back: std::collections::HashMap<String, Tensor> = ckpt.tensors().into_iter().collect();
    for (name, t) in model::state_dict(&encoder, "") {
        assert!(t.equal(&back[&name]), "{name} differs after the round trip");
    }
}
