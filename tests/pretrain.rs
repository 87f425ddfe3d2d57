//! `examples/pretrain` run as a user runs it, on real radiographs (JPEG and DICOM) plus broken
//! files: a tiny configuration (ResNet-18, 64 px, K = 64) so that each run takes seconds.
mod common;

use common::{losses, metrics};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// 24 files: 17 JPEGs and 5 readable DICOMs of ../shared/data, the truncated DICOM, and a
/// file with a PNG name and garbage inside. Three batches of 8, so every file is visited.
fn dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("pretrain/dataset");
        let data = common::data_dir();
        let mut files: Vec<PathBuf> = Vec::new();
        for (class, n) in [("NORMAL", 9), ("PNEUMONIA", 8)] {
            let mut jpgs: Vec<PathBuf> = std::fs::read_dir(data.join("cxr-pneumonia-224/test").join(class))
                .unwrap_or_else(|e| panic!("{}: {e} (set CHESS_DATA)", data.display()))
                .map(|e| e.unwrap().path())
                .collect();
            jpgs.sort();
            files.extend(jpgs.into_iter().take(n));
        }
        let mut dicoms: Vec<PathBuf> = std::fs::read_dir(data.join("dicom"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        dicoms.sort();
        assert!(dicoms.iter().any(|p| p.ends_with("broken_truncated_j2k.dcm")));
        files.extend(dicoms);
        let garbage = dir.join("not_really.png");
        std::fs::write(&garbage, b"\x89PNG\r\n\x1a\n this is not an image").unwrap();
        files.push(garbage);
        assert_eq!(files.len(), 24, "{files:?}");
        let list: String =
            files.iter().map(|p| format!("{}\n", p.canonicalize().unwrap().display())).collect();
        std::fs::write(dir.join("files.txt"), list).unwrap();
        dir
    })
}

fn tiny(out: &Path, epochs: u64) -> Command {
    tiny_on(&dataset().join("files.txt"), out, epochs)
}

fn tiny_on(data: &Path, out: &Path, epochs: u64) -> Command {
    let mut cmd = common::example("pretrain");
    cmd.args(["--data", data.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--moco-k", "64"])
        .args(["--bn-splits", "2", "--workers", "2", "--log-every", "1", "--device", "cpu", "--seed", "7"])
        // Pinned: `auto` would pick bf16 on CPUs with AVX512_BF16 and fp32 elsewhere.
        .args(["--amp", "off", "--channels-last", "off"])
        .args(["--epochs", &epochs.to_string()]);
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{err}");
    err
}

/// The uninterrupted reference run: 2 epochs, with the kNN monitor.
fn full_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("pretrain/full_run");
        let knn = common::data_dir().join("cxr-pneumonia-224/test");
        let mut cmd = tiny(&dir, 2);
        cmd.args([
            "--knn-train",
            knn.to_str().unwrap(),
            "--knn-val",
            knn.to_str().unwrap(),
            "--knn-every",
            "2",
        ]);
        let log = run_ok(cmd);
        eprintln!("{log}");
        dir
    })
}

#[test]
fn tiny_run_writes_config_metrics_and_checkpoints_pytorch_loads() {
    let out = full_run();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["args"]["arch"], "resnet18");
    assert_eq!(config["args"]["moco_k"], 64);
    assert_eq!(config["versions"]["libtorch"].as_str().unwrap().split('+').next(), Some("2.11.0"));

    let m = metrics(out);
    let steps: Vec<&Value> = m.iter().filter(|v| v["kind"] == "step").collect();
    assert_eq!(steps.len(), 6, "3 steps per epoch, each logged");
    for s in &steps {
        for key in ["epoch", "step", "loss", "lr", "img_per_s", "top1", "skipped", "data_wait_s"] {
            assert!(!s[key].is_null(), "step line without {key}: {s}");
        }
        assert!(s["loss"].as_f64().unwrap().is_finite());
    }
    // Cosine schedule over 2 epochs: 0.03, then 0.015.
    assert_eq!(steps[0]["lr"], 0.03);
    assert!((steps[5]["lr"].as_f64().unwrap() - 0.015).abs() < 1e-12);

    // Both broken files are skipped, counted and named in each epoch; nothing crashed.
    let epochs: Vec<&Value> = m.iter().filter(|v| v["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    for e in &epochs {
        // A broken file's replacement is drawn at random and may be broken too.
        assert!(e["skipped"].as_u64().unwrap() >= 2, "{e}");
        let names = e["skipped_files"].to_string();
        assert!(names.contains("broken_truncated_j2k.dcm") && names.contains("not_really.png"), "{names}");
    }

    // The kNN monitor ran before training and after the last epoch.
    let knn: Vec<&Value> = m.iter().filter(|v| v["kind"] == "knn").collect();
    assert_eq!(knn.iter().map(|v| v["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 2]);
    for v in knn {
        let top1 = v["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1) && v["val"] == 624, "{v}");
    }

    for epoch in [1, 2] {
        assert!(out.join(format!("checkpoint_{epoch:04}.pth.tar")).exists());
    }
    // PyTorch reads the checkpoint with weights_only=True into the original MoCo model and SGD.
    let ckpt = out.join("checkpoint_0002.pth.tar");
    let said = common::run_python("checkpoint_fixtures.py", ["moco-load", ckpt.to_str().unwrap()]);
    assert!(said.contains("loaded: epoch 2"), "{said}");
    eprintln!("{said}");
}

#[test]
fn resume_after_an_epoch_repeats_the_uninterrupted_run() {
    let reference = losses(full_run());
    let dir = tempfile::tempdir().unwrap();
    run_ok(tiny(dir.path(), 1));
    let mut cmd = tiny(dir.path(), 2);
    cmd.args(["--resume", "auto"]);
    let log = run_ok(cmd);
    assert!(log.contains("resumed from"), "{log}");
    let resumed = losses(dir.path());
    assert_eq!(resumed.len(), 6);
    assert_eq!(resumed, reference, "loss per step, resumed vs uninterrupted");
}

#[test]
fn sigterm_saves_within_the_epoch_and_resume_repeats_the_run() {
    let reference = losses(full_run());
    let dir = tempfile::tempdir().unwrap();
    common::stop_after_a_step(tiny(dir.path(), 2), dir.path(), Duration::from_secs(120));
    let saved = chess::training::latest_checkpoint(dir.path()).unwrap().expect("a checkpoint after SIGTERM");
    eprintln!("saved after SIGTERM: {}", saved.1.display());
    assert!(saved.0.epoch == 0 && saved.0.step >= 1 || saved.0.epoch >= 1, "{saved:?}");

    let mut cmd = tiny(dir.path(), 2);
    cmd.args(["--resume", "auto"]);
    run_ok(cmd);
    assert_eq!(losses(dir.path()), reference, "loss per step, stopped and resumed vs uninterrupted");
    let keys = ["loss", "top1", "top5", "steps"];
    assert_eq!(common::epoch_values(dir.path(), &keys), common::epoch_values(full_run(), &keys));
}

#[test]
fn bad_resume_checkpoint_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("checkpoint_0001.pth.tar");
    std::fs::write(&bad, b"PK\x03\x04 truncated").unwrap();
    let mut cmd = tiny(dir.path(), 2);
    cmd.args(["--resume", "auto"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("checkpoint_0001.pth.tar"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

/// A list whose paths all miss (here: relative paths, which a list resolves against its own
/// folder) stops at the first batch with one line naming a file and why, instead of reaching
/// the model with an empty batch.
#[test]
fn unreadable_data_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("files.txt");
    let lines: String = (0..16).map(|i| format!("elsewhere/IM-{i:04}.jpeg\n")).collect();
    std::fs::write(&list, lines).unwrap();
    let out = tiny_on(&list, &dir.path().join("run"), 1).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: batch 0 of epoch 0: 0 of 8 images readable"), "{err}");
    assert!(last.contains(&format!("first failure: {}", dir.path().join("elsewhere").display())), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

/// Many unreadable files (an archive export's non-image objects): the console names the first
/// 20 of the epoch and says where the rest are; metrics.jsonl lists them all.
#[test]
fn many_skipped_files_do_not_flood_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..40 {
        let junk = dir.path().join(format!("object{i:02}.dcm"));
        std::fs::write(&junk, b"not a DICOM object").unwrap();
        lines += &format!("{}\n", junk.display());
    }
    let good = std::fs::read_to_string(dataset().join("files.txt")).unwrap();
    lines += &good.lines().take(17).map(|l| format!("{l}\n")).collect::<String>();
    let list = dir.path().join("files.txt");
    std::fs::write(&list, lines).unwrap();
    let out = dir.path().join("run");
    let err = run_ok(tiny_on(&list, &out, 1));
    assert_eq!(err.lines().filter(|l| l.starts_with("skipped ")).count(), 20, "{err}");
    assert_eq!(err.matches("more files skipped this epoch").count(), 1, "{err}");
    let epoch = metrics(&out).into_iter().find(|m| m["kind"] == "epoch").unwrap();
    let n = epoch["skipped"].as_u64().unwrap();
    assert!(n > 20 && n <= 40, "each junk file counted once: {epoch}");
    let mut files: Vec<String> =
        epoch["skipped_files"].as_array().unwrap().iter().map(|f| f["path"].to_string()).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len() as u64, n, "{epoch}");
}

/// The two places views can be drawn (decode threads with native loops, the training device
/// with tensor ops) draw the same views, so a run does not depend on the choice. With the
/// warps off (affine and optical distortion, whose bilinear sampling is computed in another
/// order by the two and differs by about 4e-5) every step is the same arithmetic, so the runs
/// are equal bit for bit; `tests/augment_ops.rs` checks the warps against each other and
/// OpenCV to a tolerance.
#[test]
fn views_from_the_loader_or_the_device_train_alike() {
    let base = tempfile::tempdir().unwrap();
    let run = |on: &str| {
        let out = base.path().join(on);
        let mut cmd = tiny(&out, 1);
        cmd.args(["--augment-on", on, "--p-affine", "0", "--p-optical", "0"]);
        run_ok(cmd);
        losses(&out)
    };
    let (loader, device) = (run("loader"), run("device"));
    assert_eq!(loader.len(), 3);
    common::assert_losses_equal(("views from the loader", &loader), ("from the device", &device));
}

/// The original's command lines use bare booleans (`--mlp --aug-plus --cos`); `--mlp false`
/// still works, and the run records what it understood.
#[test]
fn the_originals_bare_flags_are_accepted() {
    let base = tempfile::tempdir().unwrap();
    for (flags, expected) in
        [(&["--mlp", "--aug-plus", "--cos"][..], true), (&["--mlp", "false", "--cos", "false"][..], false)]
    {
        let out = base.path().join(expected.to_string());
        let mut cmd = tiny(&out, 1);
        cmd.args(flags).args(["--max-steps", "1"]);
        run_ok(cmd);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            (&config["args"]["mlp"], &config["args"]["cos"]),
            (&Value::Bool(expected), &Value::Bool(expected))
        );
        // MoCo v1's head is one linear layer: `fc.weight`, not `fc.0.weight`.
        let (_, path) = chess::training::latest_checkpoint(&out).unwrap().expect("a checkpoint");
        let ckpt = chess::checkpoint::load(&path).unwrap();
        let names: Vec<String> = ckpt.tensors().into_iter().map(|(n, _)| n).collect();
        let head = if expected {
            "state_dict.module.encoder_q.fc.0.weight"
        } else {
            "state_dict.module.encoder_q.fc.weight"
        };
        assert!(names.iter().any(|n| n == head), "{head} not in {names:?}");
    }
    let out = tiny(&base.path().join("v1"), 1).args(["--aug-plus", "false"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().last().unwrap().contains("--aug-plus false"), "{err}");
}
