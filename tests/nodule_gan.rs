//! `examples/nodule_gan` run as a user runs it, on the synthetic nodule proxy built from real
//! radiographs (and a corrupt image): a tiny SPADE at 64 px with a perceptual loss from a random
//! encoder; train (every loss term logged, samples, NVlabs' files), stop by SIGTERM and resume
//! exactly, the nodule-list and pair-CSV inputs, generate, insert (PNG and DICOM).
//!
//! The runs use one intra-op thread: SPADE at this size is thousands of tiny kernels, and with
//! two OpenMP threads on two cores shared with the other test, libgomp's spin-waits made a step
//! about 15 times slower than one thread (measured: 0.4 vs 6.7 images/s).
mod common;

use common::{losses, metrics, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

fn gan() -> Command {
    let mut cmd = common::example("nodule_gan");
    cmd.env("OMP_NUM_THREADS", "1");
    cmd
}

/// 16 proxy images at 64 px from real radiographs with their masks, plus a corrupt image.
fn proxy() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("nodule_gan/proxy");
        let src = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
        let mut cmd = gan();
        cmd.args(["proxy", "--source", src.to_str().unwrap(), "--out", dir.to_str().unwrap()])
            .args(["--size", "64", "--limit", "16", "--seed", "1"]);
        let log = run_ok(cmd);
        assert!(log.contains("16 proxy images"), "{log}");
        std::fs::write(dir.join("images/zz_broken.png"), b"\x89PNG\r\n\x1a\n not a PNG").unwrap();
        let mask = dir.join("masks").read_dir().unwrap().next().unwrap().unwrap().path();
        std::fs::copy(mask, dir.join("masks/zz_broken.png")).unwrap();
        dir
    })
}

fn tiny(out: &Path, epochs: u64) -> Command {
    let d = proxy();
    let mut cmd = gan();
    cmd.args(["train", "--images", d.join("images").to_str().unwrap()])
        .args(["--masks", d.join("masks").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--image-size", "64", "--ngf", "4", "--ndf", "8", "--z-dim", "16", "--encoder-size", "32"])
        .args(["--batch-size", "4", "--workers", "1", "--device", "cpu", "--seed", "3", "--log-every", "1"])
        .args(["--epochs", &epochs.to_string(), "--decay-epochs", "1", "--sample-every", "1"])
        .args(["--perceptual-weights", "random", "--feat-weight", "10"])
        // Pinned: `auto` would pick bf16 on CPUs with AVX512_BF16 and fp32 elsewhere.
        .args(["--amp", "off", "--channels-last", "off"]);
    cmd
}

fn reference_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("nodule_gan/run");
        eprintln!("{}", run_ok(tiny(&dir, 2)));
        dir
    })
}

#[test]
fn trains_logging_every_term_with_samples_and_nvlabs_files() {
    let run = reference_run();
    for f in ["latest_net_G.pth", "latest_net_E.pth", "latest_net_D.pth", "model.json", "config.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    for e in [1, 2] {
        let png = run.join(format!("samples/epoch_{e:04}.png"));
        let img = image::open(&png).unwrap_or_else(|err| panic!("{}: {err}", png.display()));
        // Rows of mask | real | encoded | prior, one per sample (8 at most).
        assert_eq!((img.width(), img.height()), (4 * 64, 8 * 64), "{}", png.display());
    }
    let steps: Vec<Value> = metrics(run).into_iter().filter(|m| m["kind"] == "step").collect();
    assert_eq!(steps.len(), 8, "4 batches of 4 per epoch, 2 epochs");
    for s in &steps {
        for term in ["loss", "d_loss", "g_gan", "g_kld", "g_feat", "g_perceptual", "d_fake", "d_real"] {
            assert!(s[term].as_f64().is_some_and(f64::is_finite), "{term} in {s}");
        }
    }
    let epochs: Vec<Value> = metrics(run).into_iter().filter(|m| m["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs[0]["skipped_files"].to_string().contains("zz_broken.png"), "{}", epochs[0]);
    // SPADE's decay: constant for epochs - decay_epochs, then linear to 0.
    assert_eq!(epochs[0]["next_lr_g"].as_f64().unwrap(), 1e-4);
    assert_eq!(epochs[1]["next_lr_d"].as_f64().unwrap(), 0.0);
    // The generator file is a plain state dict under NVlabs' names.
    let g = chess::checkpoint::load(run.join("latest_net_G.pth")).unwrap().tensors();
    assert!(g.iter().any(|(k, _)| k == "head_0.conv_0.weight_orig"));
    assert!(g.iter().any(|(k, _)| k == "up_3.norm_s.mlp_shared.0.weight"));
}

#[test]
fn sigterm_saves_and_resume_repeats_the_uninterrupted_run() {
    let reference = losses(reference_run());
    let dir = tempfile::tempdir().unwrap();
    common::stop_after_a_step(tiny(dir.path(), 2), dir.path(), Duration::from_secs(300));
    let mut cmd = tiny(dir.path(), 2);
    cmd.args(["--resume", "auto"]);
    run_ok(cmd);
    common::assert_losses_equal(("uninterrupted", &reference), ("stopped and resumed", &losses(dir.path())));
    let keys = ["train_g_loss", "train_d_loss", "g_gan", "d_fake", "steps"];
    assert_eq!(common::epoch_values(dir.path(), &keys), common::epoch_values(reference_run(), &keys));
}

#[test]
fn trains_from_a_nodule_list_and_from_a_pair_csv() {
    let d = proxy();
    // The proxy's list: image,x,y,diameter_mm,pixel_spacing; circles are drawn from it.
    let list = d.join("nodules.csv");
    let pairs = d.join("pairs.csv");
    let mut csv = String::from("image,mask\n");
    for name in ["IM-0001-0001", "IM-0003-0001", "IM-0005-0001", "IM-0006-0001"] {
        if d.join(format!("images/{name}.png")).exists() {
            csv.push_str(&format!("images/{name}.png,masks/{name}.png\n"));
        }
    }
    std::fs::write(&pairs, csv).unwrap();
    for (flag, file) in [("--nodules", &list), ("--pairs", &pairs)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = gan();
        cmd.args(["train", flag, file.to_str().unwrap(), "--out", dir.path().to_str().unwrap()])
            .args(["--image-size", "64", "--ngf", "4", "--ndf", "8", "--z-dim", "16", "--encoder-size", "32"])
            .args([
                "--batch-size",
                "2",
                "--workers",
                "1",
                "--device",
                "cpu",
                "--max-steps",
                "1",
                "--log-every",
                "1",
            ])
            .args(["--amp", "off", "--channels-last", "off"]);
        let log = run_ok(cmd);
        assert!(log.contains("nodule GAN"), "{log}");
        assert_eq!(losses(dir.path()).len(), 1, "{flag}");
    }
}

#[test]
fn generate_writes_one_image_per_mask() {
    let run = reference_run();
    let generate =
        |masks: &Path, batch: &str| {
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = gan();
            cmd.args(["generate", "--model", run.to_str().unwrap(), "--masks", masks.to_str().unwrap()])
                .args(["--out", dir.path().to_str().unwrap(), "--device", "cpu", "--batch-size", batch]);
            (run_ok(cmd), dir)
        };
    let masks = proxy().join("masks");
    let (log, batched) = generate(&masks, "8");
    assert!(log.contains("17 generated images"), "{log}");
    let n = std::fs::read_dir(batched.path()).unwrap().count();
    assert_eq!(n, 17, "one per mask (the corrupt image's mask is a readable copy)");
    let img = image::open(batched.path().join("IM-0001-0001.png")).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));

    // One at a time, with an unreadable mask among them: the same images (each code is its
    // own draw), the bad file skipped and named.
    let some = tempfile::tempdir().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&masks).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in &names[..3] {
        std::fs::copy(masks.join(name), some.path().join(name)).unwrap();
    }
    std::fs::write(some.path().join(names[1].to_str().unwrap().replace(".png", "_zz.png")), b"not a png")
        .unwrap();
    let (log, single) = generate(some.path(), "1");
    assert!(log.contains("3 generated images") && log.contains("_zz.png"), "{log}");
    for name in &names[..3] {
        let a = image::open(batched.path().join(name)).unwrap().to_luma8();
        let b = image::open(single.path().join(name)).unwrap().to_luma8();
        let worst = a.pixels().zip(b.pixels()).map(|(p, q)| p[0].abs_diff(q[0])).max().unwrap();
        // Batch 8 and batch 1 run other conv kernels: one grey level of rounding at most.
        assert!(worst <= 1, "{name:?}: batch 8 vs 1 differ by {worst} grey levels");
    }
}

/// The pixels of `a` and `b` farther than `feather` px from the nodule's outline are equal.
fn assert_untouched_beyond(a: &[f32], b: &[f32], w: usize, bbox: &Value, feather: f64) {
    let (x0, y0, x1, y1) = (
        bbox[0].as_f64().unwrap(),
        bbox[1].as_f64().unwrap(),
        bbox[2].as_f64().unwrap(),
        bbox[3].as_f64().unwrap(),
    );
    let (mut same, mut changed) = (0usize, 0usize);
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        let (x, y) = ((i % w) as f64, (i / w) as f64);
        let outside = x < x0 - feather - 1.0
            || x > x1 + feather + 1.0
            || y < y0 - feather - 1.0
            || y > y1 + feather + 1.0;
        if outside {
            assert_eq!(p, q, "pixel ({x}, {y}) beyond the feather changed");
            same += 1;
        } else if p != q {
            changed += 1;
        }
    }
    assert!(same > 0 && changed > 0, "{same} untouched, {changed} changed");
}

#[test]
fn insert_changes_only_the_nodule_region_png_and_dicom() {
    let run = reference_run();
    let dir = tempfile::tempdir().unwrap();
    // A full-size radiograph (224 px, not the generator's 64).
    let src = common::data_dir().join("cxr-pneumonia-224/test/NORMAL/IM-0001-0001.jpeg");
    let out = dir.path().join("with_nodule.png");
    let mut cmd = gan();
    cmd.args(["insert", "--model", run.to_str().unwrap(), src.to_str().unwrap(), "--at", "70,110"])
        .args([
            "--diameter-mm",
            "20",
            "--pixel-spacing",
            "1.5",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        // The generated pixels themselves: this 2-epoch model's nodule (the default difference
        // blend) may round to nothing.
        .args(["--blend", "replace"]);
    run_ok(cmd);
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("with_nodule.json")).unwrap()).unwrap();
    let original = chess::data::decode_file(&src).unwrap();
    let result = chess::data::decode_file(&out).unwrap();
    assert_eq!((result.width, result.height), (224, 224));
    let feather = info["feather_px"].as_f64().unwrap();
    assert_untouched_beyond(&original.pixels, &result.pixels, 224, &info["bbox"], feather);
    let mask = chess::data::decode_file(&dir.path().join("with_nodule_mask.png")).unwrap();
    let area = mask.pixels.iter().filter(|&&v| v > 0.0).count() as f64;
    let expected = std::f64::consts::PI * (10.0 / 1.5f64).powi(2);
    assert!((area - expected).abs() / expected < 0.1, "mask area {area} vs {expected}");
    // Without --pixel-spacing a PNG/JPEG is refused with one line.
    let mut cmd = gan();
    cmd.args(["insert", "--model", run.to_str().unwrap(), src.to_str().unwrap(), "--at", "70,110"]).args([
        "--diameter-mm",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let o = cmd.output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--pixel-spacing"));

    // DICOM in, DICOM out: spacing from the file (or --pixel-spacing where it has none), a new
    // SOP Instance UID, the source's own representation with its raw values kept beyond the
    // feather (pydicom reads both), the mask and box beside.
    for (name, at, spacing) in [
        ("dx_chest_mono2_16bit_j2kr.dcm", "500,700", None),
        ("dx_chest_mono1_12bit_j2kr.dcm", "600,900", None),
        ("nih_dx_implicit_vr.dcm", "300,450", Some("0.14")),
    ] {
        let dcm = common::data_dir().join("dicom").join(name);
        let stem = name.trim_end_matches(".dcm");
        let out = dir.path().join(format!("{stem}_nodule.dcm"));
        let mut cmd = gan();
        cmd.args(["insert", "--model", run.to_str().unwrap(), dcm.to_str().unwrap(), "--at", at]).args([
            "--diameter-mm",
            "15",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        // The generated pixels (see above), on the source's own values.
        cmd.args(["--blend", "replace"]);
        if let Some(s) = spacing {
            cmd.args(["--pixel-spacing", s]);
        }
        run_ok(cmd);
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        let obj = dicom_object::open_file(&out).unwrap();
        let uid =
            obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
        assert_eq!(info["sop_instance_uid"].as_str().unwrap(), uid.trim_end_matches('\0'));
        let (bbox, feather) = (&info["bbox"], info["feather_px"].as_f64().unwrap());
        let edge =
            |k: usize, sign: f64| (bbox[k].as_f64().unwrap() + sign * (feather + 1.0)).floor().max(0.0);
        let corners = [edge(0, -1.0), edge(1, -1.0), edge(2, 1.0).ceil(), edge(3, 1.0).ceil()];
        let said = common::run_python(
            "derived_dicom.py",
            [
                "stored".to_string(),
                dcm.display().to_string(),
                out.display().to_string(),
                "SYNTHETIC_NODULE".to_string(),
            ]
            .into_iter()
            .chain(corners.iter().map(|c| c.to_string())),
        );
        eprintln!("{name}: {said}");
        assert!(said.contains("stored ok"), "{said}");
        assert!(dir.path().join(format!("{stem}_nodule_mask.png")).exists());
    }
}

/// Two ranks under torchrun (gloo on the CPU): the global batch split between them, gradients
/// and buffers averaged, so both end with the same networks; rank 0 alone writes.
#[test]
fn two_ranks_under_torchrun_hold_the_same_networks() {
    let out = common::fixture_dir("nodule_gan/torchrun");
    let result = common::torchrun(&tiny(&out, 1), 2).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "torchrun failed:\n{stdout}\n{stderr}");
    let sums = common::checksums(&stdout);
    assert_eq!(sums.len(), 2, "one checksum line per rank:\n{stdout}");
    let mut values = sums.values();
    assert_eq!(values.next(), values.next(), "the ranks' networks differ: {sums:?}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["world_size"], 2);
    let epochs = metrics(&out).into_iter().filter(|m| m["kind"] == "epoch").count();
    assert_eq!(epochs, 1, "one epoch record, from rank 0");
    // 17 readable images (one unreadable, replaced) in global batches of 4.
    assert_eq!(losses(&out).len(), 4);
    assert!(out.join("latest_net_G.pth").exists() && out.join("checkpoint_0001.pth.tar").exists());
}
