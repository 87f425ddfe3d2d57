//! `examples/classify` run as a user runs it, on real radiographs (class folders and a
//! CheXpert-layout CSV with uncertain and blank labels) plus a corrupt file: ResNet-18 at 64 px,
//! so that each run takes seconds. Also the data rules a fine-tuning study rests on: patient
//! splits, label fractions.
mod common;

use common::{losses, metrics, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use chess::data::{LabelSet, Target};
use chess::tasks::classify::data::{Labelled, fraction_subset, patient_by_regex, split_by_patient};
use chess::tasks::classify::{DataOptions, Layout};
use serde_json::Value;

/// Real JPEGs of one class of the shared test split, sorted.
fn jpegs(class: &str, n: usize, skip: usize) -> Vec<PathBuf> {
    let dir = common::data_dir().join("cxr-pneumonia-224/test").join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set CHESS_DATA)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().skip(skip).take(n).collect()
}

fn link_all(files: &[PathBuf], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::os::unix::fs::symlink(f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// Class folders: train (12 + 12 and a corrupt file) and val (6 + 6 and a corrupt file).
fn folders() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("classify/folders");
        for (split, n, skip) in [("train", 12, 0), ("val", 6, 12)] {
            for class in ["NORMAL", "PNEUMONIA"] {
                link_all(&jpegs(class, n, skip), &dir.join(split).join(class));
            }
            std::fs::write(dir.join(split).join("NORMAL/broken.jpeg"), b"\xff\xd8\xff not a JPEG").unwrap();
        }
        dir
    })
}

const LABELS: &str = "Cardiomegaly,Edema,Pleural Effusion";

/// CheXpert-layout CSVs over real images: every label value (1, 0, -1, blank), frontal and
/// lateral rows, both sexes, patients in the paths' folders.
fn chexpert_csvs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("classify/chexpert");
        let cells = ["1", "0", "-1", "", "0", "1", "0"];
        for (split, skip, n) in [("train", 0, 14), ("valid", 14, 8)] {
            let mut text =
                String::from("Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly,Edema,Pleural Effusion\n");
            let files: Vec<PathBuf> =
                jpegs("NORMAL", n, skip).into_iter().chain(jpegs("PNEUMONIA", n, skip)).collect();
            for (i, f) in files.iter().enumerate() {
                // patientNNNNN folders: two studies per patient.
                let patient = dir.join(format!("{split}/patient{:05}/study1", i / 2));
                std::fs::create_dir_all(&patient).unwrap();
                let link =
                    patient.join(format!("view{}_{}", i % 2, f.file_name().unwrap().to_string_lossy()));
                std::os::unix::fs::symlink(f, &link).unwrap();
                let pneumonia = i >= n;
                let lateral = i % 7 == 3;
                let labels: Vec<&str> = (0..3)
                    .map(|l| match (l, pneumonia) {
                        (0, _) => cells[(i + l) % cells.len()],
                        (_, true) => {
                            if (i + l) % 5 == 0 {
                                "-1"
                            } else {
                                "1"
                            }
                        }
                        (_, false) => {
                            if (i + l) % 4 == 0 {
                                ""
                            } else {
                                "0"
                            }
                        }
                    })
                    .collect();
                text += &format!(
                    "{},{},{},{},{},{}\n",
                    link.display(),
                    if i % 3 == 0 { "Female" } else { "Male" },
                    40 + i,
                    if lateral { "Lateral" } else { "Frontal" },
                    if lateral {
                        ""
                    } else if i % 2 == 0 {
                        "AP"
                    } else {
                        "PA"
                    },
                    labels.join(",")
                );
            }
            std::fs::write(dir.join(format!("{split}.csv")), text).unwrap();
        }
        dir
    })
}

fn tiny(out: &Path, epochs: u64) -> Command {
    let mut cmd = common::example("classify");
    cmd.arg("train")
        .args(["--out", out.to_str().unwrap()])
        .args(["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--workers", "2"])
        .args(["--log-every", "1", "--device", "cpu", "--seed", "3", "--bootstrap", "200"])
        // Pinned: `auto` would pick bf16 on CPUs with AVX512_BF16 and fp32 elsewhere.
        .args(["--amp", "off", "--channels-last", "off"])
        .args(["--epochs", &epochs.to_string()]);
    cmd
}

fn on_folders(out: &Path, epochs: u64) -> Command {
    let mut cmd = tiny(out, epochs);
    let d = folders();
    cmd.args(["--train", d.join("train").to_str().unwrap(), "--val", d.join("val").to_str().unwrap()]);
    cmd
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The uninterrupted 2-epoch run on the class folders, shared by the tests that compare to it.
fn folder_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("classify/folder_run");
        let log = run_ok(on_folders(&dir, 2));
        eprintln!("{log}");
        dir
    })
}

#[test]
fn trains_on_class_folders_skips_the_corrupt_files_and_writes_every_report() {
    let run = folder_run();
    for f in ["best.pth", "best.json", "curves.png", "train_files.csv", "val_files.csv", "config.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let card = json(&run.join("best.json"));
    assert_eq!(card["labels"], serde_json::json!(["NORMAL", "PNEUMONIA"]));
    assert_eq!(card["multi_label"], false);
    assert_eq!(card["thresholds"].as_array().unwrap().len(), 2);
    // The corrupt training file is skipped, counted and named in the epoch records.
    let epochs: Vec<Value> = metrics(run).into_iter().filter(|m| m["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs[0]["skipped_files"].to_string().contains("broken.jpeg"), "{}", epochs[0]);
    for e in &epochs {
        assert!(e["val_mean_auroc"].is_number(), "{e}");
        assert!(e["train_loss"].as_f64().unwrap().is_finite(), "{e}");
    }
    // The validation report: every image but the corrupt one, N-class extras, intervals.
    let m = json(&run.join("val/metrics.json"));
    assert_eq!(m["n"], 12);
    assert_eq!(m["positives"]["PNEUMONIA"], 6);
    for key in
        ["auroc", "mean_auroc", "auroc_ci", "mean_auroc_ci", "at_0.5", "at_youden", "accuracy", "confusion"]
    {
        assert!(!m[key].is_null(), "{key} missing in {m}");
    }
    let ci = m["mean_auroc_ci"].as_array().unwrap();
    let mean = m["mean_auroc"].as_f64().unwrap();
    assert!(ci[0].as_f64().unwrap() <= mean && mean <= ci[1].as_f64().unwrap(), "{m}");
    assert!(m["skipped"].to_string().contains("broken.jpeg"), "{m}");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(m["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 12);
    let preds = std::fs::read_to_string(run.join("val/predictions.csv")).unwrap();
    let mut lines = preds.lines();
    assert_eq!(lines.next(), Some("Path,NORMAL,PNEUMONIA"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 12);
    for row in rows {
        let p: Vec<f64> = row.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6, "softmax rows sum to 1: {row}");
    }
    for png in ["val/roc.png", "val/confusion.png", "curves.png"] {
        let img = image::open(run.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 400 && img.height() >= 300, "{png}");
    }
}

#[test]
fn sigterm_saves_and_resume_repeats_the_uninterrupted_run() {
    let reference = losses(folder_run());
    let dir = tempfile::tempdir().unwrap();
    common::stop_after_a_step(on_folders(dir.path(), 2), dir.path(), Duration::from_secs(120));
    let mut cmd = on_folders(dir.path(), 2);
    cmd.args(["--resume", "auto"]);
    let log = run_ok(cmd);
    assert!(log.contains("resumed from"), "{log}");
    assert_eq!(losses(dir.path()), reference, "loss per step, stopped and resumed vs uninterrupted");
    let keys = ["loss", "train_loss", "steps"];
    assert_eq!(common::epoch_values(dir.path(), &keys), common::epoch_values(folder_run(), &keys));
    let val = |d: &Path| -> Vec<Value> {
        metrics(d).into_iter().filter(|m| m["kind"] == "epoch").map(|m| m["val_mean_auroc"].clone()).collect()
    };
    assert_eq!(val(dir.path()).last(), val(folder_run()).last(), "validation after the last epoch");
    assert_eq!(
        std::fs::read(dir.path().join("best.json")).unwrap(),
        std::fs::read(folder_run().join("best.json")).unwrap()
    );
}

/// `best.pth` is a plain state dict: torchvision's ResNet-18 (1-channel conv1, 2-class fc)
/// loads it with `weights_only=True` and gives `predict`'s probabilities on the same images;
/// `--cam` writes an overlay per image.
#[test]
fn best_pth_loads_into_torchvision_and_gives_the_predicted_probabilities() {
    let run = folder_run();
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs");
    // 64 x 64 grey PNGs: lossless, already at the model's size, so both sides read the same pixels.
    let mut sources: Vec<PathBuf> = jpegs("NORMAL", 3, 30);
    sources.extend(jpegs("PNEUMONIA", 3, 30));
    std::fs::create_dir_all(&pngs).unwrap();
    for (i, f) in sources.iter().enumerate() {
        let img = image::open(f).unwrap().to_luma8();
        let small = image::imageops::resize(&img, 64, 64, image::imageops::FilterType::Triangle);
        small.save(pngs.join(format!("img{i}.png"))).unwrap();
    }
    let preds = dir.path().join("preds.csv");
    let cams = dir.path().join("cams");
    let mut cmd = common::example("classify");
    cmd.args(["predict", "--model", run.join("best.pth").to_str().unwrap(), pngs.to_str().unwrap()]).args([
        "--out",
        preds.to_str().unwrap(),
        "--cam",
        cams.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    run_ok(cmd);
    let out = common::run_python(
        "classify_predict_reference.py",
        [run.join("best.pth").to_str().unwrap(), preds.to_str().unwrap()],
    );
    eprintln!("{out}");
    let worst: f64 =
        out.lines().find_map(|l| l.strip_prefix("max_abs_diff ")).unwrap().trim().parse().unwrap();
    assert!(worst <= 1e-5, "torchvision vs predict: {worst:e}");
    let overlays = std::fs::read_dir(&cams).unwrap().count();
    assert_eq!(overlays, 6, "one Grad-CAM overlay per image");
}

#[test]
fn trains_on_a_chexpert_csv_with_uncertain_and_blank_labels_then_eval_and_compare() {
    let d = chexpert_csvs();
    let (train, valid) = (d.join("train.csv"), d.join("valid.csv"));
    let runs = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (name, mode) in [("finetune", "finetune"), ("linear", "linear")] {
        let out = runs.path().join(name);
        let mut cmd = tiny(&out, 1);
        cmd.args(["--train", train.to_str().unwrap(), "--val", valid.to_str().unwrap()])
            .args(["--test", valid.to_str().unwrap(), "--labels", LABELS, "--mode", mode])
            .args(["--uncertain", "ignore", "--uncertain-per-label", "Edema=ones", "--blank", "ignore"])
            .args(["--views", "frontal", "--by", "Sex,AP/PA", "--pos-weight", "auto"]);
        let log = run_ok(cmd);
        assert!(log.contains("test ("), "{log}");
        outs.push(out);
    }
    let config = json(&outs[0].join("config.json"));
    // 28 rows, 4 laterals dropped by --views frontal.
    assert_eq!(config["train_images"], 24, "{config}");
    // What --amp and --channels-last came to, and why, for a reader of the run folder.
    assert_eq!(config["speed"]["amp"], "off", "{config}");
    assert_eq!(config["speed"]["amp_reason"], "as asked", "{config}");
    assert_eq!(config["speed"]["channels_last"], false, "{config}");
    let m = json(&outs[0].join("test/metrics.json"));
    assert_eq!(m["labels"], serde_json::json!(["Cardiomegaly", "Edema", "Pleural Effusion"]));
    assert_eq!(m["youden_thresholds_from"], "validation");
    for column in ["Sex", "AP/PA"] {
        let groups = m["by"][column].as_object().unwrap_or_else(|| panic!("no subgroups of {column}: {m}"));
        let n: u64 = groups.values().map(|g| g["n"].as_u64().unwrap()).sum();
        assert_eq!(n, m["n"].as_u64().unwrap(), "{column}: subgroups cover the set");
    }
    // Uncertain Cardiomegaly cells are ignored (masked), uncertain Edema cells count as positive.
    let rows = csv_rows(&d.join("valid.csv"));
    let frontal: Vec<&Vec<String>> = rows.iter().filter(|r| r[3] == "Frontal").collect();
    let count = |col: usize, f: &dyn Fn(&str) -> bool| frontal.iter().filter(|r| f(&r[col])).count() as u64;
    assert_eq!(m["positives"]["Cardiomegaly"], count(5, &|c| c == "1"));
    assert_eq!(m["positives"]["Edema"], count(6, &|c| c == "1" || c == "-1"));
    assert_eq!(m["n"], frontal.len() as u64);

    // eval on the same CSV reproduces the test report's AUROC; compare runs and writes JSON.
    let eval_out = runs.path().join("eval");
    let mut cmd = common::example("classify");
    cmd.args([
        "eval",
        "--model",
        outs[0].join("best.pth").to_str().unwrap(),
        "--data",
        valid.to_str().unwrap(),
    ])
    .args([
        "--out",
        eval_out.to_str().unwrap(),
        "--uncertain",
        "ignore",
        "--uncertain-per-label",
        "Edema=ones",
    ])
    .args(["--blank", "ignore", "--views", "frontal", "--device", "cpu", "--bootstrap", "200"]);
    run_ok(cmd);
    let e = json(&eval_out.join("metrics.json"));
    assert_eq!(e["auroc"], m["auroc"]);
    assert_eq!(e["at_youden"], m["at_youden"]);
    assert!(eval_out.join("roc.png").exists() && eval_out.join("predictions.csv").exists());

    let cmp = runs.path().join("compare.json");
    let mut cmd = common::example("classify");
    cmd.args([
        "compare",
        outs[0].to_str().unwrap(),
        outs[1].to_str().unwrap(),
        "--data",
        valid.to_str().unwrap(),
    ])
    .args(["--out", cmp.to_str().unwrap(), "--uncertain", "ignore", "--uncertain-per-label", "Edema=ones"])
    .args(["--blank", "ignore", "--views", "frontal", "--device", "cpu", "--bootstrap", "200"]);
    let log = run_ok(cmd);
    assert!(log.contains("mean"), "{log}");
    let c = json(&cmp);
    let mean = &c["mean_auroc"];
    let (a, b) = (mean["a"].as_f64().unwrap(), mean["b"].as_f64().unwrap());
    assert!((mean["difference"].as_f64().unwrap() - (a - b)).abs() < 1e-12, "{c}");
    assert_eq!(mean["a"], m["mean_auroc"], "A's mean AUROC is the test report's");
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn a_bad_init_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("chess.pth.tar");
    std::fs::write(&bad, b"PK\x03\x04 truncated").unwrap();
    let mut cmd = on_folders(&dir.path().join("run"), 1);
    cmd.args(["--init", bad.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("chess.pth.tar"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

fn options() -> DataOptions {
    DataOptions { labels: Some(LABELS.parse::<LabelSet>().unwrap()), ..DataOptions::default() }
}

#[test]
fn validation_splits_keep_patients_whole_and_fractions_keep_a_positive_of_every_label() {
    let data = Labelled::read(&chexpert_csvs().join("train.csv"), &options(), None).unwrap();
    assert!(matches!(data.layout, Layout::MultiLabel { .. }));
    let groups = data.groups();
    assert!(groups.iter().all(|g| g.starts_with("patient")), "{groups:?}");
    let (train, val) = split_by_patient(&groups, 0.25, 0).unwrap();
    assert_eq!(train.len() + val.len(), data.len());
    for &v in &val {
        assert!(train.iter().all(|&t| groups[t] != groups[v]), "patient {} on both sides", groups[v]);
    }
    assert_eq!(split_by_patient(&groups, 0.25, 0).unwrap(), (train.clone(), val.clone()), "seeded");
    assert_ne!(split_by_patient(&groups, 0.25, 1).unwrap().1, val, "another seed, another split");

    let pool = data.subset(&train);
    let pool_groups: Vec<String> = train.iter().map(|&i| groups[i].clone()).collect();
    let positives = pool.positives();
    for seed in 0..5 {
        let chosen = fraction_subset(&pool, &pool_groups, 0.05, seed);
        assert!(!chosen.is_empty() && chosen.len() < pool.len());
        let sub = pool.subset(&chosen);
        for (l, (&p, &all)) in sub.positives().iter().zip(&positives).enumerate() {
            assert!(all == 0 || p >= 1, "label {l}: no positive kept (seed {seed})");
        }
        // Whole patients: every study of a chosen patient is in.
        for &c in &chosen {
            let members = (0..pool.len()).filter(|&i| pool_groups[i] == pool_groups[c]);
            for m in members {
                assert!(chosen.contains(&m), "patient {} cut in two", pool_groups[c]);
            }
        }
        assert_eq!(fraction_subset(&pool, &pool_groups, 0.05, seed), chosen, "seeded");
    }
    assert_eq!(fraction_subset(&pool, &pool_groups, 1.0, 0).len(), pool.len());
    // Class folders with another set's class list keep the training indices.
    let val =
        Labelled::read(&folders().join("val"), &options(), Some(&["NORMAL".into(), "PNEUMONIA".into()]))
            .unwrap();
    assert!(val.dataset.samples.iter().all(|s| matches!(s.target, Some(Target::Class(_)))));
    let re = regex::Regex::new(r"person\d+|NORMAL2-IM-\d+|IM-\d+").unwrap();
    assert_eq!(
        patient_by_regex(&re, Path::new("/d/PNEUMONIA/person1_virus_6.jpeg")).as_deref(),
        Some("person1")
    );
    assert_eq!(patient_by_regex(&re, Path::new("/d/NORMAL/IM-0115-0001.jpeg")).as_deref(), Some("IM-0115"));
    let other_series = Path::new("/d/NORMAL/NORMAL2-IM-0115-0001.jpeg");
    assert_eq!(patient_by_regex(&re, other_series).as_deref(), Some("NORMAL2-IM-0115"));
}

/// `torchrun --no-python --nproc-per-node 2 classify train ...` on the CPU (Gloo): the ranks
/// split each global batch, rank 0 alone writes the run folder, and the run completes with a
/// validation.
#[test]
fn two_ranks_under_torchrun_train_and_only_rank_0_writes() {
    let out = common::fixture_dir("classify/torchrun");
    let d = folders();
    let mut classify = common::example("classify");
    classify
        .args([
            "train",
            "--train",
            d.join("train").to_str().unwrap(),
            "--val",
            d.join("val").to_str().unwrap(),
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--image-size",
            "64",
            "--batch-size",
            "8",
        ])
        .args(["--workers", "1", "--device", "cpu", "--epochs", "1", "--bootstrap", "0", "--log-every", "1"])
        .args(["--amp", "off", "--channels-last", "off"]);
    let result = common::torchrun(&classify, 2).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "torchrun failed:\n{stdout}\n{stderr}");
    let config = json(&out.join("config.json"));
    assert_eq!(config["world_size"], 2);
    let epochs: Vec<Value> = metrics(&out).into_iter().filter(|m| m["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 1, "one epoch record, from rank 0");
    assert!(epochs[0]["val_mean_auroc"].is_number(), "{}", epochs[0]);
    assert_eq!(losses(&out).len(), 3, "24 images (one unreadable, replaced) in global batches of 8");
    assert!(out.join("best.pth").exists() && out.join("checkpoint_0001.pth.tar").exists());
}

/// Sets that do not fit together stop before training with one line naming the file.
#[test]
fn a_validation_set_of_another_kind_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tiny(&dir.path().join("run"), 1);
    cmd.args(["--train", folders().join("train").to_str().unwrap()]).args([
        "--val",
        chexpert_csvs().join("valid.csv").to_str().unwrap(),
        "--labels",
        LABELS,
    ]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("valid.csv") && last.contains("NORMAL"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}
