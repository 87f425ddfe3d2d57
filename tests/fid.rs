//! FID and KID against their Python definitions (tests/python/fid_reference.py): pytorch-fid
//! 0.3.0's `calculate_frechet_distance`, `InceptionV3` and `calculate_fid_given_paths`, and
//! torch-fidelity's KID formula.
//!
//! The published FID weights cannot be downloaded here: the reference builds pytorch-fid's own
//! network with random weights, fits its BatchNorm statistics on real radiographs (so features
//! do not collapse) and saves it where pytorch-fid's loader finds its weights file; this side
//! loads the same file through `chess::checkpoint::load`. Images are real radiographs
//! (cxr-pneumonia-224 test set, NORMAL against PNEUMONIA) written here as 8-bit grey PNGs, which
//! both sides then read (pytorch-fid through PIL `convert('RGB')` and `ToTensor`).
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chess::data::decode_file;
use chess::metrics::{
    FidError, KidSubset, activation_statistics, fid_from_activations, frechet_distance, grey_to_input, kid,
    kid_subsets, kid_with_subsets,
};
use chess::model::{Dims, FidInception, StateDict};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// Images per folder of the end-to-end FID.
const PER_FOLDER: usize = 40;

struct Fixture {
    out: PathBuf,
    a: PathBuf,
    b: PathBuf,
    results: Value,
    subsets: HashMap<&'static str, Vec<KidSubset>>,
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The first `n` radiographs of `src` as 8-bit grey PNGs `img_000.png`... in `dst`.
fn write_pngs(src: &Path, dst: &Path, n: usize) {
    std::fs::create_dir_all(dst).unwrap();
    let files = sorted_files(src, "jpeg");
    assert!(files.len() >= n, "{} has {} JPEGs, {n} needed", src.display(), files.len());
    for (i, f) in files[..n].iter().enumerate() {
        let g = decode_file(f).unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> = g.pixels.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect();
        image::save_buffer(
            dst.join(format!("img_{i:03}.png")),
            &bytes,
            g.width,
            g.height,
            image::ExtendedColorType::L8,
        )
        .unwrap();
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::fixture_dir("fid");
        let data = common::data_dir().join("cxr-pneumonia-224");
        let (a, b, out, torch_home) = (dir.join("a"), dir.join("b"), dir.join("out"), dir.join("torch_home"));
        std::fs::create_dir_all(&out).unwrap();
        write_pngs(&data.join("test/NORMAL"), &a, PER_FOLDER);
        write_pngs(&data.join("test/PNEUMONIA"), &b, PER_FOLDER);
        let fit: Vec<PathBuf> = ["train/NORMAL", "train/PNEUMONIA"]
            .iter()
            .flat_map(|s| sorted_files(&data.join(s), "jpeg").into_iter().take(6))
            .collect();
        let subsets = HashMap::from([
            ("random", kid_subsets(60, 50, 10, 25, 7).unwrap()),
            ("inception", kid_subsets(PER_FOLDER, PER_FOLDER, 8, 20, 8).unwrap()),
        ]);
        let setup = json!({
            "out": out, "torch_home": torch_home, "fit": fit, "a": a, "b": b,
            "kid": {"random": subsets["random"], "inception": subsets["inception"]},
        });
        let setup_path = dir.join("setup.json");
        std::fs::write(&setup_path, setup.to_string()).unwrap();
        let stdout = common::run_python("fid_reference.py", [&setup_path]);
        let last = stdout.lines().last().expect("JSON on stdout");
        let results = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
        Fixture { out, a, b, results, subsets }
    })
}

fn npy_vec(path: &Path) -> Vec<f64> {
    let t = common::read_npy(path);
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).view(-1)).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

#[test]
fn frechet_distance_equals_pytorch_fid() {
    let f = fixture();
    let cases = f.results["frechet"].as_object().unwrap();
    assert!(cases.len() >= 6);
    for (name, case) in cases {
        let d = case["d"].as_u64().unwrap() as usize;
        let reference = case["fid"].as_f64().unwrap();
        let scale = case["trace_scale"].as_f64().unwrap();
        let load = |k: &str| npy_vec(&f.out.join(format!("frechet_{name}_{k}.npy")));
        let (mu1, s1, mu2, s2) = (load("mu1"), load("sigma1"), load("mu2"), load("sigma2"));
        let ours = frechet_distance(&mu1, &s1, &mu2, &s2, d).unwrap();
        if name.contains("identical") {
            // pytorch-fid's own value is scipy's round-off (up to 1e-8 of the traces on singular
            // statistics); ours is ~0.
            eprintln!("{name}: ours {ours:.3e}, pytorch-fid {reference:.3e} (traces {scale:.1})");
            assert!(ours.abs() <= 1e-10 * scale, "{name}: identical statistics give {ours:e}");
            assert!((ours - reference).abs() <= 1e-6 * scale, "{name}: {ours} vs {reference}");
            continue;
        }
        let rel = (ours - reference).abs() / reference.abs();
        eprintln!("{name} (d = {d}): ours {ours:.12}, pytorch-fid {reference:.12}, relative {rel:.2e}");
        assert!(rel <= 1e-6, "{name}: {ours} vs {reference}");
        if case["samples"].as_bool().unwrap() {
            // activation_statistics equals np.mean / np.cov(rowvar=False).
            for (x, mu, sigma) in [("x1", &mu1, &s1), ("x2", &mu2, &s2)] {
                let samples = common::read_npy(&f.out.join(format!("frechet_{name}_{x}.npy")));
                let (m, s) = activation_statistics(&samples).unwrap();
                let dm = max_abs_diff(&m, mu) / max_abs(mu).max(1e-300);
                let ds = max_abs_diff(&s, sigma) / max_abs(sigma);
                eprintln!("  {x}: mean {dm:.2e}, covariance {ds:.2e} relative to numpy");
                assert!(dm <= 1e-12 && ds <= 1e-12, "{name} {x}: statistics differ from numpy");
            }
        }
    }
}

#[test]
fn kid_equals_torch_fidelity_formula() {
    let f = fixture();
    let cases = [
        (
            "random",
            common::read_npy(&f.out.join("kid_random_1.npy")),
            common::read_npy(&f.out.join("kid_random_2.npy")),
        ),
        (
            "inception",
            common::read_npy(&f.out.join("acts_a.npy")),
            common::read_npy(&f.out.join("acts_b.npy")),
        ),
    ];
    for (name, fa, fb) in cases {
        let reference = &f.results["kid"][name];
        let (mean, std) = kid_with_subsets(&fa, &fb, &f.subsets[name]).unwrap();
        let (rm, rs) = (reference["mean"].as_f64().unwrap(), reference["std"].as_f64().unwrap());
        eprintln!("KID {name}: ours {mean:.15} +- {std:.15}, reference {rm:.15} +- {rs:.15}");
        assert!((mean - rm).abs() <= 1e-9 * rm.abs().max(1.0), "{name} mean: {mean} vs {rm}");
        assert!((std - rs).abs() <= 1e-9 * rs.abs().max(1.0), "{name} std: {std} vs {rs}");
    }
}

fn load_images(files: &[PathBuf]) -> Tensor {
    let images: Vec<_> = files.iter().map(|p| decode_file(p).unwrap_or_else(|e| panic!("{e}"))).collect();
    grey_to_input(&images).unwrap()
}

fn load_model(f: &Fixture) -> FidInception {
    let path = f.results["weights"].as_str().unwrap();
    FidInception::load(path, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn inception_matches_pytorch_fid() {
    let f = fixture();
    let path = f.results["weights"].as_str().unwrap();
    assert!(path.ends_with(chess::model::FID_WEIGHTS_FILE), "{path}");
    // State-dict names and order: pytorch-fid's, less `fc.*` and `num_batches_tracked`.
    let file: Vec<(String, Tensor)> = chess::checkpoint::load(path).unwrap().tensors();
    let expected: Vec<(String, Vec<i64>)> = file
        .iter()
        .filter(|(k, _)| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (k.clone(), t.size()))
        .collect();
    let model = load_model(f);
    let ours: Vec<(String, Vec<i64>)> =
        model.named_tensors("").into_iter().map(|t| (t.name, t.tensor.size())).collect();
    assert_eq!(ours, expected, "state-dict names, shapes or order differ from pytorch-fid's");
    assert!(ours.iter().any(|(k, _)| k == "Mixed_5b.branch1x1.conv.weight"));

    let four: Vec<PathBuf> =
        f.results["four"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
    let images = load_images(&four);
    assert_eq!(images.size(), [4, 3, 224, 224]);
    for dims in Dims::ALL {
        let start = std::time::Instant::now();
        let acts = model.activations(&images, dims).unwrap();
        let reference = common::read_npy(&f.out.join(format!("act{dims}.npy")));
        assert_eq!(acts.size(), [4, dims.dims() as i64]);
        let d = common::rel_diff(&acts, &reference);
        let spread = reference.std(true).double_value(&[]);
        eprintln!(
            "activations {dims}: max|diff|/max|ref| = {d:.2e} (features' std {spread:.3}), {:.1} s",
            start.elapsed().as_secs_f64()
        );
        assert!(d <= 1e-4, "{dims}-d activations differ: {d:e}");
        assert!(spread > 1e-3, "{dims}-d features collapsed");
    }
}

#[test]
fn fid_end_to_end_equals_calculate_fid_given_paths() {
    let f = fixture();
    let model = load_model(f);
    let start = std::time::Instant::now();
    let acts: Vec<Tensor> = [&f.a, &f.b]
        .iter()
        .map(|dir| {
            let files = sorted_files(dir, "png");
            assert_eq!(files.len(), PER_FOLDER);
            let batches: Vec<Tensor> =
                files.chunks(20).map(|c| model.activations(&load_images(c), Dims::D64).unwrap()).collect();
            Tensor::cat(&batches, 0)
        })
        .collect();
    for (acts, name) in acts.iter().zip(["acts_a", "acts_b"]) {
        let reference = common::read_npy(&f.out.join(format!("{name}.npy")));
        let d = common::rel_diff(acts, &reference);
        eprintln!("{name}: max|diff|/max|ref| = {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d:e}");
    }
    let ours = fid_from_activations(&acts[0], &acts[1]).unwrap();
    let reference = f.results["fid64"].as_f64().unwrap();
    let rel = (ours - reference).abs() / reference.abs();
    eprintln!(
        "FID (64-d, {PER_FOLDER} NORMAL vs {PER_FOLDER} PNEUMONIA): ours {ours:.9}, pytorch-fid {reference:.9}, \
         relative {rel:.2e} ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    assert!(reference > 1e-3, "the reference FID {reference} tests nothing");
    assert!(rel <= 1e-4, "FID {ours} vs {reference}");
}

#[test]
fn kid_subsets_are_seeded_draws_without_replacement() {
    let s = kid_subsets(30, 12, 5, 10, 3).unwrap();
    assert_eq!(s, kid_subsets(30, 12, 5, 10, 3).unwrap());
    assert_ne!(s, kid_subsets(30, 12, 5, 10, 4).unwrap());
    for (ia, ib) in &s {
        for (idx, n) in [(ia, 30), (ib, 12)] {
            assert_eq!(idx.len(), 10);
            let mut sorted = idx.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 10, "repeated index in {idx:?}");
            assert!(idx.iter().all(|&i| i < n));
        }
    }
    assert!(matches!(kid_subsets(30, 9, 5, 10, 3), Err(FidError::Kid(_))));
    assert!(matches!(kid_subsets(30, 30, 0, 10, 3), Err(FidError::Kid(_))));

    let a = Tensor::randn([30, 8], (Kind::Double, Device::Cpu));
    let b = Tensor::randn([12, 8], (Kind::Double, Device::Cpu)) + 0.5;
    assert_eq!(kid(&a, &b, 5, 10, 3).unwrap(), kid_with_subsets(&a, &b, &s).unwrap());
}

#[test]
fn frechet_distance_refuses_bad_input() {
    let mu = [0.0, 1.0];
    let sigma = [1.0, 0.2, 0.2, 1.0];
    assert!(frechet_distance(&mu, &sigma, &mu, &sigma, 2).unwrap().abs() < 1e-12);
    assert!(matches!(frechet_distance(&mu, &sigma, &mu[..1], &sigma, 2), Err(FidError::Shape(_))));
    assert!(matches!(frechet_distance(&mu, &sigma[..3], &mu, &sigma, 2), Err(FidError::Shape(_))));
    assert!(matches!(
        frechet_distance(&[f64::NAN, 0.0], &sigma, &mu, &sigma, 2),
        Err(FidError::NonFinite(_))
    ));
    // Not a covariance (eigenvalues 2 and -1.5): sigma1 sigma2 has a negative eigenvalue, whose
    // square root is imaginary, as scipy finds.
    let indefinite = [0.25, 1.75, 1.75, 0.25];
    assert!(matches!(frechet_distance(&mu, &indefinite, &mu, &sigma, 2), Err(FidError::Imaginary(_))));
    // One sample: no covariance.
    assert!(activation_statistics(&Tensor::ones([1, 3], (Kind::Float, Device::Cpu))).is_err());
    assert_eq!(Dims::from_dims(768), Some(Dims::D768));
    assert_eq!(Dims::from_dims(100), None);
}

/// `nodule_gan fid` prints pytorch-fid's number: Inception at 64 dims (`calculate_fid_given_paths`
/// with the same weights file) and CheSS-style pooled ResNet features (`calculate_frechet_distance`
/// on the same network's features); without `--inception` it says where the file is published.
#[test]
fn fid_command_equals_pytorch_fid() {
    let f = fixture();
    let parse = |stdout: &str, key: &str| -> f64 {
        let line =
            stdout.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {stdout}"));
        line[key.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let run = |extra: &[&str]| -> String {
        let out = common::example("nodule_gan")
            .args(["fid", f.a.to_str().unwrap(), f.b.to_str().unwrap(), "--device", "cpu"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let weights = f.results["weights"].as_str().unwrap();
    let stdout = run(&["--inception", weights, "--dims", "64", "--kid", "--kid-subset-size", "20"]);
    let (ours, reference) = (parse(&stdout, "FID: "), f.results["fid64"].as_f64().unwrap());
    eprintln!("fid --dims 64: ours {ours:.9}, pytorch-fid {reference:.9}");
    assert!((ours - reference).abs() / reference <= 1e-4, "{ours} vs {reference}");
    let kid_mean = parse(&stdout, "KID: ");
    assert!(kid_mean.is_finite(), "{stdout}");

    let chess_weights = f.results["chess_weights"].as_str().unwrap();
    let stdout = run(&["--features", "chess", "--weights", chess_weights]);
    let (ours, reference) = (parse(&stdout, "FID: "), f.results["fid_chess"].as_f64().unwrap());
    eprintln!("fid --features chess: ours {ours:.9}, pytorch-fid's formula {reference:.9}");
    assert!(reference > 1e-3 && (ours - reference).abs() / reference <= 1e-4, "{ours} vs {reference}");

    let out = common::example("nodule_gan")
        .args(["fid", f.a.to_str().unwrap(), f.b.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without weights");
    assert!(err.contains("github.com/mseitzer/pytorch-fid/releases") && err.lines().count() == 1, "{err}");
}
