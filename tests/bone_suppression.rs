//! `examples/bone_suppression` run as a user runs it, on the synthetic proxy built from real
//! radiographs (and a corrupt pair): a small ResNet-BS and a ResNet-18 U-Net at 64 px.
mod common;

use common::{losses, metrics, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use chess::metrics::image_quality::{SsimWindow, score_images};
use serde_json::Value;

/// 20 proxy pairs at 64 px from real radiographs, plus a pair whose input is corrupt.
fn proxy() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("bone_suppression/proxy");
        let src = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
        let mut cmd = common::example("bone_suppression");
        cmd.args(["proxy", "--source", src.to_str().unwrap(), "--out", dir.to_str().unwrap()])
            .args(["--size", "64", "--limit", "20", "--seed", "1"]);
        let log = run_ok(cmd);
        assert!(log.contains("20 proxy pairs"), "{log}");
        std::fs::write(dir.join("input/zz_broken.png"), b"\x89PNG\r\n\x1a\n not a PNG").unwrap();
        std::fs::copy(
            dir.join("target").read_dir().unwrap().next().unwrap().unwrap().path(),
            dir.join("target/zz_broken.png"),
        )
        .unwrap();
        dir
    })
}

fn tiny(out: &Path, epochs: u64, arch: &str) -> Command {
    let d = proxy();
    let mut cmd = common::example("bone_suppression");
    cmd.args([
        "train",
        "--input",
        d.join("input").to_str().unwrap(),
        "--target",
        d.join("target").to_str().unwrap(),
    ])
    .args(["--out", out.to_str().unwrap(), "--arch", arch, "--bs-blocks", "2", "--bs-channels", "8"])
    .args(["--image-size", "64", "--batch-size", "4", "--workers", "2", "--device", "cpu", "--seed", "5"])
    .args(["--log-every", "1", "--val-split", "0.2", "--epochs", &epochs.to_string()])
    // Pinned: `auto` would pick bf16 on CPUs with AVX512_BF16 and fp32 elsewhere.
    .args(["--amp", "off", "--channels-last", "off"]);
    cmd
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn resnet_bs_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("bone_suppression/resnet_bs");
        let mut cmd = tiny(&dir, 2, "resnet-bs");
        cmd.args(["--loss", "l1=0.16,ssim=0.84"]);
        eprintln!("{}", run_ok(cmd));
        dir
    })
}

#[test]
fn trains_on_the_proxy_skips_the_corrupt_pair_and_keeps_the_best_model() {
    let run = resnet_bs_run();
    for f in ["best.pth", "best.json", "curves.png", "config.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let card = json(&run.join("best.json"));
    assert!(card["val_psnr"].as_f64().unwrap() > 0.0, "{card}");
    let epochs: Vec<Value> = metrics(run).into_iter().filter(|m| m["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    let skipped: String = epochs.iter().map(|e| e["skipped_files"].to_string()).collect();
    let steps: Vec<Value> = metrics(run).into_iter().filter(|m| m["kind"] == "step").collect();
    assert!(steps.iter().all(|s| s["l1"].is_number() && s["ssim"].is_number()), "each term logged");
    // The corrupt pair is either in training (skipped there) or in validation (skipped there).
    let in_val = epochs.iter().any(|e| e["val_n"].as_u64().unwrap() < 4);
    assert!(skipped.contains("zz_broken.png") || in_val, "{skipped}");
}

#[test]
fn sigterm_saves_and_resume_repeats_the_uninterrupted_run() {
    let reference = losses(resnet_bs_run());
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tiny(dir.path(), 2, "resnet-bs");
    cmd.args(["--loss", "l1=0.16,ssim=0.84"]);
    common::stop_after_a_step(cmd, dir.path(), Duration::from_secs(120));
    let mut cmd = tiny(dir.path(), 2, "resnet-bs");
    cmd.args(["--loss", "l1=0.16,ssim=0.84", "--resume", "auto"]);
    run_ok(cmd);
    assert_eq!(losses(dir.path()), reference, "loss per step, stopped and resumed vs uninterrupted");
    let keys = ["loss", "train_loss", "l1", "ssim", "steps"];
    assert_eq!(common::epoch_values(dir.path(), &keys), common::epoch_values(resnet_bs_run(), &keys));
}

/// The U-Net with a perceptual loss from a random encoder, then eval, predict and score.
#[test]
fn unet_with_perceptual_loss_then_eval_predict_and_score() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("unet");
    let mut cmd = tiny(&run, 1, "unet-resnet18");
    cmd.args(["--loss", "l1=1", "--perceptual-weights", "random", "--perceptual-weight", "0.1"]);
    let log = run_ok(cmd);
    assert!(log.contains("random resnet18"), "{log}");
    let step = metrics(&run).into_iter().find(|m| m["kind"] == "step").unwrap();
    assert!(step["perceptual"].as_f64().unwrap() > 0.0, "{step}");

    let d = proxy();
    let eval_out = dir.path().join("eval");
    let mut cmd = common::example("bone_suppression");
    cmd.args(["eval", "--model", run.join("best.pth").to_str().unwrap()])
        .args(["--input", d.join("input").to_str().unwrap(), "--target", d.join("target").to_str().unwrap()])
        .args(["--out", eval_out.to_str().unwrap(), "--device", "cpu", "--side-by-side", "3"]);
    let log = run_ok(cmd);
    assert!(log.contains("skipped") && log.contains("zz_broken.png"), "the corrupt pair named: {log}");
    let m = json(&eval_out.join("metrics.json"));
    assert_eq!(m["n"], 20);
    let scores = std::fs::read_to_string(eval_out.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().next(), Some("name,psnr,ssim,rmse"));
    assert_eq!(scores.lines().count(), 21);
    assert_eq!(std::fs::read_dir(eval_out.join("side_by_side")).unwrap().count(), 3);
    let sbs = image::open(
        std::fs::read_dir(eval_out.join("side_by_side")).unwrap().next().unwrap().unwrap().path(),
    )
    .unwrap();
    assert!(sbs.width() > 4 * 64 && sbs.height() >= 64);

    // predict on PNGs and on a DICOM: same size as the input, DICOM derived with a new UID.
    let preds = dir.path().join("pred");
    let dicom = common::data_dir().join("dicom");
    let dcm = std::fs::read_dir(&dicom)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm") && !p.to_string_lossy().contains("broken"))
        .min()
        .unwrap();
    let mut cmd = common::example("bone_suppression");
    cmd.args([
        "predict",
        "--model",
        run.join("best.pth").to_str().unwrap(),
        "--out",
        preds.to_str().unwrap(),
    ])
    .args([
        d.join("input/").to_str().unwrap(),
        dcm.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch-size",
        "8",
    ]);
    let log = run_ok(cmd);
    assert!(log.contains("21 suppressed images (1 unreadable") && log.contains("zz_broken.png"), "{log}");
    // One image at a time on one decode thread: the same PNGs (to a grey level of kernel rounding).
    let single = dir.path().join("pred1");
    let mut cmd = common::example("bone_suppression");
    cmd.args(["predict", "--model", run.join("best.pth").to_str().unwrap()])
        .args(["--out", single.to_str().unwrap(), d.join("input/").to_str().unwrap()])
        .args(["--device", "cpu", "--batch-size", "1", "--workers", "1"]);
    run_ok(cmd);
    for entry in std::fs::read_dir(&single).unwrap() {
        let name = entry.unwrap().file_name();
        let a = image::open(single.join(&name)).unwrap().to_luma8();
        let b = image::open(preds.join(&name)).unwrap().to_luma8();
        let worst = a.pixels().zip(b.pixels()).map(|(p, q)| p[0].abs_diff(q[0])).max().unwrap();
        assert!(a.dimensions() == b.dimensions() && worst <= 1, "{name:?}: batch 8 vs 1 differ by {worst}");
    }
    let stem = dcm.file_stem().unwrap().to_string_lossy().to_string();
    let derived = preds.join("dicom").join(format!("{stem}.dcm"));
    assert!(preds.join(format!("{stem}.png")).exists() && derived.exists());
    let out = common::run_python(
        "derived_dicom.py",
        ["display", dcm.to_str().unwrap(), derived.to_str().unwrap(), "BONE_SUPPRESSED"],
    );
    eprintln!("{out}");
    assert!(out.contains("derived ok"), "{out}");

    // score: any two folders matched by name, the library's numbers.
    let scores_csv = dir.path().join("scores.csv");
    let mut cmd = common::example("bone_suppression");
    cmd.args([
        "score",
        "--pred",
        d.join("input").to_str().unwrap(),
        "--target",
        d.join("target").to_str().unwrap(),
    ])
    .args(["--out", scores_csv.to_str().unwrap(), "--ssim", "gaussian"]);
    let log = run_ok(cmd);
    assert!(log.contains("skipped") && log.contains("20 images"), "{log}");
    let text = std::fs::read_to_string(&scores_csv).unwrap();
    let first = text.lines().nth(1).unwrap();
    let name = first.split(',').next().unwrap();
    let read = |p: PathBuf| -> Vec<f64> {
        image::open(p).unwrap().to_luma8().into_raw().into_iter().map(f64::from).collect()
    };
    let (p, t) = (read(d.join(format!("input/{name}.png"))), read(d.join(format!("target/{name}.png"))));
    let s = score_images(&p, &t, 64, 64, 255.0, SsimWindow::Gaussian).unwrap();
    let cols: Vec<f64> = first.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(cols, [s.psnr, s.ssim, s.rmse], "{first}");
}
