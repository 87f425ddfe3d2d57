//! The command-line tools, run as a user would: `extract` against PyTorch, `convert` into
//! files PyTorch and safetensors readers accept.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tch::Tensor;

fn python(args: &[&str]) -> String {
    common::run_python("checkpoint_fixtures.py", args)
}

/// A CheSS-layout MoCo checkpoint made by PyTorch, once per run.
fn chess_checkpoint() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = common::fixture_dir("tools");
        python(&["make", dir.to_str().unwrap(), "chess_moco"]);
        dir
    });
    dir.join("chess_moco.pth")
}

fn run(mut cmd: Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{so}{se}");
    (so, se)
}

fn radiographs(n: usize) -> Vec<PathBuf> {
    let dir = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set CHESS_DATA)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn extract_gives_pytorchs_features_and_skips_unreadable_files() {
    let ckpt = chess_checkpoint();
    let dir = tempfile::tempdir().unwrap();
    let sources = radiographs(3);
    let mut args = vec!["extract-ref", s(&ckpt), s(dir.path())];
    args.extend(sources.iter().map(|p| s(p)));
    python(&args);
    // Same 224 x 224 grey pixels on both sides (PNG), so no decoder differences enter.
    let pngs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("{i}.png"))).collect();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = dir.path().join("ours.npy");
    let mut cmd = common::example("extract");
    cmd.args(["--weights", s(&ckpt), "--image-size", "224", "--device", "cpu", "--out", s(&out)]);
    cmd.args([&pngs[0], &broken, &pngs[1], &pngs[2]]);
    let (stdout, stderr) = run(cmd);
    eprintln!("{stderr}{stdout}");
    assert!(stderr.contains("loaded 318") && stderr.contains("MLP fc.0/fc.2"), "{stderr}");
    assert!(stderr.contains("skipped: ") && stderr.contains("broken.png"), "{stderr}");
    assert!(stdout.contains("wrote 3 x 2048 features") && stdout.contains("skipped 1"), "{stdout}");
    let diff = python(&["npy-diff", s(&out), s(&dir.path().join("ref.npy"))]);
    eprintln!("extract vs PyTorch: {diff}");
    let rel: f64 = diff.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert!(diff.contains("rows=3 dim=2048") && rel <= 1e-5, "{diff}");
    let csv = std::fs::read_to_string(out.with_extension("csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().nth(2).unwrap().contains("1.png"), "rows keep input order: {csv}");
}

#[test]
fn convert_extracts_the_encoder_for_pytorch_and_safetensors() {
    let ckpt = chess_checkpoint();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("encoder.safetensors");
    let mut cmd = common::example("convert");
    cmd.args([s(&ckpt), s(&st), "--encoder-only"]);
    let (stdout, _) = run(cmd);
    assert!(stdout.contains("encoder: 318 tensors, prefix 'module.encoder_q.'"), "{stdout}");
    let tensors = Tensor::read_safetensors(&st).unwrap();
    assert_eq!(tensors.len(), 318);
    assert!(tensors.iter().all(|(n, _)| !n.starts_with("fc.") && !n.starts_with("module")));

    // Back to .pth: loads strictly into a one-channel torchvision ResNet-50 without head.
    let pth = dir.path().join("encoder.pth");
    let mut cmd = common::example("convert");
    cmd.args([s(&st), s(&pth)]);
    run(cmd);
    assert!(python(&["torchvision-load", s(&pth), "1"]).contains("loaded"));

    // A full MoCo checkpoint converts whole to safetensors with dotted names.
    let full = dir.path().join("full.safetensors");
    let mut cmd = common::example("convert");
    cmd.args([s(&ckpt), s(&full)]);
    run(cmd);
    let names: Vec<String> = Tensor::read_safetensors(&full).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"state_dict.module.queue".to_string()));
    assert!(names.contains(&"optimizer.state.0.momentum_buffer".to_string()));

    // A bad input is one error line naming the file, even where backtraces are asked for.
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, b"garbage").unwrap();
    let out = common::example("convert").args([s(&bad), s(&st)]).env("RUST_BACKTRACE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("bad.pth: not a PyTorch checkpoint"), "{err}");
}

/// A file that trips a decoder panic (dicom-rs's RLE decoder indexes past a truncated
/// fragment) is one error line naming the file, even where backtraces are asked for: the panic
/// is caught without the panic hook printing anything.
#[test]
fn inspect_reports_a_decoder_panic_in_one_line() {
    let dir = common::fixture_dir("tools_truncated_rle");
    let src = common::data_dir().join("dicom/nih_dx_implicit_vr.dcm");
    common::run_python("truncated_rle.py", [src.as_path(), dir.as_path()]);
    let mut whole = common::example("inspect");
    whole.arg(dir.join("rle_whole.dcm")).env("RUST_BACKTRACE", "1");
    let (stdout, _) = run(whole);
    assert!(stdout.contains("1.2.840.10008.1.2.5") && stdout.contains("1024 x 1024"), "{stdout}");

    let bad = dir.join("rle_truncated.dcm");
    let out = common::example("inspect").arg(&bad).env("RUST_BACKTRACE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("{}: decoder failed: ", bad.display())), "{err}");
}
